"""Layout detection and the loader: a file of any supported layout → records, with nothing dropped silently."""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Iterator

from alignforge.data.formats.alpaca import from_alpaca, from_dolly
from alignforge.data.formats.common import ROLE_ALIASES, Dropped
from alignforge.data.formats.hh_rlhf import from_hh_rlhf
from alignforge.data.formats.messages import from_messages
from alignforge.data.formats.oasst import check_oasst_message, from_oasst_tree, oasst_records
from alignforge.data.formats.trl import from_implicit_prompt, from_prompt_completion, from_unpaired
from alignforge.data.formats.ultrafeedback import from_ultrafeedback, from_ultrafeedback_binarized
from alignforge.data.records import (RECORD_TYPES, ReadReport, Record, RecordError, _short, describe_kinds,
                                     infer_kind, iter_raw, parse_record)

FORMATS = ("records", "hh-rlhf", "alpaca", "dolly", "oasst", "ultrafeedback", "ultrafeedback-binarized", "messages",
           "prompt-completion", "unpaired", "implicit-prompt")

ROW_ADAPTERS: dict[str, Callable[..., list[Record]]] = {
    "hh-rlhf": from_hh_rlhf, "alpaca": from_alpaca, "dolly": from_dolly,
    "ultrafeedback": from_ultrafeedback, "ultrafeedback-binarized": from_ultrafeedback_binarized,
    "messages": from_messages, "prompt-completion": from_prompt_completion, "unpaired": from_unpaired,
    "implicit-prompt": from_implicit_prompt,
}

# Layouts whose records restate one judgement twice: without a kind asked for, keep only these.
DEFAULT_KINDS = {"ultrafeedback": {"comparison"}, "ultrafeedback-binarized": {"comparison"}}

# The layouts a row is matched against when no format fits it: (name, its fields, what it needs).
LAYOUTS: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    ("Alpaca (format=alpaca)", ("instruction", "input", "output"), ("instruction", "output")),
    ("self-instruct (format=alpaca)", ("instruction", "instances"), ("instruction", "instances")),
    ("Dolly (format=dolly)", ("instruction", "context", "response", "category"), ("instruction", "response")),
    ("HH-RLHF (format=hh-rlhf)", ("chosen", "rejected"), ("chosen", "rejected")),
    ("UltraFeedback (format=ultrafeedback)", ("instruction", "completions"), ("instruction", "completions")),
    ("UltraFeedback-binarized (format=ultrafeedback-binarized)",
     ("prompt", "chosen", "rejected", "messages", "score_chosen", "score_rejected", "prompt_id"),
     ("prompt", "chosen", "rejected")),
    ("OASST messages (format=oasst)", ("message_id", "parent_id", "role", "text"), ("message_id", "role", "text")),
    ("ShareGPT (format=messages)", ("conversations",), ("conversations",)),
    ("TRL prompt-completion (format=prompt-completion)", ("prompt", "completion"), ("prompt", "completion")),
    ("TRL unpaired preference (format=unpaired)", ("prompt", "completion", "label"), ("prompt", "completion", "label")),
]


def _closest_layout(keys: set[str], foreign: set[str]) -> str | None:
    """The layout(s) sharing the most fields with ``keys`` (one of them ``foreign`` to our records), and
    what each lacks."""
    scored = []
    for name, fields, needs in LAYOUTS:
        shared = keys & set(fields)
        lacks = [f for f in needs if f not in keys]
        if shared & foreign and lacks:
            scored.append(((len(shared), -len(lacks)), name, fields, lacks))
    if not scored:
        return None
    top = max(s[0] for s in scored)
    best = [s for s in scored if s[0] == top]
    parts = [f"{name}, whose rows have {', '.join(fields)}; this row lacks " + ", ".join(f"'{f}'" for f in lacks)
             for _, name, fields, lacks in best]
    return ("the closest layout is " if len(parts) == 1 else "the closest layouts are ") + " — or ".join(parts)


