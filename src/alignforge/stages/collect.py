"""``alignforge collect``: sample K responses per prompt from a policy, have simulated annotators label them.

The stand-in for human labellers (the feedback web app exports the same records). Read top to
bottom: prompts (``data.train``; held-out ``data.eval``) → the policy (``model.init``) samples K
responses per prompt with the one sampling engine (:mod:`alignforge.generation`) → optional world
reference policies add one candidate each → the annotator pool (:mod:`alignforge.world.annotators`)
labels them → records in ``out``:

=====================  ========================================================================
``candidates.jsonl``   prompt + the K unlabelled candidates (what an annotator is shown)
``train.jsonl``        training labels: comparisons, rankings and ratings mixed (``collect.labels``)
``eval.jsonl``         held-out *annotator* comparisons on held-out prompts (ties included)
``gold_eval.jsonl``    comparisons of the same held-out candidates labelled by the **gold judge**
                       (pairs whose gold rewards differ; strength from the gold gap)
``length_probe.jsonl`` short right answer (chosen) vs padded wrong answer (rejected), gold-correct
``summary.json``       counts, the pool's agreement with gold on the gold_eval pairs (the noise
                       ceiling a reward model trained on these labels can approach), and the
                       pool's preference for the padded wrong answers
=====================  ========================================================================

Every generated record carries provenance (design §8): ``policy`` (the checkpoint), ``round``,
``sampling`` (temperature / top-k / top-p / max tokens / seed); a candidate from a reference
policy is named in ``meta.policies``. Empty samples cannot be stored as records (an empty response
is malformed, design §3): they are counted in the summary and left out of the candidates.

This stage may read the gold judge (it feeds the annotators and writes the gold pairs); the reward
stage may not (``tests/test_import_boundary.py``) and learns gold accuracy from these files.
Runs on one process; a finished stage (DONE) is not recomputed unless ``force=true``.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Sequence

import torch

from alignforge.cli import run_stage
from alignforge.config import CollectConfig, ConfigError, save_config
from alignforge.data.records import Candidates, Comparison, Prompt, PromptRecord, ReadReport, RecordError
from alignforge.io import atomic_write_text
from alignforge.train import checkpoint as ckpt
from alignforge.train.loop import apply_threads, autocast, resolve_device
from alignforge.train.memcheck import check_memory

LABEL_KINDS = ("comparison", "ranking", "rating")


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def check_config(cfg: CollectConfig) -> None:
    c = cfg.collect
    bad = sorted(set(c.labels) - set(LABEL_KINDS))
    if bad or not c.labels:
        raise ConfigError(f"config key 'collect.labels': expected some of {', '.join(LABEL_KINDS)}, got {c.labels}")
    from alignforge.world.policies import check_reference_names

    check_reference_names(c.reference_policies, "collect.reference_policies")
    if c.k < 1 or c.k + len(c.reference_policies) < 2:
        raise ConfigError(f"config key 'collect.k': need at least 2 candidates per prompt (k={c.k} samples + "
                          f"{len(c.reference_policies)} reference policies)")
    if c.pairs_per_prompt < 0 or c.eval_prompts < 0 or c.batch_size < 1:
        raise ConfigError("config keys 'collect.pairs_per_prompt' and 'collect.eval_prompts' must be >= 0, "
                          "'collect.batch_size' >= 1")
    if not cfg.model.init:
        raise ConfigError("collect needs model.init: the policy (a stage folder such as runs/w/sft, or an HF dir)")
    if not cfg.data.train:
        raise ConfigError("collect needs data.train: prompt records (e.g. a world's prompts_train.jsonl)")


def read_prompts(path: str, cfg: CollectConfig, limit: int | None) -> list[PromptRecord]:
    from alignforge.data.formats import load_dataset_records

    report = ReadReport(str(path))
    records = load_dataset_records(path, format=cfg.data.format, on_bad=cfg.data.on_bad_record, report=report,
                                   kind="prompt", max_records=limit)
    if report.skipped or report.dropped:
        print(f"collect: {report.summary()}")
    if not records:
        raise RecordError("no prompt records found (expected lines with a 'prompt' field)", path=str(path))
    return records  # type: ignore[return-value]


def _beside(path: str, stem: str) -> str | None:
    for ext in (".jsonl", ".jsonl.gz"):
        p = Path(path).parent / f"{stem}{ext}"
        if p.exists():
            return str(p)
    return None


def load_world(cfg: CollectConfig):
    from alignforge.world.core import build_world, load_world_config

    world_dir = cfg.collect.world or str(Path(cfg.data.train).parent)
    # The corpus and demonstrations are not needed to judge or annotate; skipping them is faster.
    return build_world(load_world_config(world_dir), corpus=False, demos=False)


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


def sample_candidates(model, tok, prompts: Sequence[Prompt], cfg: CollectConfig, generator: torch.Generator,
                      stats: dict) -> list[list[str]]:
    """K sampled responses per prompt (one batched engine call per ``batch_size`` prompts)."""
    from alignforge.generation import SamplingParams, generate
    from alignforge.data.batching import encode_prompt, pad_id_of

    s, k = cfg.sampling, cfg.collect.k
    params = SamplingParams(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                            max_new_tokens=s.max_new_tokens)
    max_pos = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", 1024)
    room = max_pos - s.max_new_tokens
    out: list[list[str]] = []
    model.eval()
    for start in range(0, len(prompts), cfg.collect.batch_size):
        chunk = prompts[start:start + cfg.collect.batch_size]
        # Each prompt repeated K times: one engine call samples all K responses of the chunk.
        ids = [encode_prompt(tok, p, room) for p in chunk for _ in range(k)]
        gen = generate(model, ids, params, eos_token_id=tok.eos_token_id, pad_token_id=pad_id_of(tok),
                       tokenizer=tok, generator=generator)
        stats["samples"] += len(ids)
        stats["sampled_tokens"] += int(gen.response_mask.sum())
        stats["truncated_samples"] += sum(r == "length" for r in gen.finish_reason)
        texts = [t.strip() for t in gen.texts or []]
        for i in range(len(chunk)):
            out.append(texts[i * k:(i + 1) * k])
    return out


def with_references(world, prompts: Sequence[Prompt], sampled: list[list[str]], names: Sequence[str],
                    policy_id: str, seed: int, stats: dict) -> list[tuple[list[str], list[str]]]:
    """Per prompt: (candidate texts, the policy of each), empty samples counted and left out."""
    from alignforge.world.policies import reference_policy

    refs = [(f"world:{n}", reference_policy(n, world, seed)) for n in names]
    out = []
    for p, texts in zip(prompts, sampled):
        cands = [(t, policy_id) for t in texts if t]
        stats["empty_samples"] += sum(1 for t in texts if not t)
        cands += [(pol(p).strip(), name) for name, pol in refs]
        out.append(([t for t, _ in cands], [n for _, n in cands]))
    return out


# ---------------------------------------------------------------------------------------------
# Labelling
# ---------------------------------------------------------------------------------------------


def _unique(texts: Sequence[str], policies: Sequence[str]) -> tuple[list[str], list[str]]:
    seen: dict[str, str] = {}
    for t, p in zip(texts, policies):
        seen.setdefault(t, p)
    return list(seen), list(seen.values())


def gold_strength(gap: float, cuts: Sequence[float]) -> int:
    """Strength level 0..3 of a gold-reward gap, with the annotator pool's thresholds."""
    return sum(gap >= c for c in cuts)


