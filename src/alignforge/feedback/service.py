"""What the feedback app does, without HTTP: accounts, import, assignment, submission, progress.

The web routes (``app.py``) and the CLI (``cli.py``) are thin layers over these functions, so the
rules live in one place and are tested directly (what comes out, labels as records and their
agreement, is :mod:`alignforge.feedback.export`):

* an item goes to ``project.per_item`` different annotators and never twice to the same one
  (a unique (item, user) constraint plus a conditional ``n_assigned`` increment);
* a submission is stored once: its idempotency key and its assignment are both unique, and a
  repeated submission returns the label already stored instead of failing or duplicating;
* only the assignment's own annotator can submit it (:class:`Forbidden` otherwise).
"""

from __future__ import annotations

import datetime as dt
import random
import re
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Iterable, Mapping, Optional

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import and_, delete, exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from alignforge.data.records import FLAGS, Candidates
from alignforge.feedback.db import ROLES, TASKS, Assignment, Item, Label, Project, User, utcnow
from alignforge.textcheck import find_surrogate, safe_text

# Pairwise choice on one 9-point scale: A better by strength 3..0, a tie, B better by 0..3.
# Strength levels follow Llama-2 (design §3): 0 negligibly, 1 slightly, 2 better, 3 significantly.
STRENGTH_NAMES = ("negligibly better", "slightly better", "better", "significantly better")
PREFERENCES = ["a3", "a2", "a1", "a0", "tie", "b0", "b1", "b2", "b3"]
AXES = ("helpful", "honest", "harmless")
FLAG_LABELS = {
    "fails_instruction": "Fails to follow the instruction",
    "inappropriate_for_customer": "Inappropriate for a customer assistant",
    "sexual": "Sexual content",
    "violent": "Violent content",
    "harmful_advice": "Encourages or advises harmful behaviour",
    "moral_judgment": "Expresses a moral judgment",
    "denigrates_protected_class": "Denigrates a protected class",
    "hallucination": "Makes up facts (hallucination)",
}
assert tuple(FLAG_LABELS) == FLAGS

USERNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MIN_PASSWORD = 8

# argon2id with the library's (RFC 9106 low-memory) defaults.
_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash("timing-equaliser-for-unknown-users")


class Forbidden(Exception):
    """The user may not see or change this object (HTTP 403)."""


class NotFound(Exception):
    """No such object (HTTP 404)."""


class Invalid(ValueError):
    """Bad input: the message says which field and what was expected (HTTP 400)."""


def check_storable(value: Any, what: str) -> None:
    """Refuse text that cannot be stored and shown (a lone surrogate: JSON ``"\\udcff"``, or a
    non-UTF-8 byte in a file name or argument read with surrogateescape), naming ``what``.

    Refused, not repaired: the text came from a file the user can fix and re-import, and an item
    stored with a silent replacement would be labelled and exported as if it were what the model
    wrote. (Text already stored by an older version is repaired on the way out instead: see
    :func:`alignforge.feedback.export.export_records` and the app's template filter.)"""
    found = find_surrogate(value)
    if found is not None:
        raise Invalid(f"{what}: {found.message()}")


# ---------------------------------------------------------------------------------------------
# Accounts
# ---------------------------------------------------------------------------------------------


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def create_user(s: Session, username: str, password: str, role: str = "annotator") -> User:
    if not USERNAME_RE.match(username or ""):
        raise Invalid(f"username: expected 1–64 letters, digits, '.', '_' or '-', got {username!r}")
    if role not in ROLES:
        raise Invalid(f"role: expected one of {', '.join(ROLES)}, got {role!r}")
    if len(password or "") < MIN_PASSWORD:
        raise Invalid(f"password: expected at least {MIN_PASSWORD} characters")
    if s.scalar(select(User).where(User.username == username)) is not None:
        raise Invalid(f"username: {username!r} is taken")
    user = User(username=username, password_hash=hash_password(password), role=role)
    s.add(user)
    s.commit()
    return user


def authenticate(s: Session, username: str, password: str) -> Optional[User]:
    """The active user with this password, or None. Unknown users cost the same time (no oracle).

    The (deliberately slow) hash check runs outside any transaction: on SQLite a transaction holds
    the write lock, and every other annotator's submission would wait for each login.
    """
    row = s.execute(select(User.id, User.password_hash, User.active).where(User.username == username)).first()
    s.rollback()
    if row is None or not row.active:
        try:
            _hasher.verify(_DUMMY_HASH, password or "")
        except VerificationError:
            pass
        return None
    try:
        _hasher.verify(row.password_hash, password or "")
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if _hasher.check_needs_rehash(row.password_hash):
        new_hash = hash_password(password)
        s.execute(update(User).where(User.id == row.id).values(password_hash=new_hash))
        s.commit()
    return s.get(User, row.id)


