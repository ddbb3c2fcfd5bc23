"""``alignforge rlaif``: an AI judge, guided by a written constitution, labels response pairs (RLAIF).

The stand-in for human labellers in Constitutional AI's RL phase (Bai et al. 2022, §4): instead of
annotators, a feedback model is asked "which response is better under principle P?" for each pair,
in both presentation orders (:mod:`alignforge.aifeedback.judge`), and its verdicts become the same
comparison records `collect` writes — so `alignforge reward` and `alignforge dpo` read them unchanged.

Read top to bottom:

1. **Inputs** (``data.train``; every record of ``data.eval`` goes to the eval split):
   ``candidates`` records (what ``collect`` writes: prompt + K responses; those it marked
   ``meta.split: eval`` go to the eval split), ``comparison`` records (their pair is relabelled,
   the old label ignored) or ``prompt`` records (K responses sampled from ``model.init`` with the
   one sampling engine). Anything else is an error naming the file and line.
2. **Pairs**: per record, ``rlaif.pairs_per_prompt`` distinct response pairs drawn at random; per
   pair the principle(s): one drawn at random (``per_pair: sample``), each (``all``: one label per
   principle) or their mean (``ensemble``). Every draw is seeded by (seed, split, record index), so
   the labels do not depend on chunking or on the number of processes.
3. **Judge** every pair in both orders, in one batched judge call per chunk. A pair whose orders
   disagree is a tie (``tie: true``, position-inconsistent); an unparsable endpoint answer
   abstains (no record, counted).
4. **Chunks = exact resume**: records are processed ``rlaif.chunk_prompts`` at a time and each
   finished chunk is saved atomically under ``parts/``; a killed run, rerun, skips the saved chunks
   and ends with the same files. Under torchrun the chunks are dealt round-robin to the processes;
   rank 0 gathers them in order, so 2 processes write what 1 does.

Outputs in ``out``: ``train.jsonl`` and ``eval.jsonl`` (comparisons: ``annotator="ai:<judge>"``,
``source="rlaif"``, ``meta.principle``, ``meta.p`` = P(chosen ≻ rejected), ``meta.consistent``,
plus ``policy``/``round``/``sampling`` provenance), ``candidates.jsonl`` (when sampled),
``summary.json`` (pairs asked, labels, consistent, ties, abstained — overall, per principle, per
split), ``config.yaml``, ``DONE``. The gold judge is never read here: agreement with gold is
measured by :func:`alignforge.eval.agreement.gold_agreement` on the written files.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alignforge.aifeedback.judge import (
    Judge,
    PairQuestion,
    judge_pairs,
    load_judge,
    to_comparison,
)
from alignforge.cli import run_stage
from alignforge.config import ConfigError, RlaifConfig, save_config, to_dict
from alignforge.aifeedback.constitution import Principle, load_constitution
from alignforge.data.records import (
    Candidates,
    Comparison,
    PromptRecord,
    Record,
    RecordError,
    iter_raw,
    parse_record,
)
from alignforge.io import atomic_write_text
from alignforge.train import checkpoint as ckpt
from alignforge.train import distributed as dist
from alignforge.train.loop import start_stage

KINDS = ("candidates", "comparison", "prompt")
PARTS = "parts"


@dataclass
class Item:
    """One input record and where it came from (its global index seeds its draws)."""

    index: int
    split: str
    record: Record


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def read_items(path: str, split: str | None, on_bad: str, stats: dict) -> list[tuple[str, Record]]:
    """(split, record) for each candidates / comparison / prompt record of ``path``.

    ``split=None``: train, except candidates that ``collect`` marked ``meta.split: eval``.
    Malformed lines raise :class:`RecordError` with the file and line (``on_bad=skip``: counted).
    """
    out = []
    for line, obj in iter_raw(path, bad_json="yield" if on_bad == "skip" else "raise"):
        try:
            if isinstance(obj, RecordError):
                raise obj
            rec = parse_record(obj)
            if rec.kind not in KINDS:
                raise RecordError(f"a {rec.kind} record; rlaif labels {', '.join(KINDS)} records")
        except RecordError as e:
            err = RecordError(e.reason, path=str(path), line=line, field=e.field) if e.line is None else e
            if on_bad != "skip":
                raise err from None
            stats["bad_records"] = stats.get("bad_records", 0) + 1
            continue
        s = split or ("eval" if isinstance(rec, Candidates) and (rec.meta or {}).get("split") == "eval" else "train")
        out.append((s, rec))
    return out


def gather_items(cfg: RlaifConfig, stats: dict) -> list[Item]:
    r = cfg.rlaif
    rows = read_items(cfg.data.train, None, cfg.data.on_bad_record, stats)
    if cfg.data.eval:
        rows += read_items(cfg.data.eval, "eval", cfg.data.on_bad_record, stats)
    if not rows:
        raise RecordError(f"no candidates, comparison or prompt records found (expected one of {', '.join(KINDS)})",
                          path=str(cfg.data.train))
    limit = {"train": r.prompts, "eval": r.eval_prompts}
    kept: dict[str, list[Record]] = {"train": [], "eval": []}
    for s, rec in rows:
        if limit[s] is None or len(kept[s]) < limit[s]:
            kept[s].append(rec)
    return [Item(i, s, rec) for s in ("train", "eval") for i, rec in enumerate(kept[s])]


def choose_principles(cfg: RlaifConfig) -> list[Principle]:
    constitution = load_constitution(cfg.rlaif.constitution)
    try:
        return [constitution.get(n) for n in cfg.rlaif.principles] or list(constitution.principles)
    except KeyError as e:
        raise ConfigError(f"config key 'rlaif.principles': {e.args[0]}") from None


# ---------------------------------------------------------------------------------------------
# Sampling (prompt records only)
# ---------------------------------------------------------------------------------------------


def sample_responses(model, tok, prompts: Sequence[Any], cfg: RlaifConfig, seed: int) -> list[list[str]]:
    """K responses per prompt from the policy, one engine call per ``rlaif.batch_size`` prompts."""
    from alignforge.data.batching import encode_prompt, pad_id_of
    from alignforge.generation import SamplingParams, generate

    s, k = cfg.sampling, cfg.rlaif.k
    params = SamplingParams(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, max_new_tokens=s.max_new_tokens)
    room = (getattr(model.config, "max_position_embeddings", None) or 1024) - s.max_new_tokens
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    out: list[list[str]] = []
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(prompts), cfg.rlaif.batch_size):
            chunk = prompts[start:start + cfg.rlaif.batch_size]
            ids = [encode_prompt(tok, p, room) for p in chunk for _ in range(k)]
            gen = generate(model, ids, params, eos_token_id=tok.eos_token_id, pad_token_id=pad_id_of(tok),
                           tokenizer=tok, generator=generator)
            texts = [t.strip() for t in gen.texts or []]
            out.extend(texts[i * k:(i + 1) * k] for i in range(len(chunk)))
    return out


# ---------------------------------------------------------------------------------------------
# Pairs and labels
# ---------------------------------------------------------------------------------------------


def pair_questions(item: Item, responses: list[str], principles: list[Principle], cfg: RlaifConfig,
                   stats: dict) -> list[tuple[PairQuestion, str]]:
    """(question, principle label) for the pairs of one record, drawn by its own seeded RNG."""
    rng = random.Random(f"{cfg.seed}:rlaif:{item.split}:{item.index}")
    texts = list(dict.fromkeys(t for t in responses if t.strip()))
    if isinstance(item.record, Comparison):
        pairs = [(0, 1)] if len(texts) == 2 else []
    else:
        pairs = [(i, j) for i in range(len(texts)) for j in range(i + 1, len(texts))]
        pairs = rng.sample(pairs, min(cfg.rlaif.pairs_per_prompt, len(pairs)))
    if not pairs:
        stats["records_with_one_response"] += 1
    out = []
    for i, j in pairs:
        if rng.random() < 0.5:  # which response the judge calls x carries no information
            i, j = j, i
        if cfg.rlaif.per_pair == "sample":
            groups = [[rng.choice(principles)]]
        elif cfg.rlaif.per_pair == "all":
            groups = [[p] for p in principles]
        else:
            groups = [list(principles)]
        for g in groups:
            name = g[0].name if len(g) == 1 else "ensemble"
            meta = {"principles": [p.name for p in g]} if len(g) > 1 else {}
            out.append((PairQuestion(item.record.prompt, texts[i], texts[j], g, meta), name))
    return out


def _count(stats: dict, name: str, split: str, what: str) -> None:
    """One more ``what`` overall, for the principle ``name`` and for the split."""
    for bucket in (stats, stats["by_principle"].setdefault(name, {}), stats["by_split"].setdefault(split, {})):
        bucket[what] = bucket.get(what, 0) + 1


def label_chunk(items: Sequence[Item], judge: Judge, principles: list[Principle], cfg: RlaifConfig,
                policy: tuple | None, chunk_id: int) -> dict:
    """Pairs, verdicts and comparison records of one chunk (a JSON-ready dict, saved as a part)."""
    stats: dict[str, Any] = {"records": len(items), "records_with_one_response": 0, "empty_samples": 0,
                             "by_principle": {}, "by_split": {}}
    candidates: list[dict] = []
    prov_base = {"round": cfg.rlaif.round}
    responses: list[list[str]] = []
    sampled = [it for it in items if isinstance(it.record, PromptRecord)]
    if sampled:
        model, tok = policy
        sampling = {"temperature": cfg.sampling.temperature, "top_k": cfg.sampling.top_k, "top_p": cfg.sampling.top_p,
                    "max_new_tokens": cfg.sampling.max_new_tokens, "seed": cfg.seed}
        # Seeded by (seed, chunk): the same chunk samples the same responses on any rank, any rerun.
        drawn = iter(sample_responses(model, tok, [it.record.prompt for it in sampled], cfg,
                                      cfg.seed * 1_000_003 + chunk_id))
    provenance: list[dict] = []
    owners: list[dict[str, str]] = []  # response text → the policy that wrote it (collect's meta.policies)
    for it in items:
        rec = it.record
        if isinstance(rec, PromptRecord):
            texts = next(drawn)
            stats["empty_samples"] += sum(1 for t in texts if not t)
            prov = {**prov_base, "policy": str(cfg.model.init), "sampling": sampling}
            if any(texts):
                candidates.append(Candidates(prompt=rec.prompt, responses=[t for t in texts if t], id=rec.id,
                                             category=rec.category, meta={"split": it.split}, **prov).to_dict())
        elif isinstance(rec, Comparison):
            texts = [rec.chosen, rec.rejected]
            prov = {**prov_base, **({"policy": rec.policy} if rec.policy else {}),
                    **({"sampling": rec.sampling} if rec.sampling else {})}
        else:
            texts = list(rec.responses)
            prov = {**prov_base, **({"policy": rec.policy} if rec.policy else {}),
                    **({"sampling": rec.sampling} if rec.sampling else {})}
        pols = (rec.meta or {}).get("policies") if isinstance(rec, Candidates) else None
        owners.append(dict(zip(texts, pols)) if isinstance(pols, list) and len(pols) == len(texts) else {})
        responses.append(texts)
        provenance.append(prov)
    questions: list[tuple[PairQuestion, str, Item, dict, dict]] = []
    for it, texts, prov, own in zip(items, responses, provenance, owners):
        questions += [(q, name, it, prov, own) for q, name in pair_questions(it, texts, principles, cfg, stats)]
    verdicts = judge_pairs(judge, [q for q, *_ in questions])
    labels: dict[str, list[dict]] = {"train": [], "eval": []}
    for (q, name, it, prov, own), v in zip(questions, verdicts):
        _count(stats, name, it.split, "pairs")
        if v.abstained:
            _count(stats, name, it.split, "abstained")
            continue
        _count(stats, name, it.split, "labels")
        _count(stats, name, it.split, "consistent" if v.consistent else "ties")
        c = to_comparison(q, v, judge.id, name, id=it.record.id, category=it.record.category, **prov)
        if own:  # which policy wrote each side, as collect records it for mixed candidates
            c.meta["policies"] = [own[c.chosen], own[c.rejected]]
        labels[it.split].append(c.to_dict())
    return {"chunk": chunk_id, "labels": labels, "candidates": candidates, "stats": stats}


def merge_stats(parts: Sequence[dict]) -> dict:
    """Sum the chunks' counters (nested dicts of numbers)."""
    def add(a: dict, b: dict) -> dict:
        for k, v in b.items():
            a[k] = add(a.get(k, {}), v) if isinstance(v, dict) else a.get(k, 0) + v
        return a
    total: dict = {}
    for p in parts:
        add(total, p["stats"])
    return total


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


