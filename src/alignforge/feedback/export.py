"""What the feedback app hands on: stored labels as the design §3 records ``alignforge reward`` reads
(:func:`export_records`, one record per label, with the item's provenance and where the label came
from under ``meta``), and the annotators' agreement on a project's items (:func:`project_agreement`,
on the measures of :mod:`alignforge.feedback.agreement`).

Read-only: nothing here changes the database. Text that cannot be written (lone surrogates stored by
an older version, before import refused them) is repaired on the way out and counted
(:class:`ExportReport`), so an export never fails on what the database already holds.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from sqlalchemy import select
from sqlalchemy.orm import Session

from alignforge.data.records import FLAGS, Comparison, Ranking, Rating, Record
from alignforge.feedback.agreement import krippendorff_alpha, pairwise_agreement, ranking_agreement
from alignforge.feedback.db import TASKS, Item, Label, Project, User
from alignforge.feedback.service import AXES
from alignforge.textcheck import REPLACEMENT, replace_surrogates, safe_text


def _labels(s: Session, project: Optional[Project]) -> list[tuple[Label, Item, Project, str]]:
    q = (select(Label, Item, Project, User.username).join(Item, Label.item_id == Item.id)
         .join(Project, Label.project_id == Project.id).join(User, Label.user_id == User.id).order_by(Label.id))
    if project is not None:
        q = q.where(Label.project_id == project.id)
    return [tuple(row) for row in s.execute(q).all()]


def label_to_record(label: Label, item: Item, project: Project, annotator: str) -> Record:
    """A stored label as the design §3 record ``alignforge reward`` reads."""
    prov = dict(item.provenance or {})
    indices = prov.pop("indices", list(range(len(item.responses))))
    meta = dict(prov.pop("meta", None) or {})
    meta.update({"project": project.name, "batch": item.batch, "item": item.id,
                 "candidates_id": prov.pop("id", None), "candidate_indices": indices,
                 "submitted_at": label.created_at.isoformat() + "Z" if label.created_at else None,
                 "seconds": round(label.seconds, 1) if label.seconds is not None else None})
    common = dict(id=f"{project.name}/label-{label.id}", annotator=annotator,
                  source=prov.pop("source", None) or f"feedback:{project.name}", meta=meta,
                  category=prov.get("category"), policy=prov.get("policy"), round=prov.get("round"),
                  sampling=prov.get("sampling"))
    p = label.payload
    if project.task == "rating":
        axes = {a: p[a] for a in AXES if p.get(a) is not None}
        return Rating(prompt=item.prompt, response=item.responses[0], likert=p["likert"],
                      flags=dict(p["flags"]), **axes, **common)
    if project.task == "comparison":
        a, b = item.responses
        if p["choice"] == "tie":
            return Comparison(prompt=item.prompt, chosen=a, rejected=b, tie=True, **common)
        chosen, rejected = (a, b) if p["choice"] == "a" else (b, a)
        return Comparison(prompt=item.prompt, chosen=chosen, rejected=rejected, strength=p["strength"], **common)
    # Ranking: back to the candidates' original response order, so that every annotator's
    # ranking of an item refers to the same indices as the imported record.
    k = len(item.responses)
    responses = [""] * k
    for shown, original in enumerate(indices):
        responses[original] = item.responses[shown]
    return Ranking(prompt=item.prompt, responses=responses, ranking=[indices[i] for i in p["ranking"]], **common)


@dataclass
class ExportReport:
    """What an export had to repair: stored text that is not valid Unicode (lone surrogates, from
    items imported before the import refused them) is written with U+FFFD in their place."""

    records: int = 0
    repaired_records: int = 0
    repaired_texts: int = 0
    first: list[str] = field(default_factory=list)  # up to 5 "record id field" of repaired ones

    def summary(self) -> str:
        if not self.repaired_texts:
            return ""
        return (f"{self.repaired_texts} texts in {self.repaired_records} records were not valid Unicode "
                f"(lone surrogates, stored before import refused them) and were written with "
                f"{REPLACEMENT} (U+FFFD) in their place; first: {', '.join(self.first)}")


def _repaired(record: Record, report: ExportReport) -> Record:
    """``record`` with lone surrogates in any field replaced by U+FFFD (counted in ``report``):
    an export must never fail on what the database already holds."""
    changed = 0
    for f in dataclasses.fields(record):
        value, n = replace_surrogates(getattr(record, f.name))
        if n:
            setattr(record, f.name, value)
            changed += n
            if len(report.first) < 5:
                report.first.append(f"{safe_text(record.id or '?')} field '{f.name}'")
    if changed:
        report.repaired_records += 1
        report.repaired_texts += changed
    return record


def export_records(s: Session, project: Optional[Project] = None,
                   tasks: Iterable[str] = TASKS, report: Optional[ExportReport] = None) -> list[Record]:
    """Every label of ``project`` (or all projects) whose task is in ``tasks``, as records; text
    that cannot be written is repaired and counted in ``report`` (pass one in to see it)."""
    tasks = set(tasks)
    report = report if report is not None else ExportReport()
    out = [_repaired(label_to_record(label, item, proj, who), report)
           for label, item, proj, who in _labels(s, project) if proj.task in tasks]
    report.records = len(out)
    return out


def project_agreement(s: Session, project: Project) -> dict[str, Any]:
    """Agreement among the annotators of ``project``'s items (only items with ≥ 2 labels count)."""
    by_item: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for label, _item, _proj, _who in _labels(s, project):
        by_item[label.item_id].append(label.payload)
    units = list(by_item.values())
    out: dict[str, Any] = {"items_with_overlap": sum(len(u) >= 2 for u in units)}
    if project.task == "rating":
        likert = [[p["likert"] for p in u] for u in units]
        out["likert_alpha_interval"] = krippendorff_alpha(likert, "interval")
        out["likert_alpha_ordinal"] = krippendorff_alpha(likert, "ordinal")
        out["likert_exact_agreement"] = pairwise_agreement(likert).rate
        for axis in AXES:
            out[f"{axis}_alpha_interval"] = krippendorff_alpha(
                [[p[axis] for p in u if p.get(axis) is not None] for u in units], "interval")
        for flag in FLAGS:
            out[f"flag_{flag}_agreement"] = pairwise_agreement([[p["flags"][flag] for p in u] for u in units]).rate
    elif project.task == "comparison":
        out["pairwise_agreement"] = pairwise_agreement([[p["choice"] for p in u] for u in units]).rate
        scale = {"tie": 0}
        scale.update({f"{side}{k}": (k + 1) * (1 if side == "b" else -1) for side in "ab" for k in range(4)})
        out["preference_alpha_ordinal"] = krippendorff_alpha(
            [[scale["tie" if p["choice"] == "tie" else f"{p['choice']}{p['strength']}"] for p in u]
             for u in units], "ordinal")
    else:
        out["pairwise_agreement"] = ranking_agreement([[p["ranking"] for p in u] for u in units]).rate
    return out
