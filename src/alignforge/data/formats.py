"""Adapters from public datasets' schemas to our records (design §3).

Each adapter is a function of one raw row (a dict, as read by :func:`records.iter_raw`) that
returns a list of records; :func:`load_dataset_records` reads a file (JSONL/.gz, JSON, Parquet,
or a local Hugging Face ``datasets`` directory), detects the format from the first row when
asked to, runs the adapter on every row and keeps ``path:line`` on every error.

Three outcomes per row, never a silent one:

- a malformed row raises :class:`RecordError` (field + what was expected); the loader adds the
  path and line and, under ``on_bad="skip"``, skips and counts it instead of stopping;
- a well-formed row that a documented policy leaves out raises :class:`Dropped`; the loader
  counts it per reason in ``ReadReport.dropped``;
- repairs and oddities that keep the row are counted in ``ReadReport.notes`` (the ``notes``
  mapping every adapter accepts).

Formats and what they become:

===============  ==========================================================================
records          our own records (:mod:`alignforge.data.records`)
hh-rlhf          ``{"chosen", "rejected"}`` transcripts → Comparison
alpaca           ``instruction``/``input``/``output``, or self-instruct ``instances`` → Demonstration
dolly            ``instruction``/``context``/``response``/``category`` → Demonstration
oasst            OASST flat message rows (or exported trees) → Demonstrations + Rankings
ultrafeedback    ``instruction``/``prompt`` + scored ``completions`` → Comparisons (+ a Ranking)
messages         ``messages`` (or ShareGPT ``conversations``) → Demonstration; conversational
                 ``chosen``/``rejected`` message lists → Comparison
===============  ==========================================================================

Conventions shared by the adapters: a prompt that is a single user turn is stored as a plain
string, anything longer (multi-turn, or with a system message) as a ``messages`` list; text is
stripped of surrounding whitespace; an extra input/context is appended to the instruction after
a blank line (``instruction + "\\n\\n" + input``), which is how it reads in a chat template.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Callable, Iterable, Iterator, Optional

from alignforge.data.records import (Comparison, Demonstration, Message, Prompt, Ranking, ReadReport, Record,
                                     RecordError, _short, check_prompt, iter_raw, parse_record)

FORMATS = ("records", "hh-rlhf", "alpaca", "dolly", "oasst", "ultrafeedback", "messages")


class Dropped(Exception):
    """A well-formed row that an adapter leaves out by a documented policy; ``reason`` is counted."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


Notes = Optional[dict[str, int]]


def _note(notes: Notes, what: str, n: int = 1) -> None:
    if notes is not None and n:
        notes[what] = notes.get(what, 0) + n


def _text(row: dict[str, Any], name: str, *, required: bool = True, label: str | None = None) -> str:
    """A string field, stripped; missing/None is '' unless required. Errors name ``label``."""
    label = label or name
    value = row.get(name)
    if value is None:
        if required:
            raise RecordError("missing (expected a string)", field=label)
        return ""
    if not isinstance(value, str):
        raise RecordError(f"expected a string, got {_short(value)} ({type(value).__name__})", field=label)
    value = value.strip()
    if required and not value:
        raise RecordError("expected a non-empty string, got an empty one", field=label)
    return value


def _join(instruction: str, extra: str) -> str:
    return f"{instruction}\n\n{extra}" if extra else instruction