def _fingerprint(cfg: RlaifConfig) -> dict:
    """What the labels depend on: a rerun with other values must not reuse saved chunks."""
    d = to_dict(cfg)
    return {k: d[k] for k in ("seed", "judge", "model", "data", "sampling", "rlaif")}


def check_config(cfg: RlaifConfig, out: Path) -> None:
    cfg.judge.validate()
    if not cfg.data.train:
        raise ConfigError("rlaif needs data.train: candidates (collect's candidates.jsonl), comparison or prompt records")
    saved = out / "config.yaml"
    if (out / PARTS).is_dir() and saved.is_file():
        import yaml

        before = yaml.safe_load(saved.read_text())
        if {k: before.get(k) for k in _fingerprint(cfg)} != _fingerprint(cfg):
            raise ConfigError(f"{out}: an unfinished labelling run with another config is there (its config.yaml); "
                              "rerun with the same config to resume, or force=true to start over")


def run(cfg: RlaifConfig, judge: Judge | None = None) -> Path:
    """Label the pairs; ``judge`` injects a judge (tests) instead of building ``cfg.judge``."""
    t0 = time.perf_counter()
    out, device, finished = start_stage(cfg, "rlaif", clear_also=(PARTS,))
    if finished:
        return out
    check_config(cfg, out)
    principles = choose_principles(cfg)
    stats0: dict = {}
    items = gather_items(cfg, stats0)
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    dist.barrier()
    if judge is None:
        try:
            judge = load_judge(cfg.judge, device=str(device))
        except FileNotFoundError as e:
            raise ConfigError(f"judge.init={cfg.judge.init}: {e}") from None
    policy = None
    if any(isinstance(it.record, PromptRecord) for it in items):
        if not cfg.model.init:
            raise ConfigError("data.train holds prompt records: rlaif needs model.init, the policy to sample from")
        from alignforge.models.load import load_causal_lm

        try:
            policy = load_causal_lm(cfg.model.init, device=str(device), tokenizer=cfg.model.tokenizer)
        except FileNotFoundError as e:
            raise ConfigError(f"model.init={cfg.model.init}: {e}") from None

    size = cfg.rlaif.chunk_prompts
    chunks = [items[i:i + size] for i in range(0, len(items), size)]
    parts = out / PARTS
    rank, world = dist.rank(), dist.world_size()
    if dist.is_main():
        print(f"rlaif: {len(items)} records ({sum(it.split == 'eval' for it in items)} eval) in {len(chunks)} chunks, "
              f"judge {judge.id}, principles {[p.name for p in principles]} ({cfg.rlaif.per_pair}), "
              f"{world} process(es)")
    asked = 0
    for c, chunk in enumerate(chunks):
        path = parts / f"chunk-{c:05d}.json"
        if c % world != rank or path.exists():
            continue  # another rank's chunk, or saved by an earlier run
        part = label_chunk(chunk, judge, principles, cfg, policy, c)
        atomic_write_text(path, json.dumps(part, ensure_ascii=False) + "\n")
        asked += part["stats"].get("pairs", 0)
        if dist.is_main():
            print(f"rlaif: chunk {c + 1}/{len(chunks)}: {part['stats'].get('labels', 0)} labels "
                  f"({part['stats'].get('ties', 0)} ties, {part['stats'].get('abstained', 0)} abstained)")
    seconds = time.perf_counter() - t0
    dist.barrier()
    if not dist.is_main():
        dist.barrier()  # mark_done's
        return out

    # --- rank 0: gather the parts in chunk order, write the files, the summary, DONE ---
    from alignforge.data.records import write_records

    loaded = [json.loads((parts / f"chunk-{c:05d}.json").read_text()) for c in range(len(chunks))]
    counts = {"train.jsonl": write_records(out / "train.jsonl", [r for p in loaded for r in p["labels"]["train"]]),
              "eval.jsonl": write_records(out / "eval.jsonl", [r for p in loaded for r in p["labels"]["eval"]])}
    cands = [r for p in loaded for r in p["candidates"]]
    if cands:
        counts["candidates.jsonl"] = write_records(out / "candidates.jsonl", cands)
    total = merge_stats(loaded)
    summary = {"judge": judge.id, "per_pair": cfg.rlaif.per_pair, "principles": [p.name for p in principles],
               "constitution": cfg.rlaif.constitution or "alignforge (packaged)", "files": counts,
               **{k: total.get(k, 0) for k in ("records", "pairs", "labels", "consistent", "ties", "abstained",
                                               "records_with_one_response", "empty_samples")},
               "consistent_share": total.get("consistent", 0) / max(total.get("labels", 0), 1),
               "by_principle": total.get("by_principle", {}), "by_split": total.get("by_split", {}),
               "bad_records": stats0.get("bad_records", 0), "truncated_questions": getattr(judge, "truncated", 0),
               "pairs_asked_this_run": asked, "seconds_this_run": seconds,
               "pairs_per_s_this_run": asked / max(seconds, 1e-9)}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    print(f"rlaif: {counts} → {out}; {summary['pairs']} pairs asked, {summary['consistent']} consistent, "
          f"{summary['ties']} ties (position-inconsistent), {summary['abstained']} abstained")
    ckpt.mark_done(out, {k: summary[k] for k in ("pairs", "labels", "consistent", "ties", "abstained")})
    shutil.rmtree(parts, ignore_errors=True)  # the merged files hold everything now
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage("rlaif", RlaifConfig, run, list(argv or []))


if __name__ == "__main__":
    raise SystemExit(main())
