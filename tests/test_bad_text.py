"""Issue 19 §3: text that is not valid Unicode (lone surrogates, bytes that are not UTF-8) is refused
by every record reader with the file, line, field and character — not a tokenizer's TypeError later."""

from __future__ import annotations

import gzip
import json

import pytest

from alignforge.data.formats import load_dataset_records
from alignforge.data.records import ReadReport, RecordError, iter_raw, read_records
from alignforge.textcheck import find_surrogate, replace_surrogates, safe_text

GOOD = '{"prompt": "fine", "responses": ["a", "b"]}\n'
BAD = '{"prompt": "hello \\udcff there", "responses": ["one", "two"]}\n'


def test_find_and_replace_surrogates():
    assert find_surrogate({"a": ["x", "\U0001F600 ok"]}) is None  # a real astral character is fine
    found = find_surrogate({"prompt": [{"role": "user", "content": "ab\ud83d"}]})
    assert (found.field, found.index) == ("prompt[0].content", 2)
    assert "lone surrogate U+D83D at character 3" in found.message() and "UTF-16 pair" in found.message()
    found = find_surrogate({"meta": {"k\udcff": 1}})
    assert found.field == "meta" and found.in_key and "byte 0xff" in found.message()
    value = {"a": ["x\udcff", "y"], "b\ud800": "z", "n": 3}
    fixed, n = replace_surrogates(value)
    assert fixed == {"a": ["x\ufffd", "y"], "b\ufffd": "z", "n": 3} and n == 2
    assert replace_surrogates(["ok"]) == (["ok"], 0) and safe_text("a\udcffb") == "a\ufffdb"


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".json"])
def test_readers_refuse_a_lone_surrogate_with_file_line_and_field(tmp_path, suffix):
    path = tmp_path / f"c{suffix}"
    if suffix == ".json":  # a JSON list: numbered by element
        path.write_text(json.dumps([json.loads(GOOD), json.loads(BAD)]))
    elif suffix.endswith(".gz"):
        path.write_bytes(gzip.compress((GOOD + BAD).encode()))
    else:
        path.write_text(GOOD + BAD)
    msg = f"{path}:2: field 'prompt': not valid Unicode text: lone surrogate U+DCFF at character 7"
    with pytest.raises(RecordError, match=msg.replace(".", r"\.").replace("+", r"\+")):
        read_records(path)
    with pytest.raises(RecordError, match="not valid Unicode text"):
        load_dataset_records(path)  # the other datasets' formats read through the same rows
    report = ReadReport(str(path))
    assert len(read_records(path, on_bad="skip", report=report)) == 1
    assert report.skipped == 1 and "lone surrogate" in report.errors[0]
    rows = list(iter_raw(path, bad_json="yield"))
    assert isinstance(rows[1][1], RecordError) and rows[1][0] == 2


def test_bytes_that_are_not_utf8_are_reported_on_their_line(tmp_path):
    path = tmp_path / "raw.jsonl"
    path.write_bytes(GOOD.encode() * 3 + b'{"prompt": "bad \xff", "responses": ["a", "b"]}\n')
    with pytest.raises(RecordError, match=r"raw\.jsonl:4: not valid UTF-8: byte 0xff at byte 17 of the line"):
        read_records(path)
    gz = tmp_path / "raw.jsonl.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    with pytest.raises(RecordError, match=r"raw\.jsonl\.gz:4: not valid UTF-8: byte 0xff"):
        read_records(gz)
    js = tmp_path / "raw.json"
    js.write_bytes(b'[{"prompt": "bad \xfe", "responses": ["a", "b"]}]')
    with pytest.raises(RecordError, match=r"raw\.json:1: not valid UTF-8: byte 0xfe"):
        read_records(js)


def test_a_valid_surrogate_pair_escape_is_read(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text('{"prompt": "smile \\ud83d\\ude00", "responses": ["a", "b"]}\n')
    (rec,) = read_records(path)
    assert rec.prompt == "smile \U0001F600"
