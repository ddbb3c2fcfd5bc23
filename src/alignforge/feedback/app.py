"""The feedback web app: FastAPI routes over :mod:`alignforge.feedback.service`, Jinja2 pages.

Security model (issue 9):

* passwords: argon2id (``argon2-cffi``); sessions: Starlette's signed cookie (itsdangerous,
  HttpOnly, SameSite=Lax, ``Secure`` with ``https_only``), carrying the user id and a per-user
  ``session_epoch`` so logout / deactivation revokes every outstanding cookie;
* CSRF: one random token per session, required on every POST (:func:`checked_form`), compared in
  constant time; the session is renewed at login (no session fixation);
* who acts is always the session's user — no route reads a user id from the request body;
  annotators get 403 on other annotators' assignments and on every ``/admin`` page;
* model text is untrusted: Jinja2 autoescaping is on, no template marks model text ``|safe``,
  and a Content-Security-Policy without inline scripts is a second line of defence. Text that is
  not valid Unicode (a lone surrogate) is refused at import; any already stored is shown with
  U+FFFD in its place (the templates' ``finalize``) and exported the same way, so no page or
  export can fail on what the database holds (issue 19).

Handlers are plain ``def`` (run in the threadpool) because the database layer is synchronous;
the form is read by an async dependency that also checks the CSRF token.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import quote

import jinja2
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware

from alignforge.data.records import RecordError, as_messages, read_records, write_records
from alignforge.feedback import service
from alignforge.feedback.export import ExportReport, export_records, project_agreement
from alignforge.feedback.db import TASKS, Label, Project, Setting, User, make_engine, make_sessionmaker, utcnow
from alignforge.textcheck import safe_text

log = logging.getLogger("alignforge.feedback")

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "alignforge_session"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


class LoginThrottle:
    """Failed logins per (client address, username) in a sliding window: past the limit, /login answers
    429 until the window has passed, so passwords cannot be guessed at full speed. In memory, per
    server process (what one process serving a labelling team needs); a restart forgets it."""

    def __init__(self, max_failures: int = 10, window_s: float = 300.0):
        self.max_failures, self.window_s = max_failures, window_s
        self._failures: dict[tuple[str, str], list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> list[float]:
        times = [t for t in self._failures.get(key, []) if now - t < self.window_s]
        if times:
            self._failures[key] = times
        else:
            self._failures.pop(key, None)
        return times

    def retry_after(self, key: tuple[str, str]) -> Optional[int]:
        """Seconds until another attempt is allowed, or None when it is allowed now."""
        now = time.monotonic()
        with self._lock:
            times = self._recent(key, now)
            if len(times) < self.max_failures:
                return None
            return max(1, int(self.window_s - (now - times[0])) + 1)

    def failed(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._failures.setdefault(key, []).append(time.monotonic())

    def succeeded(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._failures.pop(key, None)


class SecurityHeaders:
    """CSP and friends on every response; pages are never cached (they carry CSRF tokens and labels).
    A plain ASGI middleware: cheaper per request than ``@app.middleware("http")``."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        no_store = not scope["path"].startswith("/static")

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Content-Security-Policy"] = CSP
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "same-origin"
                headers["X-Frame-Options"] = "DENY"
                if no_store:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


class LoginRequired(Exception):
    def __init__(self, next_url: str = "/"):
        self.next_url = next_url


def session_secret(Session_: Any) -> str:
    """The cookie-signing key: $ALIGNFORGE_FEEDBACK_SECRET, else one generated once and kept in the DB
    (so a restart keeps everyone logged in, and every server process of one DB agrees)."""
    env = os.environ.get("ALIGNFORGE_FEEDBACK_SECRET")
    if env:
        return env
    with Session_() as s:
        row = s.get(Setting, "session_secret")
        if row is None:
            row = Setting(key="session_secret", value=secrets.token_hex(32))
            s.add(row)
            s.commit()
        return row.value


def _display(value: Any) -> Any:
    """Jinja's ``finalize``: strings with lone surrogates come out with U+FFFD (Markup untouched)."""
    return safe_text(value) if type(value) is str else value