def _as_prompt(messages: list[Message], name: str = "prompt") -> Prompt:
    """Single user turn → plain string; anything else → a validated message list."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return check_prompt(messages[0]["content"], name)
    return check_prompt(messages, name)


# ---------------------------------------------------------------------------------------------
# HH-RLHF (Anthropic): {"chosen": transcript, "rejected": transcript}
# ---------------------------------------------------------------------------------------------

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}
# A speaker label inside a turn, not at a turn boundary (the model imitating the human, or
# "\nHuman:" with one newline). Kept as text; counted so the oddity is visible.
_HH_INLINE = re.compile(r"(?:^|\s)(?:Human|Assistant):")


def parse_hh_transcript(text: Any, name: str = "chosen", notes: Notes = None) -> list[Message]:
    """``"\\n\\nHuman: … \\n\\nAssistant: …"`` → messages. Consecutive turns of one speaker are merged.

    Merging matters: a few HH transcripts split the final answer over two ``Assistant:`` blocks
    (5 in harmless-base test); merged, chosen and rejected share their prefix again.
    """
    if not isinstance(text, str):
        raise RecordError(f"expected a transcript string, got {_short(text)}", field=name)
    parts = _HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise RecordError(f"transcript does not parse: expected it to start with '\\n\\nHuman:' and alternate "
                          f"Human/Assistant turns, got {_short(text)}", field=name)
    messages: list[Message] = []
    for i in range(1, len(parts), 2):
        role, content = _HH_ROLE[parts[i]], parts[i + 1].strip()
        if messages and messages[-1]["role"] == role:
            _note(notes, f"hh: consecutive {role} turns merged")
            messages[-1]["content"] = (messages[-1]["content"] + "\n\n" + content).strip()
            continue
        messages.append({"role": role, "content": content})
    if messages[0]["role"] != "user":
        raise RecordError("transcript does not parse: the first turn must be 'Human:'", field=name)
    return messages


def from_hh_rlhf(row: dict[str, Any], notes: Notes = None) -> list[Record]:
    """An HH-RLHF pair → one Comparison: shared prefix → prompt, final Assistant turns → responses.

    Policy (counted, see :class:`Dropped`): identical chosen/rejected transcripts carry no
    preference and are dropped (not made ties: HH annotators never judged them equal, the
    duplicate is an artefact); a pair whose final chosen or rejected turn is empty is dropped
    (our records need a non-empty response; in harmless-base these are "say nothing" answers).
    Malformed (RecordError): a transcript that does not parse or does not end with an
    Assistant turn, and prefixes that still differ after merging split turns.
    """
    extra = set(row) - {"chosen", "rejected"}
    if extra:
        raise RecordError(f"unexpected field(s) {sorted(extra)}; an HH-RLHF row has only 'chosen' and 'rejected'",
                          field=sorted(extra)[0])
    if row.get("chosen") == row.get("rejected") and isinstance(row.get("chosen"), str):
        raise Dropped("hh: chosen and rejected identical")
    merged: dict[str, int] = {}
    chosen = parse_hh_transcript(row.get("chosen"), "chosen", merged)
    rejected = parse_hh_transcript(row.get("rejected"), "rejected", merged)
    if merged:  # counted per pair, not per merge
        _note(notes, "hh: pairs with a turn split over consecutive blocks (merged)")
    for name, conv in (("chosen", chosen), ("rejected", rejected)):
        if conv[-1]["role"] != "assistant" or len(conv) < 2:
            raise RecordError("expected the transcript to end with an 'Assistant:' turn", field=name)
    if chosen[:-1] != rejected[:-1]:
        raise RecordError(f"chosen and rejected differ before their final Assistant turn (expected a shared "
                          f"prefix); {len(chosen) - 1} vs {len(rejected) - 1} prefix turns", field="rejected")
    if not chosen[-1]["content"] or not rejected[-1]["content"]:
        raise Dropped("hh: empty final Assistant turn")
    if chosen[-1]["content"] == rejected[-1]["content"]:
        raise Dropped("hh: chosen and rejected identical")
    if any(_HH_INLINE.search(m["content"]) for m in chosen + rejected[-1:]):
        _note(notes, "hh: speaker label inside a turn (kept as text)")
    prompt = _as_prompt(chosen[:-1])
    _note(notes, "hh: multi-turn prompt" if isinstance(prompt, list) else "hh: single-turn prompt")
    return [Comparison(prompt=prompt, chosen=chosen[-1]["content"], rejected=rejected[-1]["content"],
                       source="hh-rlhf")]


# ---------------------------------------------------------------------------------------------
# Alpaca / self-instruct and Dolly → Demonstration
# ---------------------------------------------------------------------------------------------


def from_alpaca(row: dict[str, Any], notes: Notes = None) -> list[Record]:
    """Alpaca ``{instruction, input, output}`` → one Demonstration; a self-instruct seed task
    ``{id, name, instruction, instances: [{input, output}], is_classification}`` → one per instance.

    The prompt is the instruction, with a non-empty input appended after a blank line.
    """
    instruction = _text(row, "instruction")
    if "instances" not in row:
        extra = _text(row, "input", required=False)
        _note(notes, "alpaca: with input" if extra else "alpaca: without input")
        prompt = _join(instruction, extra)
        return [Demonstration(prompt=prompt, response=_text(row, "output"), source="alpaca",
                              id=None if row.get("id") is None else str(row["id"]))]
    instances = row["instances"]
    if not isinstance(instances, list) or not instances:
        raise RecordError(f"expected a non-empty list of {{input, output}}, got {_short(instances)}", field="instances")
    meta = {k: row[k] for k in ("name", "is_classification") if row.get(k) is not None}
    out: list[Record] = []
    for i, inst in enumerate(instances):
        if not isinstance(inst, dict):
            raise RecordError(f"expected an object {{input, output}}, got {_short(inst)}", field=f"instances[{i}]")
        extra = _text(inst, "input", required=False, label=f"instances[{i}].input")
        _note(notes, "alpaca: with input" if extra else "alpaca: without input")
        prompt = _join(instruction, extra)
        out.append(Demonstration(prompt=prompt, response=_text(inst, "output", label=f"instances[{i}].output"),
                                 id=f"{row.get('id', 'task')}/{i}", source="self-instruct",
                                 meta=dict(meta) or None))
    if len(out) > 1:
        _note(notes, "alpaca: tasks with several instances")
    return out


def from_dolly(row: dict[str, Any], notes: Notes = None) -> list[Record]:
    """Dolly ``{instruction, context, response, category}`` → Demonstration (context after a blank line)."""
    context = _text(row, "context", required=False)
    _note(notes, "dolly: with context" if context else "dolly: without context")
    category = row.get("category")
    return [Demonstration(prompt=_join(_text(row, "instruction"), context), response=_text(row, "response"),
                          category=category if isinstance(category, str) and category else None, source="dolly")]


# ---------------------------------------------------------------------------------------------
# Generic message lists → Demonstration / Comparison
# ---------------------------------------------------------------------------------------------

_ROLE_ALIASES = {"user": "user", "human": "user", "prompter": "user", "assistant": "assistant", "gpt": "assistant",
                 "bot": "assistant", "model": "assistant", "system": "system"}


def normalize_messages(value: Any, name: str = "messages") -> list[Message]:
    """``[{role, content}]`` or ShareGPT ``[{from, value}]`` → ``[{role, content}]`` (roles normalised)."""
    if not isinstance(value, list) or not value:
        raise RecordError(f"expected a non-empty list of messages, got {_short(value)}", field=name)
    out: list[Message] = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise RecordError(f"message {i}: expected an object {{role, content}}, got {_short(m)}", field=name)
        role, content = m.get("role", m.get("from")), m.get("content", m.get("value"))
        if not isinstance(role, str) or role.lower() not in _ROLE_ALIASES:
            raise RecordError(f"message {i}: expected a role among {sorted(_ROLE_ALIASES)}, got {_short(role)}",
                              field=name)
        if not isinstance(content, str):
            raise RecordError(f"message {i}: expected string content, got {_short(content)}", field=name)
        out.append({"role": _ROLE_ALIASES[role.lower()], "content": content.strip()})
    return out


def _final_assistant(conv: list[Message], name: str) -> str:
    if conv[-1]["role"] != "assistant":
        raise RecordError(f"expected the last message to be from the assistant, got role {conv[-1]['role']!r}",
                          field=name)
    if not conv[-1]["content"]:
        raise RecordError("the last (assistant) message is empty; expected a response", field=name)
    return conv[-1]["content"]


def from_messages(row: dict[str, Any], notes: Notes = None) -> list[Record]:
    """``{"messages": [...]}`` (or ``conversations``) → Demonstration: the last assistant turn is
    the response, everything before it the prompt. Conversational preference rows
    (``chosen``/``rejected`` message lists, optionally with a ``prompt`` list, as in TRL) →
    Comparison; without ``prompt`` the shared prefix is the prompt.
    """
    if isinstance(row.get("chosen"), list) or isinstance(row.get("rejected"), list):
        chosen, rejected = normalize_messages(row.get("chosen"), "chosen"), normalize_messages(row.get("rejected"), "rejected")
        if row.get("prompt") is not None:
            prompt_msgs = normalize_messages(row["prompt"], "prompt")
            if len(chosen) != 1 or len(rejected) != 1:
                # TRL's format: with a separate prompt, chosen/rejected are the completion turns only.
                raise RecordError("with a 'prompt' list, expected chosen and rejected to hold one assistant message each",
                                  field="chosen" if len(chosen) != 1 else "rejected")
        else:
            if chosen[:-1] != rejected[:-1]:
                raise RecordError("chosen and rejected differ before their last message (expected a shared prefix)",
                                  field="rejected")
            prompt_msgs = chosen[:-1]
        if not prompt_msgs:
            raise RecordError("no prompt: expected messages before the final assistant turn", field="chosen")
        c, r = _final_assistant(chosen, "chosen"), _final_assistant(rejected, "rejected")
        if c == r:
            raise Dropped("messages: chosen and rejected identical")
        return [Comparison(prompt=_as_prompt(prompt_msgs), chosen=c, rejected=r, source=row.get("source"))]
    name = "messages" if "messages" in row else "conversations"
    conv = normalize_messages(row.get(name), name)
    response = _final_assistant(conv, name)
    if len(conv) < 2:
        raise RecordError("expected at least one message before the assistant's response", field=name)
    return [Demonstration(prompt=_as_prompt(conv[:-1], name), response=response,
                          source=row.get("source") if isinstance(row.get("source"), str) else None)]


# ---------------------------------------------------------------------------------------------
# UltraFeedback: one prompt, several scored completions → Comparisons (+ one Ranking)
# ---------------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """A score: numbers and numeric strings ("4"); "N/A", None, NaN → None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def ultrafeedback_score(completion: dict[str, Any], name: str = "completions[0]") -> float:
    """``overall_score``, else ``fine-grained_score``, else the mean of the per-aspect ``Rating``s
    in ``annotations`` (or of a ``ratings`` mapping). Ratings of "N/A" are ignored."""
    for key in ("overall_score", "fine-grained_score", "score"):
        s = _number(completion.get(key))
        if s is not None:
            return s
    for key in ("annotations", "ratings"):
        table = completion.get(key)
        if isinstance(table, dict):
            values = [_number(v.get("Rating") if isinstance(v, dict) else v) for v in table.values()]
            values = [v for v in values if v is not None]
            if values:
                return sum(values) / len(values)
    raise RecordError("expected a numeric 'overall_score' (or 'fine-grained_score', or 'annotations' with "
                      f"numeric Ratings), got keys {sorted(completion)}", field=name)