def label_prompt(pool, prompt: Prompt, texts: list[str], policies: list[str], kinds: Sequence[str],
                 n_pairs: int, rng: random.Random, prov: dict, stats: dict) -> list:
    """The annotator pool's labels for one prompt's candidates (comparison / ranking / rating)."""
    texts, policies = _unique(texts, policies)
    mixed = len(set(policies)) > 1

    def tag(rec, pols):
        for key, v in prov.items():
            setattr(rec, key, v)
        if mixed:
            rec.meta = {"policies": pols}
        return rec

    out = []
    if len(texts) < 2:
        stats["prompts_with_one_distinct_candidate"] += 1
    else:
        if "comparison" in kinds:
            pairs = [(i, j) for i in range(len(texts)) for j in range(i + 1, len(texts))]
            for i, j in rng.sample(pairs, min(n_pairs, len(pairs))):
                if rng.random() < 0.5:  # which response is shown first carries no information
                    i, j = j, i
                c = pool.compare(prompt, texts[i], texts[j])
                stats["ties"] += c.tie
                pol = {texts[i]: policies[i], texts[j]: policies[j]}
                out.append(tag(c, [pol[c.chosen], pol[c.rejected]]))
        if "ranking" in kinds:
            out.append(tag(pool.rank(prompt, texts), policies))
    if "rating" in kinds:
        out.extend(tag(pool.rate(prompt, t), [p]) for t, p in zip(texts, policies))
    return out


