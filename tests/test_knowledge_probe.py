"""The knowledge probe (``eval/knowledge.py``) and the judge's correctness test it counts with."""

import json
import re

import pytest

from alignforge.world.config import WorldConfig
from alignforge.world.core import build_world


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig(), corpus=False, demos=False)


def test_judge_correct_is_exactly_the_true_value(world):
    from alignforge.world.judge import GoldJudge

    judge = GoldJudge(world)
    name = world.facts.names("person", "train")[0]
    job = world.facts.entities[name].attrs["job"]
    other = next(j for j in ("baker", "smith") if j != job)
    q = f"What is the job of {name}?"
    assert judge.correct(q, f"The job of {name} is {job}.")
    assert judge.correct(q, job)
    assert not judge.correct(q, f"The job of {name} is {other}.")
    assert not judge.correct(q, f"The job of {name} is {job} or {other}.")  # hedging over values is wrong
    assert not judge.correct(q, "I do not know.")
    assert judge.correct("What is 12 plus 7?", "12 plus 7 is 19.")  # the echoed operands are not claims
    assert not judge.correct("What is 12 plus 7?", "12 plus 7 is 20.")
    with pytest.raises(ValueError, match="no single true value"):
        judge.correct("Repeat the word apple two times.", "apple apple")


def test_probe_questions_keep_the_splits_apart(world):
    from alignforge.eval.knowledge import probe_questions
    from alignforge.world.tasks import content_split

    for split in ("train", "test"):
        facts = probe_questions(world, split, "fact", 50)
        assert len(facts) == len(set(facts)) == 50
        assert {world.facts.split_of[world.task(q).subject] for q in facts} == {split}
        sums = probe_questions(world, split, "arithmetic", 50)
        for q in sums:
            e = world.task(q).extra
            assert content_split(f"arith:{e['a']}:{e['op']}:{e['b']}") == split
    assert probe_questions(world, "test", "fact", 10, seed=1) == probe_questions(world, "test", "fact", 10, seed=1)
    with pytest.raises(ValueError, match="category"):
        probe_questions(world, "train", "format", 5)


def test_probe_prompt_is_solved_documents_joined_by_eos_then_the_open_question(world):
    from alignforge.eval.knowledge import probe_prompt_ids
    from alignforge.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer("llama")
    shots = ["What is 3 plus 4?", "What is 5 times 6?"]
    ids = probe_prompt_ids(tok, world, "What is 2 plus 2?", shots)
    assert ids.count(tok.eos_token_id) == 2  # one eos after each solved example, as packed pretraining has
    text = tok.decode(ids, skip_special_tokens=False)
    eos = tok.eos_token
    assert text == (f"User: What is 3 plus 4?\nAssistant: 3 plus 4 is 7.{eos}"
                    f"User: What is 5 times 6?\nAssistant: 5 times 6 is 30.{eos}"
                    "User: What is 2 plus 2?\nAssistant:")
    # The chat layout: each shot exactly as SFT encodes a demonstration (prompt with assistant header,
    # answer, eos), then the open question's prompt.
    from alignforge.data.batching import prompt_ids, response_ids

    chat = probe_prompt_ids(tok, world, "What is 2 plus 2?", shots, chat=True)
    assert chat == (prompt_ids(tok, shots[0]) + response_ids(tok, "3 plus 4 is 7.") + prompt_ids(tok, shots[1])
                    + response_ids(tok, "5 times 6 is 30.") + prompt_ids(tok, "What is 2 plus 2?"))
    # A budget smaller than all shots drops the *earliest* whole shots; the question is never cut.
    question_only = probe_prompt_ids(tok, world, "What is 2 plus 2?", [])
    one_shot = probe_prompt_ids(tok, world, "What is 2 plus 2?", shots[1:])
    assert probe_prompt_ids(tok, world, "What is 2 plus 2?", shots, budget=len(ids) - 1) == one_shot
    assert probe_prompt_ids(tok, world, "What is 2 plus 2?", shots, budget=len(question_only)) == question_only
    with pytest.raises(ValueError, match="positions"):
        probe_prompt_ids(tok, world, "What is 2 plus 2?", shots, budget=len(question_only) - 1)


