"""The service layer: import, assignment, idempotent submission, export — on SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from alignforge.data.records import Candidates, read_records, write_records
from alignforge.feedback import service
from alignforge.feedback.db import Assignment, Item, Label, User, make_engine, make_sessionmaker
from alignforge.feedback.export import export_records, project_agreement
from feedback_helpers import candidates


@pytest.fixture
def S(any_db):
    engine = make_engine(any_db)
    yield make_sessionmaker(engine)
    engine.dispose()


def users(s, *names):
    return [s.scalar(select(User).where(User.username == n)) for n in names]


def test_import_splits_by_task(S):
    with S() as s:
        recs = candidates(2, 3) + [Candidates(prompt="dup", responses=["same", "same"], id="dup")]
        rating = service.create_project(s, "r", "rating")
        assert service.import_candidates(s, rating, recs).items == 2 * 3 + 2
        comp = service.create_project(s, "c", "comparison")
        report = service.import_candidates(s, comp, recs, batch="b1")
        assert (report.items, report.skipped) == (2 * 3, 1) and "dup: needs two different" in report.reasons[0]
        rank = service.create_project(s, "k", "ranking")
        report = service.import_candidates(s, rank, recs + [Candidates(prompt="one", responses=["x"])])
        assert (report.items, report.skipped) == (3, 1)
        items = s.scalars(select(Item).where(Item.project_id == rank.id)).all()
        for it in items[:2]:  # the display order is a permutation of the candidates' order
            assert sorted(it.provenance["indices"]) == [0, 1, 2]
            assert [it.responses[d] for d in range(3)] == [f"answer {i} to {it.provenance['id']}" for i in it.provenance["indices"]]
        with pytest.raises(service.Invalid, match="task: expected one of"):
            service.create_project(s, "x", "likert")
        with pytest.raises(service.Invalid, match="exists"):
            service.create_project(s, "r", "rating")


def test_each_item_goes_to_per_item_different_annotators(S):
    with S() as s:
        p = service.create_project(s, "c", "comparison", per_item=2)
        service.import_candidates(s, p, candidates(3, 2))
        a0, a1, admin = users(s, "ann0", "ann1", "admin")
        seen = {}
        for u in (a0, a1, admin):
            seen[u.username] = []
            while (a := service.next_assignment(s, p, u)) is not None:
                assert service.next_assignment(s, p, u).id == a.id  # open one comes back until submitted
                seen[u.username].append(a.item_id)
                service.submit_label(s, a.id, u, {"preference": "a1"}, f"{u.username}-{a.id}")
        assert sorted(seen["ann0"]) == sorted(seen["ann1"]) == sorted(set(seen["ann0"])) and len(seen["ann0"]) == 3
        assert seen["admin"] == []  # 3 items × 2 slots are used up
        assert s.scalar(select(func.count(Label.id))) == 6


def test_concurrent_claims_never_exceed_per_item(any_db):
    # 8 threads (4 users × 2 tabs each) race for 5 items with 2 slots each.
    engine = make_engine(any_db)
    Smaker = make_sessionmaker(engine)
    with Smaker() as s:
        for i in range(2, 4):
            service.create_user(s, f"ann{i}", "password123")
        p = service.create_project(s, "race", "rating", per_item=2, ask_hhh=False)
        service.import_candidates(s, p, candidates(5, 1))
        pid = p.id
    errors = []

    def worker(name):
        try:
            with Smaker() as s:
                (u,) = users(s, name)
                project = s.get(service.Project, pid)
                for n in range(10):
                    a = service.next_assignment(s, project, u)
                    if a is None:
                        return
                    service.submit_label(s, a.id, u, {"likert": "4"}, f"{name}-{a.id}")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(f"ann{i % 4}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    with Smaker() as s:
        per_item = s.execute(select(Assignment.item_id, func.count()).group_by(Assignment.item_id)).all()
        assert sorted(n for _, n in per_item) == [2] * 5
        pairs = s.execute(select(Assignment.item_id, Assignment.user_id)).all()
        assert len(pairs) == len(set(pairs)) == 10
        assert s.scalar(select(func.count(Label.id))) == 10
        assert all(it.n_assigned == 2 for it in s.scalars(select(Item)).all())
    engine.dispose()


def test_submission_is_idempotent_and_owned(S):
    with S() as s:
        p = service.create_project(s, "k", "ranking", per_item=1)
        service.import_candidates(s, p, candidates(2, 3))
        a0, a1 = users(s, "ann0", "ann1")
        a = service.next_assignment(s, p, a0)
        form = {"rank_0": "3", "rank_1": "1", "rank_2": "2"}
        with pytest.raises(service.Forbidden):
            service.submit_label(s, a.id, a1, form, "key-1")
        label, created = service.submit_label(s, a.id, a0, form, "key-1")
        assert created and label.payload == {"ranking": [1, 2, 0]}
        again, created = service.submit_label(s, a.id, a0, {"rank_0": "1", "rank_1": "2", "rank_2": "3"}, "key-1")
        assert not created and again.id == label.id and again.payload == {"ranking": [1, 2, 0]}
        # A second tab with another key: still one label for the assignment.
        other, created = service.submit_label(s, a.id, a0, form, "key-2")
        assert not created and other.id == label.id
        # The same key from another annotator on their own assignment is refused, not merged.
        b = service.next_assignment(s, p, a1)
        with pytest.raises(service.Forbidden, match="key belongs"):
            service.submit_label(s, b.id, a1, form, "key-1")
        with pytest.raises(service.NotFound):
            service.submit_label(s, 10**6, a0, form, "key-3")
        with pytest.raises(service.Invalid, match="idem"):
            service.submit_label(s, b.id, a1, form, "")
        assert s.scalar(select(func.count(Label.id))) == 1


def test_export_round_trips_through_records(S, tmp_path):
    with S() as s:
        rp = service.create_project(s, "rate", "rating", per_item=2)
        service.import_candidates(s, rp, [Candidates(prompt=[{"role": "system", "content": "be brief"},
                                                             {"role": "user", "content": "hi"}],
                                                     responses=["hello"], id="c1", category="chat")])
        cp = service.create_project(s, "comp", "comparison", per_item=1)
        service.import_candidates(s, cp, candidates(2, 2))
        a0, a1 = users(s, "ann0", "ann1")
        for u, likert in ((a0, 7), (a1, 5)):
            a = service.next_assignment(s, rp, u)
            service.submit_label(s, a.id, u, {"likert": str(likert), "flag_sexual": "on", "helpful": "6",
                                               "honest": "7", "harmless": "2"}, f"r-{u.id}")
        a = service.next_assignment(s, cp, a0)
        service.submit_label(s, a.id, a0, {"preference": "tie"}, "c-tie")
        a = service.next_assignment(s, cp, a0)
        service.submit_label(s, a.id, a0, {"preference": "a3"}, "c-a3")
        shown_a = a.item.responses[0]
        records = export_records(s)
        agreement = project_agreement(s, rp)
    path = tmp_path / "prefs.jsonl"
    assert write_records(path, records) == 4
    back = read_records(path)
    ratings = [r for r in back if r.kind == "rating"]
    assert [(r.annotator, r.likert, r.harmless, r.flags["sexual"], r.flags["violent"]) for r in ratings] == \
        [("ann0", 7, 2, True, False), ("ann1", 5, 2, True, False)]
    assert ratings[0].prompt[0] == {"role": "system", "content": "be brief"} and ratings[0].category == "chat"
    assert ratings[0].meta["candidates_id"] == "c1" and ratings[0].meta["project"] == "rate"
    tie, strong = [r for r in back if r.kind == "comparison"]
    assert tie.tie and tie.strength is None
    assert (strong.chosen, strong.strength, strong.tie) == (shown_a, 3, False)
    assert strong.annotator == "ann0" and strong.source == "feedback:comp" and strong.round == 1
    # Likert 7 vs 5 on one item: exact agreement 0; flags agree.
    assert agreement["likert_exact_agreement"] == 0.0 and agreement["flag_sexual_agreement"] == 1.0
    assert agreement["items_with_overlap"] == 1


def test_accounts(S):
    with S() as s:
        assert service.authenticate(s, "ann0", "correct horse battery").username == "ann0"
        assert service.authenticate(s, "ann0", "nope") is None
        assert service.authenticate(s, "ghost", "correct horse battery") is None
        u = service.create_user(s, "eve", "password123")
        assert u.password_hash.startswith("$argon2id$") and "password123" not in u.password_hash
        service.set_active(s, u.id, False)
        assert service.authenticate(s, "eve", "password123") is None
        for bad, msg in ((("eve", "password123"), "taken"), (("x y", "password123"), "username"),
                         (("fred", "short"), "at least 8"), (("fred", "password123", "root"), "role")):
            with pytest.raises(service.Invalid, match=msg):
                service.create_user(s, *bad)


def test_release_stale_assignments(S):
    with S() as s:
        p = service.create_project(s, "rel", "comparison", per_item=1)
        service.import_candidates(s, p, candidates(2, 2))
        a0, a1 = users(s, "ann0", "ann1")
        done = service.next_assignment(s, p, a0)
        service.submit_label(s, done.id, a0, {"preference": "a0"}, "kept")
        left = service.next_assignment(s, p, a0)  # ann0 opens the second item and walks away
        assert service.next_assignment(s, p, a1) is None
        assert service.release_stale(s, older_than_s=3600) == 0  # not old enough
        assert service.release_stale(s, older_than_s=0) == 1     # the submitted one keeps its slot
        taken = service.next_assignment(s, p, a1)
        assert taken.item_id == left.item_id
        with pytest.raises(service.NotFound):
            service.submit_label(s, left.id, a0, {"preference": "a0"}, "late")
        service.submit_label(s, taken.id, a1, {"preference": "b1"}, "ann1")
        assert s.scalar(select(func.count(Label.id))) == 2
        assert [it.n_assigned for it in s.scalars(select(Item).order_by(Item.id)).all()] == [1, 1]


def test_export_feeds_the_reward_stages_pair_expansion(S, tmp_path):
    """What `alignforge reward` does with an export: data/preferences.expand_preferences."""
    from alignforge.data.preferences import PairStats, expand_preferences

    with S() as s:
        a0, a1 = users(s, "ann0", "ann1")
        rate = service.create_project(s, "rate", "rating", per_item=2, ask_hhh=False)
        service.import_candidates(s, rate, [Candidates(prompt="q", responses=["short", "long answer"])])
        likert = {("ann0", "short"): 6, ("ann1", "short"): 4, ("ann0", "long answer"): 2, ("ann1", "long answer"): 2}
        for u in (a0, a1):
            while (a := service.next_assignment(s, rate, u)) is not None:
                service.submit_label(s, a.id, u, {"likert": str(likert[(u.username, a.item.responses[0])])},
                                     f"r{a.id}")
        rank = service.create_project(s, "rank", "ranking", per_item=1)
        service.import_candidates(s, rank, [Candidates(prompt="k", responses=["x", "y", "z"])])
        a = service.next_assignment(s, rank, a0)
        form = {f"rank_{d}": str(1 + "xyz".index(a.item.responses[d])) for d in range(3)}  # x > y > z
        service.submit_label(s, a.id, a0, form, "rank")
        comp = service.create_project(s, "comp", "comparison", per_item=2)
        service.import_candidates(s, comp, [Candidates(prompt="c", responses=["good", "bad"])])
        for u, pref in ((a0, "good"), (a1, "tie")):
            a = service.next_assignment(s, comp, u)
            choice = "tie" if pref == "tie" else ("a2" if a.item.responses[0] == "good" else "b2")
            service.submit_label(s, a.id, u, {"preference": choice}, f"c{u.id}")
        path = tmp_path / "prefs.jsonl"
        write_records(path, export_records(s))
    stats = PairStats()
    pairs = expand_preferences(read_records(path), stats)
    got = sorted((p.prompt, p.chosen, p.rejected, p.strength, round(p.weight, 4), p.source) for p in pairs)
    assert got == sorted([
        ("q", "short", "long answer", 2, 1.0, "rating"),        # means 5 vs 2: gap 3 -> strength 2
        ("k", "x", "y", None, 0.3333, "ranking"), ("k", "x", "z", None, 0.3333, "ranking"),
        ("k", "y", "z", None, 0.3333, "ranking"),
        ("c", "good", "bad", 2, 1.0, "comparison"),
    ])
    assert (stats.comparisons, stats.ties_dropped, stats.rankings, stats.ratings) == (2, 1, 1, 4)