def set_active(s: Session, user_id: int, active: bool) -> User:
    user = s.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id}")
    user.active = active
    user.session_epoch += 1  # log them out everywhere
    s.commit()
    return user


# ---------------------------------------------------------------------------------------------
# Projects and import
# ---------------------------------------------------------------------------------------------


def create_project(s: Session, name: str, task: str, per_item: int = 1, ask_hhh: bool = True,
                   guidelines: str = "") -> Project:
    if not name or len(name) > 128:
        raise Invalid(f"project name: expected 1–128 characters, got {name!r}")
    if task not in TASKS:
        raise Invalid(f"task: expected one of {', '.join(TASKS)}, got {task!r}")
    if not isinstance(per_item, int) or per_item < 1:
        raise Invalid(f"per_item: expected an integer ≥ 1 (annotators per item), got {per_item!r}")
    check_storable(name, "project name")
    check_storable(guidelines, "guidelines")
    if s.scalar(select(Project).where(Project.name == name)) is not None:
        raise Invalid(f"project name: {name!r} exists")
    project = Project(name=name, task=task, per_item=per_item, ask_hhh=ask_hhh, guidelines=guidelines)
    s.add(project)
    s.commit()
    return project


def get_project(s: Session, name_or_id: str | int) -> Project:
    if isinstance(name_or_id, int) or str(name_or_id).isdigit():
        project = s.get(Project, int(name_or_id))
        if project is not None:
            return project
    # A name that cannot be stored names no project (and the driver could not even encode it).
    name = str(name_or_id)
    project = None if find_surrogate(name) else s.scalar(select(Project).where(Project.name == name))
    if project is None:
        raise NotFound(f"no project {name_or_id!r}")
    return project


@dataclass
class ImportReport:
    records: int = 0
    items: int = 0
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)

    def skip(self, why: str) -> None:
        self.skipped += 1
        if len(self.reasons) < 20:
            self.reasons.append(why)

    def summary(self) -> str:
        s = f"{self.records} candidates records -> {self.items} items"
        if self.skipped:
            s += f"; {self.skipped} skipped (first: {self.reasons[0]})"
        return s


def import_candidates(s: Session, project: Project, records: Iterable[Candidates], batch: str = "",
                      seed: int = 0) -> ImportReport:
    """Turn prompt + K candidate records into items for ``project``.

    This is the one entry point for new work, whatever produced the candidates: a JSONL file
    today (``feedback import FILE``), the sampling engine's output for a policy checkpoint later
    (it yields the same :class:`Candidates` records, with ``policy``/``round``/``sampling`` set).

    rating      one item per response
    comparison  one item per pair of distinct responses (A/B sides shuffled: no position bias)
    ranking     one item per prompt, the K responses in a shuffled display order
    Records that cannot make an item (fewer than two distinct responses to compare) are skipped
    and counted in the report. A record whose text cannot be stored and shown (a lone surrogate)
    raises :class:`Invalid` naming it, and nothing of the import is stored: records read from a
    file were refused with their file:line already; this catches records made in Python.
    """
    check_storable(batch, "batch")
    rng = random.Random(seed)
    report = ImportReport()
    for n, rec in enumerate(records):
        report.records += 1
        where = rec.id or f"record {n + 1}"
        found = find_surrogate(rec.to_dict())
        if found is not None:
            s.rollback()  # all or nothing: the items of earlier records were only added, not committed
            raise Invalid(f"{safe_text(where)}: field '{found.field}': {found.message()}")
        prov = {k: v for k, v in rec.to_dict().items() if k not in ("prompt", "responses")}
        if project.task == "rating":
            for i, resp in enumerate(rec.responses):
                s.add(Item(project_id=project.id, batch=batch, prompt=rec.prompt, responses=[resp],
                           provenance={**prov, "indices": [i]}))
                report.items += 1
        elif project.task == "comparison":
            pairs = [(i, j) for i, j in combinations(range(len(rec.responses)), 2)
                     if rec.responses[i] != rec.responses[j]]
            if not pairs:
                report.skip(f"{where}: needs two different responses to compare")
            for i, j in pairs:
                shown = [i, j] if rng.random() < 0.5 else [j, i]
                s.add(Item(project_id=project.id, batch=batch, prompt=rec.prompt,
                           responses=[rec.responses[k] for k in shown], provenance={**prov, "indices": shown}))
                report.items += 1
        else:
            if len(rec.responses) < 2:
                report.skip(f"{where}: a ranking needs at least two responses, got {len(rec.responses)}")
                continue
            shown = list(range(len(rec.responses)))
            rng.shuffle(shown)
            s.add(Item(project_id=project.id, batch=batch, prompt=rec.prompt,
                       responses=[rec.responses[k] for k in shown], provenance={**prov, "indices": shown}))
            report.items += 1
    s.commit()
    return report


