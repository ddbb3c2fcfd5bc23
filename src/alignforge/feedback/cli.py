"""``alignforge feedback init|adduser|import|serve|export|status|release``.

    alignforge feedback init    --db sqlite:///feedback.db --admin alice     # password: prompt or $ALIGNFORGE_PASSWORD
    alignforge feedback adduser bob --db sqlite:///feedback.db               # an annotator
    alignforge feedback import  candidates.jsonl --project hh-round1 --task comparison --per-item 3
    alignforge feedback serve   --db sqlite:///feedback.db --port 8000
    alignforge feedback export  --db sqlite:///feedback.db --out prefs.jsonl   # → alignforge reward data.train=prefs.jsonl
    alignforge feedback status  --db sqlite:///feedback.db                   # progress + agreement
    alignforge feedback release --older-than-hours 24                         # free abandoned assignments

``--db`` defaults to ``$ALIGNFORGE_FEEDBACK_DB``, else ``sqlite:///feedback.db``; a PostgreSQL URL
(``postgresql://user:pass@host/db``) works everywhere a SQLite one does.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import sys
from typing import Any, Iterator, Sequence

DEFAULT_DB = "sqlite:///feedback.db"


class CliError(Exception):
    """A usage problem: printed as one line, exit status 2."""


def _password(args: argparse.Namespace, who: str) -> str:
    env = os.environ.get(args.password_env)
    if env:
        return env
    if sys.stdin.isatty():
        first = getpass.getpass(f"password for {who}: ")
        if getpass.getpass("again: ") != first:
            raise CliError("the passwords differ")
        return first
    raise CliError(f"no password: set ${args.password_env} or run in a terminal")


@contextlib.contextmanager
def _session(args: argparse.Namespace, need_schema: bool = True) -> Iterator[Any]:
    """A database session for one command; closed (and the engine's connections released) after it,
    so a SQLite write lock never outlives the command."""
    from sqlalchemy import inspect

    from alignforge.feedback.db import create_schema, make_engine, make_sessionmaker

    engine = make_engine(args.db)
    try:
        if need_schema and not inspect(engine).has_table("labels"):
            raise CliError(f"{args.db} has no feedback schema; run "
                           f"`alignforge feedback init --db {args.db}` first")
        if not need_schema:
            create_schema(engine)
        with make_sessionmaker(engine)() as s:
            yield s
    finally:
        engine.dispose()


def cmd_init(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from alignforge.feedback import service
    from alignforge.feedback.app import session_secret
    from alignforge.feedback.db import User, make_sessionmaker

    with _session(args, need_schema=False) as s:
        session_secret(make_sessionmaker(s.get_bind()))  # the cookie-signing key, made once, now
        if s.scalar(select(User).where(User.username == args.admin)) is None:
            service.create_user(s, args.admin, _password(args, args.admin), role="admin")
            print(f"created admin {args.admin!r} in {args.db}")
        else:
            print(f"{args.db}: schema ready; admin {args.admin!r} already exists")
    return 0


def cmd_adduser(args: argparse.Namespace) -> int:
    from alignforge.feedback import service

    with _session(args) as s:
        service.create_user(s, args.username, _password(args, args.username), role=args.role)
        print(f"created {args.role} {args.username!r}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from alignforge.data.records import ReadReport, read_records
    from alignforge.feedback import service
    from alignforge.textcheck import safe_text

    with _session(args) as s:
        report = ReadReport(args.file)
        records = read_records(args.file, kind="candidates", on_bad=args.on_bad, report=report)
        # The default batch name is the file's name, which may hold bytes that are not UTF-8
        # (surrogateescape'd by Python): shown as U+FFFD rather than refusing a good file for its name.
        # An explicit --batch is checked before a new project is created for it.
        batch = args.batch or safe_text(os.path.basename(args.file))
        service.check_storable(batch, "--batch")
        try:
            project = service.get_project(s, args.project)
            for key, have, want in (("task", project.task, args.task), ("per-item", project.per_item, args.per_item)):
                if want is not None and have != want:
                    raise service.Invalid(f"--{key}: project {project.name!r} has {key} {have!r}, not {want!r}")
        except service.NotFound:
            try:
                guidelines = open(args.guidelines, encoding="utf-8").read() if args.guidelines else ""
            except UnicodeDecodeError as e:
                raise CliError(f"--guidelines {args.guidelines}: not valid UTF-8 "
                               f"({e.reason} at byte {e.start})") from None
            project = service.create_project(s, args.project, args.task or "comparison", args.per_item or 1,
                                             ask_hhh=not args.no_hhh, guidelines=guidelines)
        result = service.import_candidates(s, project, records, batch=batch, seed=args.seed)
        print(safe_text(report.summary()))  # a file name's non-UTF-8 bytes would fail a strict stdout
        print(f"project {project.name!r} ({project.task}, {project.per_item} per item): {result.summary()}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from alignforge.feedback.app import create_app

    with _session(args):  # fail early, with the hint, on a database without the schema
        pass
    app = create_app(args.db, https_only=args.https_only)
    print(f"alignforge feedback: serving {args.db} on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from alignforge.data.records import write_records
    from alignforge.feedback import service
    from alignforge.feedback.db import TASKS
    from alignforge.feedback.export import ExportReport, export_records
    from alignforge.textcheck import safe_text

    with _session(args) as s:
        project = service.get_project(s, args.project) if args.project else None
        report = ExportReport()
        records = export_records(s, project, args.task or TASKS, report=report)
        n = write_records(args.out, records)
        kinds = {}
        for r in records:
            kinds[r.kind] = kinds.get(r.kind, 0) + 1
        print(f"wrote {n} records to {safe_text(args.out)} ({', '.join(f'{v} {k}' for k, v in sorted(kinds.items())) or 'none'})")
        if report.repaired_texts:
            print(f"note: {report.summary()}", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from alignforge.feedback import service
    from alignforge.feedback.db import Project
    from alignforge.feedback.export import project_agreement

    with _session(args) as s:
        for project in s.scalars(select(Project).order_by(Project.id)).all():
            prog = service.project_progress(s, project)
            print(f"{project.name} [{project.task}, {project.per_item}/item]: {prog.labels}/{prog.slots} labels "
                  f"({prog.percent:.1f}%), {prog.items} items")
            for key, value in project_agreement(s, project).items():
                print(f"  {key}: {'-' if value is None else round(value, 4)}")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    from alignforge.feedback import service

    with _session(args) as s:
        project = service.get_project(s, args.project) if args.project else None
        n = service.release_stale(s, args.older_than_hours * 3600, project)
        print(f"released {n} open assignments older than {args.older_than_hours} h")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignforge feedback", description="human-feedback web app")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, fn, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--db", default=os.environ.get("ALIGNFORGE_FEEDBACK_DB", DEFAULT_DB),
                       help="database URL: sqlite:///path.db (default) or postgresql://user:pass@host/db")
        p.set_defaults(fn=fn)
        return p

    p = add("init", cmd_init, "create the schema and the first admin")
    p.add_argument("--admin", required=True, help="admin username")
    p.add_argument("--password-env", default="ALIGNFORGE_PASSWORD", help="read the password from this variable")

    p = add("adduser", cmd_adduser, "add an annotator (or admin) account")
    p.add_argument("username")
    p.add_argument("--role", choices=("annotator", "admin"), default="annotator")
    p.add_argument("--password-env", default="ALIGNFORGE_PASSWORD", help="read the password from this variable")

    p = add("import", cmd_import, "import prompts with K candidate responses (candidates records) as items")
    p.add_argument("file", help="candidates records: JSONL(.gz), Parquet or a datasets dir (prompt, responses[K])")
    p.add_argument("--project", required=True, help="project name (created if new; else a batch is added)")
    p.add_argument("--task", choices=("rating", "comparison", "ranking"), default=None,
                   help="what annotators do (new projects; default comparison)")
    p.add_argument("--per-item", type=int, default=None, help="annotators per item (new projects; default 1)")
    p.add_argument("--batch", default=None, help="batch name (default: the file name)")
    p.add_argument("--guidelines", default=None, help="a text file of project-specific guidelines")
    p.add_argument("--no-hhh", action="store_true", help="ratings: helpful/honest/harmless optional")
    p.add_argument("--on-bad", choices=("error", "skip"), default="error", help="malformed records: stop or skip+count")
    p.add_argument("--seed", type=int, default=0, help="seed of the A/B and ranking display shuffles")

    p = add("serve", cmd_serve, "run the web app")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--https-only", action="store_true", help="mark the session cookie Secure (behind TLS)")
    p.add_argument("--log-level", default="info")
    p.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True)

    p = add("export", cmd_export, "write the labels as comparison / ranking / rating records")
    p.add_argument("--out", required=True, help="output file (.jsonl, .jsonl.gz or .parquet)")
    p.add_argument("--project", default=None, help="only this project (default: all)")
    p.add_argument("--task", action="append", choices=("rating", "comparison", "ranking"),
                   help="only these tasks (repeatable)")

    add("status", cmd_status, "print progress and agreement per project")

    p = add("release", cmd_release, "give back the slots of assignments opened long ago and never submitted")
    p.add_argument("--older-than-hours", type=float, required=True)
    p.add_argument("--project", default=None, help="only this project (default: all)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from alignforge.data.records import RecordError
    from alignforge.feedback.service import Invalid, NotFound

    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return int(args.fn(args) or 0)
    except (CliError, Invalid, NotFound, RecordError, ValueError) as e:
        print(f"alignforge feedback {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
