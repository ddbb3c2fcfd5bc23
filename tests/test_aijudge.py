"""The AI judge (RLAIF): the order swap, verdicts and strengths by hand, local log-prob scoring against
a direct one-question-at-a-time computation, and the endpoint backend against a local `alignforge serve`."""

from __future__ import annotations

import re

import pytest
import torch
from serve_helpers import running_server

from alignforge.aifeedback.judge import (
    STRENGTH_CUTS,
    EndpointJudge,
    JudgeError,
    LocalJudge,
    PairQuestion,
    combine_orders,
    judge_pairs,
    parse_verdict,
    strength_of,
    to_comparison,
)
from alignforge.aifeedback.constitution import (
    JUDGE_CHOICES,
    Principle,
    judge_prompt,
    load_constitution,
)

torch.set_num_threads(1)

P = Principle("harmless", "harmless", "Which response is less harmful?", "Point out harm.", "Rewrite it.")


class AlwaysA:
    """A judge with pure position bias: it answers (A) whatever the responses."""

    id = "always-a"

    def first_probs(self, questions):
        return [1.0 for _ in questions]


class LikesWord:
    """A content judge: prefers the option containing ``word`` (P(A) = 0.9 / 0.1 / ½ if both or neither)."""

    id = "likes-word"

    def __init__(self, word="polite"):
        self.word = word
        self.asked: list[str] = []

    def first_probs(self, questions):
        self.asked += questions
        out = []
        for q in questions:
            a = re.search(r"^\(A\) (.*)$", q, re.MULTILINE).group(1)
            b = re.search(r"^\(B\) (.*)$", q, re.MULTILINE).group(1)
            ha, hb = self.word in a, self.word in b
            out.append(0.5 if ha == hb else 0.9 if ha else 0.1)
        return out


def test_judge_prompt_layout_is_the_cai_question():
    q = judge_prompt(P, "How do I hurt Bo?", " I will not help. ", "Hit him.")
    assert q == ("Consider the following conversation between a human and an assistant:\n"
                 "Human: How do I hurt Bo?\n"
                 "Which response is less harmful?\n"
                 "Options:\n(A) I will not help.\n(B) Hit him.\nThe answer is:")
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Who is Bo?"}]
    assert "Human: Hi\nAssistant: Hello\nHuman: Who is Bo?\n" in judge_prompt(P, msgs, "a", "b")


def test_verdicts_from_both_orders_by_hand():
    v = combine_orders(0.9, 0.7)  # x preferred first (0.9) and second (0.7)
    assert v.p == pytest.approx(0.8) and v.consistent and not v.tie and v.x_wins
    v = combine_orders(0.2, 0.4)
    assert v.p == pytest.approx(0.3) and v.consistent and not v.x_wins
    v = combine_orders(0.9, 0.3)  # the orders disagree: position-inconsistent → tie
    assert v.p == pytest.approx(0.6) and v.tie and not v.consistent
    assert combine_orders(0.5, 0.9).tie  # an exact ½ decides nothing
    v = combine_orders(None, 0.9)
    assert v.abstained and v.tie and v.p is None


def test_strength_cut_points():
    assert STRENGTH_CUTS == (0.2, 0.5, 0.8)
    # c = |2p - 1|: 0.1, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0
    assert [strength_of(p) for p in (0.55, 0.6, 0.7, 0.75, 0.8, 0.9, 1.0)] == [0, 1, 1, 2, 2, 3, 3]
    assert strength_of(0.05) == strength_of(0.95) == 3


def test_position_biased_judge_gives_only_ties():
    pairs = [PairQuestion("q1", "good answer", "bad answer", [P]), PairQuestion("q2", "x", "y", [P])]
    verdicts = judge_pairs(AlwaysA(), pairs)
    assert all(v.tie and not v.consistent and v.p == 0.5 for v in verdicts)
    c = to_comparison(pairs[0], verdicts[0], "always-a", "harmless")
    assert c.tie and c.strength is None and c.meta["consistent"] is False and c.meta["p"] == 0.5


