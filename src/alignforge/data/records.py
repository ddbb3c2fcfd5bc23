"""The record types every stage reads and writes (design §3, §8), and their file I/O.

One JSON object per line (JSONL, plain or ``.gz``), Parquet, or a local Hugging Face ``datasets``
directory. Reading is strict: a malformed record raises :class:`RecordError` naming the file, the
line (or row), the field and what was expected. With ``on_bad="skip"`` bad records are skipped
*and counted* (see :class:`ReadReport`); nothing is ever dropped silently.

Record kinds (``kind`` is inferred from the fields, or forced by the caller):

=============  =============================================================================
text           ``text``
prompt         ``prompt`` (a string, or a ``messages`` list of ``{role, content}``)
demonstration  ``prompt``, ``response``
comparison     ``prompt``, ``chosen``, ``rejected``; optional ``strength`` 0–3, ``tie``
ranking        ``prompt``, ``responses`` [K], ``ranking`` (indices best → worst)
rating         ``prompt``, ``response``, ``likert`` 1–7, ``flags``, optional ``helpful``/``honest``/``harmless``
candidates     ``prompt``, ``responses`` [K], unlabelled (what annotators are shown)
unpaired       ``prompt``, ``response``, ``label`` true/false: one response judged good or bad, with no
               partner (TRL's KTO layout, a thumbs-up/down export)
=============  =============================================================================

A record that lacks a field its kind requires reads ``missing field 'rejected' for a comparison
record (...)``: the kind is the one its other fields point to (``chosen`` → comparison).

Every record may carry provenance: ``id``, ``category``, ``source``, ``annotator``, ``policy``
(checkpoint id), ``round``, ``sampling`` (temperature/top-p), and a free ``meta`` mapping.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator, Literal, Optional, Union

from alignforge.io import atomic_open
from alignforge.textcheck import find_surrogate, json_line_may_hold_surrogate

Message = dict[str, str]
Prompt = Union[str, list[Message]]

ROLES = ("system", "user", "assistant")
STRENGTHS = ("negligibly better", "slightly better", "better", "significantly better")  # 0..3 (Llama-2)
FLAGS = (
    "fails_instruction",
    "inappropriate_for_customer",
    "sexual",
    "violent",
    "harmful_advice",
    "moral_judgment",
    "denigrates_protected_class",
    "hallucination",
)


class RecordError(ValueError):
    """A record is malformed. ``str(e)`` reads ``path:line: field 'x': expected ..., got ...``."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.path, self.line, self.field, self.reason = path, line, field, message
        where = f"{path}:{line}: " if path is not None and line is not None else (f"{path}: " if path else "")
        # "missing field 'x' ..." names its field already.
        what = f"field '{field}': " if field and not message.startswith(f"missing field '{field}'") else ""
        super().__init__(f"{where}{what}{message}")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Field validators: each raises RecordError(field=...) with what was expected.
# ---------------------------------------------------------------------------------------------


def check_prompt(value: Any, name: str = "prompt") -> Prompt:
    if isinstance(value, str):
        if not value.strip():
            raise RecordError("expected a non-empty string or a list of messages, got an empty string", field=name)
        return value
    if isinstance(value, list) and value:
        for i, m in enumerate(value):
            if not isinstance(m, dict) or set(m) - {"role", "content"} or "role" not in m or "content" not in m:
                raise RecordError(f"message {i}: expected {{'role', 'content'}}, got {_short(m)}", field=name)
            if m["role"] not in ROLES:
                raise RecordError(f"message {i}: role must be one of {ROLES}, got {m['role']!r}", field=name)
            if not isinstance(m["content"], str):
                raise RecordError(f"message {i}: content must be a string, got {_short(m['content'])}", field=name)
        return [dict(role=m["role"], content=m["content"]) for m in value]
    raise RecordError(f"expected a non-empty string or a non-empty list of messages, got {_short(value)}", field=name)