def from_ultrafeedback(row: dict[str, Any], notes: Notes = None) -> list[Record]:
    """``{instruction|prompt, completions: [{response, overall_score | annotations}]}`` →
    a Comparison for every pair of completions (higher score chosen; equal scores → ``tie: true``)
    followed by one Ranking of all completions (best first; equal scores keep their order,
    ``meta.scores`` shows the ties). Both say the same thing: take one of them
    (``load_dataset_records`` keeps the comparisons unless asked for ``kind="ranking"``).

    Completions with an empty response are left out (counted); a pair of identical responses is
    left out of the comparisons (counted).
    """
    prompt = _text(row, "instruction" if "instruction" in row else "prompt")
    completions = row.get("completions")
    if not isinstance(completions, list):
        raise RecordError(f"expected a list of {{response, overall_score}}, got {_short(completions)}",
                          field="completions")
    responses, scores = [], []
    for i, c in enumerate(completions):
        if not isinstance(c, dict):
            raise RecordError(f"expected an object {{response, overall_score}}, got {_short(c)}",
                              field=f"completions[{i}]")
        text = _text(c, "response", required=False, label=f"completions[{i}].response")
        if not text:
            _note(notes, "ultrafeedback: empty completion left out")
            continue
        responses.append(text)
        scores.append(ultrafeedback_score(c, f"completions[{i}]"))
    if len(responses) < 2:
        raise Dropped("ultrafeedback: fewer than 2 non-empty completions")
    source = row.get("source") if isinstance(row.get("source"), str) else "ultrafeedback"
    out: list[Record] = []
    for i in range(len(responses)):
        for j in range(i + 1, len(responses)):
            if responses[i] == responses[j]:
                _note(notes, "ultrafeedback: identical pair left out")
                continue
            tie = scores[i] == scores[j]
            a, b = (i, j) if scores[i] >= scores[j] else (j, i)
            _note(notes, "ultrafeedback: tied pairs" if tie else "ultrafeedback: ordered pairs")
            out.append(Comparison(prompt=prompt, chosen=responses[a], rejected=responses[b], tie=tie,
                                  source=source, meta={"scores": [scores[a], scores[b]]}))
    if len(set(scores)) > 1:
        order = sorted(range(len(responses)), key=lambda k: -scores[k])  # stable: ties keep their order
        out.append(Ranking(prompt=prompt, responses=responses, ranking=order, source=source,
                           meta={"scores": scores}))
    else:
        _note(notes, "ultrafeedback: all scores equal, no ranking")
    return out


