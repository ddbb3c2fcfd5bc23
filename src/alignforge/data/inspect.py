"""``alignforge data inspect FILE``: what a stage will see, before it trains.

Reads the file as every stage does (:func:`alignforge.data.formats.load_dataset_records`, bad rows
skipped and counted instead of stopping), then tokenises every record exactly as the stages do
(:mod:`alignforge.data.batching`: chat template on token ids, response-only loss masks, prompts cut
from the left to fit) and reports:

- the layout (detected or forced), rows, records per kind, and which stages use each kind;
- skipped bad rows (with the first errors), rows dropped by a documented policy, and notes, with counts;
- the first examples rendered through the tokenizer's chat template, the trained-on tokens
  (loss mask 1) between ``⟦`` and ``⟧``;
- token-length percentiles per kind (whole sequence, prompt, response);
- how many records would have their prompt cut from the left, or be dropped, at ``--seq-len``.

Without ``--tokenizer`` it uses a byte-level tokenizer with alignforge's chat template (no merges:
one token per UTF-8 byte, so lengths are upper bounds — a trained BPE gives ~3-4 bytes a token on
English), built in memory, offline. The output says which tokenizer was used.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

from alignforge.data.records import (RECORD_TYPES, Comparison, Ranking, Record, ReadReport, RecordError, TextRecord,
                                     describe_kinds)

OPEN, CLOSE = "⟦", "⟧"
PERCENTILES = (50, 90, 95, 99)

# Which stages read each record kind (design §2); prompts of any kind also feed the RL stages.
USED_BY: dict[str, str] = {
    "text": "tokenizer, pretrain, sft/ppo ptx mix",
    "prompt": "collect, ppo, reinforce, rsft, critique, rlaif, nash",
    "demonstration": "sft (prompts: ppo, reinforce, rsft)",
    "comparison": "reward, dpo (prompts: ppo, reinforce, rsft)",
    "ranking": "reward, dpo (expanded to all pairs)",
    "rating": "reward (pairs or regression), dpo (dpo.kinds)",
    "candidates": "feedback import (prompts: ppo, reinforce, rsft)",
    "unpaired": "no stage trains on it (prompts only: ppo, reinforce, rsft)",
}


def default_seq_len() -> int:
    from alignforge.config import TrainSection

    return TrainSection().seq_len


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------


def byte_level_tokenizer():
    """alignforge's special tokens and chat template over raw bytes (no merges): offline, instant."""
    from alignforge.models.tokenizer import SPECIAL_TOKENS, train_tokenizer

    return train_tokenizer([], vocab_size=len(SPECIAL_TOKENS) + 256)


def resolve_tokenizer(path: str | None) -> tuple[Any, dict[str, str]]:
    """(tokenizer, description) for ``--tokenizer`` (a tokenizer/model/stage directory) or the fallback."""
    if path is None:
        return byte_level_tokenizer(), {
            "name": "byte-level fallback",
            "detail": "alignforge's chat template over raw UTF-8 bytes, one token per byte, no merges: token "
                      "counts are upper bounds; pass --tokenizer DIR for the model's own"}
    from alignforge.models.tokenizer import ensure_chat_template, load_tokenizer

    tok = load_tokenizer(path)
    had_template = bool(getattr(tok, "chat_template", None))
    ensure_chat_template(tok)
    return tok, {"name": str(path), "detail": f"{type(tok).__name__}, vocab {len(tok)}, "
                 + ("its own chat template" if had_template else
                    "no chat template: the '### User:' fallback every stage uses")}


# ---------------------------------------------------------------------------------------------
# Encoding a record as its stage would
# ---------------------------------------------------------------------------------------------


@dataclass
class Encoded:
    """A record's token sequences (label, ids, loss mask) and the lengths that must fit ``seq_len``."""

    sequences: list[tuple[str, list[int], list[int]]]
    prompt: list[int]
    response: list[int] | None  # the longest response (with EOS); None: no response (prompt, text)
    note: str = ""


def encode_record(tok, rec: Record) -> Encoded:
    """The sequences a stage trains on for ``rec``: ``prompt_ids + response_ids`` with the loss on the
    response (as ``batching.encode_example`` / ``encode_pair`` build them, before any truncation)."""
    from alignforge.data.batching import prompt_ids, response_ids

    if isinstance(rec, TextRecord):
        ids = [int(i) for i in tok(rec.text, add_special_tokens=False)["input_ids"]] + [int(tok.eos_token_id)]
        return Encoded([("text", ids, [0] + [1] * (len(ids) - 1))], [], None,
                       "pretraining: every token is trained on; packed into blocks of seq_len")
    p = prompt_ids(tok, rec.prompt)

    def seq(label: str, r: list[int]) -> tuple[str, list[int], list[int]]:
        return label, p + r, [0] * len(p) + [1] * len(r)

    if isinstance(rec, (Comparison, Ranking)):
        if isinstance(rec, Comparison):
            shown = [("chosen", response_ids(tok, rec.chosen)), ("rejected", response_ids(tok, rec.rejected))]
            longest = max((r for _, r in shown), key=len)
        else:  # every pair is trained on: show the best and the worst, measure the longest
            ids = [response_ids(tok, r) for r in rec.responses]
            shown = [("best", ids[rec.ranking[0]]), ("worst", ids[rec.ranking[-1]])]
            longest = max(ids, key=len)
        note = "tie: dropped by reward and dpo" if getattr(rec, "tie", False) else ""
        return Encoded([seq(label, r) for label, r in shown], p, longest, note)
    response = getattr(rec, "response", None)
    if response is None:  # prompt, candidates
        return Encoded([("prompt", p, [0] * len(p))], p, None,
                       "no trained tokens: RL stages train on the answers they sample")
    r = response_ids(tok, response)
    note = f"label: {str(rec.label).lower()}" if rec.kind == "unpaired" else ""
    return Encoded([seq("response", r)], p, r, note)


