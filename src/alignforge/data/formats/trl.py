"""TRL's dataset types that are not already our record format (huggingface.co/docs/trl/dataset_formats).

=========================  ==================================================  =====================
TRL type                   standard / conversational columns                   read as
=========================  ==================================================  =====================
language modelling         ``text`` / ``messages``                             text / demonstration
prompt-only                ``prompt`` (string or messages)                     prompt (records)
prompt-completion          ``prompt`` + ``completion``                         demonstration
preference                 ``prompt`` + ``chosen`` + ``rejected``              comparison
implicit-prompt preference ``chosen`` + ``rejected`` (prompt inside both)      comparison
unpaired preference        ``prompt`` + ``completion`` + ``label`` (bool)      unpaired
stepwise supervision       ``prompt`` + ``completions`` + ``labels``           refused (no stage)
=========================  ==================================================  =====================

A *standard* (plain text) prompt is stored as a string and, like every prompt here, rendered as a
user turn of the chat template: alignforge trains chat models, so a prompt-completion pair such as
``"The sky is"`` / ``" blue."`` becomes a question and its answer (counted in the notes).
"""

from __future__ import annotations

from typing import Any

from alignforge.data.formats.common import Dropped, Notes, completion_text, note, prompt_value
from alignforge.data.records import Comparison, Demonstration, Record, RecordError, UnpairedFeedback, _short


def _form(row: dict[str, Any]) -> str:
    return "conversational" if isinstance(row.get("prompt"), list) or isinstance(row.get("completion"), list) \
        else "standard"


def from_prompt_completion(row: dict[str, Any], notes: Notes = None) -> list[Record]:
    """``{prompt, completion}`` (strings, or a message list + one assistant message) → Demonstration."""
    prompt = prompt_value(row.get("prompt"), "prompt")
    response = completion_text(row.get("completion"), "completion")
    note(notes, f"prompt-completion: {_form(row)}")
    return [Demonstration(prompt=prompt, response=response, id=_id(row))]


def from_unpaired(row: dict[str, Any], notes: Notes = None) -> list[Record]:
    """``{prompt, completion, label}`` (TRL's KTO layout; a thumbs-up/down export) → UnpairedFeedback."""
    prompt = prompt_value(row.get("prompt"), "prompt")
    response = completion_text(row.get("completion"), "completion")
    label = row.get("label")
    if label is None:
        raise RecordError("missing field 'label' (expected true for a desirable completion, false for an "
                          "undesirable one)", field="label")
    if not isinstance(label, bool):
        raise RecordError(f"expected true (desirable) or false (undesirable), got {_short(label)}", field="label")
    note(notes, f"unpaired: label {str(label).lower()}")
    note(notes, f"unpaired: {_form(row)}")
    return [UnpairedFeedback(prompt=prompt, response=response, label=label, id=_id(row))]


def split_shared_prefix(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen answer, rejected answer): the shared leading text, cut back to the last
    whitespace inside it so no word is split ("The sky is bl|ue" → "The sky is")."""
    n = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        n += 1
    if n < min(len(chosen), len(rejected)) or len(chosen) != len(rejected):
        cut = max(chosen.rfind(" ", 0, n + 1), chosen.rfind("\n", 0, n + 1))
        n = cut if cut > 0 else 0
    return chosen[:n].strip(), chosen[n:].strip(), rejected[n:].strip()


def from_implicit_prompt(row: dict[str, Any], notes: Notes = None) -> list[Record]:
    """TRL's standard implicit-prompt preference ``{chosen, rejected}``: two whole texts that begin
    with the same prompt → Comparison. The prompt is their shared leading text cut at a word
    boundary (TRL's ``extract_prompt`` takes the shared prefix the same way)."""
    for name in ("chosen", "rejected"):
        value = row.get(name)
        if value is None:
            raise RecordError(f"missing field '{name}' (an implicit-prompt preference row has chosen and rejected "
                              "texts that begin with the same prompt)", field=name)
        if not isinstance(value, str) or not value.strip():
            raise RecordError(f"expected a non-empty string, got {_short(value)}", field=name)
    if row["chosen"].strip() == row["rejected"].strip():
        raise Dropped("implicit-prompt: chosen and rejected identical")
    prompt, chosen, rejected = split_shared_prefix(row["chosen"].strip(), row["rejected"].strip())
    if not prompt:
        raise RecordError("missing field 'prompt': chosen and rejected share no leading text, so there is no implicit "
                          "prompt (TRL implicit-prompt preference); add a 'prompt' field", field="prompt")
    if not chosen or not rejected:
        raise RecordError("one text is the other's beginning; expected both to go on after the shared prompt",
                          field="chosen" if not chosen else "rejected")
    note(notes, "implicit-prompt: prompt taken as the shared leading text")
    return [Comparison(prompt=prompt, chosen=chosen, rejected=rejected, id=_id(row))]


def _id(row: dict[str, Any]) -> str | None:
    value = row.get("id", row.get("prompt_id"))
    return None if value is None or isinstance(value, (dict, list)) else str(value)
