"""The LSTM LM baseline (alignforge.classic.rnn): bits per byte against a hand-computed value and a
step-by-step reference, its loss against a hand cross-entropy, learning on a toy corpus, exact resume
after a kill, and its row in the pretraining stage's baselines.json."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignforge.classic import rnn
from alignforge.classic.ngram import NGramLM, bits_per_byte, byte_encoder
from alignforge.classic.rnn import LSTMLM, LSTMTrainConfig, lstm_bits_per_byte, train_lstm_lm, window_loss

TEXTS = ["the cat sat on the mat. ", "a dog sat on a log. ", "the cat saw the dog. "]


def test_a_uniform_lstm_scores_log2_vocab_bits_per_token():
    """Zero readout ⇒ uniform over V = 256 bytes ⇒ 8 bits per byte exactly, whatever the LSTM computes."""
    torch.manual_seed(0)
    lm = LSTMLM(256, embed=8, hidden=16)
    with torch.no_grad():
        lm.readout.weight.zero_()
        lm.readout.bias.zero_()
    encode, _ = byte_encoder()
    assert lstm_bits_per_byte(lm, TEXTS, encode) == pytest.approx(math.log2(256), rel=1e-6)


def test_bits_per_byte_equals_a_token_by_token_reference():
    """Batched, padded, length-sorted scoring = feeding each document one token at a time from a fresh
    state after BOS and summing −log2 softmax by hand (the padding and BOS handling cannot leak)."""
    torch.manual_seed(1)
    lm = LSTMLM(256, embed=8, hidden=16, layers=2).eval()
    encode, _ = byte_encoder()
    texts = TEXTS + ["x", "é and ü are two bytes each"]
    bits = 0.0
    with torch.no_grad():
        for t in texts:
            state, prev = None, lm.bos
            for tok in encode(t):
                logits, state = lm(torch.tensor([[prev]]), state)
                bits -= torch.log_softmax(logits[0, -1].double(), -1)[tok].item() / math.log(2)
                prev = tok
    ref = bits / sum(len(t.encode("utf-8")) for t in texts)
    assert lstm_bits_per_byte(lm, texts, encode, batch_size=2) == pytest.approx(ref, rel=1e-5)


def test_window_loss_is_cross_entropy_that_never_targets_bos():
    torch.manual_seed(2)
    lm = LSTMLM(10, embed=4, hidden=8)
    windows = torch.tensor([[10, 1, 2, 10, 3], [4, 5, 10, 6, 7]])  # 10 = BOS
    logits, _ = lm(windows[:, :-1])
    logp = torch.log_softmax(logits, -1)
    terms = [-logp[b, t, windows[b, t + 1]] for b in range(2) for t in range(4) if windows[b, t + 1] != 10]
    assert len(terms) == 6
    assert window_loss(lm, windows).item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-6)


def test_it_learns_the_toy_corpus_better_than_a_unigram():
    torch.set_num_threads(1)
    encode, V = byte_encoder()
    docs = [encode(t) for t in TEXTS * 20]
    cfg = LSTMTrainConfig(steps=80, embed=16, hidden=64, seq_len=32, batch_size=8, lr=1e-2, warmup_steps=5,
                          save_every=0)
    lm, info = train_lstm_lm(docs, V, cfg)
    assert info == {"steps": 80, "seconds": info["seconds"], "stopped": "steps"}
    unigram = bits_per_byte(NGramLM(1, V, "add_k").fit(docs), TEXTS, encode)
    ours = lstm_bits_per_byte(lm, TEXTS, encode)
    # A unigram cannot go below the corpus's byte entropy (~4 bits); the sentences are a few bits
    # of choice each, so a model that learnt the sequences is far below half of it.
    assert ours < 0.5 * unigram, (ours, unigram)


def test_a_killed_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    encode, V = byte_encoder()
    docs = [encode(t) for t in TEXTS * 4]
    cfg = LSTMTrainConfig(steps=6, embed=8, hidden=16, seq_len=16, batch_size=4, save_every=3, warmup_steps=2)
    whole, _ = train_lstm_lm(docs, V, cfg, state_dir=tmp_path / "a")

    clip = torch.nn.utils.clip_grad_norm_
    calls = {"n": 0}

    def dies_at_step_5(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # killed mid-step, after the state saved at step 3
        return clip(*a, **k)

    monkeypatch.setattr(rnn.nn.utils, "clip_grad_norm_", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train_lstm_lm(docs, V, cfg, state_dir=tmp_path / "b")
    monkeypatch.setattr(rnn.nn.utils, "clip_grad_norm_", clip)
    assert torch.load(tmp_path / "b" / rnn.STATE_FILE, weights_only=False)["step"] == 3
    resumed, info = train_lstm_lm(docs, V, cfg, state_dir=tmp_path / "b")
    assert info["steps"] == 6
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    # A state saved under other settings is refused, not silently continued.
    with pytest.raises(ValueError, match="rnn settings"):
        train_lstm_lm(docs, V, LSTMTrainConfig(**{**cfg.__dict__, "hidden": 32}), state_dir=tmp_path / "b")


def test_too_little_text_is_a_clear_error():
    with pytest.raises(ValueError, match="fewer than one window"):
        train_lstm_lm([[1, 2, 3]], 8, LSTMTrainConfig(steps=1, seq_len=16))


def test_pretrain_writes_the_lstm_row_beside_the_ngrams(tmp_path, capsys):
    from alignforge.stages import pretrain
    from alignforge.train.testing import tiny_pretrain_args

    torch.set_num_threads(1)
    out = tmp_path / "run"
    args = tiny_pretrain_args(tmp_path / "d", out, max_steps=2, eval_every=0, save_every=0)
    assert pretrain.main(args + ["rnn.steps=3", "rnn.hidden=16", "rnn.embed=8", "rnn.seq_len=16",
                                 "rnn.batch_size=2", "baselines=[1]"]) == 0
    base = json.loads((out / "baselines.json").read_text())
    assert set(base) == {"model", "bytes-1gram-add_k", "tokens-1gram-add_k", "tokens-lstm-1x16", "params"}
    assert set(base["params"]) == {"model", "tokens-lstm-1x16"}
    from transformers import AutoTokenizer

    V, E, H = len(AutoTokenizer.from_pretrained(out / "model", local_files_only=True)), 8, 16
    # embedding (V + BOS) · E, the LSTM's four gates 4H·(E + H) + two biases 8H, readout H·V + V
    assert base["params"]["tokens-lstm-1x16"] == (V + 1) * E + 4 * H * (E + H) + 8 * H + H * V + V
    assert (out / "rnn" / rnn.STATE_FILE).is_file()
    assert json.loads((out / "DONE").read_text())["rnn"]["steps"] == 3
    # Bad settings are config errors naming the key.
    assert pretrain.main(args + ["rnn.hidden=0", f"out={tmp_path / 'x'}"]) == 2
    assert "rnn.hidden" in capsys.readouterr().err