def render(tok, ids: Sequence[int], mask: Sequence[int]) -> tuple[str, list[dict[str, Any]]]:
    """Decoded text with the trained-on runs between ⟦ ⟧, and the runs themselves."""
    segments, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or mask[i] != mask[start]:
            text = tok.decode(list(ids[start:i]), skip_special_tokens=False, clean_up_tokenization_spaces=False)
            segments.append({"text": text, "trained": bool(mask[start]), "tokens": i - start})
            start = i
    return "".join(f"{OPEN}{s['text']}{CLOSE}" if s["trained"] else s["text"] for s in segments), segments


def percentiles(values: Sequence[int]) -> dict[str, float]:
    """Nearest-rank percentiles, mean and max."""
    if not values:
        return {}
    v = sorted(values)
    out: dict[str, float] = {f"p{p}": v[max(0, math.ceil(p / 100 * len(v)) - 1)] for p in PERCENTILES}
    out["max"] = v[-1]
    out["mean"] = round(sum(v) / len(v), 1)
    return out


# ---------------------------------------------------------------------------------------------
# The inspection
# ---------------------------------------------------------------------------------------------


@dataclass
class _KindStats:
    total: list[int] = field(default_factory=list)
    prompt: list[int] = field(default_factory=list)
    response: list[int] = field(default_factory=list)
    fit: int = 0
    prompt_cut: int = 0
    dropped: int = 0


def inspect_file(path: str, *, format: str = "auto", tokenizer: str | None = None, seq_len: int | None = None,
                 examples: int = 2, limit: int | None = None, kind: str | None = None,
                 min_prompt_tokens: int = 8) -> dict[str, Any]:
    """Everything ``alignforge data inspect`` prints, as one JSON-ready dict."""
    from alignforge.data.batching import EncodeStats, _fit
    from alignforge.data.formats import load_dataset_records

    seq_len = default_seq_len() if seq_len is None else seq_len
    if seq_len < 1:
        raise ValueError(f"--seq-len must be a positive number of tokens, got {seq_len}")
    report = ReadReport(str(path))
    records = load_dataset_records(path, format=format, on_bad="skip", report=report, max_records=limit, kind=kind)
    tok, tok_info = resolve_tokenizer(tokenizer)
    stats: dict[str, _KindStats] = {}
    shown: list[dict[str, Any]] = []
    for i, rec in enumerate(records):
        enc = encode_record(tok, rec)
        st = stats.setdefault(rec.kind, _KindStats())
        if enc.response is not None:
            st.total.append(len(enc.prompt) + len(enc.response))
            st.prompt.append(len(enc.prompt))
            st.response.append(len(enc.response))
            # The stages' own rule (batching._fit): cut the prompt from the left, or drop the record.
            fit = EncodeStats()
            _fit(enc.prompt, enc.response, seq_len, min_prompt_tokens, fit)
            st.dropped += fit.dropped
            st.prompt_cut += fit.truncated
            st.fit += 1 - fit.dropped - fit.truncated
        elif rec.kind == "text":
            st.total.append(len(enc.sequences[0][1]))
            st.fit += 1
        else:  # a prompt alone: generation keeps its last seq_len tokens
            st.total.append(len(enc.prompt))
            st.prompt.append(len(enc.prompt))
            if len(enc.prompt) <= seq_len:
                st.fit += 1
            else:
                st.prompt_cut += 1
        if len(shown) < examples:
            seqs = []
            for label, ids, mask in enc.sequences:
                text, segments = render(tok, ids, mask)
                seqs.append({"label": label, "tokens": len(ids), "trained_tokens": sum(mask), "text": text,
                             "segments": segments})
            shown.append({"record": i, "kind": rec.kind, "note": enc.note, "sequences": seqs})
    lengths, fits = {}, {}
    for k, st in sorted(stats.items()):
        lengths[k] = {"records": len(st.total), "sequence": percentiles(st.total)}
        if st.prompt:
            lengths[k]["prompt"] = percentiles(st.prompt)
        if st.response:
            lengths[k]["response"] = percentiles(st.response)
        if k == "text":
            tokens = sum(st.total)
            fits[k] = {"tokens": tokens, "blocks": math.ceil(tokens / seq_len), "prompt_cut": 0, "dropped": 0,
                       "fit": st.fit}
        else:
            fits[k] = {"fit": st.fit, "prompt_cut": st.prompt_cut, "dropped": st.dropped}
    return {
        "path": str(path), "format": report.format, "detected": format == "auto", "rows": report.rows,
        "records": report.read, "limit": limit, "kind": kind, "kinds": dict(sorted(report.kinds.items())),
        "used_by": {k: USED_BY.get(k, "") for k in sorted(report.kinds)},
        "skipped": report.skipped, "errors": report.errors, "dropped": dict(sorted(report.dropped.items())),
        "notes": dict(sorted(report.notes.items())), "tokenizer": tok_info, "seq_len": seq_len,
        "lengths": lengths, "truncation": fits, "examples": shown,
    }