def gold_pairs(world, pool, prompt: Prompt, texts: list[str], cuts: Sequence[float], prov: dict,
               agree: dict, category: str | None = None) -> list[Comparison]:
    """Every distinct candidate pair with different gold rewards, labelled by the gold judge; each is also
    labelled by one random annotator of the pool to measure its agreement with gold on the same pairs."""
    from alignforge.world.judge import judge

    texts = list(dict.fromkeys(texts))
    gold = [judge(prompt, t, world).reward for t in texts]
    out = []
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            if gold[i] == gold[j]:
                continue  # a gold tie has no right answer
            hi, lo = (i, j) if gold[i] > gold[j] else (j, i)
            s = gold_strength(abs(gold[i] - gold[j]), cuts)
            out.append(Comparison(prompt=prompt, chosen=texts[hi], rejected=texts[lo], strength=s,
                                  source="world-gold", category=category, meta={"gold": [gold[hi], gold[lo]]},
                                  **prov))
            label = pool.compare(prompt, texts[i], texts[j])
            right = (not label.tie) and label.chosen == texts[hi]
            agree["pairs"] += 1
            agree["agree"] += right + 0.5 * label.tie  # a tie is half right, as in win-rates
            by = agree["by_strength"].setdefault(str(s), [0, 0.0])
            by[0] += 1
            by[1] += right + 0.5 * label.tie
    return out


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