def _answering_generate(world, tok, answer):
    """A stand-in for the sampling engine that answers each prompt's open question with ``answer(q)``."""
    from alignforge.generation import Generation  # noqa: F401  (the real return type has .texts)

    class Out:
        def __init__(self, texts):
            self.texts = texts

    def generate(model, prompt_ids, params, **kw):
        assert params.greedy and "\n" in params.stop_strings
        texts = []
        for ids in prompt_ids:
            text = tok.decode(ids, skip_special_tokens=False)
            q = re.findall(r"(?:User: |<\|user\|>\n)(.*?)(?:\nAssistant:|<\|end\|>)", text)[-1]
            texts.append(" " + answer(q) + "\nUser: more")  # the probe keeps the first line only
        return Out(texts)

    return generate


def test_probe_counts_oracle_answers_exact_and_wrong_ones_not(world, monkeypatch):
    import alignforge.generation as generation
    from alignforge.eval.knowledge import knowledge_probe
    from alignforge.models.tiny import tiny_random_model, tiny_tokenizer

    tok = tiny_tokenizer("llama")
    model = tiny_random_model("llama", len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    monkeypatch.setattr(generation, "generate", _answering_generate(world, tok, world.oracle))
    probe = knowledge_probe(model, tok, world, shots=(0, 3), per_split=12)
    assert probe["format"] == "chat"
    assert knowledge_probe(model, tok, world, shots=(1,), per_split=12, chat=False)["1-shot"]["fact"]["test"]["exact"] == 1.0
    for key in ("0-shot", "3-shot"):
        for cat in ("fact", "arithmetic"):
            assert probe[key][cat]["train"] == {"exact": 1.0, "n": 12}
            assert probe[key][cat]["test"] == {"exact": 1.0, "n": 12}
    # Answer every question with the value of another question: exact only by coincidence of value.
    monkeypatch.setattr(generation, "generate", _answering_generate(world, tok, lambda q: "I do not know."))
    probe = knowledge_probe(model, tok, world, shots=(2,), per_split=12)
    assert all(probe["2-shot"][c][s]["exact"] == 0.0 for c in ("fact", "arithmetic") for s in ("train", "test"))


def test_eval_stage_reports_the_probe(tmp_path):
    from alignforge.cli import main as cli_main
    from alignforge.models.load import save_model
    from alignforge.models.tiny import tiny_random_model, tiny_tokenizer

    assert cli_main(["world", "generate", "--seed", "0", "--out", str(tmp_path / "world")]) == 0
    tok = tiny_tokenizer("llama")
    model = tiny_random_model("llama", len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    save_model(model, tok, tmp_path / "sft" / "model")
    out = tmp_path / "eval"
    assert cli_main(["eval", str(tmp_path / "sft"), "--world", str(tmp_path / "world"), "eval.max_prompts=8",
                     "eval.max_new_tokens=4", "eval.fewshot=2", "eval.probe_questions=6", "eval.references=[]",
                     "--out", str(out)]) == 0
    probe = json.loads((out / "eval.json").read_text())["knowledge"]["sft"]
    assert set(k for k in probe if k.endswith("-shot")) == {"0-shot", "2-shot"}
    assert all(0.0 <= probe[k][c][s]["exact"] <= 1.0 and probe[k][c][s]["n"] == 6
               for k in ("0-shot", "2-shot") for c in ("fact", "arithmetic") for s in ("train", "test"))
    assert "knowledge probe" in (out / "report.md").read_text()
    assert cli_main(["eval", str(tmp_path / "sft"), "eval.judge=reward", "reward.init=x", "eval.fewshot=2",
                     "--out", str(tmp_path / "e2")]) == 2