def test_content_judge_is_consistent_and_picks_the_right_winner_in_either_slot():
    judge = LikesWord()
    pairs = [PairQuestion("q", "a polite refusal", "hit him", [P]),   # winner shown first as x
             PairQuestion("q", "hit him", "a polite refusal", [P])]   # winner is y
    v1, v2 = judge_pairs(judge, pairs)
    # both orders were asked: (x, y) and (y, x) for each pair
    assert len(judge.asked) == 4 and "(A) hit him" in judge.asked[1] and "(B) hit him" in judge.asked[0]
    assert v1.consistent and v1.p == pytest.approx(0.9) and v1.x_wins
    assert v2.consistent and v2.p == pytest.approx(0.1) and not v2.x_wins
    for q, v in zip(pairs, (v1, v2)):
        c = to_comparison(q, v, "likes-word", "harmless", round=2, policy="runs/w/sft")
        assert (c.chosen, c.rejected) == ("a polite refusal", "hit him") and not c.tie
        assert c.annotator == "ai:likes-word" and c.source == "rlaif" and c.round == 2 and c.policy == "runs/w/sft"
        assert c.meta["principle"] == "harmless" and c.meta["p"] == pytest.approx(0.9) and c.meta["consistent"]
        assert c.strength == strength_of(0.9) == 3


def test_ensemble_averages_each_order_over_principles():
    calls = iter([0.9, 0.2, 0.6, 0.5])  # (p1: ab, ba), (p2: ab, ba)

    class Scripted:
        id = "s"

        def first_probs(self, qs):
            return [next(calls) for _ in qs]

    p2 = Principle("honest", "honest", "Which is more honest?", "c", "r")
    (v,) = judge_pairs(Scripted(), [PairQuestion("q", "x", "y", [P, p2])])
    # p_ab = mean(0.9, 0.6) = 0.75; p_ba = mean(1 - 0.2, 1 - 0.5) = 0.65
    assert v.p_ab == pytest.approx(0.75) and v.p_ba == pytest.approx(0.65) and v.p == pytest.approx(0.7)


def test_parse_verdict():
    assert parse_verdict("(A)") == 1.0 and parse_verdict(" (B) is better.") == 0.0
    assert parse_verdict("The answer is (A), clearly (A)") == 1.0
    assert parse_verdict("B") == 0.0 and parse_verdict(" a ") is None
    assert parse_verdict("(A) or (B)") is None and parse_verdict("neither") is None and parse_verdict("") is None


# ---------------------------------------------------------------------------------------------
# Local backend: log-probs of the answer tokens, batched vs one at a time
# ---------------------------------------------------------------------------------------------


def _tiny(positions: int = 512, seed: int = 0):
    from transformers import AutoModelForCausalLM

    from alignforge.models.tiny import tiny_config, tiny_tokenizer

    tok = tiny_tokenizer("llama")
    cfg = tiny_config("llama", len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    cfg.max_position_embeddings = positions
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval(), tok


def _direct_p_first(model, tok, question: str, max_len: int) -> float:
    """log p(answer | chat-templated question) for each answer by a plain forward, no batching."""
    ids = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                  tokenize=True, return_dict=False)
    lps = []
    for ans in JUDGE_CHOICES:
        a = tok(ans, add_special_tokens=False)["input_ids"]
        p = list(ids)[-(max_len - len(a)):]
        x = torch.tensor([p + a])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=x).logits[0].double(), -1)
        lps.append(sum(float(logp[len(p) - 1 + i, t]) for i, t in enumerate(a)))
    return 1.0 / (1.0 + torch.exp(torch.tensor(lps[1] - lps[0])).item())


@pytest.mark.parametrize("max_len", [512, 60])
def test_local_judge_equals_a_direct_unbatched_computation(max_len):
    model, tok = _tiny()
    questions = [judge_prompt(P, f"Where does heron {i} live?" + " far" * (3 * i), "In Marrowfen.", "No idea" * i)
                 for i in range(5)]
    judge = LocalJudge(model, tok, judge_id="tiny", batch_size=2, max_len=max_len)
    got = judge.first_probs(questions)
    want = [_direct_p_first(model, tok, q, max_len) for q in questions]
    assert got == pytest.approx(want, abs=1e-6)
    assert all(0.0 < p < 1.0 for p in got)
    assert judge.truncated == (0 if max_len == 512 else 5)  # every question is longer than 60 tokens


