"""The world's critique → revision demonstrations (Constitutional AI, supervised phase): specific
critiques, oracle revisions, already-fine answers left unchanged, train prompts only, and files
that ``alignforge sft`` reads (alone and appended to sft.jsonl) with loss on the taught turns only."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from alignforge.config import load_config
from alignforge.aifeedback.constitution import CRITIQUE_REQUEST, REVISION_REQUEST, load_constitution
from alignforge.data.records import Demonstration, read_records
from alignforge.world import WorldConfig, build_world
from alignforge.world.critiques import HARM_DOES, critique_demonstrations, critique_examples
from alignforge.world.tasks import REFUSAL, content_split

SMALL = ["size.people=30", "size.places=20", "size.creatures=20", "prompts.train=60", "prompts.test=30",
         "prompts.sft=200", "text.arithmetic_docs=20", "text.dialogue_docs=20", "text.heldout_docs=20"]


@pytest.fixture(scope="module")
def world():
    return build_world(load_config(WorldConfig, None, SMALL), corpus=False)


@pytest.fixture(scope="module")
def examples(world):
    return critique_examples(world, 400)


def test_every_kind_of_flaw_and_fine_answers_occur_under_every_principle(examples):
    flaws = Counter(e.flaw for e in examples)
    assert set(flaws) == {"comply", "moralize", "invent", "wrong_value", "over_refuse", "none"}
    assert 0.3 < flaws["none"] / len(examples) < 0.5  # FLAWED = 0.6 (a few "wrong" numbers clip back to right)
    assert {e.principle for e in examples} == set(load_constitution().names())
    assert {e.category for e in examples} == {"harmful", "unknown", "fact", "arithmetic", "benign"}


def test_critiques_are_specific_and_revisions_are_the_oracle(world, examples):
    for e in examples:
        task = world.task(e.prompt)
        if e.flaw == "none":
            assert e.critique.startswith("The response is fine") and e.revision == e.answer
            if task.category in ("fact", "arithmetic"):
                assert task.answer in e.critique  # "fine" names the right value too
            continue
        assert f'"{e.answer}"' in e.critique  # quotes the answer it faults
        assert e.revision == world.oracle(e.prompt) != e.answer
        if e.flaw == "comply":
            assert HARM_DOES[task.subtype].format(name=task.subject) in e.critique and e.revision == REFUSAL
        elif e.flaw == "invent":
            assert f"the {task.phrase} of {task.subject}" in e.critique and "made up" in e.critique
            assert e.revision.startswith("I do not know")
        elif e.flaw == "wrong_value":
            assert f" is {task.answer}, not" in e.critique and task.answer not in e.answer.split()
        elif e.flaw == "over_refuse":
            assert task.subject in e.critique and task.category == "benign"


def test_only_train_prompts(world, examples):
    facts = world.facts
    test_prompts = {p.prompt for p in world.prompts["test"]}
    for e in examples:
        assert e.prompt not in test_prompts
        task = world.task(e.prompt)
        if task.category == "arithmetic":
            x = task.extra
            assert content_split(f"arith:{x['a']}:{x['op']}:{x['b']}") == "train"
        elif task.subject in facts.entities:
            assert facts.split_of[task.subject] == "train", e.prompt
        else:
            assert task.subject in facts.unknown["train"], e.prompt


def test_two_demonstrations_per_exchange_through_the_shared_builder(world, examples):
    demos = critique_demonstrations(world, examples[:5])
    assert len(demos) == 10
    for e, (c, r) in zip(examples, zip(demos[::2], demos[1::2])):
        assert c.prompt[0] == {"role": "user", "content": e.prompt}
        assert c.prompt[1] == {"role": "assistant", "content": e.answer}  # the flawed answer: context, never a target
        principle = load_constitution().get(e.principle)
        assert c.prompt[2] == {"role": "user", "content": CRITIQUE_REQUEST + principle.critique}
        assert c.response == e.critique and r.response == e.revision
        assert r.prompt[:3] == c.prompt and r.prompt[3] == {"role": "assistant", "content": e.critique}
        assert r.prompt[4]["content"] == REVISION_REQUEST + principle.revision
        assert c.meta == {"principle": e.principle, "flaw": e.flaw, "turn": "critique"}


def test_world_writes_the_files_and_sft_reads_them(tmp_path, world):
    from alignforge.data.batching import encode_example
    from alignforge.data.formats import load_dataset_records
    from alignforge.models.tokenizer import train_tokenizer

    manifest = world.write(tmp_path)
    n = len(world.critiques)
    assert n == 2 * round(0.25 * 200)
    assert manifest["files"]["critique_sft"] == {"path": "critique_sft.jsonl", "records": n}
    assert manifest["files"]["sft_critique"] == {"path": "sft_critique.jsonl", "records": 200 + n}
    both = load_dataset_records(tmp_path / "sft_critique.jsonl", kind="demonstration")  # what `alignforge sft` reads
    assert len(both) == 200 + n and all(isinstance(d, Demonstration) for d in both)
    assert [d.to_dict() for d in both[200:]] == [d.to_dict() for d in read_records(tmp_path / "critique_sft.jsonl")]
    # deterministic in the seed
    assert [d.to_dict() for d in build_world(world.cfg, corpus=False).critiques] == [d.to_dict() for d in both[200:]]
    # SFT's loss lands on the critique (resp. revision) tokens + eos only, never on the flawed answer
    tok = train_tokenizer([json.dumps(d.to_dict()) for d in both[:80]], vocab_size=400)
    for d in both[200:204]:
        ex = encode_example(tok, d.prompt, d.response)
        target = [t for t, m in zip(ex.input_ids, ex.loss_mask) if m]
        assert target == tok(d.response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
