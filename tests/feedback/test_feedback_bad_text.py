"""Issue 19 §3: text that is not valid Unicode cannot break the feedback app.

A lone surrogate (JSON ``"\\udcff"``) used to be imported (exit 0), then the annotator's next page
was a 500 on every retry, ``/admin/export`` and ``feedback export`` failed for the whole project
after one label, and each failed web export left an empty temp file behind. Now: import refuses it
with file:line; what an older database already holds is shown and exported with U+FFFD, counted.
"""

from __future__ import annotations

import json
import tempfile

import pytest
from sqlalchemy import select

from alignforge.cli import main as alignforge
from alignforge.data.records import Candidates, read_records
from alignforge.feedback import service
from alignforge.feedback.db import Item, Project
from feedback_helpers import PASSWORD, csrf_of, hidden

BAD_LINE = '{"prompt": "hello \\udcff there", "responses": ["one", "two \\udcff"]}\n'
GOOD_LINE = '{"prompt": "fine", "responses": ["a", "b"]}\n'
HTML = {"accept": "text/html"}


@pytest.fixture
def own_tmp(tmp_path, monkeypatch):
    """tempfile's default directory, private to the test, to see what a request leaves there."""
    d = tmp_path / "systmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def stored_bad_item(Session) -> int:
    """An item holding lone surrogates, as a database filled before import refused them holds it
    (written straight to the table: the service would refuse it now). Only the JSON columns can
    hold one: they store it as a ``\\udcff`` escape, while the driver refuses it in a text column."""
    with Session() as s:
        project = service.create_project(s, "old", "comparison", per_item=1)
        s.add(Item(project_id=project.id, batch="old", prompt="hello \udcff there",
                   responses=["two \udcff", "one"], provenance={"indices": [1, 0], "meta": {"note": "x\ud800"}}))
        s.commit()
        return project.id