def check_text(value: Any, name: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise RecordError(f"expected a string, got {_short(value)} ({type(value).__name__})", field=name)
    if not allow_empty and not value.strip():
        raise RecordError("expected a non-empty string, got an empty one", field=name)
    return value


def check_int(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise RecordError(f"expected an integer {lo}–{hi}, got {_short(value)}", field=name)
    if not lo <= int(value) <= hi:
        raise RecordError(f"expected an integer {lo}–{hi}, got {value}", field=name)
    return int(value)


def check_responses(value: Any, name: str = "responses", min_k: int = 2) -> list[str]:
    if not isinstance(value, list) or len(value) < min_k:
        raise RecordError(f"expected a list of at least {min_k} response strings, got {_short(value)}", field=name)
    return [check_text(v, f"{name}[{i}]") for i, v in enumerate(value)]


# ---------------------------------------------------------------------------------------------
# Record types
# ---------------------------------------------------------------------------------------------

_PROVENANCE = ("id", "category", "source", "annotator", "policy", "round", "sampling", "meta")


@dataclass
class Record:
    """Base: provenance fields shared by every record."""

    kind: ClassVar[str] = "record"

    id: Optional[str] = None
    category: Optional[str] = None
    source: Optional[str] = None
    annotator: Optional[str] = None
    policy: Optional[str] = None
    round: Optional[int] = None
    sampling: Optional[dict[str, Any]] = None
    meta: Optional[dict[str, Any]] = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, without the unset (None) optional fields."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None or (f.name == "tie" and v is False):
                continue
            out[f.name] = v
        return out

    @classmethod
    def _provenance(cls, d: dict[str, Any]) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        for key in ("id", "category", "source", "annotator", "policy"):
            if d.get(key) is not None:
                v = d[key]
                kw[key] = v if isinstance(v, str) else str(v)
        if d.get("round") is not None:
            kw["round"] = check_int(d["round"], "round", 0, 10**9)
        for key in ("sampling", "meta"):
            if d.get(key) is not None:
                if not isinstance(d[key], dict):
                    raise RecordError(f"expected a mapping, got {_short(d[key])}", field=key)
                kw[key] = d[key]
        return kw

    @classmethod
    def required(cls) -> tuple[str, ...]:
        return ()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Record":
        raise NotImplementedError

    @classmethod
    def allowed(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)} | {"messages"}


@dataclass
class TextRecord(Record):
    kind: ClassVar[str] = "text"
    text: str = ""

    @classmethod
    def required(cls):
        return ("text",)

    @classmethod
    def from_dict(cls, d):
        return cls(text=check_text(d.get("text"), "text"), **cls._provenance(d))


def _prompt_of(d: dict[str, Any]) -> Prompt:
    if "prompt" in d:
        return check_prompt(d["prompt"], "prompt")
    if "messages" in d:
        return check_prompt(d["messages"], "messages")
    raise RecordError("missing field 'prompt' (expected a string or a list of messages)", field="prompt")


@dataclass
class PromptRecord(Record):
    kind: ClassVar[str] = "prompt"
    prompt: Prompt = ""

    @classmethod
    def required(cls):
        return ("prompt",)

    @classmethod
    def from_dict(cls, d):
        return cls(prompt=_prompt_of(d), **cls._provenance(d))


@dataclass
class Demonstration(Record):
    kind: ClassVar[str] = "demonstration"
    prompt: Prompt = ""
    response: str = ""

    @classmethod
    def required(cls):
        return ("prompt", "response")

    @classmethod
    def from_dict(cls, d):
        return cls(prompt=_prompt_of(d), response=check_text(d.get("response"), "response"), **cls._provenance(d))


@dataclass
class Comparison(Record):
    """``chosen`` preferred over ``rejected``; ``strength`` 0–3 (negligibly … significantly better).

    A tie is ``tie: true`` (chosen/rejected order then carries no meaning); reward training drops
    and counts ties. The loss margin per strength level lives in the reward config, not here.
    """

    kind: ClassVar[str] = "comparison"
    prompt: Prompt = ""
    chosen: str = ""
    rejected: str = ""
    strength: Optional[int] = None
    tie: bool = False

    @classmethod
    def required(cls):
        return ("prompt", "chosen", "rejected")

    @classmethod
    def from_dict(cls, d):
        chosen = check_text(d.get("chosen"), "chosen")
        rejected = check_text(d.get("rejected"), "rejected")
        tie = d.get("tie", False)
        if not isinstance(tie, bool):
            raise RecordError(f"expected true or false, got {_short(tie)}", field="tie")
        strength = d.get("strength", d.get("margin"))
        if strength is not None:
            strength = check_int(strength, "strength", 0, 3)
        if chosen == rejected and not tie:
            raise RecordError("chosen and rejected are identical (mark it `tie: true` or drop it)", field="chosen")
        return cls(prompt=_prompt_of(d), chosen=chosen, rejected=rejected, strength=strength, tie=tie,
                   **cls._provenance(d))

    @classmethod
    def allowed(cls):
        return super().allowed() | {"margin"}


@dataclass
class Ranking(Record):
    """K responses and their order, best first: ``ranking[0]`` is the index of the best."""

    kind: ClassVar[str] = "ranking"
    prompt: Prompt = ""
    responses: list[str] = field(default_factory=list)
    ranking: list[int] = field(default_factory=list)

    @classmethod
    def required(cls):
        return ("prompt", "responses", "ranking")

    @classmethod
    def from_dict(cls, d):
        responses = check_responses(d.get("responses"))
        ranking = d.get("ranking")
        if (not isinstance(ranking, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in ranking)
                or sorted(ranking) != list(range(len(responses)))):
            raise RecordError(f"expected a permutation of 0..{len(responses) - 1} (best first), got {_short(ranking)}",
                              field="ranking")
        return cls(prompt=_prompt_of(d), responses=responses, ranking=list(ranking), **cls._provenance(d))

    def comparisons(self) -> list[tuple[int, int]]:
        """All C(K,2) (better, worse) index pairs implied by the ranking."""
        order = self.ranking
        return [(order[i], order[j]) for i in range(len(order)) for j in range(i + 1, len(order))]


@dataclass
class Rating(Record):
    """A Likert 1–7 rating with the InstructGPT flags and optional helpful/honest/harmless 1–7."""

    kind: ClassVar[str] = "rating"
    prompt: Prompt = ""
    response: str = ""
    likert: int = 0
    flags: dict[str, bool] = field(default_factory=dict)
    helpful: Optional[int] = None
    honest: Optional[int] = None
    harmless: Optional[int] = None

    @classmethod
    def required(cls):
        return ("prompt", "response", "likert")

    @classmethod
    def from_dict(cls, d):
        flags = d.get("flags") or {}
        if isinstance(flags, list):  # a list of raised flag names is accepted too
            flags = {name: True for name in flags}
        if not isinstance(flags, dict):
            raise RecordError(f"expected a mapping of flag → bool, got {_short(flags)}", field="flags")
        for name, v in flags.items():
            if name not in FLAGS:
                raise RecordError(f"unknown flag {name!r}; expected one of {', '.join(FLAGS)}", field="flags")
            if not isinstance(v, bool):
                raise RecordError(f"flag {name!r}: expected true/false, got {_short(v)}", field="flags")
        axes = {k: check_int(d[k], k, 1, 7) for k in ("helpful", "honest", "harmless") if d.get(k) is not None}
        return cls(prompt=_prompt_of(d), response=check_text(d.get("response"), "response"),
                   likert=check_int(d.get("likert"), "likert", 1, 7), flags=dict(flags), **axes,
                   **cls._provenance(d))


@dataclass
class Candidates(Record):
    """An unlabelled prompt with K candidate responses (input to annotation)."""

    kind: ClassVar[str] = "candidates"
    prompt: Prompt = ""
    responses: list[str] = field(default_factory=list)

    @classmethod
    def required(cls):
        return ("prompt", "responses")

    @classmethod
    def from_dict(cls, d):
        return cls(prompt=_prompt_of(d), responses=check_responses(d.get("responses"), min_k=1),
                   **cls._provenance(d))


@dataclass
class UnpairedFeedback(Record):
    """One response judged on its own: ``label`` true (desirable) or false (undesirable).

    What TRL calls *unpaired preference* (KTO's input) and what a thumbs-up/down interface exports.
    It is not a comparison: there is no second response, so a Bradley–Terry reward model or DPO
    cannot train on it, and those stages refuse a file of these by name.
    """

    kind: ClassVar[str] = "unpaired"
    prompt: Prompt = ""
    response: str = ""
    label: bool = False

    @classmethod
    def required(cls):
        return ("prompt", "response", "label")

    @classmethod
    def from_dict(cls, d):
        label = d.get("label")
        if not isinstance(label, bool):
            raise RecordError(f"expected true (desirable) or false (undesirable), got {_short(label)}", field="label")
        return cls(prompt=_prompt_of(d), response=check_text(d.get("response"), "response"), label=label,
                   **cls._provenance(d))


RECORD_TYPES: dict[str, type[Record]] = {
    t.kind: t for t in (TextRecord, PromptRecord, Demonstration, Comparison, Ranking, Rating, Candidates,
                        UnpairedFeedback)
}
RecordKind = Literal["text", "prompt", "demonstration", "comparison", "ranking", "rating", "candidates", "unpaired"]

# What each kind is, in words, for messages that tell a user what a file holds.
KIND_DESCRIPTIONS: dict[str, str] = {
    "text": "plain text (pretraining)",
    "prompt": "prompts without responses",
    "demonstration": "prompt + response (supervised fine-tuning)",
    "comparison": "prompt + chosen/rejected pairs",
    "ranking": "prompt + K responses ranked best first",
    "rating": "prompt + response with a 1-7 Likert rating",
    "candidates": "prompt + K unlabelled responses",
    "unpaired": "unpaired feedback: prompt + response + label true/false, TRL's KTO layout",
}


def describe_kinds(counts: dict[str, int]) -> str:
    """``{"unpaired": 3}`` → ``"3 unpaired records (unpaired feedback: ...)"``, for error messages."""
    return "; ".join(f"{n} {k} record{'s' if n != 1 else ''} ({KIND_DESCRIPTIONS.get(k, k)})"
                     for k, n in sorted(counts.items()))


def infer_kind(d: dict[str, Any]) -> str:
    """Which record type a dict is, from its most distinctive fields (most specific first).

    One distinctive field is enough (``chosen`` or ``rejected`` → comparison), so a record that
    lacks a required field is reported as missing it, not as the wrong kind.
    """
    keys = set(d)
    if "chosen" in keys or "rejected" in keys:
        return "comparison"
    if "ranking" in keys:
        return "ranking"
    if "likert" in keys:
        return "rating"
    if "label" in keys:
        return "unpaired"
    if "responses" in keys:
        return "candidates"
    if "response" in keys:
        return "demonstration"
    if "prompt" in keys or "messages" in keys:
        return "prompt"
    if "text" in keys:
        return "text"
    raise RecordError(f"cannot tell the record type from fields {sorted(keys)}; expected one of the "
                      f"record types: {', '.join(RECORD_TYPES)}")


def parse_record(d: Any, kind: str | None = None, strict_fields: bool = True) -> Record:
    """Validate one dict into a record. Raises :class:`RecordError` (without path/line)."""
    if not isinstance(d, dict):
        raise RecordError(f"expected a JSON object, got {_short(d)}")
    kind = kind or infer_kind(d)
    if kind not in RECORD_TYPES:
        raise RecordError(f"unknown record kind {kind!r}; expected one of {', '.join(RECORD_TYPES)}")
    cls = RECORD_TYPES[kind]
    missing = [f for f in cls.required() if f not in d and not (f == "prompt" and "messages" in d)]
    if missing:
        also = f" (and {', '.join(repr(m) for m in missing[1:])})" if len(missing) > 1 else ""
        raise RecordError(f"missing field '{missing[0]}'{also} for a {kind} record (a {kind} record has "
                          f"{', '.join(cls.required())}; this one has {', '.join(sorted(d)) or 'no fields'})",
                          field=missing[0])
    if strict_fields:
        extra = set(d) - cls.allowed()
        if extra:
            hint = _FOREIGN_HINTS.get(sorted(extra & set(_FOREIGN_HINTS))[0]) if extra & set(_FOREIGN_HINTS) else None
            raise RecordError(f"unexpected field(s) {sorted(extra)} for a {kind} record "
                              f"(allowed: {', '.join(sorted(cls.allowed()))}; put extras under 'meta')"
                              + (f"; {hint}" if hint else ""), field=sorted(extra)[0])
    return cls.from_dict(d)


# Fields of other datasets' layouts that land in our record format when a format is forced.
_FOREIGN_HINTS = {
    "completion": "'prompt' + 'completion' is TRL's prompt-completion layout (with 'label': unpaired "
                  "feedback): read it with format=auto or format=prompt-completion / unpaired",
    "instruction": "'instruction' is the Alpaca/Dolly layout: read it with format=auto, alpaca or dolly",
    "conversations": "'conversations' is the ShareGPT layout: read it with format=auto or format=messages",
}


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


@dataclass
class ReadReport:
    """What a read did, so nothing is dropped silently.

    - ``read``: records produced; ``rows``: raw rows (lines) seen; ``kinds``: records per kind.
    - ``skipped`` / ``errors``: malformed rows skipped under ``on_bad="skip"`` (first 20 messages).
    - ``dropped``: rows (or parts of rows) a format adapter leaves out *by documented policy*,
      counted per reason (e.g. HH-RLHF pairs whose chosen and rejected are identical).
    - ``notes``: repairs and oddities counted per kind (e.g. merged consecutive assistant turns).
    """

    path: str
    read: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)
    rows: int = 0
    format: Optional[str] = None
    kinds: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)

    def note(self, err: RecordError) -> None:
        """Count one skipped malformed row (``on_bad="skip"``)."""
        self.skipped += 1
        if len(self.errors) < 20:
            self.errors.append(str(err))

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def notice(self, what: str, n: int = 1) -> None:
        self.notes[what] = self.notes.get(what, 0) + n

    def summary(self) -> str:
        s = f"{self.path}: {self.read} records"
        if self.format:
            s += f" ({self.format} format, {self.rows} rows)"
        if len(self.kinds) > 1:
            s += " [" + ", ".join(f"{k}: {v}" for k, v in sorted(self.kinds.items())) + "]"
        if self.skipped:
            s += f", {self.skipped} bad records skipped (first: {self.errors[0]})"
        if self.dropped:
            s += "; dropped: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.dropped.items()))
        if self.notes:
            s += "; notes: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.notes.items()))
        return s


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_raw(path: str | os.PathLike, bad_json: str = "raise") -> Iterator[tuple[int, Any]]:
    """(line or row number, raw object) from JSONL(.gz), JSON list, Parquet or an HF datasets dir.

    A line that is not valid JSON raises :class:`RecordError` with the path and line number; with
    ``bad_json="yield"`` the error is yielded in place of the object instead, so a reader that
    skips bad lines (``on_bad="skip"``) can count it and go on to the next line.
    """
    if bad_json not in ("raise", "yield"):
        raise ValueError(f"bad_json must be 'raise' or 'yield', got {bad_json!r}")
    p = Path(path)
    if not p.exists():
        raise RecordError("file not found", path=str(p))
    if p.is_dir():
        yield from _iter_hf_dir(p, bad_json)
        return
    name = p.name.removesuffix(".gz")
    if name.endswith(".parquet"):
        yield from _iter_parquet(p)
        return
    if name.endswith(".json") and not name.endswith(".jsonl"):
        try:
            with _open_text(p) as f:
                head = f.read(4096).lstrip()
        except UnicodeDecodeError as e:
            raise _utf8_error(p, e) from None
        # Many datasets ship JSON Lines under a .json name; a JSON list starts with '['.
        if head.startswith("["):
            with _open_text(p) as f:
                try:
                    data = json.load(f)
                except json.JSONDecodeError as e:
                    # A JSON document is all or nothing: no line can be skipped, so this always raises.
                    raise RecordError(f"not valid JSON: {e.msg} (column {e.colno}); expected a JSON list of "
                                      f"records", path=str(p), line=e.lineno) from None
                except UnicodeDecodeError as e:
                    raise _utf8_error(p, e) from None
            # Numbered by element (a JSON list has no lines of its own).
            for i, obj in enumerate(data, 1):
                err = _surrogate_error(obj, p, i)
                if err is not None and bad_json == "raise":
                    raise err
                yield i, (obj if err is None else err)
            return
    with _open_text(p) as f:
        lineno = 0
        try:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    # Without its newline, so a line cut short reports the column where it ends.
                    obj = json.loads(line.rstrip("\r\n"))
                except json.JSONDecodeError as e:
                    err = RecordError(f"not valid JSON: {e.msg} (column {e.pos + 1}); expected one JSON object "
                                      f"per line", path=str(p), line=lineno)
                else:
                    err = _surrogate_error(obj, p, lineno) if json_line_may_hold_surrogate(line) else None
                if err is not None and bad_json == "raise":
                    raise err from None
                yield lineno, (obj if err is None else err)
        except UnicodeDecodeError as e:  # bytes that are not UTF-8: say on which line
            raise _utf8_error(p, e) from None
        except (OSError, EOFError) as e:  # truncated .gz, binary junk
            raise RecordError(f"cannot read the file after line {lineno}: {e}", path=str(p)) from None


