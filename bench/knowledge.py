"""Does the demo's pretraining store the world? world → tokenizer → pretrain → knowledge probe.

    python bench/knowledge.py --out /tmp/k --seed 0 [--world small] [world.size.people=20 ...] [pretrain.train.max_steps=600 ...]

Runs the demo's own first three steps (``stages/demo.py``, same sizes) with any world or pretrain
overrides, then the knowledge probe (``alignforge.eval.knowledge``: zero- and 4-shot, train- and
test-split entities) and prints its table, the held-out bits per byte and the wall time of each
step. The way the demo world's knobs were chosen (docs/world.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    from alignforge.stages.demo import demo_pipeline
    from alignforge.stages.pipeline import run_pipeline

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shots", type=int, nargs="+", default=[0, 4])
    ap.add_argument("--per-split", type=int, default=80)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--world", choices=("default", "small"), default="default", help="the demo's --world")
    ap.add_argument("--format", choices=("chat", "plain"), default="chat",
                    help="probe layout (plain for a model pretrained without pretrain.chat_dialogues)")
    ap.add_argument("overrides", nargs="*", help="world.KEY=VALUE / tokenizer.KEY=VALUE / pretrain.KEY=VALUE (YAML values)")
    args = ap.parse_args()
    import yaml

    p = demo_pipeline("knowledge", quick=args.quick, seed=args.seed, out_root=args.out, world=args.world)
    p.steps = [s for s in p.steps if s.name in ("world", "tokenizer", "pretrain")]
    for o in args.overrides:
        key, value = o.split("=", 1)
        step, key = key.split(".", 1)
        next(s for s in p.steps if s.name == step).values[key] = yaml.safe_load(value)
    times = {}
    t0 = time.perf_counter()
    refs = run_pipeline(p, log=lambda s: times.setdefault(s, round(time.perf_counter() - t0, 1)))
    wall = time.perf_counter() - t0

    from alignforge.eval.knowledge import knowledge_probe, probe_table
    from alignforge.eval.oracle import load_world
    from alignforge.models.load import load_causal_lm

    world = load_world(refs["world"])
    model, tok = load_causal_lm(refs["pretrain"], device="cpu")
    t1 = time.perf_counter()
    probe = knowledge_probe(model, tok, world, shots=args.shots, per_split=args.per_split, seed=args.seed,
                            chat=args.format == "chat")
    metrics = [json.loads(l) for l in Path(refs["pretrain"], "metrics.jsonl").read_text().splitlines()]
    bpb = [m["eval_bpb"] for m in metrics if "eval_bpb" in m]
    print(probe_table({"pretrain": probe}))
    for ex in probe["examples"][:6]:
        print(ex)
    print(json.dumps({"overrides": args.overrides, "seed": args.seed, "wall_s": round(wall, 1),
                      "probe_s": round(time.perf_counter() - t1, 1), "eval_bpb": bpb[-1] if bpb else None,
                      "probe": {k: v for k, v in probe.items() if k.endswith("-shot")}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
