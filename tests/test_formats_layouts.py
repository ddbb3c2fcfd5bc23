"""Issue 19 §1: every layout people bring is read (a fixture in its real schema) or refused by name.

TRL's documented dataset types (standard and conversational), UltraFeedback binarized, ShareGPT as
dumped, unpaired feedback, and the messages for rows that lack a field or match no layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignforge.data.formats import detect_format, from_implicit_prompt, load_dataset_records
from alignforge.data.formats.trl import split_shared_prefix
from alignforge.data.records import (Comparison, Demonstration, PromptRecord, ReadReport, RecordError, TextRecord,
                                     UnpairedFeedback, parse_record, read_records, write_records)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TRL = json.loads((FIXTURES / "trl_types.json").read_text())


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------------------------------------
# TRL's dataset types: subset name → (layout detected, record kinds read)
# ---------------------------------------------------------------------------------------------

TRL_EXPECTED = {
    "standard_language_modeling": ("records", TextRecord),
    "conversational_language_modeling": ("messages", Demonstration),
    "standard_prompt_only": ("records", PromptRecord),
    "conversational_prompt_only": ("records", PromptRecord),
    "standard_prompt_completion": ("prompt-completion", Demonstration),
    "conversational_prompt_completion": ("prompt-completion", Demonstration),
    "standard_preference": ("records", Comparison),
    "conversational_preference": ("messages", Comparison),
    "standard_implicit_prompt_preference": ("implicit-prompt", Comparison),
    "conversational_implicit_prompt_preference": ("messages", Comparison),
    "standard_unpaired_preference": ("unpaired", UnpairedFeedback),
    "conversational_unpaired_preference": ("unpaired", UnpairedFeedback),
}


@pytest.mark.parametrize("subset", sorted(TRL_EXPECTED))
def test_every_trl_dataset_type_is_read(tmp_path, subset):
    layout, cls = TRL_EXPECTED[subset]
    report = ReadReport(subset)
    recs = load_dataset_records(_jsonl(tmp_path / f"{subset}.jsonl", TRL[subset]), report=report)
    assert report.format == layout
    assert len(recs) == len(TRL[subset]) and all(type(r) is cls for r in recs)
    assert report.skipped == 0 and not report.dropped


def test_trl_records_have_the_right_text():
    def read(subset):
        return [r for row in TRL[subset] for r in _adapt(row)]

    pc = read("standard_prompt_completion")
    assert (pc[0].prompt, pc[0].response) == ("The sky is", "blue.")
    cpc = read("conversational_prompt_completion")
    assert (cpc[0].prompt, cpc[0].response) == ("What color is the sky?", "It is blue.")
    up = read("standard_unpaired_preference") + read("conversational_unpaired_preference")
    assert [(u.response, u.label) for u in up] == [("blue.", True), ("green.", False), ("It is blue.", True),
                                                 ("It is green.", False)]
    assert up[2].prompt == "What color is the sky?"
    imp = read("standard_implicit_prompt_preference")
    assert [(c.prompt, c.chosen, c.rejected) for c in imp] == [
        ("The sky is", "blue.", "green."), ("Water boils at", "100 degrees Celsius.", "30 degrees Celsius.")]
    cimp = read("conversational_implicit_prompt_preference")
    assert (cimp[0].prompt, cimp[0].chosen, cimp[0].rejected) == ("What color is the sky?", "It is blue.", "It is green.")
    lm = read("conversational_language_modeling")
    assert lm[1].prompt[-1] == {"role": "user", "content": "Where does water boil at 100 C?"}


def _adapt(row):
    from alignforge.data.formats import ROW_ADAPTERS

    fmt = detect_format(row)
    return [parse_record(row)] if fmt == "records" else ROW_ADAPTERS[fmt](row)


def test_trl_stepwise_supervision_is_refused_by_name(tmp_path):
    path = _jsonl(tmp_path / "stepwise.jsonl", TRL["standard_stepwise_supervision"])
    with pytest.raises(RecordError, match=rf"^{path}:1: TRL stepwise supervision \(prompt, completions, labels"):
        load_dataset_records(path)


def test_unpaired_records_round_trip_and_validate(tmp_path):
    recs = [UnpairedFeedback(prompt="q", response="a", label=True), UnpairedFeedback(prompt="q", response="b", label=False)]
    write_records(tmp_path / "u.jsonl", recs)
    assert '"label": false' in (tmp_path / "u.jsonl").read_text()  # False is written, not left out
    assert read_records(tmp_path / "u.jsonl") == recs
    with pytest.raises(RecordError, match=r"field 'label': expected true \(desirable\) or false"):
        load_dataset_records(_jsonl(tmp_path / "bad.jsonl", [{"prompt": "q", "completion": "a", "label": "yes"}]))
    with pytest.raises(RecordError, match=r"field 'completion': expected one assistant message \(the completion\), got 2"):
        load_dataset_records(_jsonl(tmp_path / "bad2.jsonl", [
            {"prompt": "q", "completion": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}],
             "label": True}]))


def test_a_stage_that_cannot_use_unpaired_feedback_says_so(tmp_path):
    path = _jsonl(tmp_path / "kto.jsonl", TRL["standard_unpaired_preference"])
    # DPO asks for preference kinds, SFT for demonstrations: both refuse, naming what the file holds.
    for kinds in ({"comparison", "ranking", "rating"}, "demonstration"):
        with pytest.raises(RecordError) as e:
            load_dataset_records(path, kind=kinds)
        msg = str(e.value)
        assert msg.startswith(f"{path}: no ")
        assert "the file (unpaired layout) holds 2 unpaired records (unpaired feedback: prompt + response + label " \
               "true/false, TRL's KTO layout)" in msg
        assert "no alignforge stage trains on unpaired feedback" in msg
    # Mixed with usable records it is counted, not an error.
    mixed = tmp_path / "mixed.jsonl"
    write_records(mixed, [UnpairedFeedback(prompt="q", response="a", label=True),
                          Comparison(prompt="q", chosen="a", rejected="b")])
    report = ReadReport(str(mixed))
    assert len(load_dataset_records(mixed, kind="comparison", report=report)) == 1
    assert report.dropped == {"unpaired records not asked for": 1}


def test_reward_stage_refuses_unpaired_feedback_by_name(tmp_path):
    from alignforge.config import RewardConfig
    from alignforge.stages.reward import read_preferences

    path = _jsonl(tmp_path / "kto.jsonl", TRL["conversational_unpaired_preference"])
    with pytest.raises(RecordError, match=r"no comparison or ranking or rating records: the file \(unpaired layout\) "
                                          r"holds 2 unpaired records"):
        read_preferences(str(path), RewardConfig())


# ---------------------------------------------------------------------------------------------
# UltraFeedback binarized
# ---------------------------------------------------------------------------------------------


def test_ultrafeedback_binarized_reads_as_comparisons():
    path = FIXTURES / "ultrafeedback_binarized.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    report = ReadReport(str(path))
    recs = load_dataset_records(path, report=report)
    assert report.format == "ultrafeedback-binarized" and report.rows == 3
    assert all(isinstance(r, Comparison) for r in recs) and len(recs) == 2
    a, b = recs
    assert (a.prompt, a.chosen, a.rejected) == (rows[0]["prompt"], "A spider has eight legs.",
                                                "Spiders have six legs, like all insects.")
    assert a.meta == {"scores": [9.0, 3.5]} and a.id == rows[0]["prompt_id"] and not a.tie
    assert b.tie and b.meta == {"scores": [7.0, 7.0]}
    assert report.dropped == {"ultrafeedback-binarized: empty final assistant turn": 1,
                              "demonstration records not asked for": 2}
    assert report.notes["ultrafeedback-binarized: equal scores (kept as a tie)"] == 1
    assert report.notes["ultrafeedback-binarized: prompt repeated in chosen/rejected (checked equal)"] == 2


def test_ultrafeedback_binarized_messages_serve_sft_and_checks(tmp_path):
    path = FIXTURES / "ultrafeedback_binarized.jsonl"
    demos = load_dataset_records(path, kind="demonstration")
    assert [(d.prompt, d.response) for d in demos] == [
        ("How many legs does a spider have?", "A spider has eight legs."),
        ("Write a one-line slogan for a bakery.", "Fresh from our oven to your table.")]
    row = json.loads(path.read_text().splitlines()[0])
    with pytest.raises(RecordError, match=r":1: field 'prompt': the 'prompt' string is not the user turn"):
        load_dataset_records(_jsonl(tmp_path / "a.jsonl", [dict(row, prompt="Something else?")]))
    with pytest.raises(RecordError, match=r":1: field 'score_chosen': expected score_chosen ≥ score_rejected, got 1 < 9"):
        load_dataset_records(_jsonl(tmp_path / "b.jsonl", [dict(row, score_chosen=1.0, score_rejected=9.0)]))
    no_rej = {k: v for k, v in row.items() if k != "rejected"}
    with pytest.raises(RecordError, match=r":1: missing field 'rejected' \(expected a non-empty list of messages\)"):
        load_dataset_records(_jsonl(tmp_path / "c.jsonl", [no_rej]))
    # The symptom: these rows failed on 'prompt' one by one and `skip` read nothing.
    report = ReadReport("uf")
    assert len(load_dataset_records(path, on_bad="skip", report=report)) == 2 and report.skipped == 0


def test_ultrafeedback_binarized_as_the_hub_ships_it_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in (FIXTURES / "ultrafeedback_binarized.jsonl").read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train_prefs-00000-of-00001.parquet")
    assert load_dataset_records(tmp_path / "train_prefs-00000-of-00001.parquet") == \
        load_dataset_records(FIXTURES / "ultrafeedback_binarized.jsonl")


def test_string_prompt_with_whole_conversations_without_scores(tmp_path):
    # argilla-style derivatives: prompt string, chosen/rejected conversations, other score columns.
    conv = lambda a: [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": a}]
    path = _jsonl(tmp_path / "d.jsonl", [{"prompt": "2+2?", "chosen": conv("4"), "rejected": conv("5"),
                                          "chosen-rating": 5, "rejected-rating": 1}])
    report = ReadReport("d")
    (c,) = load_dataset_records(path, report=report)
    assert report.format == "messages" and (c.prompt, c.chosen, c.rejected) == ("2+2?", "4", "5")


# ---------------------------------------------------------------------------------------------
# ShareGPT as dumped
# ---------------------------------------------------------------------------------------------


def test_sharegpt_dump_system_turns_empty_and_unanswered():
    report = ReadReport("sg")
    recs = load_dataset_records(FIXTURES / "sharegpt.jsonl", report=report)
    assert report.format == "messages" and [r.id for r in recs] == ["sg1", "sg2", "sg4"]
    assert recs[1].prompt[0] == {"role": "system", "content": "You are terse."} and recs[1].response == "Madrid."
    assert (recs[2].prompt, recs[2].response) == ("Spell 'cat' backwards.", "tac")
    assert report.dropped == {"sharegpt: empty conversation": 1}
    assert report.notes == {"sharegpt: earlier assistant turns kept in the prompt (only the last is trained on)": 1,
                            "sharegpt: unanswered last user turn removed": 1}


# ---------------------------------------------------------------------------------------------
# Missing fields and rows that match no layout
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("row, expected", [
    ({"prompt": "q", "chosen": "a"}, r"missing field 'rejected' for a comparison record \(a comparison record has "
                                     r"prompt, chosen, rejected; this one has chosen, prompt\)"),
    ({"prompt": "q", "rejected": "a"}, r"missing field 'chosen' for a comparison record"),
    ({"prompt": "q", "responses": ["a", "b"], "ranking": None}, r"field 'ranking': expected a permutation"),
    ({"prompt": "q", "ranking": [0, 1]}, r"missing field 'responses' for a ranking record"),
    ({"prompt": "q", "likert": 3}, r"missing field 'response' for a rating record"),
    ({"response": "a", "likert": 3}, r"missing field 'prompt' for a rating record"),
])
def test_missing_field_is_named_for_the_kind_its_fields_point_to(tmp_path, row, expected):
    path = _jsonl(tmp_path / "r.jsonl", [row])
    with pytest.raises(RecordError, match=rf"^{path}:1: {expected}"):
        load_dataset_records(path)
    with pytest.raises(RecordError, match=rf"^{path}:1: {expected}"):
        read_records(path)


def test_layout_rows_missing_a_field_name_it(tmp_path):
    hh = {"chosen": "\n\nHuman: hi\n\nAssistant: hello"}
    with pytest.raises(RecordError, match=r":1: missing field 'rejected' \(a HH-RLHF row has 'chosen' and 'rejected'"):
        load_dataset_records(_jsonl(tmp_path / "hh.jsonl", [hh]))
    with pytest.raises(RecordError, match=r":1: missing field 'output' \(expected a string\)"):
        load_dataset_records(_jsonl(tmp_path / "al.jsonl", [{"instruction": "x", "output": None}]), format="alpaca")
    with pytest.raises(RecordError, match=r":1: missing field 'completion'"):
        load_dataset_records(_jsonl(tmp_path / "pc.jsonl", [{"prompt": "x"}]), format="prompt-completion")
    with pytest.raises(RecordError, match=r":1: missing field 'label'"):
        load_dataset_records(_jsonl(tmp_path / "un.jsonl", [{"prompt": "x", "completion": "y"}]), format="unpaired")


@pytest.mark.parametrize("row, expected", [
    ({"instruction": "Say hi", "input": ""},
     r"the closest layout is Alpaca \(format=alpaca\), whose rows have instruction, input, output; this row lacks 'output'"),
    ({"message_id": "m1", "text": "hi"},
     r"the closest layout is OASST messages \(format=oasst\), .*; this row lacks 'role'"),
    ({"instruction": "When?", "context": "In 1969.", "category": "closed_qa"},
     r"the closest layout is Dolly \(format=dolly\), whose rows have instruction, context, response, category; "
     r"this row lacks 'response'"),
    ({"instruction": "Write a poem.", "models": ["m1", "m2"]},
     r"the closest layouts are Alpaca .* — or UltraFeedback \(format=ultrafeedback\), whose rows have instruction, "
     r"completions; this row lacks 'completions'"),
    ({"question": "q", "answer": "a"}, r"\['answer', 'question'\] \(supported: records, hh-rlhf, alpaca"),
])
def test_row_matching_no_layout_names_the_closest(tmp_path, row, expected):
    path = _jsonl(tmp_path / "x.jsonl", [row])
    with pytest.raises(RecordError, match=rf"^{path}:1: cannot tell the dataset layout from fields .*{expected}"):
        load_dataset_records(path)


def test_forced_records_format_hints_at_the_layout(tmp_path):
    path = _jsonl(tmp_path / "pc.jsonl", TRL["standard_prompt_completion"])
    with pytest.raises(RecordError, match=r"unexpected field\(s\) \['completion'\] for a prompt record .*TRL's "
                                          r"prompt-completion layout"):
        load_dataset_records(path, format="records")


def test_implicit_prompt_split_and_refusal():
    assert split_shared_prefix("The sky is blue.", "The sky is black.") == ("The sky is", "blue.", "black.")
    assert split_shared_prefix("Yes it is.", "Yes it is. Sure.") == ("Yes it", "is.", "is. Sure.")
    with pytest.raises(RecordError, match=r"missing field 'prompt': chosen and rejected share no leading text"):
        from_implicit_prompt({"chosen": "Blue.", "rejected": "Green."})


def test_sft_and_dpo_stages_refuse_unpaired_feedback_by_name(tmp_path, capsys):
    """End to end through the stages' own CLI: one clear line, exit 2, before any training."""
    from alignforge.models.load import save_model
    from alignforge.models.tiny import tiny_random_model, tiny_tokenizer
    from alignforge.stages import dpo, sft

    tok = tiny_tokenizer("llama")
    save_model(tiny_random_model("llama", len(tok), max_positions=128), tok, tmp_path / "model")
    data = _jsonl(tmp_path / "kto.jsonl", TRL["conversational_unpaired_preference"])
    common = [f"model.init={tmp_path / 'model'}", f"data.train={data}", "runtime.threads=1", "runtime.device=cpu",
              "runtime.progress=false", "train.seq_len=64"]
    for name, stage, wanted in (("sft", sft, "demonstration"), ("dpo", dpo, "comparison or ranking or rating")):
        assert stage.main(common + [f"out={tmp_path / name}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"alignforge {name}: error: {data}: no {wanted} records: the file (unpaired layout) "
                              "holds 2 unpaired records (unpaired feedback"), err
        assert not (tmp_path / name / "DONE").exists()
