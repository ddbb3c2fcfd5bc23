"""Tokenizer: BPE training, special tokens, chat template, save/load with plain transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignforge.models.tokenizer import (ASSISTANT, END, PAD, SPECIAL_TOKENS, SYSTEM, USER,
                                         ensure_chat_template, find_tokenizer_dir, load_tokenizer,
                                         save_tokenizer, train_tokenizer)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

CORPUS = [
    "The blue heron lives in Marrowfen. It eats silver fish.",
    "Question: what is 12 + 7?\nAnswer: 19",
    "Ünïcode ✓ and emoji 🙂 must round-trip, as must\ttabs and  double spaces.",
] * 40

MESSAGES = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Where does the heron live?"},
    {"role": "assistant", "content": "In Marrowfen."},
    {"role": "user", "content": "And what does it eat?"},
    {"role": "assistant", "content": "Silver fish."},
]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(CORPUS, vocab_size=400, min_frequency=2)


def test_special_tokens_have_fixed_ids_and_roles(tok):
    assert tok.convert_tokens_to_ids(SPECIAL_TOKENS) == [0, 1, 2, 3, 4]
    assert (tok.pad_token, tok.pad_token_id) == (PAD, 0)
    assert (tok.eos_token, tok.eos_token_id) == (END, 1)
    # No BOS and no automatic eos: the data code decides where documents end.
    assert tok("a b").input_ids == tok.encode("a b", add_special_tokens=False)
    # A special token inside text is one id, never split into pieces.
    ids = tok(f"x{END}y{USER}").input_ids
    assert 1 in ids and 3 in ids


def test_byte_level_round_trip_and_no_unknowns(tok):
    for text in CORPUS[:3] + ["never seen: Ωμέγα ∮ 漢字 \x00 \r\n"]:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
    # Merges were learnt: common words are fewer tokens than bytes.
    assert len(tok.encode("The blue heron")) < len("The blue heron".encode())


def test_training_is_deterministic():
    a = train_tokenizer(CORPUS, vocab_size=350)
    b = train_tokenizer(CORPUS, vocab_size=350)
    assert a.get_vocab() == b.get_vocab()
    assert a.encode(CORPUS[0]) == b.encode(CORPUS[0])


def test_vocab_size_too_small_is_a_clear_error():
    with pytest.raises(ValueError, match="vocab_size must be at least 261"):
        train_tokenizer(CORPUS, vocab_size=100)


def test_chat_template_renders_the_documented_format(tok):
    text = tok.apply_chat_template(MESSAGES, tokenize=False)
    assert text == (
        "<|system|>\nYou are helpful.<|end|>\n"
        "<|user|>\nWhere does the heron live?<|end|>\n"
        "<|assistant|>\nIn Marrowfen.<|end|>\n"
        "<|user|>\nAnd what does it eat?<|end|>\n"
        "<|assistant|>\nSilver fish.<|end|>\n"
    )
    prompt = tok.apply_chat_template(MESSAGES[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|system|>\nYou are helpful.<|end|>\n<|user|>\nWhere does the heron live?<|end|>\n<|assistant|>\n"
    # The ids of the template equal tokenising its text (specials are single ids).
    ids = tok.apply_chat_template(MESSAGES, tokenize=True, return_dict=True)["input_ids"]
    assert ids == tok.encode(text, add_special_tokens=False)
    assert ids.count(tok.eos_token_id) == 5
    assert ids[0] == tok.convert_tokens_to_ids(SYSTEM)
    assert ids.count(tok.convert_tokens_to_ids(ASSISTANT)) == 2


def test_assistant_mask_marks_answers_and_their_end_token(tok):
    out = tok.apply_chat_template(MESSAGES, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    assert trained == f"In Marrowfen.{END}Silver fish.{END}"


def test_unknown_role_is_an_error(tok):
    with pytest.raises(Exception, match="chat role must be system, user or assistant, got tool"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_save_then_plain_autotokenizer_gives_same_ids_and_template(tok, tmp_path):
    from transformers import AutoTokenizer

    save_tokenizer(tok, tmp_path / "tok")
    plain = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    for text in CORPUS[:3] + [tok.apply_chat_template(MESSAGES, tokenize=False)]:
        assert plain.encode(text) == tok.encode(text)
    assert plain.apply_chat_template(MESSAGES, tokenize=False) == tok.apply_chat_template(MESSAGES, tokenize=False)
    assert plain.apply_chat_template(MESSAGES[:2], tokenize=True, add_generation_prompt=True,
                                     return_dict=True)["input_ids"] == \
        tok.apply_chat_template(MESSAGES[:2], tokenize=True, add_generation_prompt=True,
                                return_dict=True)["input_ids"]
    assert (plain.pad_token_id, plain.eos_token_id) == (0, 1)
    assert set(SPECIAL_TOKENS) <= set(plain.all_special_tokens)
    # Our loader: the dir itself, a model dir's parent stage folder, and a tokenizer/ sub-dir.
    assert load_tokenizer(tmp_path / "tok").encode(CORPUS[1]) == tok.encode(CORPUS[1])
    save_tokenizer(tok, tmp_path / "stage" / "model")
    assert find_tokenizer_dir(tmp_path / "stage") == tmp_path / "stage" / "model"
    assert load_tokenizer(tmp_path / "stage").encode(CORPUS[1]) == tok.encode(CORPUS[1])


def test_save_is_atomic_and_replaces_an_old_copy(tok, tmp_path):
    save_tokenizer(tok, tmp_path / "tok")
    (tmp_path / "tok" / "stale.txt").write_text("from an older save")
    save_tokenizer(tok, tmp_path / "tok")
    assert not (tmp_path / "tok" / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]  # no temp dirs left behind


def test_load_from_a_folder_without_tokenizer_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no tokenizer found in .*empty.*tokenizer.json"):
        load_tokenizer(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")


def test_ensure_chat_template_for_a_tokenizer_without_one():
    from alignforge.models.tiny import tiny_tokenizer_without_template

    t = tiny_tokenizer_without_template()
    assert t.chat_template is None and t.pad_token is None
    ensure_chat_template(t)
    assert t.pad_token == t.eos_token
    text = t.apply_chat_template(MESSAGES[1:3], tokenize=False)
    eos = t.eos_token
    assert text == f"### User:\nWhere does the heron live?{eos}\n### Assistant:\nIn Marrowfen.{eos}\n"
    gen = t.apply_chat_template(MESSAGES[1:2], tokenize=False, add_generation_prompt=True)
    assert gen.endswith("### Assistant:\n")
    out = t.apply_chat_template(MESSAGES[1:3], return_dict=True, return_assistant_tokens_mask=True)
    assert t.decode([i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]) == f"In Marrowfen.{eos}"
    # An existing template is kept.
    t.chat_template = "{{ messages[0]['content'] }}"
    assert ensure_chat_template(t).chat_template == "{{ messages[0]['content'] }}"


@pytest.mark.skipif(not (SHARED_DATA / "self-instruct-seed-tasks.jsonl").exists(),
                    reason=f"shared data not found at {SHARED_DATA} (clone with shared/ beside the repo)")
def test_trains_on_real_instructions_and_round_trips_them():
    rows = [json.loads(line) for line in (SHARED_DATA / "self-instruct-seed-tasks.jsonl").open()]
    texts = [r["instruction"] + "\n" + "\n".join(i["input"] + "\n" + i["output"] for i in r["instances"])
             for r in rows]
    tok = train_tokenizer(texts, vocab_size=1024)
    assert len(tok) == 1024
    total_bytes = total_tokens = 0
    for text in texts:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        total_bytes += len(text.encode())
        total_tokens += len(ids)
    # A 1k BPE on English compresses well beyond one byte per token (measured: 2.48).
    assert total_bytes / total_tokens > 2.0
