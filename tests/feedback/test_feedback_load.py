"""Load and crash test: 20 annotator clients on loopback submit 1,000 labels with retries; the server
is killed with SIGKILL mid-load and restarted; every acknowledged label must be there, none lost,
none doubled. Against SQLite (WAL, synchronous=FULL) and a real PostgreSQL server."""

from __future__ import annotations

import re
import threading
import time

import pytest
from sqlalchemy import func, select

from alignforge.feedback import service
from alignforge.feedback.db import Assignment, Item, Label, make_engine, make_sessionmaker
from feedback_helpers import PASSWORD, Server, candidates, csrf_of, hidden, seed

httpx = pytest.importorskip("httpx")

CLIENTS = 20
ITEMS, PER_ITEM = 500, 2          # 1,000 labels wanted
KILL_AFTER = 400                  # acknowledged labels before the SIGKILL
DEADLINE_S = 240


def _seed_load(url: str, fresh: bool) -> int:
    seed(url, annotators=CLIENTS, fresh=fresh)
    engine = make_engine(url)
    with make_sessionmaker(engine)() as s:
        p = service.create_project(s, "load", "rating", per_item=PER_ITEM, ask_hhh=False)
        service.import_candidates(s, p, candidates(ITEMS, 1))
        pid = p.id
    engine.dispose()
    return pid


class Annotator(threading.Thread):
    """Logs in, then labels until nothing is left. Every request is retried until it gets an answer
    (connection refused while the server is down, reset when it dies mid-request); a POST is retried
    with the same idempotency key. Every 10th label is deliberately sent twice (a double click)."""

    def __init__(self, name: str, server: Server, pid: int, acks: dict, lock: threading.Lock, stop_at: float):
        super().__init__(daemon=True)
        self.username, self.server, self.pid, self.acks, self.lock, self.stop_at = name, server, pid, acks, lock, stop_at
        self.error: str | None = None
        self.retries = 0

    def request(self, client, method: str, url: str, **kw):
        while time.time() < self.stop_at:
            try:
                r = client.request(method, url, **kw)
                if r.status_code < 500:
                    return r
            except httpx.TransportError:
                pass
            self.retries += 1
            time.sleep(0.1)
        raise TimeoutError(f"{method} {url}: no answer before the deadline")

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.server.url, timeout=15) as c:
                page = self.request(c, "GET", "/login")
                r = self.request(c, "POST", "/login", data={"username": self.username, "password": PASSWORD,
                                                            "csrf": csrf_of(page.text), "next": "/"})
                assert r.status_code == 303, r.text
                n = 0
                while True:
                    r = self.request(c, "GET", f"/projects/{self.pid}/next", follow_redirects=True)
                    if "All done" in r.text:
                        return
                    aid = int(re.search(r'action="/a/(\d+)"', r.text).group(1))
                    form = {"csrf": csrf_of(r.text), "idem": hidden(r.text, "idem"), "likert": str(1 + aid % 7)}
                    sends = 2 if n % 10 == 0 else 1
                    for _ in range(sends):
                        r = self.request(c, "POST", f"/a/{aid}", data=form)
                        assert r.status_code == 303, (r.status_code, r.text[:500])
                    with self.lock:
                        self.acks[form["idem"]] = (aid, int(r.headers["x-label-id"]), form["likert"])
                    n += 1
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = repr(e)


def run_load(url: str, tmp_path, fresh: bool) -> dict:
    pid = _seed_load(url, fresh)
    server = Server(url, tmp_path / "server.log").start()
    acks: dict = {}
    lock = threading.Lock()
    t0 = time.time()
    clients = [Annotator(f"ann{i}", server, pid, acks, lock, t0 + DEADLINE_S) for i in range(CLIENTS)]
    try:
        for c in clients:
            c.start()
        while len(acks) < KILL_AFTER and time.time() - t0 < DEADLINE_S and any(c.is_alive() for c in clients):
            time.sleep(0.05)
        acked_before_kill = len(acks)
        server.kill9()
        killed_at = time.time()
        time.sleep(0.5)  # clients now see refused connections and retry
        server.start()
        for c in clients:
            c.join(max(1.0, t0 + DEADLINE_S - time.time()))
        elapsed = time.time() - t0
    finally:
        server.stop()
    errors = [c.error for c in clients if c.error]
    assert not errors, errors[:3]
    assert not any(c.is_alive() for c in clients), "clients did not finish before the deadline"
    assert acked_before_kill >= KILL_AFTER

    engine = make_engine(url)
    with make_sessionmaker(engine)() as s:
        rows = s.execute(select(Label.idem_key, Label.assignment_id, Label.id, Label.payload)).all()
        stored = {k: (a, i, p["likert"]) for k, a, i, p in rows}
        assert len(rows) == ITEMS * PER_ITEM == 1000
        # Every acknowledged label is stored, exactly as acknowledged.
        assert len(acks) == 1000
        for key, (aid, label_id, likert) in acks.items():
            assert stored[key] == (aid, label_id, int(likert))
        # No item labelled twice by one annotator, every item by exactly PER_ITEM annotators.
        pairs = s.execute(select(Label.item_id, Label.user_id)).all()
        assert len(set(pairs)) == 1000
        per_item = s.execute(select(Label.item_id, func.count()).group_by(Label.item_id)).all()
        assert len(per_item) == ITEMS and {n for _, n in per_item} == {PER_ITEM}
        assert s.scalar(select(func.count(Assignment.id)).where(Assignment.done.is_(False))) == 0
        assert s.scalar(select(func.max(Item.n_assigned))) == PER_ITEM
    engine.dispose()
    return {"elapsed_s": round(elapsed, 1), "labels_per_s": round(1000 / elapsed, 1),
            "killed_after_s": round(killed_at - t0, 1), "acked_before_kill": acked_before_kill,
            "retries": sum(c.retries for c in clients)}


@pytest.mark.slow
def test_load_and_kill9_sqlite(tmp_path):
    stats = run_load(f"sqlite:///{tmp_path / 'load.db'}", tmp_path, fresh=False)
    print("sqlite load:", stats)


@pytest.mark.slow
@pytest.mark.postgres
def test_load_and_kill9_postgres(tmp_path, pg_url):
    stats = run_load(pg_url, tmp_path, fresh=True)
    print("postgres load:", stats)
