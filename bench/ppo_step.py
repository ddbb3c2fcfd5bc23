"""PPO step throughput: rollout tokens/s, training tokens/s and the wall-clock split of a step, plus
our sampling engine against ``transformers`` ``generate`` on the same batch.

    python bench/ppo_step.py [--preset tiny-4m] [--prompts 64] [--new-tokens 64] [--steps 3] [--threads 1]

Builds a fresh ``--preset`` Llama (random weights; the world tokenizer when runs/world/tokenizer
exists, else a small BPE trained here), a scalar-head reward model and value model on the same
backbone, and runs the real stage (``alignforge.stages.ppo.run``) for ``--steps`` steps of
``--prompts`` prompts × up to ``--new-tokens`` new tokens (random weights: eos is rare, the reward model
sees ~full-length responses; in the engine-vs-generate comparison eos is off in both). Reported per step (median over
steps after the first, which warms up): generate / score (reference + reward + value forwards) /
train seconds, rollout tokens/s (response tokens / generate time), training tokens/s (prompt +
response tokens through policy and value fwd+bwd, all epochs / train time) and its MFU against the
measured fp32 matmul peak (6 × matmul params × tokens for each of policy and value).
Then the sampling comparison: ``alignforge.generation.generate`` (log-probs included) vs
``model.generate(do_sample=True)`` with ``output_scores`` off, same prompts, same lengths.
Timings on a shared machine vary: run it alone, and report the load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def tokenizer():
    from alignforge.models.tokenizer import load_tokenizer, train_tokenizer

    world_tok = REPO / "runs" / "world" / "tokenizer"
    if world_tok.is_dir():
        return load_tokenizer(world_tok)
    from alignforge.models.tiny import _TINY_CORPUS

    return train_tokenizer(_TINY_CORPUS * 20, vocab_size=512)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny-4m")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from transformers import GenerationConfig

    from alignforge.config import PPOConfig, load_config
    from alignforge.data.batching import encode_prompt
    from alignforge.generation import SamplingParams, generate
    from alignforge.models.heads import init_from_causal_lm, save_scorer
    from alignforge.models.load import build_model, matmul_params, save_model
    from alignforge.perf import measure_matmul_peak
    from alignforge.stages import ppo

    tok = tokenizer()
    model = build_model(args.preset, len(tok), seed=0)
    n_matmul = matmul_params(model)
    prompts = [f"Question {i}: where does creature number {i} live, and what does it eat?" for i in range(args.prompts)]
    ids = [encode_prompt(tok, p) for p in prompts]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_model(model, tok, tmp / "policy")
        rm, rm_tok = init_from_causal_lm(tmp / "policy", seed=1)
        save_scorer(rm, rm_tok, tmp / "rm")
        data = tmp / "prompts.jsonl"
        data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
        # Random weights rarely sample eos (≈ 1/vocab a token), so responses are ~full length; the
        # rates below count the real response tokens.
        cfg = load_config(PPOConfig, None, [
            f"model.init={tmp / 'policy'}", f"reward.init={tmp / 'rm'}", f"data.train={data}", f"out={tmp / 'out'}",
            f"sampling.max_new_tokens={args.new_tokens}", f"rollout.prompts={args.prompts}",
            f"rollout.batch_size={args.prompts}", f"ppo.steps={args.steps}", "ppo.epochs=2", "ppo.minibatch_size=16",
            "train.log_every=1000", "train.save_every=0", "train.eval_every=0", "train.seq_len=256",
            f"runtime.threads={args.threads}", "runtime.progress=false", "runtime.device=cpu"])
        out = ppo.run(cfg)
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]

    peak = measure_matmul_peak(repeats=3)
    later = rows[1:] or rows
    med = lambda k: statistics.median(r[k] for r in later)  # noqa: E731
    result = {"preset": args.preset, "matmul_params": n_matmul, "prompts": args.prompts, "new_tokens": args.new_tokens,
              "threads": args.threads, "load_avg": os.getloadavg()[0], "generate_s": med("generate_s"),
              "score_s": med("score_s"), "train_s": med("train_s"),
              "rollout_tokens_per_s": med("rollout_tokens_per_s"), "train_tokens_per_s": med("train_tokens_per_s"),
              "peak_flops": peak}
    result["train_mfu"] = 2 * 6 * n_matmul * result["train_tokens_per_s"] / peak  # policy + value, fwd+bwd
    total = result["generate_s"] + result["score_s"] + result["train_s"]
    result["split"] = {k: result[f"{k}_s"] / total for k in ("generate", "score", "train")}

    # --- our engine vs transformers generate, same batch, same lengths ---
    model.eval()
    P = max(len(p) for p in ids)
    pad = tok.pad_token_id
    inp = torch.tensor([[pad] * (P - len(p)) + p for p in ids])
    att = (torch.arange(P)[None] >= torch.tensor([P - len(p) for p in ids])[:, None]).long()
    gcfg = GenerationConfig(do_sample=True, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                            eos_token_id=None, pad_token_id=pad, top_k=0, top_p=1.0, temperature=1.0)
    times = {"alignforge": [], "transformers": []}
    for _ in range(3):
        t = time.perf_counter()
        g = generate(model, ids, SamplingParams(max_new_tokens=args.new_tokens), eos_token_id=None, pad_token_id=pad,
                     generator=torch.Generator().manual_seed(0))
        times["alignforge"].append(time.perf_counter() - t)
        assert int(g.response_mask.sum()) == args.prompts * args.new_tokens
        t = time.perf_counter()
        with torch.inference_mode():
            o = model.generate(input_ids=inp, attention_mask=att, generation_config=gcfg)
        times["transformers"].append(time.perf_counter() - t)
        assert o.shape[1] == P + args.new_tokens
    n_tok = args.prompts * args.new_tokens
    result["sampling_tokens_per_s"] = {k: n_tok / min(v) for k, v in times.items()}
    result["sampling_speedup"] = min(times["transformers"]) / min(times["alignforge"])

    print(f"{args.preset} ({n_matmul / 1e6:.2f}M matmul params), {args.prompts} prompts × {args.new_tokens} new tokens, "
          f"{args.threads} thread(s), load avg {result['load_avg']:.1f}")
    print(f"PPO step: generate {result['generate_s']:.2f}s | score {result['score_s']:.2f}s | train "
          f"{result['train_s']:.2f}s  ({', '.join(f'{k} {v:.0%}' for k, v in result['split'].items())})")
    print(f"rollout {result['rollout_tokens_per_s']:.0f} tok/s; training {result['train_tokens_per_s']:.0f} tok/s "
          f"(MFU {result['train_mfu']:.1%} of {peak / 1e9:.1f} GFLOP/s)")
    print(f"sampling: alignforge {result['sampling_tokens_per_s']['alignforge']:.0f} tok/s vs transformers generate "
          f"{result['sampling_tokens_per_s']['transformers']:.0f} tok/s ({result['sampling_speedup']:.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