# ---------------------------------------------------------------------------------------------
# OASST: flat message rows (message_id, parent_id, role, text, rank) → trees → records
# ---------------------------------------------------------------------------------------------


def _flatten_oasst_tree(node: Any, parent_id: Any, out: list[dict[str, Any]], name: str) -> None:
    if not isinstance(node, dict):
        raise RecordError(f"expected a message object, got {_short(node)}", field=name)
    out.append({k: v for k, v in node.items() if k != "replies"} | {"parent_id": parent_id})
    replies = node.get("replies") or []
    if not isinstance(replies, list):
        raise RecordError(f"expected a list of messages, got {_short(replies)}", field=f"{name}.replies")
    for i, child in enumerate(replies):
        _flatten_oasst_tree(child, node.get("message_id"), out, f"{name}.replies[{i}]")


def _check_oasst_message(row: dict[str, Any]) -> dict[str, Any]:
    mid = row.get("message_id")
    if not isinstance(mid, str) or not mid:
        raise RecordError(f"expected a message id string, got {_short(mid)}", field="message_id")
    parent = row.get("parent_id")
    if parent is not None and not isinstance(parent, str):
        raise RecordError(f"expected a message id string or null, got {_short(parent)}", field="parent_id")
    role = row.get("role")
    if role not in ("prompter", "assistant"):
        raise RecordError(f"expected 'prompter' or 'assistant', got {_short(role)}", field="role")
    rank = row.get("rank")
    if rank is not None and (isinstance(rank, bool) or _number(rank) is None or _number(rank) < 0):
        raise RecordError(f"expected a non-negative rank (0 = best) or null, got {_short(rank)}", field="rank")
    return {"id": mid, "parent": parent, "role": "user" if role == "prompter" else "assistant",
            "text": _text(row, "text", required=False), "rank": None if rank is None else _number(rank),
            "gone": row.get("deleted") is True or row.get("review_result") is False,
            "lang": row.get("lang") if isinstance(row.get("lang"), str) else None}


