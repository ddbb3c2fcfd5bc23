"""Issue 19 §2: ``alignforge data inspect FILE`` shows what a stage will see, before training."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from alignforge import cli
from alignforge.data.batching import EncodeStats, encode_example, encode_pair
from alignforge.data.formats import load_dataset_records
from alignforge.data.inspect import byte_level_tokenizer, inspect_file, percentiles
from alignforge.data.records import (Comparison, Demonstration, PromptRecord, TextRecord, UnpairedFeedback,
                                     write_records)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
UFB = FIXTURES / "ultrafeedback_binarized.jsonl"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HH = SHARED_DATA / "hh-rlhf-harmless-base-test.jsonl.gz"


def _inspect(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["data", "inspect", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_text_report_layout_counts_tokenizer_and_marked_example(capsys):
    code, out, err = _inspect(capsys, str(UFB), "--examples", "1")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[1] == "layout:     ultrafeedback-binarized (detected from the first row)"
    assert lines[2] == "rows:       3"
    assert lines[3] == "records:    2 — 2 comparison records (prompt + chosen/rejected pairs)"
    assert "dropped:    3:" in lines and "       1  ultrafeedback-binarized: empty final assistant turn" in lines
    assert "       2  demonstration records not asked for" in lines
    assert "       1  ultrafeedback-binarized: equal scores (kept as a tie)" in lines
    assert any(line.startswith("tokenizer:  byte-level fallback (alignforge's chat template over raw UTF-8 bytes")
               for line in lines)
    # The chosen answer and its EOS are the trained-on tokens; the prompt and header are not.
    assert "<|user|>\nHow many legs does a spider have?<|end|>\n<|assistant|>\n⟦A spider has eight legs.<|end|>⟧" in out
    # Byte-level: one token per byte; 6 tokens of template (3 role/end tokens, 3 newlines) around the question.
    prompt, answer = "How many legs does a spider have?", "A spider has eight legs."
    assert f"[chosen: {6 + len(prompt) + len(answer) + 1} tokens, {len(answer) + 1} trained]" in out


def test_json_counts_and_fit_agree_with_the_stages_encoder(capsys, tmp_path):
    # Records with long and short parts, so some fit, some lose prompt tokens, some are dropped.
    recs = [Demonstration(prompt="q " * n, response="a " * m) for n, m in ((5, 5), (60, 10), (10, 80), (3, 3))]
    recs += [Comparison(prompt="p " * 40, chosen="c " * 30, rejected="r " * 5)]
    write_records(tmp_path / "mix.jsonl", recs)
    code, out, err = _inspect(capsys, str(tmp_path / "mix.jsonl"), "--json", "--seq-len", "100", "--examples", "0")
    assert code == 0, err
    r = json.loads(out)
    assert (r["format"], r["rows"], r["records"], r["kinds"]) == ("records", 5, 5, {"comparison": 1, "demonstration": 4})
    assert r["seq_len"] == 100 and r["examples"] == []
    # Independently: the stages' encoders at max_len=100 count what was cut and dropped.
    tok = byte_level_tokenizer()
    demo, pair = EncodeStats(), EncodeStats()
    for rec in recs[:4]:
        encode_example(tok, rec.prompt, rec.response, max_len=100, stats=demo)
    encode_pair(tok, recs[4].prompt, recs[4].chosen, recs[4].rejected, max_len=100, stats=pair)
    assert r["truncation"]["demonstration"] == {"fit": 4 - demo.truncated - demo.dropped,
                                               "prompt_cut": demo.truncated, "dropped": demo.dropped}
    assert demo.truncated >= 1 and demo.dropped >= 1
    assert r["truncation"]["comparison"] == {"fit": 0, "prompt_cut": pair.truncated, "dropped": pair.dropped}
    full = [len(encode_example(tok, d.prompt, d.response).input_ids) for d in recs[:4]]
    assert r["lengths"]["demonstration"]["sequence"] == percentiles(full)
    assert r["lengths"]["demonstration"]["sequence"]["max"] == max(full)


def test_percentiles_nearest_rank():
    assert percentiles(list(range(1, 101))) == {"p50": 50, "p90": 90, "p95": 95, "p99": 99, "max": 100, "mean": 50.5}
    assert percentiles([7]) == {"p50": 7, "p90": 7, "p95": 7, "p99": 7, "max": 7, "mean": 7}


def test_every_kind_renders_with_its_trained_tokens(tmp_path):
    recs = [TextRecord(text="Rivers run."), PromptRecord(prompt="Where?"),
            UnpairedFeedback(prompt="Sky?", response="Blue.", label=False)]
    write_records(tmp_path / "k.jsonl", recs)
    r = inspect_file(str(tmp_path / "k.jsonl"), examples=3, seq_len=8)
    text, prompt, unpaired = r["examples"]
    # Pretraining: every token but the first (nothing predicts it) is a target.
    assert text["sequences"][0]["text"] == "R⟦ivers run.<|end|>⟧"
    assert text["sequences"][0]["trained_tokens"] == len("Rivers run.")  # bytes + EOS - first token
    assert prompt["sequences"][0]["trained_tokens"] == 0 and "no trained tokens" in prompt["note"]
    assert unpaired["note"] == "label: false" and unpaired["sequences"][0]["text"].endswith("⟦Blue.<|end|>⟧")
    assert r["truncation"]["text"] == {"tokens": len("Rivers run.") + 1, "blocks": 2, "prompt_cut": 0, "dropped": 0,
                                       "fit": 1}
    assert r["used_by"]["unpaired"].startswith("no stage trains on it")


def test_local_tokenizer_without_chat_template(tmp_path, capsys):
    from alignforge.models.tiny import tiny_tokenizer_without_template

    tiny_tokenizer_without_template().save_pretrained(tmp_path / "tok")
    code, out, err = _inspect(capsys, str(FIXTURES / "dolly.jsonl"), "--tokenizer", str(tmp_path / "tok"),
                              "--examples", "1")
    assert code == 0, err
    assert f"tokenizer:  {tmp_path / 'tok'} (" in out and "no chat template: the '### User:' fallback" in out
    assert "### User:\nWhen did the first person walk on the Moon?" in out
    assert "### Assistant:\n⟦The first person walked on the Moon on July 20, 1969, during the Apollo 11 mission." \
           "<|endoftext|>⟧" in out


def test_kind_option_shows_what_sft_sees(capsys):
    code, out, _ = _inspect(capsys, str(UFB), "--kind", "demonstration", "--examples", "0", "--json")
    r = json.loads(out)
    assert code == 0 and r["kinds"] == {"demonstration": 2} and r["kind"] == "demonstration"
    assert r["dropped"]["comparison records not asked for"] == 2


def test_bad_input_is_one_clear_error(capsys, tmp_path):
    code, _, err = _inspect(capsys, str(tmp_path / "nope.jsonl"))
    assert code == 2 and err.startswith(f"alignforge data inspect: error: {tmp_path / 'nope.jsonl'}: file not found")
    (tmp_path / "q.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    code, _, err = _inspect(capsys, str(tmp_path / "q.jsonl"))
    assert code == 2 and f"{tmp_path / 'q.jsonl'}:1: cannot tell the dataset layout" in err
    # Bad rows after the first are skipped and counted, with their file:line.
    (tmp_path / "m.jsonl").write_text('{"prompt": "q", "response": "a"}\n{"prompt": "q"\n{"prompt": "q", "chosen": "a"}\n')
    code, out, _ = _inspect(capsys, str(tmp_path / "m.jsonl"), "--examples", "0")
    assert code == 0 and "skipped:    2 bad rows:" in out
    assert f"  {tmp_path / 'm.jsonl'}:3: missing field 'rejected' for a comparison record" in out
    assert cli.main(["data", "frobnicate"]) == 2 and "unknown command 'frobnicate'" in capsys.readouterr().err


def test_console_entry_point_json():
    out = subprocess.run([sys.executable, "-m", "alignforge", "data", "inspect", str(FIXTURES / "sharegpt.jsonl"),
                          "--json", "--examples", "1"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["format"] == "messages" and r["kinds"] == {"demonstration": 3}
    assert r["dropped"] == {"sharegpt: empty conversation": 1}
    assert r["examples"][0]["sequences"][0]["segments"][-1] == {"text": "Blue.<|end|>", "trained": True, "tokens": 6}


@pytest.mark.skipif(not HH.is_file(), reason=f"needs the shared data file {HH} (clone shared/ beside the repo)")
def test_hh_rlhf_shared_file_fit_matches_encode_pair():
    r = inspect_file(str(HH), seq_len=256, limit=150, examples=1)
    recs = load_dataset_records(HH, max_records=150)
    tok = byte_level_tokenizer()
    stats = EncodeStats()
    for rec in recs:
        encode_pair(tok, rec.prompt, rec.chosen, rec.rejected, max_len=256, stats=stats)
    assert r["records"] == 150 and r["format"] == "hh-rlhf"
    assert r["truncation"]["comparison"] == {"fit": 150 - stats.truncated - stats.dropped,
                                             "prompt_cut": stats.truncated, "dropped": stats.dropped}
    assert stats.truncated > 0 and stats.dropped > 0


def test_docs_example_is_the_real_output(monkeypatch):
    """docs/datasets.md shows `data inspect` output; it must be what the command prints today."""
    from alignforge.data.inspect import format_report

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # the docs show the path relative to the repository
    doc = (root / "docs" / "datasets.md").read_text()
    block = doc.split("On `tests/fixtures/ultrafeedback_binarized.jsonl` (`--examples 1 --seq-len 64`):\n\n```\n")[1]
    block = block.split("\n```")[0]
    r = inspect_file("tests/fixtures/ultrafeedback_binarized.jsonl", examples=1, seq_len=64)
    assert format_report(r) == block