def _surrogate_error(obj: Any, path: Path, line: int) -> RecordError | None:
    """A record whose text holds a lone surrogate (JSON ``"\\udcff"``) is refused here, where its
    file and line are known: such text is not Unicode, and would otherwise fail much later and far
    away (a tokenizer's TypeError, a 500 in the feedback app, an export that cannot be written)."""
    found = find_surrogate(obj)
    if found is None:
        return None
    return RecordError(found.message(), path=str(path), line=line, field=found.field or None)


def _utf8_error(p: Path, e: UnicodeDecodeError) -> RecordError:
    """The text decoder reads ahead in blocks, so the line it was on says nothing: find the first
    byte that is not UTF-8 by line, in the raw (decompressed) bytes."""
    try:
        with (gzip.open(p, "rb") if p.suffix == ".gz" else open(p, "rb")) as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as bad:
                    byte = raw[bad.start]
                    return RecordError(f"not valid UTF-8: byte 0x{byte:02x} at byte {bad.start + 1} of the line "
                                       f"({bad.reason}); expected UTF-8 text", path=str(p), line=lineno)
    except (OSError, EOFError):
        pass
    return RecordError(f"not valid UTF-8 ({e.reason}); expected UTF-8 text", path=str(p))


def _iter_parquet(p: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise RecordError(f"not a readable Parquet file: {e}", path=str(p)) from None
    for i, row in enumerate(table.to_pylist(), 1):
        yield i, _drop_nulls(row)


def _iter_hf_dir(p: Path, bad_json: str = "raise") -> Iterator[tuple[int, Any]]:
    """A directory saved with ``datasets.Dataset.save_to_disk`` (or a DatasetDict: 'train' split)."""
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - datasets is a base dependency
        raise RecordError("reading a datasets directory needs the `datasets` package", path=str(p)) from e
    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as e:
        files = sorted(x for x in p.iterdir() if x.suffix in (".jsonl", ".parquet", ".gz", ".json"))
        if files:  # a plain folder of data files
            for f in files:
                yield from iter_raw(f, bad_json)
            return
        raise RecordError(f"not a datasets directory (load_from_disk failed: {e})", path=str(p)) from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise RecordError(f"DatasetDict without a 'train' split (splits: {list(ds)})", path=str(p))
        ds = ds["train"]
    for i, row in enumerate(ds, 1):
        yield i, _drop_nulls(row)


def _drop_nulls(value: Any) -> Any:
    """Columnar formats (Parquet, Arrow) give every row every column and every struct every key,
    filling the absent ones with null; a record treats null as absent. Recursive, because a
    ``flags``/``meta`` mapping becomes a struct with the union of the keys seen in the file."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def read_records(path: str | os.PathLike, kind: str | None = None, on_bad: str = "error",
                 report: ReadReport | None = None, strict_fields: bool = True) -> list[Record]:
    """Read and validate every record in ``path`` (our own record format, design §3).

    ``on_bad="error"`` raises the first :class:`RecordError` (with path and line);
    ``on_bad="skip"`` skips bad records (invalid JSON lines included) and counts them in
    ``report`` (pass one in to see them). For other datasets' schemas use
    :func:`alignforge.data.formats.load_dataset_records`.
    """
    if on_bad not in ("error", "skip"):
        raise ValueError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")
    report = report if report is not None else ReadReport(str(path))
    report.format = report.format or "records"
    out: list[Record] = []
    for lineno, obj in iter_raw(path, bad_json="raise" if on_bad == "error" else "yield"):
        report.rows += 1
        if isinstance(obj, RecordError):
            report.note(obj)
            continue
        try:
            rec = parse_record(obj, kind, strict_fields=strict_fields)
        except RecordError as e:
            err = RecordError(e.reason, path=str(path), line=lineno, field=e.field)
            if on_bad == "error":
                raise err from None
            report.note(err)
            continue
        out.append(rec)
        report.kinds[rec.kind] = report.kinds.get(rec.kind, 0) + 1
    report.read = len(out)
    return out


def write_records(path: str | os.PathLike, records: Iterable[Record | dict[str, Any]]) -> int:
    """Write records atomically as JSONL (``.jsonl``/``.jsonl.gz``) or Parquet. Returns the count."""
    p = Path(path)
    rows = [r.to_dict() if isinstance(r, Record) else r for r in records]
    if p.name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        # A Parquet column has one type: string prompts and message-list prompts cannot share one.
        prompt_types = {type(r["prompt"]).__name__ for r in rows if isinstance(r, dict) and "prompt" in r}
        if len(prompt_types) > 1:
            raise RecordError("a Parquet column holds one type, but these prompts mix plain strings and "
                              "message lists; write JSONL, or convert the prompts with as_messages()",
                              path=str(p), field="prompt")
        # Column by column over *all* rows: Table.from_pylist takes its schema from the first row
        # and silently drops keys that only later rows have (an `id` set from row 2 on, say).
        keys = list(dict.fromkeys(k for r in rows for k in r))
        try:
            table = pa.Table.from_pydict({k: pa.array([r.get(k) for r in rows]) for k in keys})
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise RecordError(f"cannot store these records as Parquet columns: {e}", path=str(p)) from None
        with atomic_open(p, "wb") as f:
            pq.write_table(table, f)
        return len(rows)
    if p.name.endswith(".gz"):
        with atomic_open(p, "wb") as f:
            # mtime=0: same records -> byte-identical file (reproducible world generation).
            with gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as gz:
                for row in rows:
                    gz.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
        return len(rows)
    with atomic_open(p, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)


def prompt_text(prompt: Prompt) -> str:
    """A prompt as plain text (the last user message for a message list) — for display and judges."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return users[-1] if users else prompt[-1]["content"]


def as_messages(prompt: Prompt) -> list[Message]:
    """A prompt as a chat message list."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