def test_cli_import_refuses_with_file_line_and_stores_nothing(tmp_path, monkeypatch, capsys):
    db = f"sqlite:///{tmp_path / 'fb.db'}"
    monkeypatch.setenv("ALIGNFORGE_PASSWORD", PASSWORD)
    assert alignforge(["feedback", "init", "--db", db, "--admin", "boss"]) == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text(GOOD_LINE + BAD_LINE, encoding="ascii")
    capsys.readouterr()
    assert alignforge(["feedback", "import", str(bad), "--db", db, "--project", "p"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: field 'prompt': not valid Unicode text: lone surrogate U+DCFF at character 7" in err
    assert "byte 0xff" in err
    assert alignforge(["feedback", "status", "--db", db]) == 0
    assert capsys.readouterr().out == ""  # no project was created
    # --on-bad skip: the bad record is skipped and counted, the good one imported.
    assert alignforge(["feedback", "import", str(bad), "--db", db, "--project", "p", "--on-bad", "skip"]) == 0
    out = capsys.readouterr().out
    assert "1 records (records format, 2 rows), 1 bad records skipped" in out and "-> 1 items" in out
    # A project or batch name from the command line (argv bytes that are not UTF-8 arrive as
    # surrogates) is refused before anything is created.
    good = tmp_path / "good.jsonl"
    good.write_text(GOOD_LINE)
    assert alignforge(["feedback", "import", str(good), "--db", db, "--project", "q\udcff"]) == 2
    assert "project name: not valid Unicode text" in capsys.readouterr().err
    assert alignforge(["feedback", "import", str(good), "--db", db, "--project", "q2", "--batch", "b\udcff"]) == 2
    assert "--batch: not valid Unicode text" in capsys.readouterr().err
    assert alignforge(["feedback", "status", "--db", db]) == 0
    assert "q2" not in capsys.readouterr().out
    # ... but a file *named* with such bytes is fine: its default batch name shows them as U+FFFD.
    odd = tmp_path / "r\udcff.jsonl"
    odd.write_text(GOOD_LINE)
    assert alignforge(["feedback", "import", str(odd), "--db", db, "--project", "p"]) == 0
    out = str(tmp_path / "o.jsonl")
    assert alignforge(["feedback", "export", "--db", db, "--out", out, "--project", "q\udcff"]) == 2
    assert "no project 'q\\udcff'" in capsys.readouterr().err


def test_service_refuses_records_made_in_python_all_or_nothing(Session):
    with Session() as s:
        project = service.create_project(s, "p", "comparison")
        recs = [Candidates(prompt="ok", responses=["a", "b"]),
                Candidates(prompt="ok", responses=["a", "b\udcff"], id="c2")]
        with pytest.raises(service.Invalid, match=r"c2: field 'responses\[1\]': not valid Unicode text"):
            service.import_candidates(s, project, recs)
        assert s.scalars(select(Item)).all() == []  # the first record's item was not kept either
        with pytest.raises(service.Invalid, match="batch: not valid Unicode"):
            service.import_candidates(s, project, recs[:1], batch="b\ud800")
        with pytest.raises(service.Invalid, match="project name: not valid Unicode"):
            service.create_project(s, "x\udcff", "rating")
        with pytest.raises(service.Invalid, match="guidelines: not valid Unicode"):
            service.create_project(s, "x", "rating", guidelines="be \udcff kind")
        assert [p.name for p in s.scalars(select(Project))] == ["p"]
        with pytest.raises(service.NotFound):
            service.get_project(s, "p\udcff")


def test_stored_bad_text_is_shown_labelled_and_exported_with_replacement(Session, make_client, db_url, tmp_path,
                                                                         own_tmp, capsys):
    pid = stored_bad_item(Session)
    c = make_client("ann0")
    for _ in range(2):  # was a 500 on every retry
        r = c.get(f"/projects/{pid}/next")
        assert r.status_code == 200 and "hello \ufffd there" in r.text and "two \ufffd" in r.text
    r = c.post(f"/a/{_aid(r.text)}", data={"csrf": csrf_of(r.text), "idem": hidden(r.text, "idem"), "preference": "a1"},
               follow_redirects=False)
    assert r.status_code == 303
    admin = make_client("admin")
    assert admin.get(f"/admin/projects/{pid}").status_code == 200
    r = admin.get("/admin/export")
    assert r.status_code == 200 and r.headers["x-alignforge-repaired-texts"] == "3"
    (row,) = [json.loads(line) for line in r.text.splitlines()]
    assert (row["prompt"], row["chosen"], row["rejected"]) == ("hello \ufffd there", "two \ufffd", "one")
    assert row["meta"]["note"] == "x\ufffd"
    assert list(own_tmp.iterdir()) == []  # nothing of the export outlives the request
    # The CLI export: exit 0, the same repaired record, and a note that counts what was replaced.
    out = tmp_path / "prefs.jsonl"
    assert alignforge(["feedback", "export", "--db", db_url, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "wrote 1 records" in captured.out
    assert "note: 3 texts in 1 records were not valid Unicode" in captured.err and "U+FFFD" in captured.err
    (rec,) = read_records(out, kind="comparison")  # and the export reads back
    assert rec.prompt == "hello \ufffd there"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".prefs")] == []


def _aid(html: str) -> int:
    import re

    return int(re.search(r'action="/a/(\d+)"', html).group(1))


def test_a_failing_web_export_leaves_no_temp_file(Session, make_client, own_tmp, monkeypatch):
    from fastapi.testclient import TestClient

    import alignforge.feedback.app as app_mod

    stored_bad_item(Session)
    admin = make_client("admin")

    def boom(path, records):  # a write that fails halfway: the file exists, then the error
        open(path, "w").write("{")
        raise OSError("disk full")

    monkeypatch.setattr(app_mod, "write_records", boom)
    raw = TestClient(admin.app, raise_server_exceptions=False, cookies=admin.cookies)
    assert raw.get("/admin/export").status_code == 500
    assert list(own_tmp.iterdir()) == []


def test_web_upload_refuses_bad_text_with_file_line(make_client):
    admin = make_client("admin")
    token = csrf_of(admin.get("/admin").text)
    r = admin.post("/admin/projects", data={"csrf": token, "name": "up", "task": "comparison", "per_item": "1"},
                   files={"file": ("round1.jsonl", (GOOD_LINE + BAD_LINE).encode())}, headers=HTML)
    assert r.status_code == 400 and "round1.jsonl:2: field &#39;prompt&#39;: not valid Unicode text" in r.text
    assert "up" not in [p.name for p in _projects(admin)]


def _projects(client):
    with client.app.state.Session() as s:
        return list(s.scalars(select(Project)))