def oasst_records(messages: list[dict[str, Any]], notes: Notes = None, drops: Notes = None) -> list[Record]:
    """Checked OASST messages (one or many trees) → records.

    - Demonstration for every assistant reply on a *best-ranked path*: from each root prompt,
      at every prompter turn take the rank-0 reply (or the only reply when none is ranked) and
      follow every prompter reply below it. The prompt is the conversation before the reply.
    - Ranking of the ranked assistant replies to every prompter turn (any path) with ≥ 2 of them.
    - Deleted messages and those that failed review are left out with their subtrees, as are
      messages whose parent is not in the file (counted in ``drops``).
    """
    by_id = {m["id"]: m for m in messages}
    children: dict[str, list[dict[str, Any]]] = {}
    roots = []
    for m in messages:
        if m["gone"]:
            _note(drops, "oasst: deleted or failed-review message (with its replies)")
            continue
        if m["parent"] is None:
            if m["role"] != "user":
                _note(drops, "oasst: tree root that is not a prompter message")
                continue
            roots.append(m)
        elif m["parent"] not in by_id:
            _note(drops, "oasst: parent not in the file (with its replies)")
        else:
            children.setdefault(m["parent"], []).append(m)
    out: list[Record] = []

    def visit(prompter: dict[str, Any], path: list[Message], best_path: bool) -> None:
        path = path + [{"role": "user", "content": prompter["text"]}]
        if not prompter["text"]:
            _note(drops, "oasst: empty prompter message (with its replies)")
            return
        replies = [c for c in children.get(prompter["id"], []) if c["role"] == "assistant" and c["text"]]
        _note(drops, "oasst: empty assistant message",
              sum(1 for c in children.get(prompter["id"], []) if c["role"] == "assistant" and not c["text"]))
        ranked = [c for c in replies if c["rank"] is not None]
        prompt = _as_prompt(path)
        if len(ranked) >= 2:
            ranks = [c["rank"] for c in ranked]
            if len(set(ranks)) == len(ranks):
                out.append(Ranking(prompt=prompt, responses=[c["text"] for c in ranked],
                                   ranking=sorted(range(len(ranked)), key=lambda k: ranks[k]),
                                   id=prompter["id"], source="oasst",
                                   meta={"lang": prompter["lang"]} if prompter["lang"] else None))
            else:
                _note(notes, "oasst: sibling ranks tied, no ranking")
        best = min(ranked, key=lambda c: c["rank"]) if ranked else (replies[0] if len(replies) == 1 else None)
        if best is None and len(replies) > 1:
            _note(notes, "oasst: several unranked replies, no demonstration")
        for reply in replies:
            is_best = best_path and reply is best
            if is_best:
                out.append(Demonstration(prompt=prompt, response=reply["text"], id=reply["id"], source="oasst",
                                         meta={"lang": reply["lang"]} if reply["lang"] else None))
            for nxt in children.get(reply["id"], []):
                if nxt["role"] == "user":
                    visit(nxt, path + [{"role": "assistant", "content": reply["text"]}], is_best)

    for root in roots:
        visit(root, [], True)
    return out


