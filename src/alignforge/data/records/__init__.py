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

Modules: :mod:`.kinds` (the record types, field validation, :func:`parse_record`), :mod:`.reading`
(:func:`iter_raw`, :class:`ReadReport`, :func:`read_records`), :mod:`.writing` (:func:`write_records`).
Import from ``alignforge.data.records``.
"""

from alignforge.data.records.kinds import (
    FLAGS,
    KIND_DESCRIPTIONS,
    RECORD_TYPES,
    ROLES,
    STRENGTHS,
    Candidates,
    Comparison,
    Demonstration,
    Message,
    Prompt,
    PromptRecord,
    Ranking,
    Rating,
    Record,
    RecordError,
    RecordKind,
    TextRecord,
    UnpairedFeedback,
    _short,  # the dataset adapters (alignforge.data.formats) quote values with it
    as_messages,
    check_int,
    check_prompt,
    check_responses,
    check_text,
    describe_kinds,
    infer_kind,
    parse_record,
    prompt_text,
)
from alignforge.data.records.reading import ReadReport, iter_raw, read_records
from alignforge.data.records.writing import write_records

__all__ = [
    "FLAGS", "KIND_DESCRIPTIONS", "RECORD_TYPES", "ROLES", "STRENGTHS", "Candidates", "Comparison", "Demonstration",
    "Message", "Prompt", "PromptRecord", "Ranking", "Rating", "ReadReport", "Record", "RecordError", "RecordKind",
    "TextRecord", "UnpairedFeedback", "as_messages", "check_int", "check_prompt", "check_responses", "check_text",
    "describe_kinds", "infer_kind", "iter_raw", "parse_record", "prompt_text", "read_records", "write_records",
]
