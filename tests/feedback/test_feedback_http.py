"""HTTP tests for every route of the feedback app, the forbidden ones included."""

from __future__ import annotations

import json
import re

import pytest
from sqlalchemy import func, select

from alignforge.data.records import FLAGS, parse_record
from alignforge.feedback import service
from alignforge.feedback.app import SESSION_COOKIE
from alignforge.feedback.db import Label
from feedback_helpers import PASSWORD, XSS, candidates, csrf_of, hidden, login

HTML = {"accept": "text/html"}


@pytest.fixture
def projects(Session):
    """A rating, a comparison and a ranking project, two annotators per item."""
    with Session() as s:
        out = {}
        for task, k in (("rating", 2), ("comparison", 2), ("ranking", 3)):
            p = service.create_project(s, f"{task}-proj", task, per_item=2)
            service.import_candidates(s, p, candidates(2, k, prefix=task[0]))
            out[task] = p.id
        return out


def open_task(client, pid: int):
    """The next task page of a project: (assignment id from the form's action, page html)."""
    r = client.get(f"/projects/{pid}/next", follow_redirects=False)
    assert r.status_code == 200 and 'id="label-form"' in r.text, r.text
    aid = int(re.search(r'action="/a/(\d+)"', r.text).group(1))
    page = client.get(f"/a/{aid}")  # the assignment's own address shows the same task
    assert page.status_code == 200 and f'action="/a/{aid}"' in page.text
    return aid, page.text


def answer(task: str) -> dict:
    if task == "rating":
        return {"likert": "6", "flag_hallucination": "1", "helpful": "5", "honest": "4", "harmless": "7"}
    if task == "comparison":
        return {"preference": "b2"}
    return {"rank_0": "2", "rank_1": "3", "rank_2": "1"}


