"""Message lists: chat transcripts (``messages``, ShareGPT ``conversations``) → Demonstration, and
conversational preference rows (``chosen``/``rejected`` message lists) → Comparison.

Preference rows come in three shapes, all read here:

- TRL explicit prompt: ``prompt`` a message list, ``chosen``/``rejected`` one assistant message each;
- TRL implicit prompt: no ``prompt``, ``chosen``/``rejected`` whole conversations whose shared
  prefix is the prompt;
- whole conversations *and* a ``prompt`` that repeats their user turn (UltraFeedback-binarized and
  its derivatives: ``prompt`` a plain string): the conversations must agree with the prompt.
"""

from __future__ import annotations

from typing import Any

from alignforge.data.formats.common import (Dropped, Notes, as_prompt, final_assistant, normalize_messages, note,
                                            prompt_value)
from alignforge.data.records import Comparison, Demonstration, Message, Record, RecordError, as_messages


def _source(row: dict[str, Any]) -> str | None:
    return row["source"] if isinstance(row.get("source"), str) and row["source"] else None


def conversation_prompt(row: dict[str, Any], chosen: list[Message], rejected: list[Message],
                        notes: Notes = None, layout: str = "messages") -> list[Message]:
    """The prompt messages of a conversational preference row (see the module doc for the shapes)."""
    prompt = row.get("prompt")
    completions_only = len(chosen) == 1 and len(rejected) == 1
    if prompt is not None and completions_only:  # TRL explicit prompt: the completions are the last turn only
        return as_messages(prompt_value(prompt, "prompt"))
    if chosen[:-1] != rejected[:-1]:
        raise RecordError("chosen and rejected differ before their last message (expected a shared prefix: the "
                          "conversation up to the answer being compared)", field="rejected")
    shared = chosen[:-1]
    if not shared:
        raise RecordError("no prompt: expected messages before the final assistant turn (or a 'prompt' field)",
                          field="chosen")
    if prompt is None:
        return shared
    given = as_messages(prompt_value(prompt, "prompt"))
    if isinstance(prompt, str):
        # UltraFeedback-binarized: the prompt string repeats the conversation's last user turn.
        last_user = next((m["content"] for m in reversed(shared) if m["role"] == "user"), None)
        if last_user != prompt.strip():
            raise RecordError("the 'prompt' string is not the user turn that chosen and rejected repeat (expected "
                              "whole conversations ending with the same user turn, then the answer)", field="prompt")
        note(notes, f"{layout}: prompt repeated in chosen/rejected (checked equal)")
        return shared
    if given != shared:
        raise RecordError("with a 'prompt' list, expected chosen and rejected to hold one assistant message each, "
                          "or to repeat the prompt messages before their answer", field="chosen")
    note(notes, f"{layout}: prompt repeated in chosen/rejected (checked equal)")
    return shared


def conversational_comparison(row: dict[str, Any], notes: Notes = None, layout: str = "messages") -> Comparison:
    """A conversational preference row → one Comparison (identical answers: :class:`Dropped`)."""
    chosen = normalize_messages(row.get("chosen"), "chosen")
    rejected = normalize_messages(row.get("rejected"), "rejected")
    prompt_msgs = conversation_prompt(row, chosen, rejected, notes, layout)
    c, r = final_assistant(chosen, "chosen"), final_assistant(rejected, "rejected")
    if c == r:
        raise Dropped(f"{layout}: chosen and rejected identical")
    return Comparison(prompt=as_prompt(prompt_msgs), chosen=c, rejected=r, source=_source(row))


def demonstration_of(conv: list[Message], name: str, notes: Notes = None, layout: str = "messages",
                     **kw: Any) -> Demonstration:
    """A conversation → Demonstration: the last assistant turn is the response, the rest the prompt."""
    response = final_assistant(conv, name)
    if len(conv) < 2:
        raise RecordError("expected at least one message before the assistant's response", field=name)
    if sum(m["role"] == "assistant" for m in conv) > 1:
        note(notes, f"{layout}: earlier assistant turns kept in the prompt (only the last is trained on)")
    return Demonstration(prompt=as_prompt(conv[:-1], name), response=response, **kw)


def from_messages(row: dict[str, Any], notes: Notes = None) -> list[Record]:
    """``{"messages": [...]}`` (or ShareGPT ``conversations``) → Demonstration: the last assistant
    turn is the response, everything before it the prompt. Conversational preference rows
    (``chosen``/``rejected`` message lists, see the module doc) → Comparison.
    """
    if "chosen" in row or "rejected" in row:
        return [conversational_comparison(row, notes)]
    name = "messages" if "messages" in row else "conversations"
    if name == "conversations":  # ShareGPT dumps hold empty and unanswered conversations
        if row.get(name) == []:
            raise Dropped("sharegpt: empty conversation")
        conv = normalize_messages(row.get(name), name)
        while len(conv) > 1 and conv[-1]["role"] != "assistant":
            conv.pop()
            note(notes, "sharegpt: unanswered last user turn removed")
        return [demonstration_of(conv, name, notes, layout="sharegpt", source=_source(row),
                                 id=None if row.get("id") is None else str(row["id"]))]
    conv = normalize_messages(row.get(name), name)
    return [demonstration_of(conv, name, notes, source=_source(row))]