def detect_format(row: Any) -> str:
    """The layout of a raw row, from its fields (the loader looks at the first row).

    A layout alignforge knows but cannot use (TRL stepwise supervision) and a row that matches no
    layout raise :class:`RecordError` saying which layout it resembles and what it lacks.
    """
    if not isinstance(row, dict):
        raise RecordError(f"expected a JSON object, got {_short(row)}; cannot detect the dataset format (pass "
                          f"format=one of {', '.join(FORMATS)})")
    keys = set(row)
    if {"message_id", "role", "text"} <= keys or ("message_tree_id" in keys and isinstance(row.get("prompt"), dict)):
        return "oasst"
    if "completions" in keys and "labels" in keys:
        raise RecordError("TRL stepwise supervision (prompt, completions, labels: one label per reasoning step) is "
                          "not supported: no alignforge stage trains a process reward model on step labels")
    if "completions" in keys and ("instruction" in keys or "prompt" in keys):
        return "ultrafeedback"
    if "chosen" in keys or "rejected" in keys:
        sides = [row.get(k) for k in ("chosen", "rejected") if k in keys]
        if any(isinstance(s, list) for s in sides):
            if isinstance(row.get("prompt"), str) and keys & {"score_chosen", "score_rejected", "prompt_id"}:
                return "ultrafeedback-binarized"
            return "messages"
        if "prompt" not in keys and "messages" not in keys and any(isinstance(s, str) for s in sides):
            if any(isinstance(s, str) and "\n\nHuman:" in s and "Assistant:" in s for s in sides):
                return "hh-rlhf"
            return "implicit-prompt"
        return "records"
    if "completion" in keys:
        return "unpaired" if "label" in keys else "prompt-completion"
    if "instruction" in keys and ("instances" in keys or "output" in keys):
        return "alpaca"
    if {"instruction", "response"} <= keys:
        return "dolly"
    conv = row.get("messages", row.get("conversations"))
    if "prompt" not in keys and isinstance(conv, list) and conv and isinstance(conv[-1], dict):
        last_role = str(conv[-1].get("role", conv[-1].get("from", ""))).lower()
        # A list ending with a user turn is a prompt record (records format), not a demonstration.
        if ROLE_ALIASES.get(last_role) == "assistant" or "conversations" in keys:
            return "messages"
    try:
        extra = keys - RECORD_TYPES[infer_kind(row)].allowed()
    except RecordError:
        extra = keys
    # Our own records, unless fields foreign to them belong to a layout that this row only half fits.
    closest = _closest_layout(keys, extra) if extra else None
    if extra and (closest or extra == keys):
        raise RecordError(f"cannot tell the dataset layout from fields {sorted(keys)}"
                          + (f": {closest}" if closest else "")
                          + f" (supported: {', '.join(FORMATS)}; see docs/datasets.md)")
    return "records"


def kinds_refusal(path: str, wanted: set[str], found: dict[str, int], layout: str | None) -> RecordError:
    """The error for a file that holds records, none of a kind the caller can use."""
    what = " or ".join(sorted(wanted))
    msg = f"no {what} records: the file{f' ({layout} layout)' if layout else ''} holds {describe_kinds(found)}"
    if "unpaired" in found:
        msg += ("; no alignforge stage trains on unpaired feedback (it has no second response to compare with), "
                "but ppo, reinforce and rsft can take their prompts")
    return RecordError(msg, path=path)


