"""What the dataset adapters share: the Dropped signal, counted notes, field readers, message lists."""

from __future__ import annotations

import math
from typing import Any, Optional

from alignforge.data.records import Message, Prompt, RecordError, _short, check_prompt


class Dropped(Exception):
    """A well-formed row that an adapter leaves out by a documented policy; ``reason`` is counted."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


Notes = Optional[dict[str, int]]


def note(notes: Notes, what: str, n: int = 1) -> None:
    """Count one repair or oddity (``ReadReport.notes``)."""
    if notes is not None and n:
        notes[what] = notes.get(what, 0) + n


def missing(name: str, layout: str, fields: str) -> RecordError:
    """``missing field 'x' (a <layout> row has <fields>)``."""
    return RecordError(f"missing field '{name}' (a {layout} row has {fields})", field=name)


def text_field(row: dict[str, Any], name: str, *, required: bool = True, label: str | None = None) -> str:
    """A string field, stripped; missing/None is '' unless required. Errors name ``label``."""
    label = label or name
    value = row.get(name)
    if value is None:
        if required:
            raise RecordError(f"missing field '{label}' (expected a string)", field=label)
        return ""
    if not isinstance(value, str):
        raise RecordError(f"expected a string, got {_short(value)} ({type(value).__name__})", field=label)
    value = value.strip()
    if required and not value:
        raise RecordError("expected a non-empty string, got an empty one", field=label)
    return value


def join(instruction: str, extra: str) -> str:
    """An instruction with its input/context after a blank line (how it reads in a chat template)."""
    return f"{instruction}\n\n{extra}" if extra else instruction


def as_prompt(messages: list[Message], name: str = "prompt") -> Prompt:
    """Single user turn → plain string; anything else → a validated message list."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return check_prompt(messages[0]["content"], name)
    return check_prompt(messages, name)


def number(value: Any) -> float | None:
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


# ---------------------------------------------------------------------------------------------
# Message lists: [{role, content}] or ShareGPT [{from, value}]
# ---------------------------------------------------------------------------------------------

ROLE_ALIASES = {"user": "user", "human": "user", "prompter": "user", "assistant": "assistant", "gpt": "assistant",
                "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "bot": "assistant",
                "model": "assistant", "system": "system"}


def normalize_messages(value: Any, name: str = "messages") -> list[Message]:
    """``[{role, content}]`` or ShareGPT ``[{from, value}]`` → ``[{role, content}]`` (roles normalised)."""
    if value is None:
        raise RecordError(f"missing field '{name}' (expected a non-empty list of messages)", field=name)
    if not isinstance(value, list) or not value:
        raise RecordError(f"expected a non-empty list of messages, got {_short(value)}", field=name)
    out: list[Message] = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise RecordError(f"message {i}: expected an object {{role, content}}, got {_short(m)}", field=name)
        role, content = m.get("role", m.get("from")), m.get("content", m.get("value"))
        if not isinstance(role, str) or role.lower() not in ROLE_ALIASES:
            raise RecordError(f"message {i}: expected a role among {sorted(ROLE_ALIASES)}, got {_short(role)}",
                              field=name)
        if not isinstance(content, str):
            raise RecordError(f"message {i}: expected string content, got {_short(content)}", field=name)
        out.append({"role": ROLE_ALIASES[role.lower()], "content": content.strip()})
    return out


def final_assistant(conv: list[Message], name: str) -> str:
    """The content of the last message, which must be a non-empty assistant turn."""
    if conv[-1]["role"] != "assistant":
        raise RecordError(f"expected the last message to be from the assistant, got role {conv[-1]['role']!r}",
                          field=name)
    if not conv[-1]["content"]:
        raise RecordError("the last (assistant) message is empty; expected a response", field=name)
    return conv[-1]["content"]


def completion_text(value: Any, name: str) -> str:
    """A completion: a string, or TRL's conversational form, a list of one assistant message."""
    if isinstance(value, list):
        conv = normalize_messages(value, name)
        if len(conv) != 1:
            raise RecordError(f"expected one assistant message (the completion), got {len(conv)} messages", field=name)
        return final_assistant(conv, name)
    if value is None:
        raise RecordError(f"missing field '{name}' (expected a string or a list of one assistant message)", field=name)
    if not isinstance(value, str):
        raise RecordError(f"expected a string or a list of one assistant message, got {_short(value)}", field=name)
    if not value.strip():
        raise RecordError("expected a non-empty string, got an empty one", field=name)
    return value.strip()


def prompt_value(value: Any, name: str = "prompt") -> Prompt:
    """A prompt: a non-empty string, or a message list (ShareGPT roles accepted) not ending with the assistant."""
    if value is None:
        raise RecordError(f"missing field '{name}' (expected a string or a list of messages)", field=name)
    if isinstance(value, str):
        if not value.strip():
            raise RecordError("expected a non-empty string, got an empty one", field=name)
        return value.strip()
    msgs = normalize_messages(value, name)
    if msgs[-1]["role"] == "assistant":
        raise RecordError("expected the prompt to end with a user (or system) message, got an assistant one",
                          field=name)
    return as_prompt(msgs, name)