def from_oasst_tree(row: dict[str, Any], notes: Notes = None) -> list[Record]:
    """One exported OASST tree ``{message_tree_id, prompt: {message_id, role, text, rank, replies}}``."""
    flat: list[dict[str, Any]] = []
    _flatten_oasst_tree(row.get("prompt"), None, flat, "prompt")
    drops: dict[str, int] = {}
    out = oasst_records([_check_oasst_message(m) for m in flat], notes, drops)
    for reason, n in drops.items():
        _note(notes, reason, n)
    return out


# ---------------------------------------------------------------------------------------------
# Detection and the loader
# ---------------------------------------------------------------------------------------------

ROW_ADAPTERS: dict[str, Callable[..., list[Record]]] = {
    "hh-rlhf": from_hh_rlhf, "alpaca": from_alpaca, "dolly": from_dolly,
    "ultrafeedback": from_ultrafeedback, "messages": from_messages,
}


def detect_format(row: Any) -> str:
    """The format of a raw row, from its fields (the loader looks at the first row)."""
    if not isinstance(row, dict):
        raise RecordError(f"expected a JSON object, got {_short(row)}")
    keys = set(row)
    if {"message_id", "role", "text"} <= keys or ("message_tree_id" in keys and isinstance(row.get("prompt"), dict)):
        return "oasst"
    if "completions" in keys and ("instruction" in keys or "prompt" in keys):
        return "ultrafeedback"
    if {"chosen", "rejected"} <= keys:
        if isinstance(row["chosen"], list):
            return "messages"
        if "prompt" not in keys and isinstance(row["chosen"], str) and "Assistant:" in row["chosen"]:
            return "hh-rlhf"
        return "records"
    if "instruction" in keys and ("instances" in keys or "output" in keys):
        return "alpaca"
    if {"instruction", "response"} <= keys and ("context" in keys or "category" in keys):
        return "dolly"
    conv = row.get("messages", row.get("conversations"))
    if "prompt" not in keys and isinstance(conv, list) and conv and isinstance(conv[-1], dict):
        last_role = str(conv[-1].get("role", conv[-1].get("from", ""))).lower()
        # A list ending with a user turn is a prompt record (records format), not a demonstration.
        if _ROLE_ALIASES.get(last_role) == "assistant":
            return "messages"
    return "records"


