"""World generation: determinism, splits without shared entities, records, config strictness, CLI."""

from __future__ import annotations

import json
import re

import pytest

from alignforge.config import ConfigError, load_config
from alignforge.data.records import Demonstration, PromptRecord, TextRecord, read_records
from alignforge.world import CATEGORIES, WorldConfig, build_world
from alignforge.world.cli import main as world_main

SMALL = ["size.people=30", "size.places=15", "size.creatures=20", "prompts.train=300", "prompts.test=120",
         "prompts.sft=200", "text.arithmetic_docs=40", "text.dialogue_docs=60", "text.heldout_docs=40"]


def _generate(tmp_path, name, seed, extra=()):
    out = tmp_path / name
    assert world_main(["generate", "--seed", str(seed), "--out", str(out), *SMALL, *extra]) == 0
    return out


def _bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_same_seed_byte_identical_other_seed_differs(tmp_path):
    a, b, c = (_generate(tmp_path, n, s) for n, s in (("a", 3), ("b", 3), ("c", 4)))
    files = _bytes(a)
    assert set(files) >= {"corpus.jsonl", "heldout.jsonl", "sft.jsonl", "prompts_train.jsonl", "prompts_test.jsonl",
                          "world.json", "manifest.json", "config.yaml"}
    assert files == _bytes(b)
    other = _bytes(c)
    for name in ("corpus.jsonl", "sft.jsonl", "prompts_train.jsonl", "prompts_test.jsonl", "world.json"):
        assert files[name] != other[name], name


def test_gzip_output_is_deterministic(tmp_path):
    a = _generate(tmp_path, "a", 1, ["compress=true"])
    b = _generate(tmp_path, "b", 1, ["compress=true"])
    assert (a / "corpus.jsonl.gz").exists() and _bytes(a) == _bytes(b)


def test_records_and_manifest(tmp_path):
    out = _generate(tmp_path, "w", 0)
    corpus = read_records(out / "corpus.jsonl")
    assert corpus and all(isinstance(r, TextRecord) for r in corpus)
    dialogues = [r for r in corpus if r.meta]
    assert len(dialogues) == 60
    for r in dialogues:  # plain text and, for chat-template rendering, the same exchange as messages
        m = r.meta["messages"]
        assert [x["role"] for x in m] == ["user", "assistant"]
        assert r.text == f"User: {m[0]['content']}\nAssistant: {m[1]['content']}"
    sft = read_records(out / "sft.jsonl")
    assert len(sft) == 200 and all(isinstance(r, Demonstration) and r.policy == "demonstrator" for r in sft)
    for split, n in (("train", 300), ("test", 120)):
        recs = read_records(out / f"prompts_{split}.jsonl")
        assert len(recs) == n and all(isinstance(r, PromptRecord) for r in recs)
        assert all(r.category in CATEGORIES and r.id.startswith(split) for r in recs)
        assert {r.category for r in recs} == set(CATEGORIES)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["seed"] == 0 and manifest["config"]["size"]["people"] == 30
    assert manifest["files"]["prompts_test"] == {"path": "prompts_test.jsonl", "records": 120}
    facts = json.loads((out / "world.json").read_text())
    assert len(facts["entities"]) == 65


def test_splits_share_no_entities_and_no_prompts():
    world = build_world(load_config(WorldConfig, None, SMALL + ["prompts.train=2000", "prompts.test=500"]))
    f = world.facts
    names = set(f.entities) | {n for split in f.unknown.values() for n in split}

    def entities_in(split):
        return {w for r in world.prompts[split] for w in re.findall(r"[A-Z][a-z]+", r.prompt) if w in names}

    train, test = entities_in("train"), entities_in("test")
    assert train and test and not train & test
    assert all(f.split_of[n] == "test" for n in test if n in f.entities)
    assert not {r.prompt for r in world.prompts["train"]} & {r.prompt for r in world.prompts["test"]}
    # SFT demonstrations are train-split prompts; no test prompt appears verbatim in the corpus
    assert not entities_in("test") & {w for d in world.demos for w in re.findall(r"[A-Z][a-z]+", d.prompt)}
    corpus = "\n".join(world.corpus)
    assert not any(r.prompt in corpus for r in world.prompts["test"])


def test_corpus_states_every_fact_and_heldout_is_new():
    world = build_world(load_config(WorldConfig, None, SMALL))
    corpus = "\n".join(world.corpus)
    for ent in world.facts.entities.values():  # test entities too: the split holds out questions, not facts
        for value in ent.attrs.values():
            assert re.search(rf"\b{re.escape(ent.name)}\b[^.]*\b{value}\b|\b{value}\b[^.]*\b{ent.name}\b", corpus), \
                (ent.name, value)
    assert world.heldout and not set(world.heldout) & set(world.corpus)
    words = {w.lower() for doc in world.corpus for w in re.findall(r"[A-Za-z]+", doc)} - {
        n.lower() for n in world.facts.entities}
    assert len(words) < 400, len(words)  # a small vocabulary by design


