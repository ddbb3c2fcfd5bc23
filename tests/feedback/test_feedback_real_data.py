"""Real preference data through the app: HH-RLHF harmless-base pairs (red-teaming text, untrusted by
design) imported as candidates, labelled over HTTP, exported as comparisons."""

from __future__ import annotations

import gzip
import html
import itertools
import json
import re
from pathlib import Path

import pytest

from alignforge.data.formats import from_hh_rlhf
from alignforge.data.records import Candidates, RecordError, parse_record
from alignforge.feedback import service
from feedback_helpers import csrf_of, hidden

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
HH = SHARED / "hh-rlhf-harmless-base-test.jsonl.gz"


def hh_candidates(n: int) -> list[Candidates]:
    if not HH.exists():
        pytest.skip(f"{HH} not found: this test needs the shared HH-RLHF sample beside the repo (../shared/data)")
    out = []
    with gzip.open(HH, "rt", encoding="utf-8") as f:
        for line in itertools.islice(f, 4 * n):
            try:
                recs = from_hh_rlhf(json.loads(line))
            except (RecordError, ValueError):  # pairs the adapter drops or rejects (counted there)
                continue
            c = recs[0]
            out.append(Candidates(prompt=c.prompt, responses=[c.chosen, c.rejected], source="hh-rlhf",
                                  id=f"hh-{len(out)}"))
            if len(out) == n:
                break
    return out


def test_hh_pairs_label_and_export(Session, make_client):
    cands = hh_candidates(8)
    with Session() as s:
        p = service.create_project(s, "hh", "comparison", per_item=1)
        report = service.import_candidates(s, p, cands)
        assert report.items == 8 and report.skipped == 0
        pid = p.id
    c = make_client("ann0")
    picks = []
    for n in range(8):
        r = c.get(f"/projects/{pid}/next")
        aid = int(re.search(r'action="/a/(\d+)"', r.text).group(1))
        page = r.text
        # The multi-turn prompt and both responses are on the page, escaped.
        shown = [html.unescape(t) for t in
                 (page.split('id="response-0">')[1].split("</pre>")[0], page.split('id="response-1">')[1].split("</pre>")[0])]
        picks.append(shown)
        pref = ["a2", "b0", "tie", "a3"][n % 4]
        r = c.post(f"/a/{aid}", data={"csrf": csrf_of(page), "idem": hidden(page, "idem"), "preference": pref},
                   follow_redirects=False)
        assert r.status_code == 303
    assert "All done" in c.get(f"/projects/{pid}/next").text
    admin = make_client("admin")
    rows = [parse_record(json.loads(line)) for line in admin.get(f"/admin/export?project={pid}").text.splitlines()]
    assert len(rows) == 8
    by_pair = {frozenset((r.chosen, r.rejected)): r for r in rows}
    for n, (a, b) in enumerate(picks):
        rec = by_pair[frozenset((a, b))]
        pref = ["a2", "b0", "tie", "a3"][n % 4]
        if pref == "tie":
            assert rec.tie and rec.strength is None
        else:
            assert (rec.chosen, rec.strength) == ((a if pref[0] == "a" else b), int(pref[1]))
        assert rec.source == "hh-rlhf" and rec.annotator == "ann0"
        assert rec.prompt in [cand.prompt for cand in cands]