# ---------------------------------------------------------------------------------------------
# Assignment
# ---------------------------------------------------------------------------------------------


def open_assignment(s: Session, project: Project, user: User) -> Optional[Assignment]:
    return s.scalar(select(Assignment).where(Assignment.project_id == project.id,
                                             Assignment.user_id == user.id,
                                             Assignment.done.is_(False)).order_by(Assignment.id))


def next_assignment(s: Session, project: Project, user: User) -> Optional[Assignment]:
    """The user's open assignment in ``project``, or a newly claimed one; None when nothing is left.

    Items already started by others come first, so that overlapping labels (agreement) accrue
    early. Claiming is race-safe on SQLite and PostgreSQL alike: the conditional UPDATE only
    succeeds while a slot is free, and the unique (item, user) pair stops a second tab of the
    same user from taking the item twice.
    """
    current = open_assignment(s, project, user)
    if current is not None:
        return current
    mine = exists().where(and_(Assignment.item_id == Item.id, Assignment.user_id == user.id))
    for _attempt in range(20):
        candidate_ids = s.scalars(
            select(Item.id).where(Item.project_id == project.id, Item.n_assigned < project.per_item, ~mine)
            .order_by(Item.n_assigned.desc(), Item.id).limit(10)).all()
        if not candidate_ids:
            s.rollback()
            return None
        for item_id in candidate_ids:
            claimed = s.execute(update(Item).where(Item.id == item_id, Item.n_assigned < project.per_item)
                                .values(n_assigned=Item.n_assigned + 1)).rowcount
            if claimed != 1:
                continue
            assignment = Assignment(item_id=item_id, user_id=user.id, project_id=project.id)
            s.add(assignment)
            try:
                s.commit()
            except IntegrityError:  # the same user claimed it from another tab a moment ago
                s.rollback()
                current = open_assignment(s, project, user)
                if current is not None:
                    return current
                continue
            return assignment
        s.rollback()
    return open_assignment(s, project, user)


def get_assignment(s: Session, assignment_id: int, user: User) -> Assignment:
    """The assignment, if it is the user's own (admins included: nobody sees another's open task)."""
    assignment = s.get(Assignment, assignment_id)
    if assignment is None:
        raise NotFound(f"assignment {assignment_id}")
    if assignment.user_id != user.id:
        raise Forbidden("this assignment belongs to another annotator")
    return assignment


def release_stale(s: Session, older_than_s: float, project: Optional[Project] = None) -> int:
    """Give back the slots of assignments opened more than ``older_than_s`` seconds ago and never
    submitted (an annotator who left): the items become available to others. Returns how many."""
    cutoff = utcnow() - dt.timedelta(seconds=older_than_s)
    q = select(Assignment).where(Assignment.done.is_(False), Assignment.created_at < cutoff)
    if project is not None:
        q = q.where(Assignment.project_id == project.id)
    released = 0
    for a in s.scalars(q).all():
        # Conditional on still being open: a submission that committed meanwhile keeps its slot.
        if s.execute(delete(Assignment).where(Assignment.id == a.id, Assignment.done.is_(False))).rowcount:
            s.execute(update(Item).where(Item.id == a.item_id).values(n_assigned=Item.n_assigned - 1))
            released += 1
    s.commit()
    return released


# ---------------------------------------------------------------------------------------------
# Submission
# ---------------------------------------------------------------------------------------------


def _int_field(form: Mapping[str, Any], name: str, lo: int, hi: int) -> int:
    raw = form.get(name)
    try:
        value = int(str(raw))
    except (TypeError, ValueError):
        raise Invalid(f"{name}: expected an integer {lo}–{hi}, got {raw!r}") from None
    if not lo <= value <= hi:
        raise Invalid(f"{name}: expected an integer {lo}–{hi}, got {value}")
    return value


def parse_label(project: Project, item: Item, form: Mapping[str, Any]) -> dict[str, Any]:
    """Form fields → the label payload stored in the database, validated for the project's task."""
    if project.task == "rating":
        payload: dict[str, Any] = {"likert": _int_field(form, "likert", 1, 7)}
        payload["flags"] = {name: str(form.get(f"flag_{name}", "")).lower() in ("1", "on", "true", "yes")
                            for name in FLAGS}
        for axis in AXES:
            if form.get(axis) not in (None, ""):
                payload[axis] = _int_field(form, axis, 1, 7)
            elif project.ask_hhh:
                raise Invalid(f"{axis}: expected an integer 1–7 (this project asks for {', '.join(AXES)})")
        return payload
    if project.task == "comparison":
        pref = form.get("preference")
        if pref not in PREFERENCES:
            raise Invalid(f"preference: expected one of {', '.join(PREFERENCES)}, got {pref!r}")
        if pref == "tie":
            return {"choice": "tie"}
        return {"choice": pref[0], "strength": int(pref[1])}
    k = len(item.responses)
    positions = [_int_field(form, f"rank_{i}", 1, k) for i in range(k)]
    if sorted(positions) != list(range(1, k + 1)):
        raise Invalid(f"rank: each of the {k} responses needs a different rank 1–{k}, got {positions}")
    return {"ranking": sorted(range(k), key=lambda i: positions[i])}


