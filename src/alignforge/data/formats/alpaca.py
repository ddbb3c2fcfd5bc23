"""Alpaca / self-instruct and Dolly → Demonstration.

The prompt is the instruction, with a non-empty input (Alpaca) or context (Dolly) appended after a
blank line.
"""

from __future__ import annotations

from typing import Any

from alignforge.data.formats.common import Notes, join, note, text_field
from alignforge.data.records import Demonstration, Record, RecordError, _short


def from_alpaca(row: dict[str, Any], notes: Notes = None) -> list[Record]:
    """Alpaca ``{instruction, input, output}`` → one Demonstration; a self-instruct seed task
    ``{id, name, instruction, instances: [{input, output}], is_classification}`` → one per instance.

    The prompt is the instruction, with a non-empty input appended after a blank line.
    """
    instruction = text_field(row, "instruction")
    if "instances" not in row:
        extra = text_field(row, "input", required=False)
        note(notes, "alpaca: with input" if extra else "alpaca: without input")
        prompt = join(instruction, extra)
        return [Demonstration(prompt=prompt, response=text_field(row, "output"), source="alpaca",
                              id=None if row.get("id") is None else str(row["id"]))]
    instances = row["instances"]
    if not isinstance(instances, list) or not instances:
        raise RecordError(f"expected a non-empty list of {{input, output}}, got {_short(instances)}", field="instances")
    meta = {k: row[k] for k in ("name", "is_classification") if row.get(k) is not None}
    out: list[Record] = []
    for i, inst in enumerate(instances):
        if not isinstance(inst, dict):
            raise RecordError(f"expected an object {{input, output}}, got {_short(inst)}", field=f"instances[{i}]")
        extra = text_field(inst, "input", required=False, label=f"instances[{i}].input")
        note(notes, "alpaca: with input" if extra else "alpaca: without input")
        prompt = join(instruction, extra)
        out.append(Demonstration(prompt=prompt, response=text_field(inst, "output", label=f"instances[{i}].output"),
                                 id=f"{row.get('id', 'task')}/{i}", source="self-instruct",
                                 meta=dict(meta) or None))
    if len(out) > 1:
        note(notes, "alpaca: tasks with several instances")
    return out


def from_dolly(row: dict[str, Any], notes: Notes = None) -> list[Record]:
    """Dolly ``{instruction, context, response, category}`` → Demonstration (context after a blank line)."""
    context = text_field(row, "context", required=False)
    note(notes, "dolly: with context" if context else "dolly: without context")
    category = row.get("category")
    return [Demonstration(prompt=join(text_field(row, "instruction"), context), response=text_field(row, "response"),
                          category=category if isinstance(category, str) and category else None, source="dolly")]

