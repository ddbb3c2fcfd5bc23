"""The lm-eval-harness adapter (``alignforge.eval.lm_eval``) against hand computations.

Each LM method is checked against a direct, unbatched, unpadded forward of a tiny random model:
loglikelihood = the sum of the continuation tokens' log-probs, rolling = the whole text's
log-likelihood (with the harness's disjoint windows when the text is longer than the model),
generate_until = a greedy loop cut at the ``until`` string. Then the harness's own command line
runs three local tasks (multiple choice, generation, perplexity) from a task folder and data file
written here — no hub, offline — and its logged answers must equal the same hand computations.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="lm-eval is an optional extra: pip install -e '.[eval]' to test the adapter")

import torch  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402

from alignforge.eval.lm_eval import AlignforgeLM  # noqa: E402


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from alignforge.models.load import save_model
    from alignforge.models.tiny import tiny_random_model, tiny_tokenizer

    torch.set_num_threads(1)
    tok = tiny_tokenizer("llama")
    model = tiny_random_model("llama", len(tok), seed=0, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    # Larger random weights than the default init: its near-uniform logits make greedy text one
    # repeated token, and a stop string inside it could only cut at position 0.
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    path = tmp_path_factory.mktemp("lmeval") / "sft"
    save_model(model, tok, path / "model")
    return path


def _req(kind, args, i=0):
    return Instance(request_type=kind, doc={}, arguments=args, idx=i)


def _logprobs(lm, ids):
    """log p(ids[t] | ids[:t]) for t >= 1, from one forward of exactly these ids."""
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([ids])).logits[0]
    lp = torch.log_softmax(logits.double(), -1)
    return [float(lp[t - 1, ids[t]]) for t in range(1, len(ids))], [int(lp[t - 1].argmax()) for t in range(1, len(ids))]


def _direct_ll(lm, context, continuation):
    """Hand computation: tokenise context+continuation once, score the tokens past tok(context)."""
    tok = lm.tokenizer
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    n_ctx = len(tok(context, add_special_tokens=False)["input_ids"])
    assert whole[:n_ctx] == tok(context, add_special_tokens=False)["input_ids"]  # a clean boundary
    ids = [tok.eos_token_id] + whole
    lps, argmax = _logprobs(lm, ids)
    n = len(whole) - n_ctx
    return sum(lps[-n:]), argmax[-n:] == ids[-n:]


def _greedy(lm, context, n=20):
    ids = [lm.tokenizer.eos_token_id] + lm.tokenizer(context, add_special_tokens=False)["input_ids"]
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(lm.model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
            if nxt == lm.tokenizer.eos_token_id:
                break
            out.append(nxt)
    return lm.tokenizer.decode(out, skip_special_tokens=True)


def test_loglikelihood_is_the_continuations_log_prob_from_a_direct_forward(ckpt):
    lm = AlignforgeLM(path=str(ckpt), batch_size=2)  # 2: several batches, rows of different lengths padded
    cases = [("Where does the heron live?", " In Marrowfen"), ("The quick brown fox", " jumps over the lazy dog."),
             ("", "Numbers: 0 1 2"), ("User: what is two plus two?", " Assistant: four.")]
    got = lm.loglikelihood([_req("loglikelihood", c, i) for i, c in enumerate(cases)])
    for (ctx, cont), (lp, greedy) in zip(cases, got):
        want_lp, want_greedy = _direct_ll(lm, ctx, cont)
        assert lp == pytest.approx(want_lp, abs=1e-4) and greedy == want_greedy
        assert lp < 0
    # A context's trailing space belongs to the continuation, as in running text.
    (lp, _), = lm.loglikelihood([_req("loglikelihood", ("The quick brown ", "fox"))])
    assert lp == pytest.approx(_direct_ll(lm, "The quick brown", " fox")[0], abs=1e-4)
    # is_greedy is True exactly when every continuation token is the argmax.
    ctx = "Where does the heron live?"
    ctx_ids = [lm.tokenizer.eos_token_id] + lm.tokenizer(ctx, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        g = int(lm.model(input_ids=torch.tensor([ctx_ids])).logits[0, -1].argmax())
    assert lm.score_tokens([(ctx_ids, [g])])[0][1] is True
    assert lm.score_tokens([(ctx_ids, [(g + 1) % len(lm.tokenizer)])])[0][1] is False


def test_long_contexts_keep_their_last_tokens(ckpt):
    lm = AlignforgeLM(path=str(ckpt), max_length=8)
    ctx, cont = list(range(10, 30)), [40, 41, 42]
    (lp, _), = lm.score_tokens([(ctx, cont)])
    window = (ctx + cont)[-9:]  # 8 inputs predict the last 8 tokens; the last 3 are scored
    assert lp == pytest.approx(sum(_logprobs(lm, window)[0][-3:]), abs=1e-4)
    with pytest.raises(ValueError, match="continuation has no tokens"):
        lm.score_tokens([(ctx, [])])


def test_loglikelihood_rolling_is_the_whole_texts_log_likelihood(ckpt):
    lm = AlignforgeLM(path=str(ckpt), batch_size=3)
    texts = ["The quick brown fox jumps over the lazy dog.", "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000."]
    got = lm.loglikelihood_rolling([_req("loglikelihood_rolling", (t,), i) for i, t in enumerate(texts)])
    for text, lp in zip(texts, got):
        ids = [lm.tokenizer.eos_token_id] + lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert lp == pytest.approx(sum(_logprobs(lm, ids)[0]), abs=1e-4)
    # Longer than the model: the harness's disjoint windows, written out by hand for 10 tokens and
    # max_length 4 (lm_eval's docstring): [P 0 1 2]→0..3, [3 4 5 6]→4..7, [5 6 7 8]→8 9.
    lm4 = AlignforgeLM(path=str(ckpt), max_length=4)
    t = lm.tokenizer("The quick brown fox jumps", add_special_tokens=False)["input_ids"]
    assert len(t) >= 10
    text = lm.tokenizer.decode(t[:10])
    t = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(t) == 10
    P = lm.tokenizer.eos_token_id
    want = (sum(_logprobs(lm, [P] + t[0:4])[0]) + sum(_logprobs(lm, t[3:8])[0])
            + sum(_logprobs(lm, t[5:10])[0][-2:]))
    (got4,) = lm4.loglikelihood_rolling([_req("loglikelihood_rolling", (text,))])
    assert got4 == pytest.approx(want, abs=1e-4)


def test_generate_until_is_greedy_and_stops_at_the_until_string(ckpt):
    lm = AlignforgeLM(path=str(ckpt), batch_size=2)
    contexts = ["Where does the heron live?", "The quick brown fox", "User: what is two plus two?"]
    full = [_greedy(lm, c, 20) for c in contexts]
    # A stop string taken from inside the first greedy answer, so that it really cuts it.
    k = next(k for k in range(2, len(full[0]) - 2) if full[0].find(full[0][k:k + 2]) == k)
    stop = full[0][k:k + 2]
    reqs = [_req("generate_until", (contexts[0], {"until": [stop], "max_gen_toks": 20})),
            _req("generate_until", (contexts[1], {"until": ["\n\n"], "max_gen_toks": 20}), 1),
            _req("generate_until", (contexts[2], {"until": "ZZZ", "max_gen_toks": 20, "do_sample": False}), 2)]
    got = lm.generate_until(reqs)
    assert got[0] == full[0][:k] and len(got[0]) < len(full[0])
    assert got[1] == full[1].split("\n\n")[0]
    assert got[2] == full[2].split("ZZZ")[0]
    with pytest.raises(ValueError, match="'until' must be"):
        lm.generate_until([_req("generate_until", (contexts[0], {"until": [3]}))])


def test_chat_template_text_tokenises_to_the_training_prompt_ids(ckpt):
    from alignforge.data.batching import prompt_ids

    lm = AlignforgeLM(path=str(ckpt))
    text = lm.apply_chat_template([{"role": "user", "content": "What is two plus two?"}])
    assert text.endswith("\n") and "What is two plus two?" in text
    assert lm.tok_encode(text) == prompt_ids(lm.tokenizer, "What is two plus two?")


def test_bad_model_args_are_named(ckpt):
    with pytest.raises(ValueError, match="needs path="):
        AlignforgeLM()
    with pytest.raises(ValueError, match="unknown model_args.*pretraind"):
        AlignforgeLM(path=str(ckpt), pretraind="x")


def _write_tasks(root: Path) -> Path:
    data = root / "data.jsonl"
    docs = [{"question": "Where does the heron live?", "choices": ["In Marrowfen.", "In the sky.", "Nowhere."],
             "gold": 0, "text": "The heron lives in Marrowfen, by the silver river."},
            {"question": "What is two plus two?", "choices": ["four", "five", "three"], "gold": 0,
             "text": "Two plus two is four."},
            {"question": "The quick brown fox", "choices": ["jumps.", "sleeps.", "runs."], "gold": 1,
             "text": "The quick brown fox jumps over the lazy dog."}]
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    tasks = root / "tasks"
    tasks.mkdir()
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (tasks / "af_mc.yaml").write_text(
        "task: af_mc\n" + common + "output_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{gold}}'\nmetric_list:\n  - metric: acc\n")
    (tasks / "af_gen.yaml").write_text(
        "task: af_gen\n" + common + "output_type: generate_until\ndoc_to_text: '{{question}}'\n"
        "doc_to_target: '{{choices[0]}}'\ngeneration_kwargs:\n  until: ['.']\n  max_gen_toks: 12\n"
        "  do_sample: false\nmetric_list:\n  - metric: exact_match\n")
    (tasks / "af_ppl.yaml").write_text(
        "task: af_ppl\n" + common + "output_type: loglikelihood_rolling\ndoc_to_text: ''\n"
        "doc_to_target: '{{text}}'\nmetric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n")
    return tasks


def test_harness_cli_runs_local_tasks_offline(ckpt, tmp_path):
    tasks = _write_tasks(tmp_path)
    out = tmp_path / "results"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "alignforge.eval.lm_eval", "run", "--model", "alignforge",
                           "--model_args", f"path={ckpt}", "--tasks", "af_mc", "af_gen", "af_ppl",
                           "--include_path", str(tasks), "--output_path", str(out), "--log_samples",
                           "--batch_size", "4"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]

    def samples(task):
        return [json.loads(x) for x in next(out.rglob(f"samples_{task}_*.jsonl")).read_text().splitlines()]

    lm = AlignforgeLM(path=str(ckpt))
    docs = [json.loads(x) for x in (tmp_path / "data.jsonl").read_text().splitlines()]
    # Multiple choice: accuracy of the argmax of the hand-computed log-likelihoods of " " + choice.
    hits = [max(range(3), key=lambda c: _direct_ll(lm, d["question"], " " + d["choices"][c])[0]) == d["gold"]
            for d in docs]
    assert results["af_mc"]["acc,none"] == pytest.approx(sum(hits) / len(hits))
    for s in samples("af_mc"):  # and every logged choice's log-likelihood is the hand-computed one
        d = docs[s["doc_id"]]
        for c, resp in enumerate(s["resps"]):
            assert float(resp[0][0]) == pytest.approx(_direct_ll(lm, d["question"], " " + d["choices"][c])[0],
                                                      abs=1e-3)
    # Generation: the greedy answer, cut at the first ".".
    got = {s["doc_id"]: s["resps"][0][0] for s in samples("af_gen")}
    for i, d in enumerate(docs):
        assert got[i] == _greedy(lm, d["question"], 12).split(".")[0]
    # Perplexity: each document's log-likelihood is the whole text's, from one direct forward.
    for s in samples("af_ppl"):
        text = docs[s["doc_id"]]["text"]
        ids = [lm.tokenizer.eos_token_id] + lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert float(s["resps"][0][0]) == pytest.approx(sum(_logprobs(lm, ids)[0]), abs=1e-3)  # logged as text
    assert results["af_ppl"]["bits_per_byte,none"] > 0