# ---------------------------------------------------------------------------------------------
# Text output
# ---------------------------------------------------------------------------------------------


def _pct(d: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in d.items())


def format_report(r: dict[str, Any]) -> str:
    lines = [f"file:       {r['path']}",
             f"layout:     {r['format']} "
             f"({'detected from the first row' if r['detected'] else 'forced with --format'})",
             f"rows:       {r['rows']}" + (f" (stopped at --limit {r['limit']} records)" if r["limit"] else ""),
             f"records:    {r['records']}" + (f" — {describe_kinds(r['kinds'])}" if r["kinds"] else "")
             + (f" (only {r['kind']} records: --kind)" if r["kind"] else "")]
    for kind, stages in r["used_by"].items():
        lines.append(f"  {kind} → {stages}")
    lines.append(f"skipped:    {r['skipped']} bad rows" + (":" if r["errors"] else ""))
    lines += [f"  {e}" for e in r["errors"][:5]]
    for title, table in (("dropped", r["dropped"]), ("notes", r["notes"])):
        lines.append(f"{title + ':':<11} {sum(table.values())}" + (":" if table else ""))
        lines += [f"  {n:>6}  {reason}" for reason, n in table.items()]
    lines.append(f"tokenizer:  {r['tokenizer']['name']} ({r['tokenizer']['detail']})")
    lines.append("")
    lines.append(f"token lengths (nearest-rank percentiles) and fit at --seq-len {r['seq_len']}:")
    for kind, lens in r["lengths"].items():
        lines.append(f"  {kind} ({lens['records']}):")
        for part in ("sequence", "prompt", "response"):
            if part in lens:
                lines.append(f"    {part:<9} {_pct(lens[part])}")
        t = r["truncation"][kind]
        if kind == "text":
            lines.append(f"    {t['tokens']} tokens → {t['blocks']} packed blocks of {r['seq_len']} "
                         "(nothing truncated)")
        else:
            lines.append(f"    fit whole: {t['fit']}; prompt cut from the left: {t['prompt_cut']}; "
                         f"dropped (response does not fit): {t['dropped']}")
    for ex in r["examples"]:
        lines.append("")
        lines.append(f"── example {ex['record']} ({ex['kind']}" + (f"; {ex['note']}" if ex["note"] else "")
                     + f") — trained-on tokens between {OPEN} {CLOSE}")
        for s in ex["sequences"]:
            lines.append(f"[{s['label']}: {s['tokens']} tokens, {s['trained_tokens']} trained]")
            lines.append(s["text"])
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str]) -> int:
    from alignforge.data.formats import FORMATS

    parser = argparse.ArgumentParser(
        prog="alignforge data inspect",
        description="What a stage will see: layout, records per kind, drops and notes, the first examples "
                    f"through the chat template (trained-on tokens between {OPEN} {CLOSE}), token lengths, "
                    "and how many would be truncated at --seq-len.")
    parser.add_argument("file", help="JSONL(.gz), JSON, Parquet file or a local datasets directory")
    parser.add_argument("--format", default="auto", choices=("auto",) + FORMATS,
                        help="dataset layout (default: detected from the first row)")
    parser.add_argument("--tokenizer", default=None,
                        help="a local tokenizer, HF model or stage directory (default: a byte-level tokenizer "
                             "with alignforge's chat template, built offline)")
    parser.add_argument("--seq-len", type=int, default=None,
                        help=f"sequence length to check the fit against (default: train.seq_len, {default_seq_len()})")
    parser.add_argument("--examples", type=int, default=2, help="how many records to render (default: 2)")
    parser.add_argument("--limit", type=int, default=None, help="read at most this many records")
    parser.add_argument("--kind", default=None, choices=sorted(RECORD_TYPES),
                        help="keep only records of this kind, as a stage that asks for it does (sft: demonstration; "
                             "default: what a stage that takes every kind sees)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(list(argv))
    try:
        result = inspect_file(args.file, format=args.format, tokenizer=args.tokenizer, seq_len=args.seq_len,
                              examples=args.examples, limit=args.limit, kind=args.kind)
    except (RecordError, FileNotFoundError, ValueError, OSError) as e:
        print(f"alignforge data inspect: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=1))
    else:
        print(format_report(result))
    return 0