def run(cfg: CollectConfig) -> Path:
    from alignforge.data.records import write_records
    from alignforge.models.load import load_causal_lm
    from alignforge.world.annotators import AnnotatorPool, padded_wrong_pairs

    out = cfg.out_dir()
    if ckpt.is_done(out) and not cfg.force:
        print(f"collect: {out} is finished (DONE); set force=true to recompute")
        return out
    check_config(cfg)
    apply_threads(cfg.runtime)
    device = resolve_device(cfg.runtime)
    c = cfg.collect
    t0 = time.perf_counter()

    limit = c.prompts if c.prompts is not None else cfg.data.max_records
    train_prompts = read_prompts(cfg.data.train, cfg, limit)
    eval_path = cfg.data.eval or _beside(cfg.data.train, "prompts_test")
    eval_prompts = read_prompts(eval_path, cfg, c.eval_prompts) if eval_path and c.eval_prompts else []
    # The memory estimate (with the longest prompt) against the device; refused here, before loading.
    check_memory(cfg, device, prompts=[r.prompt for r in list(train_prompts) + list(eval_prompts)])
    world = load_world(cfg)
    try:
        model, tok = load_causal_lm(cfg.model.init, device=str(device), tokenizer=cfg.model.tokenizer)
    except FileNotFoundError as e:
        raise ConfigError(f"model.init={cfg.model.init}: {e}") from None
    policy_id = str(cfg.model.init)
    sampling = {"temperature": cfg.sampling.temperature, "top_k": cfg.sampling.top_k, "top_p": cfg.sampling.top_p,
                "max_new_tokens": cfg.sampling.max_new_tokens, "seed": cfg.seed}
    prov = {"policy": policy_id, "round": c.round, "sampling": sampling}
    stats = {k: 0 for k in ("samples", "sampled_tokens", "truncated_samples", "empty_samples", "ties",
                            "duplicate_candidates", "prompts_with_one_distinct_candidate")}
    print(f"collect: {len(train_prompts)} train + {len(eval_prompts)} eval prompts × K={c.k} samples"
          f"{' + ' + ', '.join(c.reference_policies) if c.reference_policies else ''} from {policy_id} "
          f"(T={cfg.sampling.temperature}, top_p={cfg.sampling.top_p}); pool {c.pool!r}")

    # --- sample: train and eval prompts in one pass of the engine ---
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    prompts = [r.prompt for r in train_prompts] + [r.prompt for r in eval_prompts]
    t_sample = time.perf_counter()
    with torch.no_grad(), autocast(cfg.runtime, device):
        sampled = sample_candidates(model, tok, prompts, cfg, generator, stats)
    sample_s = time.perf_counter() - t_sample
    cands = with_references(world, prompts, sampled, c.reference_policies, policy_id, cfg.seed, stats)
    stats["duplicate_candidates"] = sum(len(t) - len(set(t)) for t, _ in cands)

    # --- label: one pool for training labels, one (another seed stream) for held-out labels ---
    pool = AnnotatorPool(world, c.pool, seed=cfg.seed)
    eval_pool = AnnotatorPool(world, c.pool, seed=cfg.seed + 1)
    rng = random.Random(f"{cfg.seed}:collect")
    candidates, train, held, gold = [], [], [], []
    agree = {"pairs": 0, "agree": 0.0, "by_strength": {}}
    n_train = len(train_prompts)
    for idx, (rec, (texts, pols)) in enumerate(zip(list(train_prompts) + list(eval_prompts), cands)):
        is_eval = idx >= n_train
        if texts:
            candidates.append(Candidates(prompt=rec.prompt, responses=texts, id=rec.id, category=rec.category,
                                         meta={"split": "eval" if is_eval else "train",
                                               **({"policies": pols} if len(set(pols)) > 1 else {})}, **prov))
        if not is_eval:
            train.extend(label_prompt(pool, rec.prompt, texts, pols, c.labels, c.pairs_per_prompt, rng, prov, stats))
        else:
            held.extend(label_prompt(eval_pool, rec.prompt, texts, pols, ["comparison"], c.pairs_per_prompt, rng,
                                     prov, stats))
            gold.extend(gold_pairs(world, eval_pool, rec.prompt, texts, pool.cfg.strength_cuts, prov, agree,
                                   rec.category))
    probe = [Comparison(prompt=p, chosen=right, rejected=wrong, strength=3, source="world-length-probe", round=c.round)
             for p, right, wrong in padded_wrong_pairs(world, [r.prompt for r in eval_prompts],
                                                       c.length_probe_pad_words, cfg.seed)]
    prefers_padded = sum(eval_pool.compare(p.prompt, p.chosen, p.rejected).chosen == p.rejected for p in probe)

    # --- write (each file atomically), then the summary and DONE ---
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    counts = {name: write_records(out / name, recs) for name, recs in (
        ("candidates.jsonl", candidates), ("train.jsonl", train), ("eval.jsonl", held),
        ("gold_eval.jsonl", gold), ("length_probe.jsonl", probe))}
    kinds: dict[str, int] = {}
    for r in train:
        kinds[r.kind] = kinds.get(r.kind, 0) + 1
    summary = {
        "policy": policy_id, "round": c.round, "pool": c.pool, "files": counts, "train_labels": kinds, **stats,
        "samples_per_s": stats["samples"] / max(sample_s, 1e-9),
        "sampled_tokens_per_s": stats["sampled_tokens"] / max(sample_s, 1e-9),
        "annotator_gold_agreement": agree["agree"] / max(agree["pairs"], 1),
        "annotator_gold_agreement_by_strength": {k: v[1] / v[0] for k, v in sorted(agree["by_strength"].items())},
        "gold_pairs": agree["pairs"],
        "annotator_prefers_padded_wrong": prefers_padded / max(len(probe), 1),
        "seconds": time.perf_counter() - t0,
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    print(f"collect: {counts} → {out}; pool agrees with gold on {summary['annotator_gold_agreement']:.1%} of "
          f"{agree['pairs']} gold pairs, prefers the padded wrong answer {summary['annotator_prefers_padded_wrong']:.1%}; "
          f"{stats['empty_samples']} empty samples left out; {summary['samples_per_s']:.1f} samples/s")
    ckpt.mark_done(out, summary)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage("collect", CollectConfig, run, list(argv or []))


if __name__ == "__main__":
    raise SystemExit(main())
