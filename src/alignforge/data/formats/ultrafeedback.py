"""UltraFeedback, raw and binarized.

- Raw (openbmb/UltraFeedback): ``instruction`` (or ``prompt``) + ``completions``, each with a
  ``response`` and scores → a Comparison for every pair (+ one Ranking that restates them).
- Binarized (HuggingFaceH4/ultrafeedback_binarized and its derivatives): ``prompt`` a string,
  ``chosen``/``rejected`` whole conversations that repeat the user turn, ``messages`` (the chosen
  conversation, for SFT), ``score_chosen``, ``score_rejected``, ``prompt_id`` → one Comparison
  (+ one Demonstration from ``messages``).
"""

from __future__ import annotations

from typing import Any

from alignforge.data.formats.common import Dropped, Notes, missing, normalize_messages, note, number, text_field
from alignforge.data.formats.messages import conversational_comparison, demonstration_of
from alignforge.data.records import Comparison, Ranking, Record, RecordError, _short


def ultrafeedback_score(completion: dict[str, Any], name: str = "completions[0]") -> float:
    """``overall_score``, else ``fine-grained_score``, else the mean of the per-aspect ``Rating``s
    in ``annotations`` (or of a ``ratings`` mapping). Ratings of "N/A" are ignored."""
    for key in ("overall_score", "fine-grained_score", "score"):
        s = number(completion.get(key))
        if s is not None:
            return s
    for key in ("annotations", "ratings"):
        table = completion.get(key)
        if isinstance(table, dict):
            values = [number(v.get("Rating") if isinstance(v, dict) else v) for v in table.values()]
            values = [v for v in values if v is not None]
            if values:
                return sum(values) / len(values)
    raise RecordError("expected a numeric 'overall_score' (or 'fine-grained_score', or 'annotations' with "
                      f"numeric Ratings), got keys {sorted(completion)}", field=name)


def from_ultrafeedback(row: dict[str, Any], notes: Notes = None) -> list[Record]:
    """``{instruction|prompt, completions: [{response, overall_score | annotations}]}`` →
    a Comparison for every pair of completions (higher score chosen; equal scores → ``tie: true``)
    followed by one Ranking of all completions (best first; equal scores keep their order,
    ``meta.scores`` shows the ties). Both say the same thing: take one of them
    (``load_dataset_records`` keeps the comparisons unless asked for ``kind="ranking"``).

    Completions with an empty response are left out (counted); a pair of identical responses is
    left out of the comparisons (counted).
    """
    prompt = text_field(row, "instruction" if "instruction" in row else "prompt")
    completions = row.get("completions")
    if not isinstance(completions, list):
        raise RecordError(f"expected a list of {{response, overall_score}}, got {_short(completions)}",
                          field="completions")
    responses, scores = [], []
    for i, c in enumerate(completions):
        if not isinstance(c, dict):
            raise RecordError(f"expected an object {{response, overall_score}}, got {_short(c)}",
                              field=f"completions[{i}]")
        text = text_field(c, "response", required=False, label=f"completions[{i}].response")
        if not text:
            note(notes, "ultrafeedback: empty completion left out")
            continue
        responses.append(text)
        scores.append(ultrafeedback_score(c, f"completions[{i}]"))
    if len(responses) < 2:
        raise Dropped("ultrafeedback: fewer than 2 non-empty completions")
    source = row.get("source") if isinstance(row.get("source"), str) else "ultrafeedback"
    out: list[Record] = []
    for i in range(len(responses)):
        for j in range(i + 1, len(responses)):
            if responses[i] == responses[j]:
                note(notes, "ultrafeedback: identical pair left out")
                continue
            tie = scores[i] == scores[j]
            a, b = (i, j) if scores[i] >= scores[j] else (j, i)
            note(notes, "ultrafeedback: tied pairs" if tie else "ultrafeedback: ordered pairs")
            out.append(Comparison(prompt=prompt, chosen=responses[a], rejected=responses[b], tie=tie,
                                  source=source, meta={"scores": [scores[a], scores[b]]}))
    if len(set(scores)) > 1:
        order = sorted(range(len(responses)), key=lambda k: -scores[k])  # stable: ties keep their order
        out.append(Ranking(prompt=prompt, responses=responses, ranking=order, source=source,
                           meta={"scores": scores}))
    else:
        note(notes, "ultrafeedback: all scores equal, no ranking")
    return out


def from_ultrafeedback_binarized(row: dict[str, Any], notes: Notes = None) -> list[Record]:
    """A binarized row → a Comparison (the final assistant turns of ``chosen`` and ``rejected``;
    ``meta.scores`` = [score_chosen, score_rejected]; equal scores → ``tie: true``; ``id`` =
    ``prompt_id``), then a Demonstration from ``messages`` when the row has it. The two restate
    one judgement: ``load_dataset_records`` keeps the comparisons unless asked for
    ``kind="demonstration"`` (what the SFT stage asks for, so the ``train_sft`` split works too).

    An empty final answer in chosen or rejected is dropped and counted, as in HH-RLHF.
    """
    if not isinstance(row.get("prompt"), str):
        if row.get("prompt") is None:
            raise missing("prompt", "UltraFeedback-binarized", "prompt, chosen, rejected, messages, score_chosen, "
                                    "score_rejected, prompt_id")
        raise RecordError(f"expected the prompt as a string, got {_short(row.get('prompt'))}", field="prompt")
    for name in ("chosen", "rejected"):
        conv = normalize_messages(row.get(name), name)
        if conv[-1]["role"] == "assistant" and not conv[-1]["content"]:
            raise Dropped("ultrafeedback-binarized: empty final assistant turn")
    comp = conversational_comparison(row, notes, layout="ultrafeedback-binarized")
    scores = [number(row.get("score_chosen")), number(row.get("score_rejected"))]
    comp.source = comp.source or "ultrafeedback"
    if isinstance(row.get("prompt_id"), str) and row["prompt_id"]:
        comp.id = row["prompt_id"]
    if None not in scores:
        if scores[0] < scores[1]:
            raise RecordError(f"expected score_chosen ≥ score_rejected, got {scores[0]:g} < {scores[1]:g}",
                              field="score_chosen")
        comp.meta = {"scores": scores}
        if scores[0] == scores[1]:
            comp.tie = True
            note(notes, "ultrafeedback-binarized: equal scores (kept as a tie)")
    else:
        note(notes, "ultrafeedback-binarized: no numeric score_chosen/score_rejected")
    out: list[Record] = [comp]
    if row.get("messages") is not None:
        conv = normalize_messages(row["messages"], "messages")
        out.append(demonstration_of(conv, "messages", None, layout="ultrafeedback-binarized", id=comp.id,
                                    source=comp.source))
    return out
