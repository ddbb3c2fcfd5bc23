"""HH-RLHF (Anthropic): ``{"chosen": transcript, "rejected": transcript}`` → one Comparison.

Each transcript is the whole conversation as ``"\n\nHuman: …\n\nAssistant: …"``; the two share
everything up to their final Assistant turn, which becomes the prompt.
"""

from __future__ import annotations

import re
from typing import Any

from alignforge.data.formats.common import Dropped, Notes, as_prompt, missing, note
from alignforge.data.records import Comparison, Message, Record, RecordError, _short


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
            note(notes, f"hh: consecutive {role} turns merged")
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
    for name in ("chosen", "rejected"):
        if row.get(name) is None:
            raise missing(name, "HH-RLHF", "'chosen' and 'rejected' transcripts")
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
        note(notes, "hh: pairs with a turn split over consecutive blocks (merged)")
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
        note(notes, "hh: speaker label inside a turn (kept as text)")
    prompt = as_prompt(chosen[:-1])
    note(notes, "hh: multi-turn prompt" if isinstance(prompt, list) else "hh: single-turn prompt")
    return [Comparison(prompt=prompt, chosen=chosen[-1]["content"], rejected=rejected[-1]["content"],
                       source="hh-rlhf")]

