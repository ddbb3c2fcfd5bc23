"""The feedback app's database: SQLAlchemy 2 tables and the engine (SQLite by default, or PostgreSQL).

Tables
------
users        accounts (argon2 hash, role ``admin``/``annotator``, ``session_epoch`` to revoke cookies)
projects     a labelling task: ``task`` is ``rating`` | ``comparison`` | ``ranking``, ``per_item`` how
             many different annotators see each item
items        what one annotator labels once: a prompt and the responses shown (one response for a
             rating, two for a comparison, K for a ranking), with the candidates' provenance
assignments  (item, user) — unique, so an item is never shown twice to the same annotator
labels       one per assignment (unique) and one per ``idem_key`` (unique): a double click or a
             retried POST finds the existing row instead of storing a second label
settings     key/value (the session-signing secret)

Durability: SQLite runs in WAL mode with ``synchronous=FULL`` so a committed (acknowledged) label
survives a crash of the process *and* of the machine; every write transaction is ``BEGIN
IMMEDIATE`` so concurrent writers queue on the busy timeout instead of failing with "database is
locked" when a read transaction tries to upgrade. PostgreSQL commits are durable by default.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Optional

from sqlalchemy import (JSON, Boolean, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint,
                        create_engine, event)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker

TASKS = ("rating", "comparison", "ranking")
ROLES = ("admin", "annotator")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list: JSON}


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="annotator")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Bumped on logout / deactivation: every cookie signed with an older epoch stops working.
    session_epoch: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    task: Mapped[str] = mapped_column(String(16))
    per_item: Mapped[int] = mapped_column(Integer, default=1)
    ask_hhh: Mapped[bool] = mapped_column(Boolean, default=True)
    guidelines: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    items: Mapped[list["Item"]] = relationship(back_populates="project")


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    batch: Mapped[str] = mapped_column(String(128), default="")
    # The prompt as stored in the records: a string or a list of {role, content} messages.
    prompt: Mapped[Any] = mapped_column(JSON)
    responses: Mapped[list] = mapped_column(JSON)
    # The candidates record's provenance (id, category, source, policy, round, sampling, meta) and,
    # for a comparison item cut from K candidates, which two indices it shows.
    provenance: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Assignments handed out so far; claimed with a conditional UPDATE (n_assigned < per_item)
    # so two annotators racing for the last slot cannot both get it.
    n_assigned: Mapped[int] = mapped_column(Integer, default=0)
    project: Mapped[Project] = relationship(back_populates="items")


class Assignment(Base):
    __tablename__ = "assignments"
    # AUTOINCREMENT: SQLite would otherwise reuse a released assignment's id, and a form left
    # open for the released one would then post to a different item.
    __table_args__ = (UniqueConstraint("item_id", "user_id", name="uq_assignment_item_user"),
                      {"sqlite_autoincrement": True})
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    item: Mapped[Item] = relationship()
    user: Mapped[User] = relationship()


class Label(Base):
    __tablename__ = "labels"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"), unique=True)
    idem_key: Mapped[str] = mapped_column(String(64), unique=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    # rating: likert, flags, helpful, honest, harmless; comparison: choice a|b|tie, strength;
    # ranking: ranking (indices into item.responses, best first)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    seconds: Mapped[Optional[float]] = mapped_column(default=None)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    item: Mapped[Item] = relationship()
    user: Mapped[User] = relationship()


class Setting(Base):
    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


def normalize_url(url: str) -> str:
    """Accept a bare path as SQLite, and ``postgresql://`` as the psycopg 3 driver."""
    if "://" not in url:
        return f"sqlite:///{url}"
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str, echo: bool = False) -> Engine:
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise ValueError("the feedback database must be a file (sqlite:///path.db): an in-memory "
                             "database would lose every label when the server stops")
        engine = create_engine(url, echo=echo, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001 - DB-API connection
            # pysqlite's own BEGIN handling is switched off so that we can issue BEGIN IMMEDIATE.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # noqa: ANN001
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, echo=echo, pool_size=10, max_overflow=30, pool_pre_ping=True)


def make_sessionmaker(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)


def create_schema(engine: Engine) -> None:
    Base.metadata.create_all(engine)