def _content_disposition(filename: str) -> str:
    """``attachment`` with the file name as-is when it is plain ASCII, else RFC 5987 ``filename*``."""
    quoted = quote(filename)
    return (f'attachment; filename="{filename}"' if quoted == filename
            else f"attachment; filename*=utf-8''{quoted}")


def create_app(db_url: str, secret: Optional[str] = None, https_only: bool = False,
               throttle: Optional[LoginThrottle] = None) -> FastAPI:
    """The app for one database. ``alignforge feedback serve`` runs it under uvicorn."""
    engine = make_engine(db_url)
    Session_ = make_sessionmaker(engine)
    app = FastAPI(title="alignforge feedback", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.Session = engine, Session_
    throttle = throttle or LoginThrottle()
    app.add_middleware(SessionMiddleware, secret_key=secret or session_secret(Session_),
                       session_cookie=SESSION_COOKIE, max_age=14 * 24 * 3600, same_site="lax",
                       https_only=https_only)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    # finalize: every {{ value }} passes through safe_text, so a lone surrogate in stored text is
    # shown as U+FFFD instead of making the page unencodable (a 500 on every retry).
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, finalize=_display)
    templates = Jinja2Templates(env=env)

    app.add_middleware(SecurityHeaders)

    # ---- plumbing ------------------------------------------------------------------------------

    def get_db(request: Request) -> Iterator[Session]:
        with request.app.state.Session() as s:
            yield s

    def csrf_token(request: Request) -> str:
        token = request.session.get("csrf")
        if not token:
            token = request.session["csrf"] = secrets.token_urlsafe(32)
        return token

    async def checked_form(request: Request) -> dict[str, Any]:
        """The POSTed form, after checking its CSRF token against the session's."""
        form = await request.form()
        data = {k: v for k, v in form.multi_items()}
        expected = request.session.get("csrf")
        given = data.pop("csrf", None)
        if not expected or not isinstance(given, str) or not hmac.compare_digest(expected, given):
            raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
        return data

    def optional_user(request: Request, s: Session = Depends(get_db)) -> Optional[User]:
        uid = request.session.get("uid")
        if uid is None:
            return None
        user = s.get(User, uid)
        if user is None or not user.active or request.session.get("epoch") != user.session_epoch:
            s.rollback()
            request.session.clear()
            return None
        # Detach the user and end the transaction: on SQLite every transaction holds the write
        # lock (BEGIN IMMEDIATE), and the handler may first read an upload or open its own session.
        s.expunge(user)
        s.rollback()
        request.state.user = user  # for the error pages' navigation bar
        return user

    def current_user(request: Request, user: Optional[User] = Depends(optional_user)) -> User:
        if user is None:
            raise LoginRequired(str(request.url.path))
        return user

    def admin_user(user: User = Depends(current_user)) -> User:
        if not user.is_admin:
            raise HTTPException(403, "admins only")
        return user

    def render(request: Request, name: str, user: Optional[User] = None, status: int = 200,
               **ctx: Any) -> HTMLResponse:
        base = {"user": user, "csrf": csrf_token(request), "flags": service.FLAG_LABELS,
                "strengths": service.STRENGTH_NAMES, "axes": service.AXES, "tasks": TASKS}
        return templates.TemplateResponse(request, name, {**base, **ctx}, status_code=status)

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, exc: LoginRequired) -> Response:
        return RedirectResponse(f"/login?next={quote(exc.next_url)}", status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if "text/html" not in request.headers.get("accept", ""):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
        return render(request, "error.html", getattr(request.state, "user", None), status=exc.status_code,
                      code=exc.status_code, message=exc.detail)

    def not_found_or_forbidden(e: Exception) -> HTTPException:
        return HTTPException(403 if isinstance(e, service.Forbidden) else 404, str(e))

    # ---- public --------------------------------------------------------------------------------

    @app.get("/healthz")
    def healthz(s: Session = Depends(get_db)) -> dict[str, Any]:
        s.execute(select(1))  # the database answers
        return {"ok": True}

    @app.get("/")
    def home(user: Optional[User] = Depends(optional_user)) -> Response:
        if user is None:
            return RedirectResponse("/login", status_code=303)
        return RedirectResponse("/admin" if user.is_admin else "/tasks", status_code=303)

    def safe_next(url: Optional[str]) -> str:
        # Only same-site paths: "/x" but not "//evil.example" or "https://...".
        return url if url and url.startswith("/") and not url.startswith("//") and "\\" not in url else "/"

    @app.get("/login")
    def login_page(request: Request, next: str = "/") -> HTMLResponse:
        return render(request, "login.html", next=safe_next(next), error=None)

    @app.post("/login")
    def login(request: Request, form: dict = Depends(checked_form), s: Session = Depends(get_db)) -> Response:
        username = str(form.get("username", ""))
        nxt = safe_next(str(form.get("next", "/")))
        key = (request.client.host if request.client else "?", username.lower())
        wait = throttle.retry_after(key)
        if wait is not None:
            return render(request, "login.html", status=429, next=nxt,
                          error=f"Too many failed attempts: try again in {wait} s.")
        user = service.authenticate(s, username, str(form.get("password", "")))
        if user is None:
            throttle.failed(key)
            return render(request, "login.html", status=401, next=nxt, error="Wrong username or password.")
        throttle.succeeded(key)
        request.session.clear()  # a fresh session (and CSRF token) on every login
        request.session.update(uid=user.id, epoch=user.session_epoch, csrf=secrets.token_urlsafe(32))
        return RedirectResponse(nxt, status_code=303)

    @app.post("/logout")
    def logout(request: Request, form: dict = Depends(checked_form),
               user: Optional[User] = Depends(optional_user), s: Session = Depends(get_db)) -> Response:
        if user is not None:  # a copy of the cookie kept elsewhere stops working too
            s.execute(update(User).where(User.id == user.id).values(session_epoch=User.session_epoch + 1))
            s.commit()
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    @app.get("/guidelines")
    def guidelines(request: Request, user: User = Depends(current_user), s: Session = Depends(get_db)) -> Response:
        projects = s.scalars(select(Project).order_by(Project.id)).all()
        return render(request, "guidelines.html", user, projects=projects)

    # ---- annotators ----------------------------------------------------------------------------

    @app.get("/tasks")
    def tasks(request: Request, user: User = Depends(current_user), s: Session = Depends(get_db)) -> Response:
        rows = []
        for project in s.scalars(select(Project).order_by(Project.id)).all():
            done, left = service.user_progress(s, project, user)
            rows.append((project, done, left))
        return render(request, "tasks.html", user, rows=rows)

    @app.get("/projects/{pid}/next")
    def next_task(request: Request, pid: int, user: User = Depends(current_user),
                  s: Session = Depends(get_db)) -> Response:
        project = s.get(Project, pid)
        if project is None:
            raise HTTPException(404, f"no project {pid}")
        assignment = service.next_assignment(s, project, user)
        if assignment is None:
            done, _ = service.user_progress(s, project, user)
            return render(request, "nothing_left.html", user, project=project, done=done)
        # The task page itself, not a redirect to /a/{id}: one round trip less per label.
        return task_page(request, s, user, assignment)

    def task_page(request: Request, s: Session, user: User, assignment: Any, error: Optional[str] = None,
                  values: Optional[dict] = None, status: int = 200) -> HTMLResponse:
        project = s.get(Project, assignment.project_id)
        done, left = service.user_progress(s, project, user)
        return render(request, "task.html", user, status=status, project=project, assignment=assignment,
                      item=assignment.item, messages=as_messages(assignment.item.prompt), done=done, left=left,
                      idem=secrets.token_urlsafe(16), error=error, values=values or {},
                      saved=bool(request.query_params.get("saved")),
                      preferences=service.PREFERENCES)

    @app.get("/a/{aid}")
    def show_assignment(request: Request, aid: int, user: User = Depends(current_user),
                        s: Session = Depends(get_db)) -> Response:
        try:
            assignment = service.get_assignment(s, aid, user)
        except (service.Forbidden, service.NotFound) as e:
            raise not_found_or_forbidden(e) from None
        if assignment.done:
            return RedirectResponse(f"/projects/{assignment.project_id}/next", status_code=303)
        return task_page(request, s, user, assignment)

    @app.post("/a/{aid}")
    def submit(request: Request, aid: int, form: dict = Depends(checked_form), user: User = Depends(current_user),
               s: Session = Depends(get_db)) -> Response:
        try:
            assignment = service.get_assignment(s, aid, user)
            seconds = (utcnow() - assignment.created_at).total_seconds()
            label, _created = service.submit_label(s, aid, user, form, str(form.get("idem", "")), seconds)
        except service.NotFound:
            raise HTTPException(404, f"no assignment {aid} (an admin may have released it after a long "
                                     f"pause): take the next task from your task list") from None
        except service.Forbidden as e:
            raise not_found_or_forbidden(e) from None
        except service.Invalid as e:
            return task_page(request, s, user, assignment, error=str(e), values=form, status=400)
        # The label is committed (durable) before this answer leaves: the 303 is the acknowledgement.
        return RedirectResponse(f"/projects/{label.project_id}/next?saved={label.id}", status_code=303,
                                headers={"X-Label-Id": str(label.id)})

    # ---- admins --------------------------------------------------------------------------------

    @app.get("/admin")
    def admin(request: Request, user: User = Depends(admin_user), s: Session = Depends(get_db)) -> Response:
        projects = s.scalars(select(Project).order_by(Project.id)).all()
        rows = [(p, service.project_progress(s, p)) for p in projects]
        return render(request, "admin.html", user, rows=rows, error=None, report=None)

    @app.post("/admin/projects")
    async def admin_create_project(request: Request, user: User = Depends(admin_user),
                                   s: Session = Depends(get_db)) -> Response:
        # async: the upload is read here; the database work goes to the threadpool below.
        form = await checked_form(request)
        upload = form.get("file")
        data = await upload.read() if upload is not None and hasattr(upload, "read") else b""
        filename = safe_text(getattr(upload, "filename", "") or "upload.jsonl")
        return await run_in_threadpool(_create_project_sync, request, s, user, form, data, filename)

    def _create_project_sync(request: Request, s: Session, user: User, form: dict, data: bytes,
                             filename: str) -> Response:
        def fail(msg: str) -> Response:
            projects = s.scalars(select(Project).order_by(Project.id)).all()
            rows = [(p, service.project_progress(s, p)) for p in projects]
            return render(request, "admin.html", user, status=400, rows=rows, error=msg, report=None)

        name = str(form.get("name", "")).strip()
        try:
            per_item = int(str(form.get("per_item", "1")))
        except ValueError:
            return fail(f"per_item: expected an integer ≥ 1, got {form.get('per_item')!r}")
        if not data:
            return fail("file: expected a candidates file (JSONL, .jsonl.gz or Parquet) with prompt + responses")
        suffix = "".join(Path(filename).suffixes[-2:]) or ".jsonl"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / ("upload" + suffix)
            path.write_bytes(data)
            try:
                records = read_records(path, kind="candidates")
            except RecordError as e:
                return fail(str(e).replace(str(path), filename))
        existing = s.scalar(select(Project).where(Project.name == name))
        if existing is not None and (existing.task, existing.per_item) != (form.get("task"), per_item):
            return fail(f"project {name!r} exists with task {existing.task!r} and {existing.per_item} per item: "
                        f"a new batch must match them")
        try:
            if existing is None:
                project = service.create_project(s, name, str(form.get("task", "")), per_item,
                                                 ask_hhh=bool(form.get("ask_hhh")),
                                                 guidelines=str(form.get("guidelines", "")))
            else:
                project = existing  # importing another batch into a project
            report = service.import_candidates(s, project, records, batch=str(form.get("batch", "")) or filename)
        except service.Invalid as e:
            return fail(str(e))
        return RedirectResponse(f"/admin/projects/{project.id}?imported={report.items}", status_code=303)

    @app.post("/admin/projects/{pid}/release")
    def admin_release(pid: int, form: dict = Depends(checked_form), user: User = Depends(admin_user),
                      s: Session = Depends(get_db)) -> Response:
        project = s.get(Project, pid)
        if project is None:
            raise HTTPException(404, f"no project {pid}")
        try:
            hours = float(str(form.get("hours", "")))
        except ValueError:
            raise HTTPException(400, f"hours: expected a number, got {form.get('hours')!r}") from None
        released = service.release_stale(s, hours * 3600, project)
        return RedirectResponse(f"/admin/projects/{pid}?released={released}", status_code=303)

    @app.get("/admin/projects/{pid}")
    def admin_project(request: Request, pid: int, user: User = Depends(admin_user),
                      s: Session = Depends(get_db)) -> Response:
        project = s.get(Project, pid)
        if project is None:
            raise HTTPException(404, f"no project {pid}")
        progress = service.project_progress(s, project)
        agreement = project_agreement(s, project)
        return render(request, "admin_project.html", user, project=project, progress=progress, agreement=agreement,
                      imported=request.query_params.get("imported"), released=request.query_params.get("released"))

    @app.get("/admin/export")
    def admin_export(project: Optional[int] = None, task: Optional[str] = None, user: User = Depends(admin_user),
                     s: Session = Depends(get_db)) -> Response:
        proj = s.get(Project, project) if project is not None else None
        if project is not None and proj is None:
            raise HTTPException(404, f"no project {project}")
        if task is not None and task not in TASKS:
            raise HTTPException(400, f"task: expected one of {', '.join(TASKS)}, got {task!r}")
        report = ExportReport()
        records = export_records(s, proj, [task] if task else TASKS, report=report)
        name = safe_text(f"{proj.name if proj else 'feedback'}{'-' + task if task else ''}.jsonl")
        # Written by write_records (atomically, the one JSONL writer) into a directory that is gone
        # before this handler returns, error or not; the body is sent from memory. (A file handed to
        # FileResponse and deleted by a background task outlives a client that disconnects first.)
        with tempfile.TemporaryDirectory(prefix="feedback-export-") as tmp:
            path = Path(tmp) / "export.jsonl"
            write_records(path, records)
            body = path.read_bytes()
        headers = {"Content-Disposition": _content_disposition(name)}
        if report.repaired_texts:
            log.warning("export %s: %s", name, report.summary())
            headers["X-Alignforge-Repaired-Texts"] = str(report.repaired_texts)
        return Response(body, media_type="application/jsonl", headers=headers)

    @app.get("/admin/users")
    def admin_users(request: Request, user: User = Depends(admin_user), s: Session = Depends(get_db)) -> Response:
        users = s.scalars(select(User).order_by(User.id)).all()
        counts = dict(s.execute(select(Label.user_id, func.count(Label.id)).group_by(Label.user_id)).all())
        return render(request, "admin_users.html", user, users=users, counts=counts, error=None)

    @app.post("/admin/users")
    def admin_add_user(request: Request, form: dict = Depends(checked_form), user: User = Depends(admin_user),
                       s: Session = Depends(get_db)) -> Response:
        try:
            service.create_user(s, str(form.get("username", "")), str(form.get("password", "")),
                                str(form.get("role", "annotator")))
        except service.Invalid as e:
            s.rollback()
            users = s.scalars(select(User).order_by(User.id)).all()
            counts = dict(s.execute(select(Label.user_id, func.count(Label.id)).group_by(Label.user_id)).all())
            return render(request, "admin_users.html", user, status=400, users=users, counts=counts, error=str(e))
        return RedirectResponse("/admin/users", status_code=303)

    @app.post("/admin/users/{uid}/active")
    def admin_set_active(uid: int, form: dict = Depends(checked_form), user: User = Depends(admin_user),
                         s: Session = Depends(get_db)) -> Response:
        if uid == user.id:
            raise HTTPException(400, "you cannot deactivate yourself")
        try:
            service.set_active(s, uid, str(form.get("active", "")) == "1")
        except service.NotFound as e:
            raise HTTPException(404, str(e)) from None
        return RedirectResponse("/admin/users", status_code=303)

    return app

