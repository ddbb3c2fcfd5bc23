"""How often a file of pairwise labels agrees with the gold judge (RLAIF: AI labels vs human labels).

:func:`gold_agreement` takes comparison records (an AI judge's ``alignforge rlaif`` output, a
simulated pool's ``collect`` output, exported human labels) and scores every pair with the world's
gold judge. Only pairs whose gold rewards differ count (a gold tie has no right answer); a label
agrees when its ``chosen`` has the higher gold reward, and a tie label counts ½, as in win-rates.
With ``pool`` the simulated annotator pool labels the *same* pairs too, so the two agreements are
measured on identical pairs. Evaluation-only: it reads the gold judge (design §8).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from alignforge.data.records import Comparison
from alignforge.eval.metrics import bootstrap_ci


def gold_agreement(comparisons: Sequence[Comparison], world, *, pool: str | None = None, seed: int = 0,
                   n_boot: int = 2000) -> dict[str, Any]:
    """Agreement with gold overall (95% bootstrap CI over pairs), by category, by ``meta.principle``,
    by label strength, by ``meta.pair_source``:strength (see :func:`preference_pairs`); ``ties`` =
    share of tie labels; ``pool_agreement`` on the same pairs."""
    from alignforge.world.judge import judge

    annotators = None
    if pool is not None:
        from alignforge.world.annotators import AnnotatorPool

        annotators = AnnotatorPool(world, pool, seed=seed)
    scores: list[float] = []
    pool_scores: list[float] = []
    groups: dict[str, dict[str, list[float]]] = {"by_category": {}, "by_principle": {}, "by_strength": {},
                                                  "by_source": {}}
    skipped = ties = 0
    skipped_by_source: dict[str, int] = {}
    for c in comparisons:
        source = (c.meta or {}).get("pair_source", "comparison")
        g_chosen = judge(c.prompt, c.chosen, world).reward
        g_rejected = judge(c.prompt, c.rejected, world).reward
        if g_chosen == g_rejected:
            skipped += 1
            skipped_by_source[source] = skipped_by_source.get(source, 0) + 1
            continue
        s = 0.5 if c.tie else float(g_chosen > g_rejected)
        ties += c.tie
        scores.append(s)
        keys = {"by_category": c.category or "?", "by_principle": (c.meta or {}).get("principle", "?"),
                "by_strength": "tie" if c.tie else str(c.strength), "by_source": f"{source}:{c.strength}"}
        for group, key in keys.items():
            groups[group].setdefault(key, []).append(s)
        if annotators is not None:
            label = annotators.compare(c.prompt, c.chosen, c.rejected)
            better = c.chosen if g_chosen > g_rejected else c.rejected
            pool_scores.append(0.5 if label.tie else float(label.chosen == better))
    out: dict[str, Any] = {"pairs": len(scores), "gold_ties_skipped": skipped, "gold_ties_by_source": skipped_by_source,
                           "agreement": bootstrap_ci(scores, n_boot=n_boot, seed=seed).as_dict() if scores else None,
                           "tie_share": ties / max(len(scores), 1)}
    for group, rows in groups.items():
        out[group] = {k: {"n": len(v), "agreement": sum(v) / len(v)} for k, v in sorted(rows.items())}
    if annotators is not None:
        out["pool"] = pool
        out["pool_agreement"] = bootstrap_ci(pool_scores, n_boot=n_boot, seed=seed).as_dict() if pool_scores else None
    return out


def preference_pairs(records) -> list[Comparison]:
    """Every training pair that comparison, ranking and rating records imply (as DPO and the reward
    model expand them), as comparisons tagged ``meta.pair_source`` = comparison / ranking / rating."""
    from alignforge.data.preferences import expand_preferences

    return [Comparison(prompt=p.prompt, chosen=p.chosen, rejected=p.rejected, strength=p.strength,
                       meta={"pair_source": p.source}) for p in expand_preferences(records, use_ratings=True)]


def pool_labels(comparisons: Sequence[Comparison], world, pool: str = "default", seed: int = 0) -> list[Comparison]:
    """The simulated annotator pool's labels of the *same* pairs (the same label budget as an AI-labelled
    file, pair for pair): what `collect` would have written for them. Measurement only."""
    from alignforge.world.annotators import AnnotatorPool

    annotators = AnnotatorPool(world, pool, seed=seed)
    out = []
    for c in comparisons:
        label = annotators.compare(c.prompt, c.chosen, c.rejected)
        label.category, label.round, label.policy, label.sampling = c.category, c.round, c.policy, c.sampling
        out.append(label)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m alignforge.eval.agreement LABELS.jsonl WORLD_DIR [--pool default] [--out F]
    [--pool-labels OUT.jsonl] [--all-kinds]`` (--pool-labels: write the pool's labels of the same
    pairs; --all-kinds: also the pairs implied by rankings and ratings, grouped in ``by_source``)."""
    import argparse
    import json

    from alignforge.data.records import read_records
    from alignforge.io import atomic_write_text
    from alignforge.world.core import build_world, load_world_config

    ap = argparse.ArgumentParser(prog="python -m alignforge.eval.agreement")
    ap.add_argument("labels")
    ap.add_argument("world")
    ap.add_argument("--pool", default=None, help="also label the same pairs with this simulated pool")
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    ap.add_argument("--pool-labels", default=None, help="write the --pool's labels of the same pairs here (JSONL)")
    ap.add_argument("--all-kinds", action="store_true", help="every pair that comparisons, rankings and ratings "
                                                              "imply (as DPO / the reward model see them)")
    args = ap.parse_args(argv)
    world = build_world(load_world_config(args.world), corpus=False, demos=False)
    if args.all_kinds:
        recs = preference_pairs(read_records(args.labels))
    else:
        recs = [r for r in read_records(args.labels) if isinstance(r, Comparison)]
    if args.pool_labels:
        from alignforge.data.records import write_records

        write_records(args.pool_labels, pool_labels(recs, world, args.pool or "default"))
    res = gold_agreement(recs, world, pool=args.pool)
    text = json.dumps(res, indent=1)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
