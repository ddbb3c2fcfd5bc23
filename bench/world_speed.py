"""World speed and calibration: prompt generation rate, gold-judge throughput, reference policies,
annotator agreement. Prints numbers (and ``--json FILE`` writes them); never asserts.

    python bench/world_speed.py            # default world, seed 0
    python bench/world_speed.py --quick    # fewer prompts, for a smoke run

Targets (issue 4): 100k prompts in <= 10 s; >= 10k judgments/s on one core.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompts", type=int, default=100_000)
    ap.add_argument("--judgments", type=int, default=50_000)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.quick:
        args.prompts, args.judgments = 10_000, 5_000
    try:  # one core, as the target says
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    except (AttributeError, OSError):
        pass

    from alignforge.world import WorldConfig, build_world
    from alignforge.world.annotators import AnnotatorPool, measure_agreement
    from alignforge.world.judge import GoldJudge, category_means, judge_batch
    from alignforge.world.policies import padded, reference_policy

    out: dict = {"seed": args.seed}
    t = time.perf_counter()
    world = build_world(WorldConfig(seed=args.seed))
    out["build_world_s"] = time.perf_counter() - t

    t, c = time.perf_counter(), time.process_time()
    prompts = world.sample_prompts("train", args.prompts, seed=1)
    dt, dc = time.perf_counter() - t, time.process_time() - c
    out["prompts"] = {"n": len(prompts), "seconds": dt, "cpu_seconds": dc, "per_s": len(prompts) / dt,
                      "per_cpu_s": len(prompts) / dc}

    # Judge throughput on a realistic mix: a fresh judge (cold parse cache) over distinct prompts,
    # responses from the demonstrator and the random policy.
    rng = random.Random(0)
    demo, rand = reference_policy("demonstrator", world), reference_policy("random", world)
    sample = [p.prompt for p in prompts[: args.judgments]]
    responses = [demo(p) if rng.random() < 0.5 else rand(p) for p in sample]
    judge = GoldJudge(world)
    world.parser._cache.clear()
    for key in ("judge_cold", "judge_warm"):  # the second pass finds every prompt parsed
        t, c = time.perf_counter(), time.process_time()
        for p, r in zip(sample, responses):
            judge.score(p, r)
        dt, dc = time.perf_counter() - t, time.process_time() - c
        out[key] = {"n": len(sample), "seconds": dt, "cpu_seconds": dc, "per_s": len(sample) / dt,
                    "per_cpu_s": len(sample) / dc}

    test = [r.prompt for r in world.prompts["test"]]
    pols = {name: reference_policy(name, world) for name in ("oracle", "demonstrator", "noisy", "random")}
    pols["oracle+padding"] = padded(reference_policy("oracle", world), 20)
    out["gold_reward"] = {}
    for name, pol in pols.items():
        means = category_means(judge_batch(test, [pol(p) for p in test], world))
        out["gold_reward"][name] = {c: round(v["reward"], 3) for c, v in means.items()}
    out["annotators"] = {}
    for pool in ("default", "length_biased"):
        r = measure_agreement(world, AnnotatorPool(world, pool, seed=args.seed), test, seed=args.seed)
        out["annotators"][pool] = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()
                                   if k != "gold_agreement_by_category"}

    print(f"world build (default config)   {out['build_world_s']:.2f} s")
    # CPU time is what one core costs when the machine is shared; wall time is printed beside it.
    p = out["prompts"]
    print(f"prompt generation               {p['n']} prompts in {p['seconds']:.2f} s wall, {p['cpu_seconds']:.2f} s CPU "
          f"({p['per_cpu_s']:,.0f}/CPU-s)")
    for key in ("judge_cold", "judge_warm"):
        j = out[key]
        print(f"gold judge ({key[6:]:<4})             {j['n']} in {j['seconds']:.2f} s wall, {j['cpu_seconds']:.2f} s CPU "
              f"({j['per_cpu_s']:,.0f} judgments/CPU-s, {j['per_s']:,.0f}/wall-s)")
    cats = list(next(iter(out["gold_reward"].values())))
    print("\nmean gold reward on test prompts (-3..3)")
    print(f"{'policy':<16}" + "".join(f"{c:>11}" for c in cats))
    for name, row in out["gold_reward"].items():
        print(f"{name:<16}" + "".join(f"{row[c]:>11.2f}" for c in cats))
    print("\nannotator pools on realistic candidate pairs (oracle / demonstrator / noisy sample)")
    for name, a in out["annotators"].items():
        print(f"{name:<14} pairs {a['pairs']}  gold agreement {a['gold_agreement']:.3f}  "
              f"inter-annotator {a['inter_annotator_agreement']:.3f}  "
              f"prefers padded wrong over short right {a['prefers_padded_wrong']:.3f} (n={a['length_hack_pairs']})")
    if args.json:
        from alignforge.io import atomic_write_text

        atomic_write_text(args.json, json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
