"""The pretrain stage end to end on tiny sizes: accumulation ≡ big batch through the real loop,
a tokenizer trained when none is given, outputs loadable by plain transformers, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from alignforge.stages import pretrain
from alignforge.train.testing import TINY_MODEL, tiny_corpus, tiny_pretrain_args


def _w(out):
    return load_file(str(out / "model" / "model.safetensors"))


def test_stage_grad_accumulation_4x4_equals_batch_16(tmp_path):
    torch.set_num_threads(1)
    kw = dict(max_steps=1, warmup_steps=0, save_every=0, eval_every=0)
    a, b = tmp_path / "b16", tmp_path / "b4x4"
    assert pretrain.main(tiny_pretrain_args(tmp_path / "d", a, batch_size=16, grad_accum=1, **kw)) == 0
    assert pretrain.main(tiny_pretrain_args(tmp_path / "d", b, batch_size=4, grad_accum=4, **kw)) == 0
    ra = json.loads((a / "metrics.jsonl").read_text())
    rb = json.loads((b / "metrics.jsonl").read_text())
    assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-6)
    assert rb["grad_norm"] == pytest.approx(ra["grad_norm"], rel=1e-5)
    assert rb["tokens"] == ra["tokens"] == 16 * 32
    wa, wb = _w(a), _w(b)
    for k in wa:  # Adam's first step amplifies rounding for |g| < eps: see test_train_loop
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=5e-3 * 3e-3, msg=k)


def test_trains_a_tokenizer_and_saves_a_plain_hf_model(tmp_path):
    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    paths = tiny_corpus(tmp_path / "d")
    out = tmp_path / "run"
    args = [a for a in tiny_pretrain_args(tmp_path / "d", out, max_steps=3, eval_every=0, save_every=0)
            if not a.startswith("model.tokenizer=")] + ["model.vocab_size=290"]
    assert pretrain.main(args) == 0
    tok = AutoTokenizer.from_pretrained(out / "model", local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(out / "model", local_files_only=True)
    assert len(tok) == 290 and tok.eos_token == "<|end|>"
    assert (out / "tokenizer" / "tokenizer.json").is_file()  # reused on resume
    text = json.loads(paths["eval"].read_text().splitlines()[0])["text"]
    assert tok.decode(tok(text)["input_ids"]) == text
    ids = torch.tensor([tok(text)["input_ids"]])
    ours = _w(out)
    assert torch.equal(model.state_dict()["model.embed_tokens.weight"], ours["model.embed_tokens.weight"])
    assert model(ids).logits.shape == (1, ids.shape[1], 290)
    cfg = (out / "config.yaml").read_text()
    assert "vocab_size: 290" in cfg and "hidden_size: 32" in cfg
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "mfu", "eval_bpb"} <= set(rows[-1])
    # n-gram baselines on the same held-out text, in the same unit (bits per byte)
    base = json.loads((out / "baselines.json").read_text())
    assert set(base) == {"model", "bytes-1gram-add_k", "bytes-3gram-kn", "bytes-5gram-kn",
                         "tokens-1gram-add_k", "tokens-3gram-kn", "tokens-5gram-kn", "params"}
    assert base["params"] == {"model": sum(p.numel() for p in model.parameters())}
    assert base["model"] == pytest.approx(rows[-1]["eval_bpb"], rel=1e-6)
    assert base["bytes-3gram-kn"] < base["bytes-1gram-add_k"]  # context helps a count model too

    # continue training from it (model.init = the stage folder: model and tokenizer found inside)
    out2 = tmp_path / "cont"
    args2 = [a for a in tiny_pretrain_args(tmp_path / "d", out2, max_steps=2, eval_every=0, save_every=0)
             if not a.startswith(("model.tokenizer=", "model.overrides="))] + [f"model.init={out}"]
    assert pretrain.main(args2) == 0
    assert _w(out2).keys() == ours.keys()


def test_max_minutes_stops_and_saves(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    assert pretrain.main(tiny_pretrain_args(tmp_path / "d", out, max_steps=1000, max_minutes=0.0)) == 0
    done = json.loads((out / "DONE").read_text())
    assert done["stopped"] == "max_minutes" and done["step"] == 1
    assert json.loads((out / "state" / "trainer.json").read_text())["step"] == 1


def test_clear_errors(tmp_path, capsys):
    assert pretrain.main([f"out={tmp_path / 'x'}", "runtime.device=cpu"]) == 2
    assert "pretrain needs data.train" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"txt": "typo"}\n')
    assert pretrain.main([f"data.train={bad}", f"out={tmp_path / 'y'}", "runtime.device=cpu"]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2" in err and "text" in err
    assert pretrain.main(["train.lr=fast"]) == 2
    assert "train.lr" in capsys.readouterr().err
    assert pretrain.main([f"model.overrides={TINY_MODEL}", "model.presett=tiny-1m"]) == 2
    assert "Did you mean 'model.preset'" in capsys.readouterr().err


def test_chat_dialogues_lay_out_a_dialogue_exactly_as_sft_encodes_it():
    """pretrain.chat_dialogues: a world dialogue record becomes the SFT layout (chat-template prompt
    with the assistant header, then the answer; packing adds the eos), other records stay text."""
    from alignforge.data.batching import prompt_ids, response_ids
    from alignforge.data.records import TextRecord
    from alignforge.data.text import chat_document, document_texts
    from alignforge.models.tiny import tiny_tokenizer
    from alignforge.world.corpus import dialogue_document, dialogue_messages

    tok = tiny_tokenizer("llama")
    doc = dialogue_document("What is 3 plus 4?", "3 plus 4 is 7.")
    records = [TextRecord(text=doc, meta={"messages": dialogue_messages(doc)}), TextRecord(text="Mozux is red.")]
    plain = document_texts(records)
    chat = document_texts(records, tok)
    assert plain == [doc, "Mozux is red."] and chat[1] == "Mozux is red."
    ids = tok(chat[0], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert ids == prompt_ids(tok, "What is 3 plus 4?") + response_ids(tok, "3 plus 4 is 7.")
    with pytest.raises(ValueError, match="assistant"):
        chat_document(tok, [{"role": "user", "content": "hi"}])
