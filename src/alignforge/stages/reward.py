"""``alignforge reward``: a reward model from preference records (InstructGPT / Llama-2 style).

Read top to bottom: records (comparisons, rankings, ratings; ours or HH-RLHF/UltraFeedback/OASST
through :mod:`alignforge.data.formats`) → training *items* (below) → token ids
(:func:`alignforge.data.batching.encode_pair`: chosen and rejected share the identical prompt ids)
→ a causal-LM backbone with a fresh scalar head per ``reward.heads`` (an HF
``AutoModelForSequenceClassification``, :mod:`alignforge.models.heads`) → the loop (chosen and
rejected rows of a micro-batch in **one** forward; gradient accumulation, clipping, schedule,
checkpoints + exact resume, DDP) → normalisation on reference-policy samples → final metrics →
``model/`` + ``eval.json`` + ``DONE``.

Items and losses (the math, and when to use which option, is in ``docs/reward.md``):

* a **pair** (prompt, y_w, y_l) with weight w and margin m: ``w · −log σ(r(x,y_w) − r(x,y_l) − m)``
  (:func:`alignforge.losses.bradley_terry_loss`); m comes from the comparison's strength level
  through ``reward.margins`` (Llama-2; off by default);
* a K-way **ranking** gives its C(K,2) pairs weight 1/C(K,2) each, so every prompt counts once
  (InstructGPT) — ``reward.ranking_weight=per_pair`` gives each pair weight 1 instead;
* **Likert ratings** of responses to one prompt become pairs (equal ratings are ties: dropped and
  counted), or, with ``reward.ratings=regression``, *points* with loss ``(r(x,y) − (likert − 4))²``;
* the loss of an optimizer step is Σ w·ℓ over all its items divided by Σ w (all micro-batches, all
  ranks), so a ranking's pairs never outweigh a comparison because of how batches fell.

**Several heads** (``reward.heads: [helpful, honest, harmless]``): overall preferences train the
*combined* reward ``Σ_h c_h r_h`` (``reward.combine``), and each head is also trained from the
ratings' axis of its name (pairs or regression). The safety gate (Llama-2) is applied when scoring:
``R = r_safety`` if ``r_safety < threshold`` else the combination. Weights, gate and the
normalisation are stored in the saved model's ``config.json`` (``reward_combine``,
``reward_safety_head``, ``reward_safety_threshold``, ``reward_mean``/``reward_std``), and
:func:`alignforge.models.scoring.reward_from_scores` applies them, so a saved reward model needs nothing but
its directory (scoring texts with it: :mod:`alignforge.models.scoring`).

**Normalisation**: after training, the mean score of reference-policy samples
(``reward.normalize_on``, e.g. collect's ``candidates.jsonl``; default the training responses) is
stored as ``reward_mean`` so those samples score 0 on average (PPO's reward scale).

This module must not import the gold judge (``tests/test_import_boundary.py``): gold accuracy is
measured on gold-labelled comparisons that ``collect`` wrote (``reward.gold_eval``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alignforge.cli import run_stage
from alignforge.config import ConfigError, RewardConfig, save_config
from alignforge.data.batching import EncodeStats, encode_example, encode_pair, pad_id_of
from alignforge.data.preferences import (
    PairStats,
    _prompt_key,
    expand_preferences,
    margins_for,
)
from alignforge.data.records import Prompt, Rating, ReadReport, Record, RecordError
from alignforge.io import atomic_write_text
from alignforge.losses import bradley_terry_loss, regression_loss
from alignforge.models.heads import _base, sequence_scores, set_reward_normalization
from alignforge.models.load import matmul_params, prepare_for_training
from alignforge.models.scoring import collate_rows, reward_from_scores, score_texts
from alignforge.perf import Throughput, measure_matmul_peak
from alignforge.train import checkpoint as ckpt
from alignforge.train import distributed as dist
from alignforge.train.loop import (
    EpochSampler,
    StageClock,
    autocast,
    compute_dtype,
    make_optimizer,
    make_scheduler,
    optimizer_step,
    seed_everything,
    start_stage,
)
from alignforge.train.loop import out_of_time as stage_out_of_time
from alignforge.train.tracking import MetricsLogger

AXES = ("helpful", "honest", "harmless")
KINDS = ("comparison", "ranking", "rating")


# ---------------------------------------------------------------------------------------------
# Records → items
# ---------------------------------------------------------------------------------------------


@dataclass
class Item:
    """One training/eval unit: a pair (``rejected`` set) or a regression point (``rejected`` None).
    ``head`` None trains the combined reward; an index trains that head alone."""

    prompt: Prompt
    chosen: str
    rejected: str | None
    head: int | None = None
    weight: float = 1.0
    margin: float = 0.0
    target: float = 0.0
    strength: int | None = None


def check_config(cfg: RewardConfig) -> None:
    r = cfg.reward
    if not r.heads or len(set(r.heads)) != len(r.heads):
        raise ConfigError(f"config key 'reward.heads': expected distinct head names, got {r.heads}")
    if len(r.heads) > 1 and set(r.heads) - set(AXES):
        raise ConfigError(f"config key 'reward.heads': several heads are trained from the ratings' axes of the "
                          f"same name, so each must be one of {', '.join(AXES)}; got {r.heads}")
    if set(r.combine) - set(r.heads) or any(not math.isfinite(w) for w in r.combine.values()):
        raise ConfigError(f"config key 'reward.combine': expected finite weights of heads {r.heads}, got {r.combine}")
    if r.safety_head is not None and r.safety_head not in r.heads:
        raise ConfigError(f"config key 'reward.safety_head': {r.safety_head!r} is not one of reward.heads {r.heads}")
    if not r.kinds or set(r.kinds) - set(KINDS):
        raise ConfigError(f"config key 'reward.kinds': expected some of {', '.join(KINDS)}, got {r.kinds}")
    if not 0 <= r.min_strength <= 3:
        raise ConfigError(f"config key 'reward.min_strength': expected 0..3, got {r.min_strength}")
    if r.margins is not None and len(r.margins) != 4:
        raise ConfigError(f"config key 'reward.margins': expected 4 margins (strength 0..3), got {r.margins}")
    if not 0.0 <= r.label_smoothing < 0.5:
        raise ConfigError(f"config key 'reward.label_smoothing': expected 0 <= ε < 0.5, got {r.label_smoothing}")
    if not 0.0 <= r.eval_fraction < 1.0:
        raise ConfigError(f"config key 'reward.eval_fraction': expected 0 <= x < 1, got {r.eval_fraction}")


def combine_weights(cfg: RewardConfig) -> list[float]:
    heads, given = cfg.reward.heads, cfg.reward.combine
    if not given:
        return [1.0 / len(heads)] * len(heads)
    return [float(given.get(h, 0.0)) for h in heads]


def build_items(records: Sequence[Record], cfg: RewardConfig, stats: dict[str, Any]) -> list[Item]:
    """Items per the reward config (see the module doc); what is left out is counted in ``stats``."""
    r = cfg.reward
    kept = [rec for rec in records if rec.kind in r.kinds]
    stats["records_not_used"] = stats.get("records_not_used", 0) + len(records) - len(kept)
    pstats = PairStats()
    use_rating_pairs = r.ratings == "pairs"
    pairs = expand_preferences([x for x in kept if x.kind != "rating" or use_rating_pairs], pstats,
                               min_strength=r.min_strength)
    items = [Item(p.prompt, p.chosen, p.rejected, None, p.weight if r.ranking_weight == "per_prompt" else 1.0,
                  m, strength=p.strength) for p, m in zip(pairs, margins_for(pairs, r.margins))]
    ratings = [x for x in kept if isinstance(x, Rating)]
    if r.ratings == "regression":
        items += [Item(x.prompt, x.response, None, target=x.likert - 4.0) for x in ratings]
    for h, axis in enumerate(r.heads if len(r.heads) > 1 else []):
        rated = [dataclasses.replace(x, likert=getattr(x, axis)) for x in ratings if getattr(x, axis) is not None]
        stats[f"ratings_without_{axis}"] = stats.get(f"ratings_without_{axis}", 0) + len(ratings) - len(rated)
        if r.ratings == "regression":
            items += [Item(x.prompt, x.response, None, head=h, target=x.likert - 4.0) for x in rated]
        else:
            ax = PairStats()
            ap = expand_preferences(rated, ax, min_strength=r.min_strength)
            items += [Item(p.prompt, p.chosen, p.rejected, h, 1.0, m, strength=p.strength)
                      for p, m in zip(ap, margins_for(ap, r.margins))]
            stats[f"{axis}_ties_dropped"] = stats.get(f"{axis}_ties_dropped", 0) + ax.ties_dropped
    for k, v in pstats.as_dict().items():
        stats[k] = stats.get(k, 0) + v
    return items


def eval_pairs(records: Sequence[Record], cfg: RewardConfig) -> list[Item]:
    """Held-out pairs from every preference kind (whatever trained the model), without margins: accuracy
    is measured on any held-out preference, and a regression-trained model is still judged on pairs."""
    view = dataclasses.replace(cfg, reward=dataclasses.replace(cfg.reward, kinds=list(KINDS), ratings="pairs",
                                                               margins=None, min_strength=0))
    return build_items(records, view, {})


def read_preferences(path: str, cfg: RewardConfig, limit: int | None = None,
                     require_preferences: bool = True) -> list[Record]:
    """Every record of ``path`` (any layout); a file without comparisons, rankings or ratings is an
    error naming what it holds, unless ``require_preferences=False`` (``reward.normalize_on`` reads
    reference-policy samples, e.g. collect's ``candidates.jsonl``)."""
    from alignforge.data.formats import load_dataset_records

    report = ReadReport(str(path))
    records = load_dataset_records(path, format=cfg.data.format, on_bad=cfg.data.on_bad_record, report=report,
                                   kind=None, max_records=limit)
    if dist.is_main():
        print(f"reward: {report.summary()}")
    if not records:
        raise RecordError("no preference records (comparison, ranking or rating) found", path=str(path))
    if require_preferences and not any(r.kind in KINDS for r in records):  # e.g. only unpaired feedback
        from alignforge.data.formats import kinds_refusal

        raise kinds_refusal(str(path), set(KINDS), report.kinds, report.format)
    return records


def split_by_prompt(records: Sequence[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Hold out a seeded share of *prompts* (all records of a held-out prompt go to eval), so the
    held-out accuracy is measured on questions the model never saw labels for."""
    keys = sorted({_prompt_key(r.prompt) for r in records})
    if fraction <= 0 or len(keys) < 2:
        return list(records), []
    random.Random(seed).shuffle(keys)
    held = set(keys[:max(1, round(fraction * len(keys)))])
    return ([r for r in records if _prompt_key(r.prompt) not in held],
            [r for r in records if _prompt_key(r.prompt) in held])


def encode_items(tok, items: Sequence[Item], max_len: int, stats: EncodeStats) -> list[tuple[Item, list[list[int]]]]:
    """(item, token-id rows): two rows (chosen, rejected) for a pair, one for a point; misfits dropped."""
    out = []
    for it in items:
        if it.rejected is not None:
            enc = encode_pair(tok, it.prompt, it.chosen, it.rejected, max_len=max_len, stats=stats)
            if enc is not None:
                out.append((it, [enc[0].input_ids, enc[1].input_ids]))
        else:
            ex = encode_example(tok, it.prompt, it.chosen, max_len=max_len, stats=stats)
            if ex is not None:
                out.append((it, [ex.input_ids]))
    return out


def plan_batches(encoded: Sequence[tuple[Item, list[list[int]]]], batch_size: int,
                 by_prompt: bool = False) -> list[list[int]]:
    """Micro-batches of item indices, pairs and points apart, each sorted by length so a batch pads
    little (the sampler shuffles the batch order every epoch). ``by_prompt`` (InstructGPT): all pairs of
    one prompt go into the same micro-batch — whole prompts are added while the batch has room for
    ``batch_size`` pairs, and a prompt with more pairs than that is a batch of its own — so each of its
    responses is forwarded once per epoch however many pairs it is in (``micro_loss``)."""
    groups = []
    for is_pair in (True, False):
        idx = [i for i, (it, _) in enumerate(encoded) if (it.rejected is not None) == is_pair]
        longest = lambda units: max(len(r) for i in units for r in encoded[i][1])  # noqa: E731
        if not (by_prompt and is_pair):
            idx.sort(key=lambda i: longest([i]))
            groups += [idx[j:j + batch_size] for j in range(0, len(idx), batch_size)]
            continue
        per_prompt: dict[str, list[int]] = {}
        for i in idx:
            per_prompt.setdefault(_prompt_key(encoded[i][0].prompt), []).append(i)
        batch: list[int] = []
        for units in sorted(per_prompt.values(), key=longest):
            if batch and len(batch) + len(units) > batch_size:
                groups.append(batch)
                batch = []
            batch += units
        if batch:
            groups.append(batch)
    return groups


# ---------------------------------------------------------------------------------------------
# Loss and metrics (scoring texts with the model: alignforge.models.scoring)
# ---------------------------------------------------------------------------------------------


def item_rewards(scores: torch.Tensor, heads: Sequence[int | None], weights: torch.Tensor) -> torch.Tensor:
    """Per row: the combined reward Σ c_h r_h (head None) or the one head's score (training view, no gate)."""
    combined = scores @ weights
    if all(h is None for h in heads):
        return combined
    idx = torch.tensor([0 if h is None else h for h in heads], device=scores.device)
    single = scores.gather(1, idx[:, None]).squeeze(1)
    use = torch.tensor([h is not None for h in heads], device=scores.device)
    return torch.where(use, single, combined)


def micro_loss(model, encoded, batch: Sequence[int], weights: torch.Tensor, pad_id: int, device,
               label_smoothing: float = 0.0) -> tuple:
    """(Σ w·ℓ of the micro-batch, real tokens). A pair batch puts all chosen rows, then all rejected
    rows, through ONE forward — each distinct row once: the pairs of a K-way ranking or of one prompt's
    ratings share responses (InstructGPT: K forwards for C(K,2) pairs), and the score of a row does not
    depend on its batch-mates; a point batch is a Likert regression."""
    items = [encoded[i][0] for i in batch]
    heads = [it.head for it in items]
    w = torch.tensor([it.weight for it in items], device=device)
    if items[0].rejected is not None:
        rows = [encoded[i][1][0] for i in batch] + [encoded[i][1][1] for i in batch]
        distinct: dict[tuple[int, ...], int] = {}
        where = torch.tensor([distinct.setdefault(tuple(row), len(distinct)) for row in rows], device=device)
        ids, mask = collate_rows([list(row) for row in distinct], pad_id, device)
        scores = sequence_scores(model, ids, mask, normalize=False)[where]
        r = item_rewards(scores, heads + heads, weights)
        n = len(items)
        margin = torch.tensor([it.margin for it in items], device=device)
        loss = bradley_terry_loss(r[:n], r[n:], margin, w, label_smoothing) * w.sum()  # weighted mean × Σw = Σ w·ℓ
    else:
        ids, mask = collate_rows([encoded[i][1][0] for i in batch], pad_id, device)
        r = item_rewards(sequence_scores(model, ids, mask, normalize=False), heads, weights)
        target = torch.tensor([it.target for it in items], device=device)
        loss = regression_loss(r, target) * len(items)  # points all weigh 1: mean × n = Σ ℓ
    return loss, int(mask.sum())


def pair_metrics(model, tok, items: Sequence[Item], prefix: str, cfg: RewardConfig) -> dict[str, float]:
    """Accuracy (ties ½), mean BT loss and accuracy by strength level of pair items, per head group."""
    pairs = [it for it in items if it.rejected is not None]
    if not pairs:
        return {}
    texts = [(it.prompt, it.chosen) for it in pairs] + [(it.prompt, it.rejected) for it in pairs]
    scores = score_texts(model, tok, texts, cfg.train.seq_len, cfg.train.batch_size * 2)
    n = len(pairs)
    overall = reward_from_scores(model, scores)
    out: dict[str, float] = {}
    names = cfg.reward.heads
    for group in sorted({it.head for it in pairs}, key=lambda h: -1 if h is None else h):
        sel = [i for i, it in enumerate(pairs) if it.head == group]
        if group is None:
            c, r, name = overall[sel], overall[[i + n for i in sel]], prefix
        else:
            c, r, name = scores[sel, group], scores[[i + n for i in sel], group], f"{prefix}_{names[group]}"
        right = (c > r).float() + 0.5 * (c == r).float()
        out[f"{name}_accuracy"] = float(right.mean())
        out[f"{name}_pairs"] = len(sel)
        if group is None:
            out[f"{name}_loss"] = float(bradley_terry_loss(c, r))
            for s in range(4):
                at = [k for k, i in enumerate(sel) if pairs[i].strength == s]
                if at:
                    out[f"{name}_accuracy_strength{s}"] = float(right[at].mean())
    return out


def length_metrics(model, tok, items: Sequence[Item], cfg: RewardConfig) -> dict[str, float]:
    """Pearson correlation of the reward with the response's word count over distinct eval responses."""
    seen = {(_prompt_key(it.prompt), t): (it.prompt, t) for it in items for t in (it.chosen, it.rejected) if t}
    texts = list(seen.values())
    if len(texts) < 3:
        return {}
    rewards = reward_from_scores(model, score_texts(model, tok, texts, cfg.train.seq_len, cfg.train.batch_size * 2))
    words = torch.tensor([float(len(t.split())) for _, t in texts])
    corr = torch.corrcoef(torch.stack([rewards, words]))[0, 1]
    return {"length_corr": float(corr) if torch.isfinite(corr) else 0.0}


def normalisation_texts(cfg: RewardConfig, train_items: Sequence[Item]) -> list[tuple[Prompt, str]]:
    """Reference-policy (prompt, response) samples: ``reward.normalize_on`` or the training responses."""
    if cfg.reward.normalize_on:
        texts = []
        for rec in read_preferences(cfg.reward.normalize_on, cfg, require_preferences=False):
            for t in (getattr(rec, "responses", None) or [getattr(rec, "response", None), getattr(rec, "chosen", None),
                                                         getattr(rec, "rejected", None)]):
                if t:
                    texts.append((rec.prompt, t))
    else:
        texts = [(it.prompt, t) for it in train_items for t in (it.chosen, it.rejected) if t]
    unique = list({(_prompt_key(p), t): (p, t) for p, t in texts}.values())
    random.Random(cfg.seed).shuffle(unique)
    return unique[:cfg.reward.max_norm_samples]


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


def load_model(cfg: RewardConfig, out: Path):
    """(scorer, tokenizer): model.init's backbone (or a fresh preset) with ``len(reward.heads)`` heads."""
    from alignforge.models.heads import init_from_causal_lm

    init = cfg.model.init
    if not init:
        from alignforge.models.load import build_model, save_model
        from alignforge.models.tokenizer import ensure_chat_template, load_tokenizer

        if not cfg.model.tokenizer:
            raise ConfigError("reward needs model.init (an SFT stage folder or HF causal LM dir), or "
                              "model.tokenizer to build a fresh model.preset")
        tok = ensure_chat_template(load_tokenizer(cfg.model.tokenizer))
        init = out / "init"  # a fresh backbone, saved so the scalar head loads through the same path
        if dist.is_main() and not (init / "config.json").exists():
            save_model(build_model(cfg.model.preset, len(tok), seed=cfg.seed, **cfg.model.overrides), tok, init)
        dist.barrier()
    try:
        model, tok = init_from_causal_lm(init, len(cfg.reward.heads), cfg.reward.heads, seed=cfg.seed,
                                         tokenizer=cfg.model.tokenizer)
    except FileNotFoundError as e:
        raise ConfigError(f"model.init={cfg.model.init}: {e}") from None
    return prepare_for_training(model, cfg), tok


def run(cfg: RewardConfig) -> Path:
    out, device, finished = start_stage(cfg, "reward")
    if finished:
        return out
    check_config(cfg)
    if not cfg.data.train:
        raise ConfigError("reward needs data.train (comparisons, rankings or ratings; or an HH-RLHF-like dataset)")
    tcfg, rcfg = cfg.train, cfg.reward
    world = dist.world_size()
    seed_everything(dist.rank_seed(cfg.seed))
    model, tok = load_model(cfg, out)
    n_matmul = matmul_params(model)
    pad = pad_id_of(tok)

    # --- data: records → items → token rows → length-sorted micro-batches ---
    records = read_preferences(cfg.data.train, cfg, cfg.data.max_records)
    if cfg.data.eval:
        train_recs, eval_recs = records, read_preferences(cfg.data.eval, cfg)
    else:
        train_recs, eval_recs = split_by_prompt(records, rcfg.eval_fraction, cfg.seed)
    item_stats: dict[str, Any] = {}
    train_items = build_items(train_recs, cfg, item_stats)
    eval_items = eval_pairs(eval_recs, cfg)
    enc_stats = EncodeStats()
    encoded = encode_items(tok, train_items, tcfg.seq_len, enc_stats)
    if not encoded:
        raise RecordError("no training pairs left after expansion and encoding "
                          f"({item_stats}; {enc_stats.summary()})", path=cfg.data.train)
    batches = plan_batches(encoded, tcfg.batch_size, by_prompt=rcfg.group_by_prompt)
    micro_per_step = tcfg.grad_accum * world
    if len(batches) < micro_per_step:
        raise ConfigError(f"only {len(batches)} micro-batches of data, fewer than one optimizer step needs "
                          f"({tcfg.grad_accum} accum × {world} procs): lower train.batch_size or grad_accum")
    steps_per_epoch = len(batches) // micro_per_step
    if rcfg.epochs is not None:
        tcfg.max_steps = max(1, math.ceil(rcfg.epochs * steps_per_epoch))  # the schedule spans the real run
    max_steps = tcfg.max_steps
    weights = torch.tensor(combine_weights(cfg), device=device)
    cfg_base = _base(model).config
    cfg_base.reward_combine = combine_weights(cfg)
    cfg_base.reward_safety_head = rcfg.heads.index(rcfg.safety_head) if rcfg.safety_head else None
    cfg_base.reward_safety_threshold = rcfg.safety_threshold

    # --- optimizer, schedule; resume if a state exists ---
    model = dist.wrap_model(model, cfg.runtime, device)
    model.train()
    optimizer = make_optimizer(model, tcfg)
    scheduler = make_scheduler(optimizer, tcfg)
    sampler = EpochSampler(len(batches), cfg.seed)
    resumed = ckpt.load_state(out, model=model, optimizer=optimizer, scheduler=scheduler)
    step, elapsed_before = (resumed.step, float(resumed.extra.get("elapsed_s", 0.0))) if resumed else (0, 0.0)
    if resumed:
        sampler.load_state_dict(resumed.data)
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        print(f"reward: {len(train_items)} train items ({item_stats}), {len(eval_items)} eval items; "
              f"{enc_stats.summary()}")
        print(f"reward: {len(batches)} micro-batches, {steps_per_epoch} steps/epoch, {max_steps} steps; heads "
              f"{rcfg.heads}; {n_matmul / 1e6:.2f}M matmul params on {device}"
              + (f"; resuming at step {step}" if resumed else ""))
    logger = MetricsLogger(out, cfg.runtime, total_steps=max_steps,
                           resume_offset=resumed.metrics_offset if resumed else None, description="reward")
    peak = measure_matmul_peak(compute_dtype(cfg.runtime, device), device=device, repeats=3) if dist.is_main() else None
    meter = Throughput(n_matmul, peak_flops=peak)
    ctx = autocast(cfg.runtime, device)
    clock = StageClock(elapsed_before)
    window_pairs = window_tokens = total_pairs = 0

    def evaluate(final: bool) -> dict[str, float]:
        """Held-out annotator accuracy always; at the end also gold accuracy and length bias (rank 0)."""
        if not dist.is_main():
            return {}
        inner = dist.unwrap(model)
        was = inner.training
        inner.eval()
        row = pair_metrics(inner, tok, eval_items, "eval", cfg)
        if final:
            for name, path in (("gold", rcfg.gold_eval), ("length_probe", rcfg.length_probe)):
                if path:
                    row.update(pair_metrics(inner, tok, eval_pairs(read_preferences(path, cfg), cfg), name, cfg))
            if "length_probe_accuracy" in row:  # the probe's chosen is right: preferring padding = 1 - accuracy
                row["length_probe_prefers_padded"] = 1.0 - row["length_probe_accuracy"]
            row.update(length_metrics(inner, tok, eval_items or train_items[:512], cfg))
        inner.train(was)
        return row

    def save(step: int) -> None:
        meter.pause()
        ckpt.save_state(out, model=model, optimizer=optimizer, scheduler=scheduler, step=step,
                        data=sampler.state_dict(), metrics_offset=logger.offset(),
                        extra={"elapsed_s": clock.elapsed_s()})
        meter.resume()

    # --- the loop: one iteration = one optimizer step over a global batch of micro-batches ---
    stopped = "max_steps"
    while step < max_steps:
        global_idx = sampler.take(micro_per_step).tolist()
        step_weight = sum(encoded[i][0].weight for b in global_idx for i in batches[b])
        loss_sum, tokens = 0.0, 0
        local = dist.shard(global_idx)
        for micro, b in enumerate(local):
            with dist.no_sync(model, micro < len(local) - 1), ctx:
                wl, n_tok = micro_loss(model, encoded, batches[b], weights, pad, device, rcfg.label_smoothing)
                loss = wl * (world / max(step_weight, 1e-12))  # DDP averages over ranks: × world keeps Σ/Σw
            loss.backward()
            loss_sum += float(wl.detach())
            tokens += n_tok
        grad_norm = optimizer_step(model, optimizer, scheduler, tcfg.grad_clip)
        step += 1
        tokens = int(dist.all_reduce_sum(tokens))
        pairs = sum(len(batches[b]) for b in global_idx)
        meter.add(tokens)
        window_pairs, window_tokens, total_pairs = window_pairs + pairs, window_tokens + tokens, total_pairs + pairs
        logger.progress(step)
        out_of_time = stage_out_of_time(tcfg, clock)  # rank 0 decides, so every process stops together
        last = step == max_steps or out_of_time
        row: dict[str, Any] = {}
        if step % tcfg.log_every == 0 or last:
            rates = meter.window()
            row.update(loss=float(dist.all_reduce_sum(loss_sum)) / max(step_weight, 1e-12),
                       lr=scheduler.get_last_lr()[0], grad_norm=grad_norm, epoch=sampler.epoch, **rates,
                       pairs_per_s=rates["tokens_per_s"] * window_pairs / max(window_tokens, 1))
            window_pairs = window_tokens = 0
        if tcfg.eval_every and step % tcfg.eval_every == 0 and not last:
            meter.pause()
            row.update(evaluate(final=False))
            meter.resume()
        if row:
            logger.log(step, **row)
        if (tcfg.save_every and step % tcfg.save_every == 0) or last:
            save(step)
        if out_of_time:
            stopped = "max_minutes"
            break
    total = meter.total()
    total["pairs_per_s"] = total["tokens_per_s"] * total_pairs / max(total["tokens"], 1)

    # --- normalise on reference-policy samples, then the final metrics with the stored normalisation ---
    inner = _base(dist.unwrap(model))
    if dist.is_main():
        inner.eval()
        norm_texts = normalisation_texts(cfg, train_items)
        raw = score_texts(dist.unwrap(model), tok, norm_texts, tcfg.seq_len, tcfg.batch_size * 2, normalize=False)
        std = raw.std(0).clamp_min(1e-6).tolist() if rcfg.normalize_std and len(raw) > 1 else 1.0
        set_reward_normalization(inner, raw.mean(0).tolist(), std)
    dist.barrier()
    final = evaluate(final=True)
    final.update({"step": step, "stopped": stopped, "norm_samples": len(norm_texts) if dist.is_main() else 0,
                  "reward_mean": getattr(inner.config, "reward_mean", None), **total, **item_stats,
                  "encode_dropped": enc_stats.dropped, "encode_truncated": enc_stats.truncated})
    logger.log(step, **{k: v for k, v in final.items() if isinstance(v, (int, float)) and k != "step"})
    logger.close()
    ckpt.save_model_dir(out / ckpt.MODEL, model, tok)
    if dist.is_main():
        atomic_write_text(out / "eval.json", json.dumps(final, indent=1) + "\n")
        shown = ", ".join(f"{k} {final[k]:.3f}" for k in ("eval_accuracy", "gold_accuracy",
                                                             "length_probe_prefers_padded", "length_corr")
                          if k in final)
        print(f"reward: done at step {step} ({stopped}); {shown}; {total['pairs_per_s']:.1f} pairs/s"
              + (f", MFU {total['mfu']:.1%}" if "mfu" in total else "") + f" → {out / ckpt.MODEL}")
    ckpt.mark_done(out, {k: v for k, v in final.items() if not isinstance(v, dict)})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage("reward", RewardConfig, run, list(argv or []))


if __name__ == "__main__":
    raise SystemExit(main())