def load_dataset_records(path: str | os.PathLike, format: str = "auto", on_bad: str = "error",
                         report: ReadReport | None = None, kind: str | Iterable[str] | None = None,
                         max_records: int | None = None) -> list[Record]:
    """Read a dataset file or directory in any supported layout into records.

    ``format="auto"`` detects it from the first row's fields (:func:`detect_format`).
    ``on_bad``: "error" raises the first malformed row as ``path:line: field 'x': ...``;
    "skip" skips and counts malformed rows in ``report`` (pass a :class:`ReadReport` to see them).
    ``kind`` keeps only records of that kind (or kinds); the others are counted as dropped, and a
    file with none of the kinds asked for (say, only unpaired feedback for DPO) is an error that
    names what it holds. ``None`` keeps all — except for UltraFeedback (raw and binarized), whose
    second record kind restates its Comparisons, where it keeps the comparisons (ask
    ``kind="ranking"`` / ``kind="demonstration"`` for the others).
    """
    if on_bad not in ("error", "skip"):
        raise ValueError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected auto or one of {', '.join(FORMATS)}")
    path = str(path)
    report = report if report is not None else ReadReport(path)
    kinds = {kind} if isinstance(kind, str) else (set(kind) if kind is not None else None)
    out: list[Record] = []
    unwanted: dict[str, int] = {}

    def fail(err: RecordError, lineno: int) -> None:
        err = RecordError(err.reason, path=path, line=lineno, field=err.field) if err.line is None else err
        if on_bad == "error":
            raise err
        report.note(err)

    def keep(records: list[Record]) -> None:
        for rec in records:
            wanted = kinds if kinds is not None else DEFAULT_KINDS.get(fmt or "")
            if wanted is not None and rec.kind not in wanted:
                report.drop(f"{rec.kind} records not asked for")
                unwanted[rec.kind] = unwanted.get(rec.kind, 0) + 1
                continue
            out.append(rec)
            report.kinds[rec.kind] = report.kinds.get(rec.kind, 0) + 1

    fmt = None if format == "auto" else format
    oasst_rows: list[dict[str, Any]] = []
    for lineno, obj in _rows(path, on_bad):
        if max_records is not None and len(out) >= max_records:
            break
        report.rows += 1
        if isinstance(obj, RecordError):
            fail(obj, lineno)
            continue
        if fmt is None:
            try:
                fmt = detect_format(obj)
            except RecordError as e:
                raise RecordError(e.reason, path=path, line=lineno) from None
            report.format = fmt
        try:
            if not isinstance(obj, dict):
                raise RecordError(f"expected a JSON object, got {_short(obj)}")
            if fmt == "records":
                keep([parse_record(obj)])
            elif fmt == "oasst":
                if "message_tree_id" in obj and isinstance(obj.get("prompt"), dict):
                    keep(from_oasst_tree(obj, report.notes))
                else:  # flat rows: a tree is only complete at the end of the file
                    oasst_rows.append(check_oasst_message(obj))
            else:
                keep(ROW_ADAPTERS[fmt](obj, report.notes))
        except Dropped as d:
            report.drop(d.reason)
        except RecordError as e:
            fail(e, lineno)
    if oasst_rows:
        keep(oasst_records(oasst_rows, report.notes, report.dropped))
    if max_records is not None:
        del out[max_records:]
    report.format = report.format or fmt
    report.read = len(out)
    if kinds is not None and not out and unwanted:
        raise kinds_refusal(path, kinds, unwanted, report.format)
    return out


def _rows(path: str, on_bad: str) -> Iterator[tuple[int, Any]]:
    return iter_raw(path, bad_json="raise" if on_bad == "error" else "yield")


def load_data_section(data: Any, split: str = "train", kind: str | Iterable[str] | None = None,
                      report: ReadReport | None = None) -> list[Record]:
    """The records a stage's ``data`` config section names: ``data.train`` (or ``data.eval``), read
    with ``data.format``, ``data.on_bad_record`` and, for the training split, ``data.max_records``.

    Raises :class:`ConfigError` when the split's path is not set.
    """
    from alignforge.config import ConfigError

    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    path = getattr(data, split)
    if not path:
        raise ConfigError(f"config key 'data.{split}' is not set; expected a records file or dataset directory")
    return load_dataset_records(path, format=data.format, on_bad=data.on_bad_record, report=report, kind=kind,
                                max_records=data.max_records if split == "train" else None)