def _existing(s: Session, idem_key: str, assignment_id: int) -> Optional[Label]:
    return (s.scalar(select(Label).where(Label.idem_key == idem_key))
            or s.scalar(select(Label).where(Label.assignment_id == assignment_id)))


def submit_label(s: Session, assignment_id: int, user: User, form: Mapping[str, Any], idem_key: str,
                 seconds: Optional[float] = None) -> tuple[Label, bool]:
    """Store the label for an assignment: ``(label, created)``.

    A repeat (same idempotency key, or the assignment already labelled) returns the stored label
    with ``created=False``: the browser may retry a POST whose answer it never saw. When this
    returns, the label is committed, so acknowledging it to the browser is safe.
    """
    if not idem_key or len(idem_key) > 64:
        raise Invalid("idem: expected the submission's idempotency key (1–64 characters)")
    assignment = s.get(Assignment, assignment_id)
    if assignment is None:
        raise NotFound(f"assignment {assignment_id}")
    if assignment.user_id != user.id:  # admins cannot label in someone else's name either
        raise Forbidden("this assignment belongs to another annotator")
    previous = _existing(s, idem_key, assignment_id)
    if previous is not None:
        if previous.user_id != user.id:
            raise Forbidden("this submission key belongs to another annotator")
        return previous, False
    project = s.get(Project, assignment.project_id)
    payload = parse_label(project, assignment.item, form)
    label = Label(assignment_id=assignment.id, idem_key=idem_key, item_id=assignment.item_id, user_id=user.id,
                  project_id=assignment.project_id, payload=payload, seconds=seconds)
    s.add(label)
    assignment.done = True
    try:
        s.commit()
    except IntegrityError:  # a concurrent duplicate won the race: return its row
        s.rollback()
        previous = _existing(s, idem_key, assignment_id)
        if previous is None or previous.user_id != user.id:
            raise
        return previous, False
    return label, True


# ---------------------------------------------------------------------------------------------
# Progress (labels out, as records and agreement: alignforge.feedback.export)
# ---------------------------------------------------------------------------------------------


@dataclass
class Progress:
    items: int
    slots: int            # items × per_item: labels wanted
    labels: int
    assigned: int
    per_user: dict[str, int]
    per_batch: dict[str, tuple[int, int]]  # batch -> (labels, slots)

    @property
    def percent(self) -> float:
        return 100.0 * self.labels / self.slots if self.slots else 100.0


def project_progress(s: Session, project: Project) -> Progress:
    items = s.scalar(select(func.count(Item.id)).where(Item.project_id == project.id)) or 0
    assigned = s.scalar(select(func.coalesce(func.sum(Item.n_assigned), 0)).where(Item.project_id == project.id))
    labels = s.scalar(select(func.count(Label.id)).where(Label.project_id == project.id)) or 0
    per_user = dict(s.execute(select(User.username, func.count(Label.id)).join(Label, Label.user_id == User.id)
                              .where(Label.project_id == project.id).group_by(User.username)).all())
    batch_items = dict(s.execute(select(Item.batch, func.count(Item.id)).where(Item.project_id == project.id)
                                 .group_by(Item.batch)).all())
    batch_labels = dict(s.execute(select(Item.batch, func.count(Label.id)).join(Label, Label.item_id == Item.id)
                                  .where(Item.project_id == project.id).group_by(Item.batch)).all())
    per_batch = {b: (batch_labels.get(b, 0), n * project.per_item) for b, n in sorted(batch_items.items())}
    return Progress(items, items * project.per_item, labels, int(assigned or 0), per_user, per_batch)


def user_progress(s: Session, project: Project, user: User) -> tuple[int, int]:
    """(labels this user gave in the project, items still open to them)."""
    done = s.scalar(select(func.count(Label.id)).where(Label.project_id == project.id,
                                                       Label.user_id == user.id)) or 0
    mine = exists().where(and_(Assignment.item_id == Item.id, Assignment.user_id == user.id))
    available = s.scalar(select(func.count(Item.id)).where(Item.project_id == project.id,
                                                           Item.n_assigned < project.per_item, ~mine)) or 0
    return done, available + (1 if open_assignment(s, project, user) else 0)
