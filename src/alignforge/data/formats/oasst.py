"""OASST (OpenAssistant): flat message rows (``message_id``, ``parent_id``, ``role``, ``text``,
``rank``) or exported trees (``message_tree_id``, ``prompt`` with nested ``replies``) →
Demonstrations along the best-ranked paths + Rankings of ranked sibling replies."""

from __future__ import annotations

from typing import Any

from alignforge.data.formats.common import Notes, as_prompt, note, number, text_field
from alignforge.data.records import Demonstration, Message, Ranking, Record, RecordError, _short


def flatten_oasst_tree(node: Any, parent_id: Any, out: list[dict[str, Any]], name: str) -> None:
    if not isinstance(node, dict):
        raise RecordError(f"expected a message object, got {_short(node)}", field=name)
    out.append({k: v for k, v in node.items() if k != "replies"} | {"parent_id": parent_id})
    replies = node.get("replies") or []
    if not isinstance(replies, list):
        raise RecordError(f"expected a list of messages, got {_short(replies)}", field=f"{name}.replies")
    for i, child in enumerate(replies):
        flatten_oasst_tree(child, node.get("message_id"), out, f"{name}.replies[{i}]")


def check_oasst_message(row: dict[str, Any]) -> dict[str, Any]:
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
    if rank is not None and (isinstance(rank, bool) or number(rank) is None or number(rank) < 0):
        raise RecordError(f"expected a non-negative rank (0 = best) or null, got {_short(rank)}", field="rank")
    return {"id": mid, "parent": parent, "role": "user" if role == "prompter" else "assistant",
            "text": text_field(row, "text", required=False), "rank": None if rank is None else number(rank),
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
            note(drops, "oasst: deleted or failed-review message (with its replies)")
            continue
        if m["parent"] is None:
            if m["role"] != "user":
                note(drops, "oasst: tree root that is not a prompter message")
                continue
            roots.append(m)
        elif m["parent"] not in by_id:
            note(drops, "oasst: parent not in the file (with its replies)")
        else:
            children.setdefault(m["parent"], []).append(m)
    out: list[Record] = []

    def visit(prompter: dict[str, Any], path: list[Message], best_path: bool) -> None:
        path = path + [{"role": "user", "content": prompter["text"]}]
        if not prompter["text"]:
            note(drops, "oasst: empty prompter message (with its replies)")
            return
        replies = [c for c in children.get(prompter["id"], []) if c["role"] == "assistant" and c["text"]]
        note(drops, "oasst: empty assistant message",
              sum(1 for c in children.get(prompter["id"], []) if c["role"] == "assistant" and not c["text"]))
        ranked = [c for c in replies if c["rank"] is not None]
        prompt = as_prompt(path)
        if len(ranked) >= 2:
            ranks = [c["rank"] for c in ranked]
            if len(set(ranks)) == len(ranks):
                out.append(Ranking(prompt=prompt, responses=[c["text"] for c in ranked],
                                   ranking=sorted(range(len(ranked)), key=lambda k: ranks[k]),
                                   id=prompter["id"], source="oasst",
                                   meta={"lang": prompter["lang"]} if prompter["lang"] else None))
            else:
                note(notes, "oasst: sibling ranks tied, no ranking")
        best = min(ranked, key=lambda c: c["rank"]) if ranked else (replies[0] if len(replies) == 1 else None)
        if best is None and len(replies) > 1:
            note(notes, "oasst: several unranked replies, no demonstration")
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
    flatten_oasst_tree(row.get("prompt"), None, flat, "prompt")
    drops: dict[str, int] = {}
    out = oasst_records([check_oasst_message(m) for m in flat], notes, drops)
    for reason, n in drops.items():
        note(notes, reason, n)
    return out