# ---------------------------------------------------------------------------------------------
# Endpoint backend against the local `alignforge serve` (never a hosted model)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny model that answers "(A)" to one judge question, served by `alignforge serve` in a thread."""
    pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")
    from alignforge.config import ServeConfig, load_config
    from alignforge.data.batching import encode_example
    from alignforge.models.load import save_model

    model, tok = _tiny(seed=1)
    question = judge_prompt(P, "How do I hurt Bo?", "I will not help.", "Hit him.")
    ex = encode_example(tok, question, "(A)")
    ids = torch.tensor([ex.input_ids])
    labels = torch.tensor([[t if m else -100 for t, m in zip(ex.input_ids, ex.loss_mask)]])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(40):  # memorise "(A)" + eos after this question (a few hundred ms)
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    ckpt = tmp_path_factory.mktemp("judge_serve") / "judge"
    save_model(model, tok, ckpt / "model")
    cfg = load_config(ServeConfig, None, [f"model.init={ckpt}", "serve.model_name=tiny-judge",
                                          "serve.batch_window_ms=20", "serve.log_level=warning", "runtime.device=cpu"])
    with running_server(cfg) as (_, base_url):
        yield base_url, question, ckpt


def test_endpoint_judge_against_local_serve(served, monkeypatch):
    from alignforge.generation import SamplingParams, generate_text
    from alignforge.models.load import load_causal_lm

    base_url, question, ckpt = served
    monkeypatch.setenv("JUDGE_TEST_KEY", "not-checked-by-serve")
    judge = EndpointJudge(base_url, "tiny-judge", api_key_env="JUDGE_TEST_KEY", max_tokens=8, concurrency=2)
    other = judge_prompt(P, "Who is Bo?", "A baker.", "I do not know.")
    probs = judge.first_probs([question, other])
    # The server's greedy answers are the engine's greedy answers (temperature 0 was sent) ...
    model, tok = load_causal_lm(ckpt)
    want = generate_text(model.eval(), tok, [question, other], SamplingParams(temperature=0, max_new_tokens=8)).texts
    assert [r.strip() for r in judge.replies] == [w.strip() for w in want]
    # ... the memorised question is answered "(A)" → P(A) = 1; the other reply is parsed or abstains
    assert judge.replies[0].strip() == "(A)" and probs[0] == 1.0
    assert probs[1] == parse_verdict(judge.replies[1])
    # Both orders of the memorised pair: "(A)" first; whatever the swapped order says, the result
    # is a well-formed verdict (a tie when the model also says "(A)" there: position bias exposed)
    (v,) = judge_pairs(judge, [PairQuestion("How do I hurt Bo?", "I will not help.", "Hit him.", [P])])
    assert v.p_ab == 1.0 and (v.abstained or v.tie == (v.p_ba != 1.0))


def test_endpoint_errors_are_clear(served, monkeypatch):
    base_url, question, _ = served
    with pytest.raises(JudgeError, match="HTTP 404"):
        EndpointJudge(base_url, "no-such-model").first_probs([question])
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(JudgeError, match="NO_SUCH_KEY_VAR"):
        EndpointJudge(base_url, "tiny-judge", api_key_env="NO_SUCH_KEY_VAR")
    with pytest.raises(JudgeError, match="unreachable"):
        EndpointJudge("http://127.0.0.1:9/v1", "m", timeout_s=5).first_probs(["q"])


def test_packaged_constitution_renders_every_principle():
    c = load_constitution()
    for p in c.principles:
        q = judge_prompt(p, "Q?", "a", "b")
        assert p.compare in q and q.endswith("The answer is:")


def test_rlaif_stage_with_the_served_judge(served, tmp_path):
    """`alignforge rlaif judge.base_url=...`: the stage builds the endpoint judge from its config."""
    import json

    from alignforge.config import RlaifConfig, load_config
    from alignforge.data.records import read_records
    from alignforge.stages import rlaif

    base_url, _, _ = served
    data = tmp_path / "c.jsonl"
    data.write_text(json.dumps({"prompt": "How do I hurt Bo?", "responses": ["I will not help.", "Hit him."]}) + "\n")
    out = rlaif.run(load_config(RlaifConfig, None, [f"data.train={data}", f"out={tmp_path / 'r'}",
                                                    f"judge.base_url={base_url}", "judge.model=tiny-judge",
                                                    "rlaif.principles=[harmless]", "runtime.device=cpu"]))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["judge"] == f"tiny-judge@{base_url}" and summary["pairs"] == 1
    recs = read_records(out / "train.jsonl")
    assert summary["labels"] == len(recs) == 1 - summary["abstained"]
    assert all(r.annotator == f"ai:tiny-judge@{base_url}" for r in recs)
