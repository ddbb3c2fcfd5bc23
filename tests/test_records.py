"""Record types: round trips through every container, and clear errors on bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from alignforge.data.records import (FLAGS, Candidates, Comparison, Demonstration, PromptRecord, Ranking, Rating,
                                     ReadReport, RecordError, TextRecord, as_messages, infer_kind, iter_raw,
                                     parse_record, prompt_text, read_records, write_records)

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Name a colour."}]

# One list per kind; within a list all prompts have one type (a Parquet column holds one type).
BY_KIND = {
    "text": [TextRecord(text="The Zorn river flows north."), TextRecord(text="2 + 2 = 4", id="t2", source="world")],
    "prompt": [PromptRecord(prompt="What is a zorn?"), PromptRecord(prompt="Say hi", category="format", round=2)],
    "demonstration": [Demonstration(prompt="Q1", response="A1", policy="sft-0", sampling={"temperature": 0.7}),
                      Demonstration(prompt="Q2", response="A2", meta={"note": "x", "k": 3})],
    "comparison": [Comparison(prompt="Q", chosen="good", rejected="bad", strength=3, annotator="a1"),
                   Comparison(prompt="Q", chosen="same-ish", rejected="other", tie=True),
                   Comparison(prompt="R", chosen="x", rejected="y")],
    "ranking": [Ranking(prompt="Q", responses=["a", "b", "c"], ranking=[2, 0, 1]),
                Ranking(prompt="R", responses=["d", "e"], ranking=[0, 1])],
    # Different flags per row: a columnar file fills the others with null, which must read back as absent.
    "rating": [Rating(prompt="Q", response="r1", likert=6, flags={"hallucination": True}, helpful=6, honest=7),
               Rating(prompt="Q", response="r2", likert=2, flags={"violent": True, "sexual": False}, harmless=1),
               Rating(prompt="Q", response="r3", likert=4)],
    "candidates": [Candidates(prompt="Q", responses=["a", "b", "c", "d"], round=0),
                   Candidates(prompt="R", responses=["e"])],
    "messages-prompt": [Demonstration(prompt=MSGS, response="Blue."), Demonstration(prompt=MSGS[1:2], response="Hey.")],
}


def _hf_dir(path: Path, records) -> Path:
    import datasets

    rows = [r.to_dict() for r in records]
    # Dataset.from_list takes its columns from the first row only: give every row every key.
    keys = list(dict.fromkeys(k for r in rows for k in r))
    datasets.Dataset.from_list([{k: r.get(k) for k in keys} for r in rows]).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("suffix", ["jsonl", "jsonl.gz", "parquet", "hf"])
@pytest.mark.parametrize("name", list(BY_KIND))
def test_round_trip(tmp_path, name, suffix):
    records = BY_KIND[name]
    if suffix == "hf":
        path = _hf_dir(tmp_path / "ds", records)
    else:
        path = tmp_path / f"r.{suffix}"
        assert write_records(path, records) == len(records)
    back = read_records(path)
    assert back == records
    assert [type(r) for r in back] == [type(r) for r in records]
    assert list(tmp_path.glob(".*.tmp")) == []  # atomic write left no temp file behind


def test_gz_is_reproducible_and_json_list_reads(tmp_path):
    write_records(tmp_path / "a.jsonl.gz", BY_KIND["comparison"])
    write_records(tmp_path / "b.jsonl.gz", BY_KIND["comparison"])
    assert (tmp_path / "a.jsonl.gz").read_bytes() == (tmp_path / "b.jsonl.gz").read_bytes()
    (tmp_path / "c.json").write_text(json.dumps([r.to_dict() for r in BY_KIND["ranking"]]))
    assert read_records(tmp_path / "c.json") == BY_KIND["ranking"]
    write_records(tmp_path / "d.jsonl", BY_KIND["ranking"])
    (tmp_path / "d.jsonl").rename(tmp_path / "d.json")  # JSON Lines under a .json name
    assert read_records(tmp_path / "d.json") == BY_KIND["ranking"]
    (tmp_path / "e.json").write_text('[{"text": "a"},\n {"text": ]')
    with pytest.raises(RecordError, match=r"e\.json:2: not valid JSON: Expecting value \(column 11\); expected a JSON list"):
        read_records(tmp_path / "e.json")


def test_infer_kind_and_forced_kind():
    assert [infer_kind(r.to_dict()) for k, rs in BY_KIND.items() for r in rs[:1]] == [
        "text", "prompt", "demonstration", "comparison", "ranking", "rating", "candidates", "demonstration"]
    # A demonstration read as a prompt: the response is then an unexpected field, named.
    with pytest.raises(RecordError, match=r"field 'response': unexpected field\(s\) \['response'\] for a prompt record"):
        parse_record({"prompt": "q", "response": "a"}, kind="prompt")
    assert parse_record({"messages": MSGS}).prompt == MSGS


def test_ranking_comparisons_by_hand():
    r = Ranking(prompt="q", responses=["a", "b", "c"], ranking=[2, 0, 1])  # c > a > b
    assert r.comparisons() == [(2, 0), (2, 1), (0, 1)]


def test_prompt_helpers():
    assert prompt_text(MSGS) == "Name a colour." and prompt_text("plain") == "plain"
    assert as_messages("plain") == [{"role": "user", "content": "plain"}] and as_messages(MSGS) == MSGS


# ---------------------------------------------------------------------------------------------
# Bad input: the message names the file, the line, the field and what was expected.
# ---------------------------------------------------------------------------------------------

GOOD = {"prompt": "q", "chosen": "a", "rejected": "b"}


def _lines(tmp_path: Path, *lines: str, name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("bad, expected", [
    ('{"prompt": "q", "chosen": "a", "rejected": ', r"not valid JSON: Expecting value \(column 44\)"),
    ('{"prompt": "q", "chosen": 5, "rejected": "b"}', r"field 'chosen': expected a string, got 5 \(int\)"),
    ('{"prompt": "q", "responses": ["a", "b", "c"], "ranking": [0, 0, 2]}',
     r"field 'ranking': expected a permutation of 0..2 \(best first\), got \[0, 0, 2\]"),
    ('{"prompt": "q", "chosen": "same", "rejected": "same"}',
     r"field 'chosen': chosen and rejected are identical \(mark it `tie: true` or drop it\)"),
    ('{"prompt": "q", "response": "  "}', r"field 'response': expected a non-empty string, got an empty one"),
    ('{"prompt": "", "response": "a"}', r"field 'prompt': expected a non-empty string or a list of messages"),
    ('{"prompt": [{"role": "robot", "content": "x"}], "response": "a"}',
     r"field 'prompt': message 0: role must be one of \('system', 'user', 'assistant'\), got 'robot'"),
    ('{"prompt": "q", "response": "a", "likert": 9}', r"field 'likert': expected an integer 1–7, got 9"),
    ('{"prompt": "q", "response": "a", "likert": 3, "flags": {"rude": true}}',
     r"field 'flags': unknown flag 'rude'; expected one of fails_instruction"),
    ('{"prompt": "q", "chosen": "a", "rejected": "b", "strength": 4}', r"field 'strength': expected an integer 0–3, got 4"),
    ('{"prompt": "q", "chosen": "a", "rejected": "b", "tie": "yes"}', r"field 'tie': expected true or false, got 'yes'"),
    ('{"prompt": "q", "chosen": "a", "rejected": "b", "score": 1}', r"field 'score': unexpected field\(s\) \['score'\]"),
    ('{"question": "q"}', r"cannot tell the record type from fields \['question'\]"),
    ('[1, 2]', r"expected a JSON object, got \[1, 2\]"),
])
def test_bad_jsonl_line_names_path_line_field(tmp_path, bad, expected):
    path = _lines(tmp_path, json.dumps(GOOD), json.dumps(GOOD), bad, json.dumps(GOOD))
    with pytest.raises(RecordError) as e:
        read_records(path)
    assert e.value.path == str(path) and e.value.line == 3
    assert str(e.value).startswith(f"{path}:3: ")
    import re
    assert re.search(expected, str(e.value)), str(e.value)


def test_on_bad_skip_counts_every_bad_line(tmp_path):
    path = _lines(tmp_path, json.dumps(GOOD), "{oops", '{"prompt": "q", "chosen": 1, "rejected": "b"}', "",
                  json.dumps(GOOD), '{"prompt": "q", "chosen": "x", "rejected": "x"}')
    report = ReadReport(str(path))
    recs = read_records(path, on_bad="skip", report=report)
    assert len(recs) == report.read == 2
    assert report.skipped == 3 and report.rows == 5  # the blank line is not a row
    assert [e.split(": ", 1)[0] for e in report.errors] == [f"{path}:2", f"{path}:3", f"{path}:6"]
    assert "3 bad records skipped" in report.summary()
    with pytest.raises(ValueError, match="on_bad must be 'error' or 'skip'"):
        read_records(path, on_bad="ignore")


def test_parquet_wrong_column_names_row_and_field(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "prefs.parquet"
    # An out-of-range value in row 2, an unknown column, a column of the wrong type, a corrupt file.
    pq.write_table(pa.Table.from_pylist([{"prompt": "q", "response": "a", "likert": 5},
                                         {"prompt": "q", "response": "b", "likert": 8}]), path)
    with pytest.raises(RecordError, match=rf"^{path}:2: field 'likert': expected an integer 1–7, got 8$"):
        read_records(path)
    pq.write_table(pa.Table.from_pylist([{"prompt": "q", "chosen": "a", "rejected": "b", "chosen_score": 0.5}]), path)
    with pytest.raises(RecordError, match=rf"^{path}:1: field 'chosen_score': unexpected field\(s\) \['chosen_score'\] "
                                         r"for a comparison record"):
        read_records(path)
    pq.write_table(pa.Table.from_pylist([{"prompt": "q", "chosen": 1, "rejected": "b"}]), path)
    with pytest.raises(RecordError, match=rf"^{path}:1: field 'chosen': expected a string, got 1 \(int\)"):
        read_records(path)
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(RecordError, match=rf"^{path}: not a readable Parquet file"):
        read_records(path)


def test_parquet_write_of_mixed_prompts_is_refused_atomically(tmp_path):
    path = tmp_path / "mixed.parquet"
    write_records(path, BY_KIND["demonstration"])
    before = path.read_bytes()
    mixed = BY_KIND["demonstration"] + BY_KIND["messages-prompt"]
    with pytest.raises(RecordError, match=r"field 'prompt': a Parquet column holds one type"):
        write_records(path, mixed)
    assert path.read_bytes() == before  # the old file is untouched
    assert write_records(tmp_path / "mixed.jsonl", mixed) == 4 and read_records(tmp_path / "mixed.jsonl") == mixed


def test_missing_file_truncated_gz_and_hf_dict_without_train(tmp_path):
    with pytest.raises(RecordError, match=r"nope\.jsonl: file not found"):
        read_records(tmp_path / "nope.jsonl")
    raw = gzip.compress(b"".join(json.dumps(GOOD).encode() + b"\n" for _ in range(200)))
    (tmp_path / "cut.jsonl.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(RecordError, match=r"cut\.jsonl\.gz: cannot read the file after line"):
        read_records(tmp_path / "cut.jsonl.gz")
    import datasets

    datasets.DatasetDict({"test": datasets.Dataset.from_list([GOOD])}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(RecordError, match=r"DatasetDict without a 'train' split \(splits: \['test'\]\)"):
        read_records(tmp_path / "dd")
    datasets.DatasetDict({"train": datasets.Dataset.from_list([GOOD])}).save_to_disk(str(tmp_path / "dd2"))
    assert read_records(tmp_path / "dd2") == [Comparison(prompt="q", chosen="a", rejected="b")]


def test_iter_raw_yields_json_errors_when_asked(tmp_path):
    path = _lines(tmp_path, json.dumps(GOOD), "{bad")
    items = list(iter_raw(path, bad_json="yield"))
    assert items[0] == (1, GOOD)
    assert items[1][0] == 2 and isinstance(items[1][1], RecordError) and items[1][1].line == 2
    with pytest.raises(RecordError, match=r":2: not valid JSON"):
        list(iter_raw(path))


def test_flags_constant_matches_design():
    assert FLAGS == ("fails_instruction", "inappropriate_for_customer", "sexual", "violent", "harmful_advice",
                     "moral_judgment", "denigrates_protected_class", "hallucination")