def test_config_is_strict(tmp_path, capsys):
    with pytest.raises(ConfigError, match="size.peeple.*Did you mean 'size.people'"):
        load_config(WorldConfig, None, ["size.peeple=3"])
    with pytest.raises(ConfigError, match="size.attributes"):
        load_config(WorldConfig, None, ["size.attributes=7"])
    with pytest.raises(ConfigError, match="prompts.mix.*poems"):
        load_config(WorldConfig, None, ["prompts.mix={poems: 1.0}"])
    assert world_main(["generate", "--out", str(tmp_path / "x"), "demonstrator.invent=2"]) == 2
    assert "demonstrator.invent" in capsys.readouterr().err


def test_size_knobs_change_the_world():
    tiny = build_world(load_config(WorldConfig, None, SMALL + ["size.attributes=1"]), demos=False)
    assert all(len(attrs) == 1 for attrs in tiny.facts.attributes.values())
    # an attribute the world no longer holds is an honesty question
    person = tiny.facts.names("person", "train")[0]
    assert tiny.task(f"What is the age of {person}?").category == "unknown"
    assert tiny.task(f"What is the job of {person}?").category == "fact"
    # benign look-alikes only ask for attributes the world holds (place food is the first kept)
    benign = {tiny.task(r.prompt).subtype for r in tiny.prompts["train"] if r.category == "benign"}
    assert benign == {"kill_time"}


def test_max_number_bounds_every_operand_and_the_times_table_stops_at_ten():
    from alignforge.world.tasks import PromptSampler

    def operands(max_number):
        world = build_world(load_config(WorldConfig, None, SMALL + [f"size.max_number={max_number}"]), demos=False)
        sums = [s for split in ("train", "test") for s in PromptSampler(world.facts, split, 4, max_number).sums]
        return {op: (min(min(a, b) for a, o, b in sums if o == op), max(max(a, b) for a, o, b in sums if o == op),
                     sum(1 for _, o, _ in sums if o == op)) for op in ("plus", "minus", "times")}

    # the frozen default: plus 20·20; minus a > b, a − b ≠ b: Σ(a−1) over a = 2..20 = 190, less the 10 even a;
    # the times table 2..10 (81 products)
    assert operands(20) == {"plus": (1, 20, 400), "minus": (1, 20, 180), "times": (2, 10, 81)}
    # a smaller world shrinks the times table with it: 2..5 × 2..5
    small = operands(5)
    assert small["times"] == (2, 5, 16) and small["plus"] == (1, 5, 25) and small["minus"][1] == 5


def test_judge_cli_prints_category_means(tmp_path, capsys):
    out = _generate(tmp_path, "w", 0)
    capsys.readouterr()
    scores = tmp_path / "scores.jsonl"
    assert world_main(["judge", str(out / "sft.jsonl"), "--world", str(out), "--scores", str(scores)]) == 0
    text = capsys.readouterr().out
    for cat in CATEGORIES + ("all",):
        assert re.search(rf"^{cat}\s+\d+\s+-?\d\.\d{{3}}", text, re.M), (cat, text)
    rows = [json.loads(line) for line in scores.read_text().splitlines()]
    assert len(rows) == 200 and all(-3 <= r["reward"] <= 3 for r in rows)
    # the same numbers as judging in-process
    from alignforge.world.core import load_world_config
    from alignforge.world.judge import category_means, judge_batch

    world = build_world(load_world_config(out), corpus=False, demos=False)
    sft = read_records(out / "sft.jsonl")
    means = category_means(judge_batch([d.prompt for d in sft], [d.response for d in sft], world))
    assert f"{means['all']['reward']:.3f}" in text


def test_judge_cli_scores_every_response_of_multi_response_records(tmp_path, capsys):
    out = _generate(tmp_path, "w", 0)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(
        '{"prompt": "What is 2 plus 3?", "chosen": "5", "rejected": "6"}\n'
        '{"prompt": "What is 2 plus 3?", "responses": ["5", "6", "7"], "ranking": [0, 1, 2]}\n'
        '{"prompt": "What is 2 plus 3?", "response": "5", "likert": 7}\n')
    capsys.readouterr()
    assert world_main(["judge", str(mixed), "--world", str(out)]) == 0
    text = capsys.readouterr().out
    # 6 responses: three "5" (3.0) and three wrong (0.0) -> mean 1.5
    assert re.search(r"^arithmetic\s+6\s+1\.500", text, re.M), text


def test_judge_cli_errors_name_the_file(tmp_path, capsys):
    out = _generate(tmp_path, "w", 0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "What is 2 plus 3?", "response": "5"}\n{"prompt": "x", "response": 3}\n')
    assert world_main(["judge", str(bad), "--world", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: field 'response'" in err
    alien = tmp_path / "alien.jsonl"
    alien.write_text('{"prompt": "Write a poem.", "response": "ok"}\n')
    assert world_main(["judge", str(alien), "--world", str(out)]) == 2
    assert "not a prompt of this world" in capsys.readouterr().err
    assert world_main(["nonsense"]) == 2
