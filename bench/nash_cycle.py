"""The non-transitive world at world scale (docs/nash.md): a scalar reward model vs the pairwise
preference model on the ``condorcet`` annotator pool's labels.

    python bench/nash_cycle.py --world runs/world/world --sft runs/world/sft --out runs/world/cycle

1. Labels: for each training prompt (format prompts excluded: a style word breaks their format,
   elsewhere the gold judge ignores it — tests/test_world_cycle.py), the demonstrator's answer in
   two random styles (alignforge.world.styles), shown in a random order to one annotator of the
   ``condorcet`` pool → ``train.jsonl``; the same on held-out test prompts with another seed stream
   → ``eval.jsonl``. Both styles carry the same answer, so the labels are taste alone.
2. A scalar Bradley–Terry reward model, by the reward stage itself (``alignforge reward``,
   configs/world/reward.yaml, SFT backbone, ``--rm-steps``), and the pairwise preference model
   (``alignforge.models.preference``, same backbone, ``--pm-steps``), on the same labels.
3. On the held-out prompts' demonstrator answers, each of the three cycle directions s0 ≻ s1,
   s1 ≻ s2, s2 ≻ s0: the pool's majority (fresh labels), the RM's share of prompts with
   r(s_i) > r(s_j) and mean σ(r_i − r_j), and the preference model's mean P(s_i ≻ s_j).
4. What each objective does with these models, on the three styles as a tabular game (exact
   updates, no sampling): the KL-regularised reward maximiser π ∝ π_ref·exp(r̄/β) (what PPO on the
   RM converges to) and the tabular Nash-MD iteration of Munos et al. (2023) on the mean learned
   preference matrix P̄, from π_ref = uniform and from a skewed start.

Writes ``<out>/cycle.json`` and prints the markdown of docs/nash.md ("numbers generated").
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch


def label(world, pool, prompts, demo, rng: random.Random, all_pairs: bool = False) -> list:
    """One label per prompt on two random styles of its answer; ``all_pairs``: one on each of the
    three style pairs (so the same answer is seen in every style, and only its style explains
    the labels' differences)."""
    from alignforge.world.styles import cycle_pairs, restyle

    out = []
    for p in prompts:
        base = demo(p)
        pairs = [tuple(rng.sample(pair, 2)) for pair in cycle_pairs()] if all_pairs else [rng.sample(range(3), 2)]
        for i, j in pairs:
            out.append(pool.compare(p, restyle(base, i), restyle(base, j)))
    return out


def reward_maximiser(r: list[float], beta: float) -> list[float]:
    """argmax_π E_π[r] − β KL(π‖uniform) = softmax(r/β) (the KL-regularised RLHF optimum)."""
    z = [x / beta for x in r]
    m = max(z)
    e = [math.exp(x - m) for x in z]
    return [x / sum(e) for x in e]


def nash_md(P: list[list[float]], start: list[float], ref: list[float], *, eta: float, beta: float,
            steps: int) -> list[list[float]]:
    """Tabular Nash-MD (Munos et al. 2023, eq. 8): π_mix ∝ π_t^(1−ηβ)·π_ref^(ηβ), then
    π_{t+1}(y) ∝ π_mix(y)·exp(η·P(y ≻ π_mix)). Returns the trajectory."""
    pi, traj = list(start), [list(start)]
    for _ in range(steps):
        mix = [p ** (1 - eta * beta) * q ** (eta * beta) for p, q in zip(pi, ref)]
        s = sum(mix)
        mix = [x / s for x in mix]
        win = [sum(P[y][z] * mix[z] for z in range(3)) for y in range(3)]
        new = [m * math.exp(eta * w) for m, w in zip(mix, win)]
        s = sum(new)
        pi = [x / s for x in new]
        traj.append(pi)
    return traj


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", default="runs/world/world")
    ap.add_argument("--sft", default="runs/world/sft")
    ap.add_argument("--out", default="runs/world/cycle")
    ap.add_argument("--train-prompts", type=int, default=1500)
    ap.add_argument("--eval-prompts", type=int, default=300)
    ap.add_argument("--rm-steps", type=int, default=150)
    ap.add_argument("--pm-steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=1e-4, help="reward model learning rate (configs/world/reward.yaml's)")
    ap.add_argument("--pm-lr", type=float, default=5e-4, help="preference model learning rate")
    ap.add_argument("--all-pairs", action="store_true", help="label all three style pairs of every training answer")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from alignforge.config import RewardConfig, load_config
    from alignforge.data.records import read_records, write_records
    from alignforge.eval.oracle import load_world
    from alignforge.models.heads import init_from_causal_lm, load_scorer, save_scorer
    from alignforge.models.preference import (
        fit_preference_model,
        preference_accuracy,
        preference_examples,
        preference_probs,
    )
    from alignforge.stages import reward as reward_stage
    from alignforge.world.annotators import AnnotatorPool
    from alignforge.world.demonstrator import Demonstrator
    from alignforge.world.styles import cycle_pairs, restyle, style_of

    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    world = load_world(args.world)
    demo = Demonstrator(world, seed=args.seed)

    from alignforge.world.judge import judge

    def usable(split):
        """Non-format prompts whose demonstrator answer has the same gold reward in every style
        (a style word can push an answer with filler past the verbosity limit: those are skipped)."""
        keep = []
        for r in world.prompts[split]:
            if world.task(r.prompt).category == "format":
                continue
            d = demo(r.prompt)
            if len({judge(r.prompt, restyle(d, k), world).reward for k in range(3)}) == 1:
                keep.append(r.prompt)
        return keep

    train_prompts = usable("train")[:args.train_prompts]
    eval_prompts = usable("test")[:args.eval_prompts]
    rng = random.Random(f"{args.seed}:cycle")
    write_records(out / "train.jsonl", label(world, AnnotatorPool(world, "condorcet", seed=args.seed), train_prompts,
                                             demo, rng, args.all_pairs))
    write_records(out / "eval.jsonl", label(world, AnnotatorPool(world, "condorcet", seed=args.seed + 1),
                                            eval_prompts, demo, rng))

    # --- the scalar reward model, by the reward stage ---
    rm_dir = out / "reward"
    cfg = load_config(RewardConfig, "configs/world/reward.yaml", [
        f"model.init={args.sft}", f"data.train={out / 'train.jsonl'}", f"data.eval={out / 'eval.jsonl'}",
        f"out={rm_dir}", "reward.gold_eval=null", "reward.length_probe=null", "reward.normalize_on=null",
        "reward.kinds=[comparison]", "reward.epochs=null", f"train.max_steps={args.rm_steps}",
        "train.max_minutes=null", f"train.lr={args.lr}", f"runtime.threads={args.threads}", "runtime.progress=false",
        "train.eval_every=0", "train.save_every=0", f"seed={args.seed}"])  # a finished RM is reused
    reward_stage.run(cfg)
    rm_eval = json.loads((rm_dir / "eval.json").read_text())

    # --- the preference model, same labels, same backbone ---
    pm_dir = out / "preference"
    pm, pm_tok = init_from_causal_lm(args.sft, n_heads=1, head_names=["preference"], seed=args.seed)
    t_pm = time.perf_counter()
    losses = fit_preference_model(pm, pm_tok, preference_examples(read_records(out / "train.jsonl")),
                                  steps=args.pm_steps, lr=args.pm_lr, batch_size=16, max_len=256, seed=args.seed,
                                  warmup_steps=min(30, args.pm_steps // 5))
    t_pm = time.perf_counter() - t_pm
    save_scorer(pm, pm_tok, pm_dir)
    pm.eval()
    pm_acc = preference_accuracy(pm, pm_tok, preference_examples(read_records(out / "eval.jsonl")), max_len=256)

    # --- the three directions on held-out prompts ---
    rm, rm_tok = load_scorer(rm_dir)
    rm.eval()
    bases = [demo(p) for p in eval_prompts]
    styled = [[restyle(b, k) for b in bases] for k in range(3)]
    with torch.no_grad():
        r = [reward_stage.score_texts(rm, rm_tok, list(zip(eval_prompts, styled[k])), 192, 64)[:, 0] for k in range(3)]
    check_pool = AnnotatorPool(world, "condorcet", seed=args.seed + 2)
    rows = []
    P = [[0.5] * 3 for _ in range(3)]
    for i, j in cycle_pairs():
        p_pm = preference_probs(pm, pm_tok, eval_prompts, styled[i], styled[j], max_len=256, batch_size=64)
        P[i][j], P[j][i] = float(p_pm.mean()), 1 - float(p_pm.mean())
        crng = random.Random(f"{args.seed}:check:{i}{j}")
        pool_wins = 0
        for p, a, b in zip(eval_prompts, styled[i], styled[j]):
            x, y = (a, b) if crng.random() < 0.5 else (b, a)
            pool_wins += style_of(check_pool.compare(p, x, y).chosen) == i
        rows.append({"pair": f"s{i} ≻ s{j}", "pool": pool_wins / len(eval_prompts),
                     "rm_share": float((r[i] > r[j]).float().mean()),
                     "rm_p": float(torch.sigmoid(r[i] - r[j]).mean()),
                     "pm_p": float(p_pm.mean()), "pm_share": float((p_pm > 0.5).float().mean())})
    r_mean = [float(x.mean()) for x in r]

    # --- what each objective does with them (tabular, exact) ---
    uniform = [1 / 3] * 3
    skewed = [0.8, 0.15, 0.05]
    games = {
        "rlhf_beta0.05": reward_maximiser(r_mean, 0.05),
        "rlhf_beta0.2": reward_maximiser(r_mean, 0.2),
        "nash_md_from_uniform": nash_md(P, uniform, uniform, eta=1.0, beta=0.1, steps=200)[-1],
        "nash_md_from_skewed": nash_md(P, skewed, uniform, eta=1.0, beta=0.1, steps=200)[-1],
        "nash_md_ref_skewed": nash_md(P, skewed, skewed, eta=1.0, beta=0.1, steps=200)[-1],
    }
    result = {"train_pairs": len(read_records(out / "train.jsonl")), "all_pairs": args.all_pairs, "eval_prompts": len(eval_prompts), "seed": args.seed,
              "rm_steps": args.rm_steps, "pm_steps": args.pm_steps, "lr": args.lr, "pm_lr": args.pm_lr,
              "rm_eval_accuracy": rm_eval.get("eval_accuracy"), "pm_eval_accuracy": pm_acc["accuracy"], "pm_loss_first": sum(losses[:10]) / 10,
              "pm_loss_last": sum(losses[-10:]) / 10, "pm_fit_s": t_pm, "directions": rows,
              "rm_mean_score": r_mean, "pm_matrix": P, "policies": games,
              "seconds": time.perf_counter() - t0}
    (out / "cycle.json").write_text(json.dumps(result, indent=1))
    print(markdown(result))
    return 0


def markdown(res: dict) -> str:
    head = (f"Condorcet pool, {res['train_pairs']} training labels ({'all three style pairs' if res.get('all_pairs') else 'one'} per prompt), {res['eval_prompts']} held-out "
            f"prompts, seed {res['seed']}; RM (`alignforge reward`) {res['rm_steps']} steps at lr {res['lr']:g}, "
            f"held-out label accuracy {res['rm_eval_accuracy']:.3f}; preference model {res['pm_steps']} steps at lr "
            f"{res['pm_lr']:g}, held-out label accuracy {res['pm_eval_accuracy']:.3f}; both on the SFT backbone "
            f"({res['seconds'] / 60:.0f} min in all).")
    cols = ("| direction | pool majority | RM: share r(sᵢ) > r(sⱼ) | RM: mean σ(rᵢ − rⱼ) | PM: mean P(sᵢ ≻ sⱼ) | "
            "PM: share P > ½ |")
    lines = [head, "", cols, "|---|---|---|---|---|---|"]
    for r in res["directions"]:
        lines.append(f"| {r['pair']} | {r['pool']:.3f} | {r['rm_share']:.3f} | {r['rm_p']:.3f} | {r['pm_p']:.3f} | "
                     f"{r['pm_share']:.3f} |")
    ok_rm = sum(r["rm_p"] > 0.5 for r in res["directions"])
    ok_pm = sum(r["pm_p"] > 0.5 for r in res["directions"])
    lines += ["", f"Directions right (mean probability > ½): RM {ok_rm}/3, preference model {ok_pm}/3. RM mean "
              f"score per style: " + ", ".join(f"s{k} {v:+.3f}" for k, v in enumerate(res["rm_mean_score"])) + ".",
              "", "| policy (tabular, exact updates) | π(s0) | π(s1) | π(s2) |", "|---|---|---|---|"]
    names = {"rlhf_beta0.05": "reward maximiser on the RM, β = 0.05 (softmax(r̄/β))",
             "rlhf_beta0.2": "reward maximiser on the RM, β = 0.2",
             "nash_md_from_uniform": "Nash-MD on P̄ (η = 1, β = 0.1, 200 steps), π₀ = π_ref = uniform",
             "nash_md_from_skewed": "Nash-MD on P̄, π₀ = (0.8, 0.15, 0.05), π_ref = uniform",
             "nash_md_ref_skewed": "Nash-MD on P̄, π₀ = π_ref = (0.8, 0.15, 0.05)"}
    for k, pi in res["policies"].items():
        lines.append(f"| {names[k]} | {pi[0]:.3f} | {pi[1]:.3f} | {pi[2]:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
