"""Format adapters: the real shared files (HH-RLHF, self-instruct) and fixtures in each format's schema."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from alignforge.data.formats import (Dropped, detect_format, from_alpaca, from_hh_rlhf, from_messages,
                                     from_ultrafeedback, load_dataset_records, parse_hh_transcript,
                                     ultrafeedback_score)
from alignforge.data.records import Comparison, Demonstration, Ranking, ReadReport, RecordError, read_records, write_records

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HH = SHARED_DATA / "hh-rlhf-harmless-base-test.jsonl.gz"
SELF_INSTRUCT = SHARED_DATA / "self-instruct-seed-tasks.jsonl"

needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(),
                                  reason=f"needs the shared data folder {SHARED_DATA} (clone shared/ beside the repo)")


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _hh(*turns: tuple[str, str]) -> str:
    return "".join(f"\n\n{who}: {text}" for who, text in turns)


# ---------------------------------------------------------------------------------------------
# HH-RLHF
# ---------------------------------------------------------------------------------------------


def test_hh_single_turn_prompt_is_a_string_and_responses_are_the_final_turns():
    row = {"chosen": _hh(("Human", "How do I boil an egg?"), ("Assistant", "Simmer it for 9 minutes.")),
           "rejected": _hh(("Human", "How do I boil an egg?"), ("Assistant", "No idea."))}
    (rec,) = from_hh_rlhf(row)
    assert isinstance(rec, Comparison)
    assert rec.prompt == "How do I boil an egg?"
    assert (rec.chosen, rec.rejected, rec.tie, rec.source) == ("Simmer it for 9 minutes.", "No idea.", False, "hh-rlhf")


def test_hh_multi_turn_prefix_becomes_messages():
    prefix = [("Human", "Hi"), ("Assistant", "Hello!"), ("Human", "Name a fruit.")]
    row = {"chosen": _hh(*prefix, ("Assistant", "Apple.")), "rejected": _hh(*prefix, ("Assistant", "Rock."))}
    (rec,) = from_hh_rlhf(row)
    assert rec.prompt == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                          {"role": "user", "content": "Name a fruit."}]
    assert (rec.chosen, rec.rejected) == ("Apple.", "Rock.")


def test_hh_answer_split_over_two_assistant_blocks_is_merged():
    # The shape of 5 harmless-base pairs: the chosen answer continues in a second "Assistant:" block,
    # which a naive "split at the last Assistant:" would turn into differing prefixes.
    row = {"chosen": _hh(("Human", "Q?"), ("Assistant", "Part one."), ("Assistant", "Part two.")),
           "rejected": _hh(("Human", "Q?"), ("Assistant", "Other."))}
    notes: dict[str, int] = {}
    (rec,) = from_hh_rlhf(row, notes)
    assert rec.prompt == "Q?"
    assert rec.chosen == "Part one.\n\nPart two."
    assert notes["hh: pairs with a turn split over consecutive blocks (merged)"] == 1


def test_hh_identical_and_empty_are_dropped_with_a_reason():
    same = _hh(("Human", "Q?"), ("Assistant", "A."))
    with pytest.raises(Dropped, match="identical"):
        from_hh_rlhf({"chosen": same, "rejected": same})
    with pytest.raises(Dropped, match="empty final Assistant turn"):
        from_hh_rlhf({"chosen": _hh(("Human", "Q?"), ("Assistant", "")), "rejected": same})


def test_hh_malformed_transcripts_name_the_field():
    with pytest.raises(RecordError, match=r"field 'chosen': transcript does not parse"):
        from_hh_rlhf({"chosen": "User: hi\nBot: hello", "rejected": _hh(("Human", "hi"), ("Assistant", "x"))})
    with pytest.raises(RecordError, match=r"field 'rejected': expected the transcript to end with an 'Assistant:' turn"):
        from_hh_rlhf({"chosen": _hh(("Human", "hi"), ("Assistant", "x")), "rejected": _hh(("Human", "hi"))})
    with pytest.raises(RecordError, match=r"field 'rejected': chosen and rejected differ before their final"):
        from_hh_rlhf({"chosen": _hh(("Human", "hi"), ("Assistant", "x")),
                      "rejected": _hh(("Human", "bye"), ("Assistant", "y"))})
    assert parse_hh_transcript(_hh(("Human", " a "), ("Assistant", "b"))) == [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]


def test_hh_loader_errors_carry_path_and_line_and_skip_counts(tmp_path):
    good = {"chosen": _hh(("Human", "Q?"), ("Assistant", "A.")), "rejected": _hh(("Human", "Q?"), ("Assistant", "B."))}
    bad = {"chosen": "no speakers here", "rejected": good["rejected"]}
    same = {"chosen": good["chosen"], "rejected": good["chosen"]}
    path = _jsonl(tmp_path / "hh.jsonl", [good, bad, "{not json", same, good])
    with pytest.raises(RecordError) as e:
        load_dataset_records(path, format="hh-rlhf")
    assert str(e.value).startswith(f"{path}:2: field 'chosen': transcript does not parse")
    report = ReadReport(str(path))
    recs = load_dataset_records(path, on_bad="skip", report=report)
    assert report.format == "hh-rlhf"
    assert len(recs) == report.read == 2
    assert report.skipped == 2 and report.errors[1].startswith(f"{path}:3: not valid JSON")
    assert report.dropped == {"hh: chosen and rejected identical": 1}
    assert report.rows == report.read + report.skipped + sum(report.dropped.values())


@needs_shared
def test_hh_harmless_base_shared_file_counts():
    report = ReadReport(str(HH))
    recs = load_dataset_records(HH, report=report)
    # Independent count straight from the raw transcripts, not through the adapter.
    with gzip.open(HH, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    identical = sum(r["chosen"] == r["rejected"] for r in rows)
    empty_final = sum(not r[k].rsplit("\n\nAssistant:", 1)[1].strip() for r in rows for k in ("chosen", "rejected"))
    assert report.format == "hh-rlhf" and report.rows == len(rows) == 2312
    assert report.skipped == 0
    assert report.dropped.get("hh: chosen and rejected identical", 0) == identical == 0
    assert report.dropped["hh: empty final Assistant turn"] == empty_final == 4
    assert len(recs) == report.read == 2312 - 4
    assert all(isinstance(r, Comparison) and r.chosen != r.rejected and r.chosen and r.rejected for r in recs)
    single = sum(isinstance(r.prompt, str) for r in recs)
    assert report.notes["hh: single-turn prompt"] == single
    assert report.notes["hh: multi-turn prompt"] == len(recs) - single
    multi = [r.prompt for r in recs if isinstance(r.prompt, list)]
    # Roles alternate user/assistant and the prompt ends with the human turn being answered.
    assert all(p[0]["role"] == "user" and p[-1]["role"] == "user" and
               all(a["role"] != b["role"] for a, b in zip(p, p[1:])) for p in multi)
    assert report.notes["hh: pairs with a turn split over consecutive blocks (merged)"] >= 5


# ---------------------------------------------------------------------------------------------
# Alpaca / self-instruct, Dolly
# ---------------------------------------------------------------------------------------------


@needs_shared
def test_self_instruct_seed_tasks_one_demonstration_per_instance():
    rows = [json.loads(line) for line in SELF_INSTRUCT.read_text().splitlines() if line.strip()]
    report = ReadReport(str(SELF_INSTRUCT))
    recs = load_dataset_records(SELF_INSTRUCT, report=report)
    assert report.format == "alpaca" and report.rows == len(rows) == 175
    assert len(recs) == sum(len(r["instances"]) for r in rows)
    assert all(isinstance(r, Demonstration) and r.source == "self-instruct" for r in recs)
    with_input = sum(bool(i["input"].strip()) for r in rows for i in r["instances"])
    assert report.notes["alpaca: with input"] == with_input
    first = rows[1]  # seed_task_1 has an input: it follows the instruction after a blank line
    rec = next(r for r in recs if r.id == f"{first['id']}/0")
    assert rec.prompt == first["instruction"].strip() + "\n\n" + first["instances"][0]["input"].strip()
    assert rec.response == first["instances"][0]["output"].strip()
    assert rec.meta["name"] == first["name"]


def test_alpaca_json_list_fixture():
    recs = load_dataset_records(FIXTURES / "alpaca.json")
    assert [r.prompt for r in recs] == [
        "Give three tips for staying healthy.",
        "Translate the sentence into French.\n\nThe cat is on the table.",
        "Summarize the text in one sentence.\n\nThe library will be closed on Monday for repairs to the heating "
        "system. It reopens on Tuesday at 9am."]
    assert recs[1].response == "Le chat est sur la table."


def test_alpaca_errors_name_the_instance_field():
    with pytest.raises(RecordError, match=r"field 'instances\[1\]\.output': expected a non-empty string"):
        from_alpaca({"instruction": "Say hi", "instances": [{"input": "", "output": "hi"}, {"input": "x", "output": " "}]})
    with pytest.raises(RecordError, match=r"field 'instruction': expected a string, got 3"):
        from_alpaca({"instruction": 3, "input": "", "output": "x"})


def test_dolly_fixture_and_hf_datasets_dir(tmp_path):
    recs = load_dataset_records(FIXTURES / "dolly.jsonl")
    assert [r.category for r in recs] == ["closed_qa", "brainstorming", "classification"]
    assert recs[0].prompt.startswith("When did the first person walk on the Moon?\n\nApollo 11 was")
    assert recs[1].prompt == "Give me three ideas for a rainy afternoon."
    # The same rows as a local HF datasets directory give the same records.
    import datasets

    rows = [json.loads(line) for line in (FIXTURES / "dolly.jsonl").read_text().splitlines()]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "dolly_ds"))
    assert load_dataset_records(tmp_path / "dolly_ds") == recs


# ---------------------------------------------------------------------------------------------
# OASST
# ---------------------------------------------------------------------------------------------


def test_oasst_flat_rows_best_paths_and_sibling_rankings():
    report = ReadReport("oasst")
    recs = load_dataset_records(FIXTURES / "oasst2_flat.jsonl", report=report)
    demos = {r.id: r for r in recs if isinstance(r, Demonstration)}
    ranks = {r.id: r for r in recs if isinstance(r, Ranking)}
    # Best path p1 → a1 (rank 0) → p2 → a4 (rank 0); a2 is rank 1, so the a2 → p3 → a5 branch gives none;
    # the German tree's single unranked reply a7 is its best path.
    assert set(demos) == {"a1", "a4", "a7"}
    assert demos["a1"].prompt == "What is a good name for a pet turtle?"
    assert demos["a4"].prompt == [
        {"role": "user", "content": "What is a good name for a pet turtle?"},
        {"role": "assistant", "content": "Shelly is a classic name for a turtle."},
        {"role": "user", "content": "Something funnier?"}]
    assert demos["a4"].response == "Tank, because it is slow and armoured."
    assert demos["a7"].meta == {"lang": "de"}
    # Rankings among ranked siblings; the deleted a6 (rank 2) is left out.
    assert ranks["p1"].responses == ["Shelly is a classic name for a turtle.", "Turtles do not care about names."]
    assert ranks["p1"].ranking == [0, 1]
    assert ranks["p2"].responses == ["Sir Shell-a-lot.", "Tank, because it is slow and armoured."]
    assert ranks["p2"].ranking == [1, 0]
    assert set(ranks) == {"p1", "p2"}
    assert report.dropped == {"oasst: deleted or failed-review message (with its replies)": 1,
                              "oasst: parent not in the file (with its replies)": 1}
    assert load_dataset_records(FIXTURES / "oasst2_flat.jsonl", kind="demonstration") == list(demos.values())


def test_oasst_exported_tree_and_bad_role(tmp_path):
    recs = load_dataset_records(FIXTURES / "oasst_trees.jsonl")
    (ranking,) = [r for r in recs if isinstance(r, Ranking)]
    assert ranking.responses[ranking.ranking[0]] == "13 is a prime number larger than 10."
    assert [r.response for r in recs if isinstance(r, Demonstration)] == ["13 is a prime number larger than 10.", "23."]
    rows = [json.loads(line) for line in (FIXTURES / "oasst2_flat.jsonl").read_text().splitlines()]
    rows[4]["role"] = "user"
    path = _jsonl(tmp_path / "oasst.jsonl", rows)
    with pytest.raises(RecordError, match=rf"^{path}:5: field 'role': expected 'prompter' or 'assistant', got 'user'"):
        load_dataset_records(path, format="oasst")


# ---------------------------------------------------------------------------------------------
# UltraFeedback
# ---------------------------------------------------------------------------------------------


def test_ultrafeedback_all_pairs_ties_and_one_ranking():
    row = json.loads((FIXTURES / "ultrafeedback.jsonl").read_text().splitlines()[0])
    recs = from_ultrafeedback(row)
    comps = [r for r in recs if isinstance(r, Comparison)]
    (ranking,) = [r for r in recs if isinstance(r, Ranking)]
    # Scores 8.5, 6.0, 8.5, 3.0 → C(4,2) = 6 pairs, one of them the 8.5/8.5 tie.
    assert len(comps) == 6
    assert [c.tie for c in comps].count(True) == 1
    texts = [c["response"] for c in row["completions"]]
    for c in comps:
        assert c.meta["scores"][0] >= c.meta["scores"][1]
    assert {(texts.index(c.chosen), texts.index(c.rejected)) for c in comps if not c.tie} == {
        (0, 1), (0, 3), (2, 1), (2, 3), (1, 3)}
    assert ranking.ranking == [0, 2, 1, 3] and ranking.meta["scores"] == [8.5, 6.0, 8.5, 3.0]


def test_ultrafeedback_scores_from_annotations_and_loader_kinds():
    # No overall_score: the mean of the numeric Ratings, "N/A" ignored: (1 + 2 + 4) / 3.
    c = {"response": "No.", "annotations": {"helpfulness": {"Rating": "1"}, "honesty": {"Rating": "2"},
                                            "instruction_following": {"Rating": "4"}, "truthfulness": {"Rating": "N/A"}}}
    assert ultrafeedback_score(c) == pytest.approx(7 / 3)
    with pytest.raises(RecordError, match=r"field 'completions\[2\]': expected a numeric 'overall_score'"):
        ultrafeedback_score({"response": "x"}, "completions[2]")
    report = ReadReport("uf")
    comps = load_dataset_records(FIXTURES / "ultrafeedback.jsonl", report=report)
    assert all(isinstance(r, Comparison) for r in comps) and len(comps) == 7  # 6 + 1 (empty completion left out)
    assert report.notes["ultrafeedback: empty completion left out"] == 1
    assert report.dropped == {"ranking records not asked for": 2}
    rankings = load_dataset_records(FIXTURES / "ultrafeedback.jsonl", kind="ranking")
    assert [len(r.responses) for r in rankings] == [4, 2]


# ---------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------


def test_messages_lists_sharegpt_and_conversational_preferences():
    recs = load_dataset_records(FIXTURES / "messages.jsonl")
    assert recs[0].prompt == [{"role": "system", "content": "You answer in one word."},
                              {"role": "user", "content": "Capital of France?"}]
    assert recs[0].response == "Paris."
    assert recs[1].prompt[-1] == {"role": "user", "content": "What is 2+2?"} and recs[1].response == "4"
    assert recs[2].prompt == "Say hello in Spanish." and recs[2].source == "handwritten"
    sg = load_dataset_records(FIXTURES / "sharegpt.jsonl")[0]
    assert (sg.prompt, sg.response, sg.id) == ("Name a color.", "Blue.", "sg1")
    a, b = load_dataset_records(FIXTURES / "messages_pref.jsonl")
    assert (a.prompt, a.chosen, a.rejected) == ("Is the sky green?", "No, it usually looks blue.", "Yes.")
    assert (b.prompt, b.chosen, b.rejected) == ("2+3?", "5", "6")


def test_messages_errors():
    with pytest.raises(RecordError, match=r"field 'messages': expected the last message to be from the assistant"):
        from_messages({"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "?"}]})
    with pytest.raises(RecordError, match=r"field 'messages': message 0: expected a role among"):
        from_messages({"messages": [{"role": "narrator", "content": "x"}, {"role": "assistant", "content": "y"}]})


# ---------------------------------------------------------------------------------------------
# Detection and the loader on other containers
# ---------------------------------------------------------------------------------------------


def test_detect_format_from_first_row():
    first = {name: json.loads((FIXTURES / name).read_text().splitlines()[0])
             for name in ("dolly.jsonl", "oasst2_flat.jsonl", "oasst_trees.jsonl", "ultrafeedback.jsonl",
                          "messages.jsonl", "sharegpt.jsonl", "messages_pref.jsonl")}
    assert {k: detect_format(v) for k, v in first.items()} == {
        "dolly.jsonl": "dolly", "oasst2_flat.jsonl": "oasst", "oasst_trees.jsonl": "oasst",
        "ultrafeedback.jsonl": "ultrafeedback", "messages.jsonl": "messages", "sharegpt.jsonl": "messages",
        "messages_pref.jsonl": "messages"}
    assert detect_format({"chosen": _hh(("Human", "q"), ("Assistant", "a")), "rejected": "x"}) == "hh-rlhf"
    assert detect_format({"prompt": "q", "chosen": "a", "rejected": "b"}) == "records"
    # A message list that ends with the user is a prompt record, not a demonstration.
    assert detect_format({"messages": [{"role": "user", "content": "q"}]}) == "records"
    assert detect_format({"instruction": "i", "input": "", "output": "o"}) == "alpaca"


def test_records_format_parquet_and_unknown_format(tmp_path):
    recs = [Comparison(prompt="p", chosen="a", rejected="b", strength=2), Comparison(prompt="q", chosen="c", rejected="d")]
    write_records(tmp_path / "c.parquet", recs)
    report = ReadReport("c")
    assert load_dataset_records(tmp_path / "c.parquet", report=report) == recs == read_records(tmp_path / "c.parquet")
    assert report.format == "records"
    with pytest.raises(ValueError, match="unknown format 'hh'"):
        load_dataset_records(tmp_path / "c.parquet", format="hh")
    path = _jsonl(tmp_path / "weird.jsonl", [[1, 2]])
    with pytest.raises(RecordError, match=rf"^{path}:1: expected a JSON object, got \[1, 2\]; cannot detect"):
        load_dataset_records(path)


def test_kind_filter_max_records_and_data_section(tmp_path):
    from alignforge.config import DataSection
    from alignforge.data.formats import load_data_section

    recs = [Demonstration(prompt=f"q{i}", response="a") for i in range(5)] + [Comparison(prompt="q", chosen="a", rejected="b")]
    write_records(tmp_path / "mix.jsonl", recs)
    report = ReadReport("mix")
    assert load_dataset_records(tmp_path / "mix.jsonl", kind="comparison", report=report) == recs[5:]
    assert report.dropped == {"demonstration records not asked for": 5}
    assert load_dataset_records(tmp_path / "mix.jsonl", max_records=2) == recs[:2]
    section = DataSection(train=str(tmp_path / "mix.jsonl"), max_records=3, format="records")
    assert load_data_section(section, kind="demonstration") == recs[:3]
    from alignforge.config import ConfigError

    with pytest.raises(ConfigError, match=r"config key 'data\.eval' is not set; expected a records file"):
        load_data_section(section, split="eval")


def test_ultrafeedback_drops_and_identical_pairs():
    notes: dict[str, int] = {}
    with pytest.raises(Dropped, match="fewer than 2 non-empty completions"):
        from_ultrafeedback({"instruction": "q", "completions": [{"response": "a", "overall_score": 3},
                                                                {"response": " ", "overall_score": 9}]}, notes)
    recs = from_ultrafeedback({"prompt": "q", "completions": [{"response": "a", "overall_score": 3},
                                                              {"response": "a", "overall_score": 5},
                                                              {"response": "b", "overall_score": 1}]}, notes)
    assert [(r.chosen, r.rejected) for r in recs if isinstance(r, Comparison)] == [("a", "b"), ("a", "b")]
    assert notes["ultrafeedback: identical pair left out"] == 1 and notes["ultrafeedback: empty completion left out"] == 1
