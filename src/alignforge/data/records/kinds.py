"""The record kinds (design §3, §8): one dataclass per kind, the field validators, how a dict's kind is
told from its fields, and :func:`parse_record` (a dict → a validated record, or a :class:`RecordError`
naming the field and what was expected). The kinds and their fields are listed in
:mod:`alignforge.data.records`; reading and writing files are :mod:`.reading` and :mod:`.writing`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, Optional, Union

Message = dict[str, str]
Prompt = Union[str, list[Message]]
FieldReader = Callable[[dict[str, Any]], Any]  # a record dict → one field's validated value

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
    """Base: provenance fields shared by every record.

    A kind whose fields are each read on its own lists them in ``field_readers`` (field → reader of
    the dict, in the order they are checked): those are its required fields, and :meth:`from_dict`
    builds it from them. A kind with checks across fields overrides ``required`` and ``from_dict``.
    """

    kind: ClassVar[str] = "record"
    field_readers: ClassVar[dict[str, FieldReader]] = {}

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
        return tuple(cls.field_readers)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Record":
        if not cls.field_readers:
            raise NotImplementedError
        return cls(**{name: read(d) for name, read in cls.field_readers.items()}, **cls._provenance(d))

    @classmethod
    def allowed(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)} | {"messages"}


def _prompt_of(d: dict[str, Any]) -> Prompt:
    if "prompt" in d:
        return check_prompt(d["prompt"], "prompt")
    if "messages" in d:
        return check_prompt(d["messages"], "messages")
    raise RecordError("missing field 'prompt' (expected a string or a list of messages)", field="prompt")


def _text_of(name: str) -> Callable[[dict[str, Any]], str]:
    """The reader of a non-empty string field ``name``."""
    return lambda d: check_text(d.get(name), name)


@dataclass
class TextRecord(Record):
    kind: ClassVar[str] = "text"
    text: str = ""
    field_readers: ClassVar[dict[str, FieldReader]] = {"text": _text_of("text")}


@dataclass
class PromptRecord(Record):
    kind: ClassVar[str] = "prompt"
    prompt: Prompt = ""
    field_readers: ClassVar[dict[str, FieldReader]] = {"prompt": _prompt_of}


@dataclass
class Demonstration(Record):
    kind: ClassVar[str] = "demonstration"
    prompt: Prompt = ""
    response: str = ""
    field_readers: ClassVar[dict[str, FieldReader]] = {"prompt": _prompt_of, "response": _text_of("response")}


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

    field_readers: ClassVar[dict[str, FieldReader]] = {
        "prompt": _prompt_of, "responses": lambda d: check_responses(d.get("responses"), min_k=1)}


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


def prompt_text(prompt: Prompt) -> str:
    """A prompt as plain text (the last user message for a message list) — for display and judges."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return users[-1] if users else prompt[-1]["content"]


def as_messages(prompt: Prompt) -> list[Message]:
    """A prompt as a chat message list."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