def load_dataset_records(path: str | os.PathLike, format: str = "auto", on_bad: str = "error",
                         report: ReadReport | None = None, kind: str | Iterable[str] | None = None,
                         max_records: int | None = None) -> list[Record]:
    """Read a dataset file or directory in any supported format into records.

    ``format="auto"`` detects it from the first row's fields (:func:`detect_format`).
    ``on_bad``: "error" raises the first malformed row as ``path:line: field 'x': ...``;
    "skip" skips and counts malformed rows in ``report`` (pass a :class:`ReadReport` to see them).
    ``kind`` keeps only records of that kind (or kinds); the others are counted as dropped.
    ``None`` keeps all — except for UltraFeedback, whose Ranking restates its Comparisons, where
    it keeps the comparisons (ask ``kind="ranking"`` for the rankings).
    """
    if on_bad not in ("error", "skip"):
        raise ValueError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected auto or one of {', '.join(FORMATS)}")
    path = str(path)
    report = report if report is not None else ReadReport(path)
    kinds = {kind} if isinstance(kind, str) else (set(kind) if kind is not None else None)
    out: list[Record] = []

    def fail(err: RecordError, lineno: int) -> None:
        err = RecordError(err.reason, path=path, line=lineno, field=err.field) if err.line is None else err
        if on_bad == "error":
            raise err
        report.note(err)

    def keep(records: list[Record]) -> None:
        for rec in records:
            wanted = kinds if kinds is not None else ({"comparison"} if fmt == "ultrafeedback" else None)
            if wanted is not None and rec.kind not in wanted:
                report.drop(f"{rec.kind} records not asked for")
                continue
            out.append(rec)
            report.kinds[rec.kind] = report.kinds.get(rec.kind, 0) + 1

    fmt = None if format == "auto" else format
    oasst_rows: list[dict[str, Any]] = []
    oasst_lines: dict[str, int] = {}
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
                raise RecordError(f"{e.reason}; cannot detect the dataset format (pass format=one of "
                                  f"{', '.join(FORMATS)})", path=path, line=lineno) from None
            report.format = fmt
        try:
            if fmt == "records":
                keep([parse_record(obj)])
            elif fmt == "oasst":
                if not isinstance(obj, dict):
                    raise RecordError(f"expected a JSON object, got {_short(obj)}")
                if "message_tree_id" in obj and isinstance(obj.get("prompt"), dict):
                    keep(from_oasst_tree(obj, report.notes))
                else:  # flat rows: a tree is only complete at the end of the file
                    msg = _check_oasst_message(obj)
                    oasst_rows.append(msg)
                    oasst_lines[msg["id"]] = lineno
            else:
                if not isinstance(obj, dict):
                    raise RecordError(f"expected a JSON object, got {_short(obj)}")
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
