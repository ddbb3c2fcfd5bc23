"""``alignforge feedback init|adduser|import|export|status`` end to end, in-process."""

from __future__ import annotations


import pytest

from alignforge.cli import main as alignforge
from alignforge.data.records import read_records, write_records
from alignforge.feedback import service
from alignforge.feedback.db import make_engine, make_sessionmaker
from feedback_helpers import PASSWORD, candidates


def test_cli_import_label_export(tmp_path, monkeypatch, capsys):
    db = f"sqlite:///{tmp_path / 'fb.db'}"
    monkeypatch.setenv("ALIGNFORGE_PASSWORD", PASSWORD)
    assert alignforge(["feedback", "export", "--db", db, "--out", str(tmp_path / "x.jsonl")]) != 0
    assert "run `alignforge feedback init" in capsys.readouterr().err
    assert alignforge(["feedback", "init", "--db", db, "--admin", "boss"]) == 0
    assert alignforge(["feedback", "init", "--db", db, "--admin", "boss"]) == 0  # idempotent
    assert "already exists" in capsys.readouterr().out
    assert alignforge(["feedback", "adduser", "ann", "--db", db]) == 0
    assert alignforge(["feedback", "adduser", "ann", "--db", db]) == 2
    assert "taken" in capsys.readouterr().err

    cands = tmp_path / "cands.jsonl"
    write_records(cands, candidates(3, 2))
    assert alignforge(["feedback", "import", str(cands), "--db", db, "--project", "hh", "--task", "comparison",
                       "--per-item", "1"]) == 0
    assert "3 candidates records -> 3 items" in capsys.readouterr().out
    # A second batch into the same project; a conflicting task is an error naming both.
    assert alignforge(["feedback", "import", str(cands), "--db", db, "--project", "hh", "--batch", "b2"]) == 0
    assert alignforge(["feedback", "import", str(cands), "--db", db, "--project", "hh", "--task", "rating"]) == 2
    assert "project 'hh' has task 'comparison', not 'rating'" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "responses": ["a", "b"]}\n{"prompt": "", "responses": ["a"]}\n')
    assert alignforge(["feedback", "import", str(bad), "--db", db, "--project", "hh"]) == 2
    assert f"{bad}:2: field 'prompt'" in capsys.readouterr().err

    engine = make_engine(db)
    with make_sessionmaker(engine)() as s:
        user = service.authenticate(s, "ann", PASSWORD)
        project = service.get_project(s, "hh")
        for n in range(4):
            a = service.next_assignment(s, project, user)
            service.submit_label(s, a.id, user, {"preference": ["a0", "b3", "tie", "a2"][n]}, f"k{n}")
    engine.dispose()

    out = tmp_path / "prefs.jsonl"
    assert alignforge(["feedback", "export", "--db", db, "--out", str(out)]) == 0
    assert "wrote 4 records" in capsys.readouterr().out
    records = read_records(out, kind="comparison")
    assert [(r.strength, r.tie, r.annotator) for r in records] == [(0, False, "ann"), (3, False, "ann"),
                                                                   (None, True, "ann"), (2, False, "ann")]
    assert alignforge(["feedback", "export", "--db", db, "--out", str(out), "--task", "rating"]) == 0
    assert out.read_text() == ""
    assert alignforge(["feedback", "status", "--db", db]) == 0
    status = capsys.readouterr().out
    assert "hh [comparison, 1/item]: 4/6 labels (66.7%)" in status and "pairwise_agreement: -" in status
    assert alignforge(["feedback", "release", "--db", db, "--older-than-hours", "0", "--project", "hh"]) == 0
    assert "released 0 open assignments" in capsys.readouterr().out


def test_cli_help_and_unknown_project(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        alignforge(["feedback", "--help"])
    assert e.value.code == 0 and "init" in capsys.readouterr().out
    db = f"sqlite:///{tmp_path / 'fb.db'}"
    # stdin is not a terminal under pytest, and the variable is unset
    assert alignforge(["feedback", "init", "--db", db, "--admin", "a", "--password-env", "UNSET_VAR_XYZ"]) == 2
    assert "no password: set $UNSET_VAR_XYZ" in capsys.readouterr().err
    assert alignforge(["feedback", "export", "--db", db, "--out", str(tmp_path / "o.jsonl"), "--project", "nope"]) == 2
    assert "no project 'nope'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="in-memory"):
        make_engine("sqlite://")
