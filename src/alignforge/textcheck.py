"""Text that cannot be stored or shown: lone surrogates, found where text comes in.

A Python ``str`` can hold the code points U+D800–U+DFFF ("surrogates") on their own. JSON's
``"\\udcff"`` escape decodes to one (a ``\\ud83d\\ude00`` *pair* decodes to one real character, 😀),
and so does a byte that is not UTF-8 read with ``errors="surrogateescape"`` — how Python reads
stdin, ``argv`` and file names under a C or UTF-8 locale: byte 0xFF becomes U+DCFF. Such a string
is not Unicode text. Everything downstream fails on it, far from where it came in: encoding it as
UTF-8 (a file, an HTTP response, a database driver) raises, and so does every Hugging Face fast
tokenizer (``TypeError: TextEncodeInput must be ...``).

So every reader of untrusted text (record files, the feedback app's import, ``serve`` request
bodies, ``chat`` input) checks with :func:`find_surrogate` and refuses the text, naming the file,
line, field and character; and every writer of text already stored (the feedback app's pages and
exports) repairs it with :func:`replace_surrogates` — U+FFFD, visibly, and counted.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple, Optional

SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"
# A JSON line can only produce a surrogate through a \uD800-\uDFFF escape (the file itself is
# decoded strictly as UTF-8): lines without one skip the walk over the parsed object.
_JSON_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class Surrogate(NamedTuple):
    """Where the first lone surrogate is: ``field`` (``prompt``, ``responses[1]``,
    ``prompt[0].content``; "" for a bare string), its ``index`` in that string, the ``char``, and
    whether it is in a mapping's key rather than a value."""

    field: str
    index: int
    char: str
    in_key: bool = False

    def message(self) -> str:
        code = ord(self.char)
        why = (f"a \\u{code:04x} escape, or byte 0x{code - 0xDC00:02x} that was not UTF-8 kept by surrogateescape"
               if 0xDC80 <= code <= 0xDCFF else f"a \\u{code:04x} escape without the other half of its UTF-16 pair")
        where = "in a key" if self.in_key else f"at character {self.index + 1}"
        return (f"not valid Unicode text: lone surrogate U+{code:04X} {where} ({why}); such text cannot be "
                f"stored, shown or tokenized")


def _join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def find_surrogate(value: Any, path: str = "") -> Optional[Surrogate]:
    """The first lone surrogate in a string, or in the strings (and keys) of nested lists/dicts."""
    if isinstance(value, str):
        m = SURROGATE.search(value)
        return Surrogate(path, m.start(), m.group()) if m else None
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and (m := SURROGATE.search(k)):
                return Surrogate(path, m.start(), m.group(), in_key=True)
            found = find_surrogate(v, _join(path, k))
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = find_surrogate(v, _join(path, i))
            if found:
                return found
    return None


def json_line_may_hold_surrogate(line: str) -> bool:
    """False when a JSON text cannot decode to a lone surrogate (no ``\\uD8xx``–``\\uDFxx`` escape)."""
    return _JSON_ESCAPE.search(line) is not None


def replace_surrogates(value: Any) -> tuple[Any, int]:
    """``value`` with every lone surrogate replaced by U+FFFD (�), and how many strings changed.
    Nested lists/dicts are rebuilt only where something changed."""
    if isinstance(value, str):
        if SURROGATE.search(value) is None:
            return value, 0
        return SURROGATE.sub(REPLACEMENT, value), 1
    if isinstance(value, dict):
        out, n = {}, 0
        for k, v in value.items():
            k2, nk = replace_surrogates(k) if isinstance(k, str) else (k, 0)
            v2, nv = replace_surrogates(v)
            out[k2] = v2
            n += nk + nv
        return (out, n) if n else (value, 0)
    if isinstance(value, (list, tuple)):
        parts = [replace_surrogates(v) for v in value]
        n = sum(c for _, c in parts)
        return (type(value)(v for v, _ in parts), n) if n else (value, 0)
    return value, 0


def safe_text(text: str) -> str:
    """``text`` with lone surrogates shown as U+FFFD: for messages and display, never for data."""
    return SURROGATE.sub(REPLACEMENT, text) if isinstance(text, str) else text


__all__ = ["REPLACEMENT", "SURROGATE", "Surrogate", "find_surrogate", "json_line_may_hold_surrogate",
           "replace_surrogates", "safe_text"]