def test_login_flow_cookie_flags_and_logout_revokes(make_client):
    anon = make_client()
    r = anon.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    r = anon.get("/tasks", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/tasks"
    assert login(anon, "ann0", "wrong password").status_code == 401
    assert login(anon, "nobody", PASSWORD).status_code == 401
    r = login(anon, "ann0")
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(SESSION_COOKIE + "=") and "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()
    assert anon.get("/", follow_redirects=False).headers["location"] == "/tasks"
    stolen = anon.cookies.get(SESSION_COOKIE)
    page = anon.get("/tasks")
    assert page.status_code == 200 and "ann0" in page.text
    r = anon.post("/logout", data={"csrf": csrf_of(page.text)}, follow_redirects=False)
    assert r.status_code == 303
    # A copy of the old cookie is dead after logout (session epoch bumped).
    again = make_client()
    again.cookies.set(SESSION_COOKIE, stolen)
    assert again.get("/tasks", follow_redirects=False).status_code == 303


def test_tampered_cookie_and_open_redirect(make_client):
    c = make_client("ann0")
    value = c.cookies.get(SESSION_COOKIE)
    assert c.get("/tasks", follow_redirects=False).status_code == 200
    forged = make_client()
    forged.cookies.set(SESSION_COOKIE, value[:-3] + ("AAA" if not value.endswith("AAA") else "BBB"))
    assert forged.get("/tasks", follow_redirects=False).status_code == 303  # back to login
    anon = make_client()
    page = anon.get("/login?next=//evil.example/x")
    assert hidden(page.text, "next") == "/"
    r = anon.post("/login", data={"username": "ann0", "password": PASSWORD, "csrf": csrf_of(page.text),
                                  "next": "https://evil.example/"}, follow_redirects=False)
    assert r.headers["location"] == "/"


def test_every_post_needs_the_session_csrf_token(make_client, projects):
    anon = make_client()
    r = anon.post("/login", data={"username": "ann0", "password": PASSWORD}, follow_redirects=False)
    assert r.status_code == 403
    c = make_client("ann0")
    aid, page = open_task(c, projects["comparison"])
    form = {"idem": "k1", **answer("comparison")}
    assert c.post(f"/a/{aid}", data=form, follow_redirects=False).status_code == 403
    assert c.post(f"/a/{aid}", data={**form, "csrf": "forged"}, follow_redirects=False).status_code == 403
    # Another session's valid token does not work here either.
    other = make_client("ann1")
    other_token = csrf_of(other.get("/tasks").text)
    assert c.post(f"/a/{aid}", data={**form, "csrf": other_token}, follow_redirects=False).status_code == 403
    assert c.post("/logout", data={}, follow_redirects=False).status_code == 403
    admin = make_client("admin")
    assert admin.post("/admin/users", data={"username": "x1", "password": PASSWORD}).status_code == 403
    assert admin.post("/admin/users/2/active", data={"active": "0"}).status_code == 403
    assert admin.post("/admin/projects", data={"name": "n"}, files={"file": ("c.jsonl", b"{}")}).status_code == 403


@pytest.mark.parametrize("task", ["rating", "comparison", "ranking"])
def test_annotate_each_task_and_export(make_client, projects, Session, task):
    c = make_client("ann0")
    tasks_page = c.get("/tasks")
    assert f"{task}-proj" in tasks_page.text
    aid, page = open_task(c, projects[task])
    form = {"csrf": csrf_of(page), "idem": hidden(page, "idem"), **answer(task)}
    r = c.post(f"/a/{aid}", data=form, follow_redirects=False)
    assert r.status_code == 303 and "saved=" in r.headers["location"]
    # The double click / retry with the same key: acknowledged again, stored once.
    r2 = c.post(f"/a/{aid}", data=form, follow_redirects=False)
    assert r2.status_code == 303 and r2.headers["x-label-id"] == r.headers["x-label-id"]
    # The next item is a different one; the same item is never offered to ann0 again.
    aid2, _ = open_task(c, projects[task])
    assert aid2 != aid
    admin = make_client("admin")
    r = admin.get(f"/admin/export?project={projects[task]}")
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    rows = [json.loads(line) for line in r.text.splitlines()]
    assert len(rows) == 1 and rows[0]["annotator"] == "ann0"
    rec = parse_record(rows[0])
    assert rec.kind == {"rating": "rating", "comparison": "comparison", "ranking": "ranking"}[task]
    assert rec.policy == "runs/w/sft" and rec.round == 1 and rec.sampling == {"temperature": 1.0, "top_p": 1.0}
    with Session() as s:
        label = s.get(service.Label, int(r2.headers["x-label-id"]))
        item = label.item
    if task == "rating":
        assert (rec.likert, rec.helpful, rec.honest, rec.harmless) == (6, 5, 4, 7)
        assert rec.flags == {f: f == "hallucination" for f in FLAGS}
        assert rec.response == item.responses[0]
    elif task == "comparison":
        assert (rec.chosen, rec.rejected, rec.strength, rec.tie) == (item.responses[1], item.responses[0], 2, False)
    else:
        # rank_2 = 1 (best), rank_0 = 2, rank_1 = 3 on the displayed order, mapped to the original order.
        shown = item.provenance["indices"]
        assert rec.ranking == [shown[2], shown[0], shown[1]]
        assert [rec.responses[i] for i in rec.ranking] == [item.responses[2], item.responses[0], item.responses[1]]


def test_invalid_submission_is_400_with_the_field(make_client, projects):
    c = make_client("ann0")
    aid, page = open_task(c, projects["rating"])
    r = c.post(f"/a/{aid}", data={"csrf": csrf_of(page), "idem": "k", "likert": "9", "helpful": "1",
                                  "honest": "1", "harmless": "1"}, headers=HTML)
    assert r.status_code == 400 and "likert: expected an integer 1–7, got 9" in r.text
    r = c.post(f"/a/{aid}", data={"csrf": csrf_of(page), "idem": "k", "likert": "3"}, headers=HTML)
    assert r.status_code == 400 and "helpful: expected an integer 1–7" in r.text
    aid, page = open_task(c, projects["ranking"])
    r = c.post(f"/a/{aid}", data={"csrf": csrf_of(page), "idem": "k2", "rank_0": "1", "rank_1": "1", "rank_2": "2"})
    assert r.status_code == 400 and "different rank" in r.text
    aid, page = open_task(c, projects["comparison"])
    r = c.post(f"/a/{aid}", data={"csrf": csrf_of(page), "idem": "k3", "preference": "a7"})
    assert r.status_code == 400 and "preference: expected one of" in r.text


def test_annotators_cannot_touch_others_assignments_or_admin(make_client, projects):
    c0, c1 = make_client("ann0"), make_client("ann1")
    aid, page = open_task(c0, projects["comparison"])
    assert c1.get(f"/a/{aid}", headers=HTML).status_code == 403
    r = c1.post(f"/a/{aid}", data={"csrf": csrf_of(c1.get("/tasks").text), "idem": "x", "preference": "a3"})
    assert r.status_code == 403
    # Body fields cannot change who acts: a user_id/annotator in the form is ignored.
    r = c1.post(f"/a/{aid}", data={"csrf": csrf_of(c1.get("/tasks").text), "idem": "y", "preference": "a3",
                                   "user_id": "2", "annotator": "ann0"})
    assert r.status_code == 403
    assert c1.get("/a/99999", headers=HTML).status_code == 404
    for path in ("/admin", "/admin/users", f"/admin/projects/{projects['rating']}", "/admin/export"):
        r = c1.get(path, headers=HTML)
        assert r.status_code == 403, path
        assert "admins only" in r.text
    token = csrf_of(c1.get("/tasks").text)
    assert c1.post("/admin/users", data={"csrf": token, "username": "evil", "password": PASSWORD,
                                         "role": "admin"}).status_code == 403
    assert c1.post("/admin/users/1/active", data={"csrf": token, "active": "0"}).status_code == 403
    assert c1.post("/admin/projects", data={"csrf": token, "name": "x", "task": "rating"},
                   files={"file": ("c.jsonl", b'{"prompt": "p", "responses": ["a"]}\n')}).status_code == 403
    # Admins cannot label in an annotator's name either.
    admin = make_client("admin")
    assert admin.get(f"/a/{aid}", headers=HTML).status_code == 403
    r = admin.post(f"/a/{aid}", data={"csrf": csrf_of(admin.get("/admin").text), "idem": "z", "preference": "a3"})
    assert r.status_code == 403
    # ann0's own submission still works.
    assert c0.post(f"/a/{aid}", data={"csrf": csrf_of(page), "idem": hidden(page, "idem"), "preference": "tie"},
                   follow_redirects=False).status_code == 303


def test_model_text_is_escaped_and_csp_forbids_inline_scripts(make_client, Session):
    with Session() as s:
        p = service.create_project(s, "xss", "comparison", per_item=1)
        service.import_candidates(s, p, [service.Candidates(prompt=[{"role": "user", "content": XSS}],
                                                            responses=[XSS, "plain <b>bold</b>"])])
        pid = p.id
    c = make_client("ann0")
    _aid, page = open_task(c, pid)
    assert "<script>window.__pwned" not in page and "<img src=x" not in page
    assert "&lt;script&gt;window.__pwned = 1;" in page and "&lt;img src=x onerror=" in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page
    r = c.get("/tasks")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"


def test_templates_never_mark_text_safe():
    from alignforge.feedback.app import HERE

    for path in (HERE / "templates").glob("*.html"):
        text = path.read_text()
        assert "|safe" not in text.replace(" ", "") and "autoescape false" not in text, path


def test_admin_pages_users_projects_upload(make_client, projects):
    admin = make_client("admin")
    r = admin.get("/", follow_redirects=False)
    assert r.headers["location"] == "/admin"
    page = admin.get("/admin")
    assert page.status_code == 200 and "rating-proj" in page.text and "ranking-proj" in page.text
    token = csrf_of(page.text)
    r = admin.get(f"/admin/projects/{projects['comparison']}")
    assert r.status_code == 200 and "pairwise agreement" in r.text
    assert admin.get("/admin/projects/999", headers=HTML).status_code == 404
    # Users: add, reject a bad name, deactivate (their session dies), reactivate.
    r = admin.post("/admin/users", data={"csrf": token, "username": "carol", "password": PASSWORD,
                                         "role": "annotator"}, follow_redirects=False)
    assert r.status_code == 303
    r = admin.post("/admin/users", data={"csrf": token, "username": "bad name!", "password": PASSWORD})
    assert r.status_code == 400 and "username: expected" in r.text
    r = admin.post("/admin/users", data={"csrf": token, "username": "dave", "password": "short"})
    assert r.status_code == 400 and "at least 8 characters" in r.text
    carol = make_client("carol")
    users = admin.get("/admin/users").text
    assert "carol" in users
    carol_id = int(re.search(r'/admin/users/(\d+)/active', users.split("carol")[1]).group(1))
    r = admin.post(f"/admin/users/{carol_id}/active", data={"csrf": token, "active": "0"}, follow_redirects=False)
    assert r.status_code == 303
    assert carol.get("/tasks", follow_redirects=False).status_code == 303
    assert login(make_client(), "carol").status_code == 401
    admin.post(f"/admin/users/{carol_id}/active", data={"csrf": token, "active": "1"})
    assert login(make_client(), "carol").status_code == 303
    assert admin.post("/admin/users/1/active", data={"csrf": token, "active": "0"}, headers=HTML).status_code == 400
    # Upload a candidates file as a new project, then a bad file: the error names file, line and field.
    good = b'{"prompt": "p1", "responses": ["a", "b", "c"]}\n{"prompt": "p2", "responses": ["d", "e"]}\n'
    r = admin.post("/admin/projects", data={"csrf": token, "name": "uploaded", "task": "comparison",
                                            "per_item": "2"}, files={"file": ("round1.jsonl", good)},
                   follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].endswith("imported=4")
    bad = b'{"prompt": "p1", "responses": ["a", "b"]}\n{"prompt": "p2", "responses": "oops"}\n'
    r = admin.post("/admin/projects", data={"csrf": token, "name": "bad", "task": "rating", "per_item": "1"},
                   files={"file": ("round2.jsonl", bad)})
    assert r.status_code == 400 and "round2.jsonl:2: field &#39;responses&#39;" in r.text
    r = admin.post("/admin/projects", data={"csrf": token, "name": "uploaded", "task": "rating", "per_item": "2"},
                   files={"file": ("round2.jsonl", good)})
    assert r.status_code == 400 and "a new batch must match them" in r.text
    r = admin.post("/admin/projects", data={"csrf": token, "name": "uploaded", "task": "comparison",
                                            "per_item": "2", "batch": "round2"}, files={"file": ("r2.jsonl", good)},
                   follow_redirects=False)
    assert r.status_code == 303
    assert "round2" in admin.get(r.headers["location"]).text
    r = admin.post("/admin/projects", data={"csrf": token, "name": "bad", "task": "nope", "per_item": "1"},
                   files={"file": ("round2.jsonl", good)})
    assert r.status_code == 400 and "task: expected one of" in r.text
    assert admin.get("/admin/export?task=nope", headers=HTML).status_code == 400
    # Release abandoned assignments: admins only, CSRF-checked.
    ann = make_client("ann0")
    open_task(ann, projects["rating"])
    r = ann.post(f"/admin/projects/{projects['rating']}/release", data={"csrf": csrf_of(ann.get("/tasks").text),
                                                                       "hours": "0"})
    assert r.status_code == 403
    assert admin.post(f"/admin/projects/{projects['rating']}/release", data={"hours": "0"}).status_code == 403
    r = admin.post(f"/admin/projects/{projects['rating']}/release", data={"csrf": token, "hours": "0"})
    assert r.status_code == 200 and "Released 1 open assignment." in r.text
    assert admin.post(f"/admin/projects/{projects['rating']}/release", data={"csrf": token, "hours": "x"},
                      headers=HTML).status_code == 400
    assert admin.get("/admin/export").status_code == 200


def test_guidelines_healthz_nothing_left(make_client, Session):
    with Session() as s:
        p = service.create_project(s, "one", "rating", per_item=1, ask_hhh=False, guidelines="Be <kind>.")
        service.import_candidates(s, p, candidates(1, 1))
        pid = p.id
    c = make_client("ann0")
    g = c.get("/guidelines")
    assert g.status_code == 200 and "Makes up facts (hallucination)" in g.text and "Be &lt;kind&gt;." in g.text
    assert make_client().get("/guidelines", follow_redirects=False).status_code == 303
    assert c.get("/healthz").json() == {"ok": True}
    aid, page = open_task(c, pid)
    # The same open assignment comes back until it is submitted (a reload does not claim a new item).
    assert open_task(c, pid)[0] == aid
    r = c.post(f"/a/{aid}", data={"csrf": csrf_of(page), "idem": hidden(page, "idem"), "likert": "2"})
    assert r.status_code == 200 and "All done" in r.text
    assert c.get(f"/a/{aid}", follow_redirects=False).status_code == 303  # done: on to the next
    # per_item = 1: ann1 gets nothing, since ann0 has the only slot.
    c1 = make_client("ann1")
    assert "All done" in c1.get(f"/projects/{pid}/next").text
    assert c1.get("/projects/999/next", headers=HTML).status_code == 404
    with Session() as s:
        assert s.scalar(select(func.count(Label.id))) == 1


def test_failed_logins_are_throttled(Session, db_url):
    from fastapi.testclient import TestClient

    from alignforge.feedback.app import LoginThrottle, create_app

    app = create_app(db_url, throttle=LoginThrottle(max_failures=3, window_s=60))
    with TestClient(app) as c:
        assert [login(c, "ann0", "guess").status_code for _ in range(3)] == [401, 401, 401]
        r = login(c, "ann0", PASSWORD)  # even the right password waits now
        assert r.status_code == 429 and "Too many failed attempts" in r.text
        assert login(c, "ann1", PASSWORD).status_code == 303  # another account is not locked out
    throttle = LoginThrottle(max_failures=2, window_s=0.2)
    key = ("1.2.3.4", "x")
    throttle.failed(key)
    throttle.failed(key)
    assert throttle.retry_after(key) is not None
    import time

    time.sleep(0.25)
    assert throttle.retry_after(key) is None  # the window passed
    throttle.failed(key)
    throttle.succeeded(key)
    throttle.failed(key)
    assert throttle.retry_after(key) is None  # a success resets the count
