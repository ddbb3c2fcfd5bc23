"""Fixtures for the feedback app's tests: a seeded database, logged-in HTTP clients, PostgreSQL."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the feedback app needs the [app] extra")

from alignforge.feedback import service  # noqa: E402
from alignforge.feedback.db import make_engine, make_sessionmaker  # noqa: E402
from feedback_helpers import PG_URL, login, seed  # noqa: E402


@pytest.fixture(autouse=True)
def cheap_argon2(monkeypatch):
    """Test accounts hash with argon2id at minimal cost: production cost (64 MiB, 3 passes) spent on
    every seeded user would dominate these tests on a shared 2-core machine. Verification reads the
    cost from the hash itself, so servers started by the tests stay fast too."""
    from argon2 import PasswordHasher

    monkeypatch.setattr(service, "_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))


@pytest.fixture
def db_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'feedback.db'}"


@pytest.fixture
def Session(db_url):
    seed(db_url)
    engine = make_engine(db_url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def make_client(Session, db_url):
    """``make_client("ann0")`` → a TestClient logged in as that user (None: anonymous)."""
    from fastapi.testclient import TestClient

    from alignforge.feedback.app import create_app

    app = create_app(db_url)
    clients = []

    def make(username: str | None = None):
        c = TestClient(app, base_url="http://testserver")
        c.__enter__()
        clients.append(c)
        if username:
            r = login(c, username)
            assert r.status_code == 303, r.text
        return c

    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture
def pg_url() -> str:
    """A PostgreSQL database with a fresh feedback schema (tables dropped first)."""
    if not PG_URL:
        pytest.skip("ALIGNFORGE_TEST_PG_URL is not set: no PostgreSQL server "
                    "(run `eval \"$(bash scripts/ci-services.sh)\"` to start one)")
    return PG_URL


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_db(request, tmp_path) -> str:
    """A seeded database URL: SQLite file, and PostgreSQL where ALIGNFORGE_TEST_PG_URL is set."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'feedback.db'}"
        seed(url)
    else:
        url = request.getfixturevalue("pg_url")
        seed(url, fresh=True)
    return url
