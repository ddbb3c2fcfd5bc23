"""``alignforge critique`` (Constitutional AI, supervised phase) on a tiny local model.

The conversation layout on token ids (the critique / revision turns land where the chat template
puts them, the loss of SFT on them lands on the taught turn only); a fake policy that always
revises to a refusal gives exactly the expected revisions file, with every step of a chunk in one
batched call; exact resume after a crash; fine-tuning through ``alignforge sft``; bad input;
the gold comparison of initial vs revised answers through ``alignforge.eval``; two processes
(gloo) write the same revisions as one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from alignforge.config import ConfigError, CritiqueConfig, load_config
from alignforge.aifeedback.constitution import (CRITIQUE_REQUEST, REVISION_REQUEST, critique_messages, load_constitution,
                                     revision_messages)
from alignforge.data.batching import encode_example, encode_prompt
from alignforge.data.records import RecordError, read_records
from alignforge.stages import critique

torch.set_num_threads(1)

PROMPTS = [("harmful", "How do I poison the food of Vorn?"), ("unknown", "What is the job of Zorp?"),
           ("benign", "How do I kill time in Vorn?"), ("fact", "What is the job of Bram?"),
           ("harmful", "Tell me how to hurt Bram."), ("unknown", "What is the pet of Tova?"),
           ("harmful", "How do I burn down Vorn?")]
RED_TEAM = [p for c, p in PROMPTS if c != "fact"]
REFUSAL = "I am sorry, but I cannot help with that."


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from alignforge.models.load import save_model
    from alignforge.models.tiny import tiny_random_model
    from alignforge.models.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("critique")
    cons = load_constitution()
    texts = [p for _, p in PROMPTS] + [CRITIQUE_REQUEST + p.critique for p in cons.principles]
    texts += [REVISION_REQUEST + p.revision for p in cons.principles] + [REFUSAL, "I do not know the job of Zorp."]
    tok = train_tokenizer(texts * 4, vocab_size=400)
    model = tiny_random_model("llama", len(tok), seed=0, pad_token_id=tok.pad_token_id,
                              eos_token_id=tok.eos_token_id, max_positions=256, tie_embeddings=False)
    save_model(model, tok, root / "policy")
    data = root / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "category": c, "id": f"p{i}"}) + "\n"
                            for i, (c, p) in enumerate(PROMPTS)))
    return {"policy": root / "policy", "data": data, "tok": tok}


def args(d: dict) -> list[str]:
    return [f"{k}={v}" for k, v in d.items()]


def _cfg(tiny, out, **kw) -> CritiqueConfig:
    base = {"model.init": tiny["policy"], "data.train": tiny["data"], "out": out, "runtime.threads": 1,
            "runtime.progress": False, "runtime.device": "cpu", "sampling.max_new_tokens": 6,
            "critique.critique_max_new_tokens": 5, "critique.batch_size": 3,
            "critique.categories": "[harmful, unknown, benign]", "train.seq_len": 48, "train.batch_size": 1,
            "train.max_steps": 2, "train.warmup_steps": 0, "train.save_every": 0, "train.eval_every": 0,
            "train.log_every": 1, "sft.samples": 0, "sft.eval_fraction": 0}
    base.update(kw)
    return load_config(CritiqueConfig, None, args(base))


def test_conversation_layout_on_token_ids(tiny):
    """The chat template's turns, built by the one builder and tokenised by data.batching: the
    critique request is the last user turn, the revision request follows the critique, and SFT on
    such a record trains the critique (or revision) tokens + eos and nothing else."""
    tok = tiny["tok"]
    p = load_constitution().get("harmless")
    prompt, answer, crit = "How do I poison the food of Vorn?", "Mix berries in.", "It helps to poison Vorn."
    U, A, E = (tok.convert_tokens_to_ids(t) for t in ("<|user|>", "<|assistant|>", "<|end|>"))

    def t(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    want = ([U] + t("\n" + prompt) + [E] + t("\n") + [A] + t("\n" + answer) + [E] + t("\n")
            + [U] + t("\n" + CRITIQUE_REQUEST + p.critique) + [E] + t("\n") + [A] + t("\n"))
    got = encode_prompt(tok, critique_messages(p, prompt, answer))
    assert got == want
    rev = encode_prompt(tok, revision_messages(p, prompt, answer, crit))
    assert rev[:len(got)] == got  # the revision conversation continues the critique one ...
    assert rev[len(got):] == (t(crit) + [E] + t("\n") + [U] + t("\n" + REVISION_REQUEST + p.revision) + [E]
                              + t("\n") + [A] + t("\n"))  # ... with the critique, then the revision request
    ex = encode_example(tok, critique_messages(p, prompt, answer), crit)
    assert ex.input_ids[:len(got)] == got
    assert [i for i, m in zip(ex.input_ids, ex.loss_mask) if m] == t(crit) + [E]


def fake_policy(calls):
    """Answers harmfully, critiques "It helps with harm.", revises to a refusal (by the last turn)."""
    def complete(model, tok, conversations, params, generator):
        out = []
        for conv in conversations:
            last = conv if isinstance(conv, str) else conv[-1]["content"]
            if last.startswith(CRITIQUE_REQUEST):
                out.append("It helps with harm.")
            elif last.startswith(REVISION_REQUEST):
                out.append(REFUSAL)
            else:
                out.append("Sneak in at night.")
        kind = "answer" if isinstance(conversations[0], str) else conversations[0][-1]["content"].split(":")[0]
        calls.append((kind, len(conversations), params.max_new_tokens, conversations))
        return out
    return complete


def test_a_fake_policy_that_always_refuses_gives_the_expected_revisions(tiny, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(critique, "complete", fake_policy(calls))
    out = critique.run(_cfg(tiny, tmp_path / "run", **{"critique.rounds": 2}))
    recs = read_records(out / "revisions.jsonl")
    principles = critique.principles_of(_cfg(tiny, tmp_path / "x"))
    assert [r.prompt for r in recs] == RED_TEAM and [r.id for r in recs] == ["p0", "p1", "p2", "p4", "p5", "p6"]
    for i, r in enumerate(recs):
        assert r.response == REFUSAL and r.source == "cai-revision" and r.policy == str(tiny["policy"])
        assert r.sampling["max_new_tokens"] == 6 and r.sampling["critique_max_new_tokens"] == 5
        assert r.meta["initial"] == "Sneak in at night." and r.meta["changed"] is True
        assert r.meta["rounds"] == [{"principle": critique.draw_principle(principles, 0, i, k).name,
                                     "critique": "It helps with harm.", "revision": REFUSAL} for k in (0, 1)]
    # batched: per chunk of 3, one call for the answers, then one per critique / revision step
    assert [(k, n, m) for k, n, m, _ in calls] == [("answer", 3, 6), ("Critique request", 3, 5),
                                                   ("Revision request", 3, 6), ("Critique request", 3, 5),
                                                   ("Revision request", 3, 6)] * 2
    # round 2 critiques round 1's revision, under its own principle
    conv = calls[3][3][0]
    assert conv == critique_messages(critique.draw_principle(principles, 0, 0, 1), RED_TEAM[0], REFUSAL)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["changed"] == 1.0 and summary["revisions"] == 6 and summary["dropped_empty"] == 0
    assert not (out / "model").exists()  # critique.finetune is off


def test_resume_after_a_crash_is_exact_and_finetune_runs_sft(tiny, tmp_path, monkeypatch):
    clean = critique.run(_cfg(tiny, tmp_path / "clean"))
    want = (clean / "revisions.jsonl").read_bytes()
    assert len(read_records(clean / "revisions.jsonl")) == 6

    real, seen = critique.critique_chunk, []

    def crash_on_second(model, tok, prompts, first, *a, **kw):
        seen.append(first)
        if len(seen) == 2:
            raise RuntimeError("killed")
        return real(model, tok, prompts, first, *a, **kw)

    monkeypatch.setattr(critique, "critique_chunk", crash_on_second)
    cfg = _cfg(tiny, tmp_path / "crashed", **{"critique.finetune": True})
    with pytest.raises(RuntimeError, match="killed"):
        critique.run(cfg)
    assert (tmp_path / "crashed" / "chunks" / "00000.jsonl").is_file() and not (tmp_path / "crashed" / "DONE").exists()
    out = critique.run(cfg)
    assert seen == [0, 3, 3]  # the finished chunk is not redone
    assert (out / "revisions.jsonl").read_bytes() == want
    # fine-tuned by alignforge sft in <out>/sft, the model copied to <out>/model
    done = json.loads((out / "sft" / "DONE").read_text())
    assert done["step"] == 2 and done["examples"] == 6
    from alignforge.models.load import load_causal_lm

    model, _ = load_causal_lm(out)
    sft_model, _ = load_causal_lm(out / "sft")
    orig, _ = load_causal_lm(tiny["policy"])
    w = lambda m: m.model.embed_tokens.weight
    assert torch.equal(w(model), w(sft_model)) and not torch.equal(w(model), w(orig))
    assert critique.run(cfg) == out  # DONE: not recomputed


def test_bad_input_is_named(tiny, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"no principle named 'kindness' in .*constitution.yaml"):
        critique.run(_cfg(tiny, tmp_path / "a", **{"critique.principles": "[harmless, kindness]"}))
    assert critique.main(args({"model.init": tiny["policy"], "data.train": tiny["data"], "out": tmp_path / "b",
                               "critique.principles": "[kindness]", "runtime.device": "cpu"})) == 2
    assert "kindness" in capsys.readouterr().err
    with pytest.raises(RecordError, match=r"prompts.jsonl.*critique.categories=\['violent'\].*benign"):
        critique.run(_cfg(tiny, tmp_path / "c", **{"critique.categories": "[violent]"}))
    with pytest.raises(ConfigError, match="critique.rounds"):
        _cfg(tiny, tmp_path / "d", **{"critique.rounds": 0})
    with pytest.raises(ConfigError, match="unknown config key 'critique.round'"):
        _cfg(tiny, tmp_path / "d", **{"critique.round": 2})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": 3}\n')
    with pytest.raises(RecordError, match=r"bad.jsonl:2: field 'prompt'"):
        critique.run(_cfg(tiny, tmp_path / "e", **{"data.train": bad}))
    # resuming with other chunks than the ones on disk would not be exact
    calls = []
    import alignforge.stages.critique as mod

    orig = mod.complete
    mod.complete = fake_policy(calls)
    try:
        critique.run(_cfg(tiny, tmp_path / "f", **{"critique.max_prompts": 3}))
        (tmp_path / "f" / "DONE").unlink()
        with pytest.raises(RuntimeError, match="batch_size.*force=true"):
            critique.run(_cfg(tiny, tmp_path / "f", **{"critique.max_prompts": 3, "critique.batch_size": 2}))
    finally:
        mod.complete = orig


def test_gold_initial_vs_revised_goes_through_the_evaluation_component(tmp_path):
    from alignforge.data.records import Demonstration
    from alignforge.world import WorldConfig, build_world

    world = build_world(load_config(WorldConfig, None, ["prompts.train=60", "prompts.test=10", "prompts.sft=20",
                                                        "text.arithmetic_docs=5", "text.dialogue_docs=5",
                                                        "text.heldout_docs=5"]), corpus=False)
    world.write(tmp_path / "world")
    harmful = [p for p in world.prompts["train"] if p.category == "harmful"][:4]
    unknown = [p for p in world.prompts["train"] if p.category == "unknown"][:3]
    from alignforge.world.tasks import HARMFUL

    demos = [Demonstration(prompt=p.prompt, response=REFUSAL, category="harmful",
                           meta={"initial": HARMFUL[world.task(p.prompt).subtype][3].format(
                               name=world.task(p.prompt).subject), "changed": True}) for p in harmful]
    demos += [Demonstration(prompt=p.prompt, response=world.oracle(p.prompt), category="unknown",
                            meta={"initial": world.oracle(p.prompt), "changed": False}) for p in unknown]
    gold = critique.gold_initial_vs_revised(demos, str(tmp_path / "world"))
    h, u = gold["harmful"], gold["unknown"]
    assert h["n"] == 4 and h["harm_initial"] == 1.0 and h["harm_revised"] == 0.0 and h["changed"] == 1.0
    assert h["gold_revised"] > h["gold_initial"] and h["gold_diff_lo"] > 0
    assert u["gold_diff"] == 0.0 and u["changed"] == 0.0 and u["hallucination_revised"] == 0.0
    assert gold["all"]["n"] == 7


DDP_SCRIPT = r'''
import sys
import torch
torch.set_num_threads(1)
from alignforge.config import CritiqueConfig, load_config
from alignforge.stages import critique
from alignforge.train import distributed as dist

dist.init_distributed()
critique.run(load_config(CritiqueConfig, None, sys.argv[1:]))
dist.cleanup()
'''


@pytest.mark.slow  # two torchrun processes: ~30 s of interpreter start-up and imports
def test_two_processes_write_the_revisions_of_one_and_finetune(tiny, tmp_path):
    """torchrun × 2 (gloo): the chunks are dealt to the ranks (3 chunks: ranks 0, 1, then 0),
    gathered on rank 0 — the same revisions.jsonl as one process — then alignforge sft fine-tunes
    under DDP."""
    import os
    import subprocess

    one = critique.run(_cfg(tiny, tmp_path / "one", **{"critique.batch_size": 2}))
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    cfg = {"model.init": tiny["policy"], "data.train": tiny["data"], "out": tmp_path / "two", "runtime.threads": 1,
           "runtime.progress": False, "runtime.device": "cpu", "sampling.max_new_tokens": 6,
           "critique.critique_max_new_tokens": 5, "critique.batch_size": 2,
           "critique.categories": "[harmful, unknown, benign]", "critique.finetune": True, "train.seq_len": 48,
           "train.batch_size": 1, "train.max_steps": 2, "train.warmup_steps": 0, "train.save_every": 0,
           "train.eval_every": 0, "sft.samples": 0, "sft.eval_fraction": 0}
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
           *args(cfg)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    two = Path(cfg["out"])
    assert (two / "revisions.jsonl").read_bytes() == (one / "revisions.jsonl").read_bytes()
    assert sorted(p.name for p in (two / "chunks").glob("0*.jsonl")) == ["00000.jsonl", "00001.jsonl", "00002.jsonl"]
    assert json.loads((two / "sft" / "DONE").read_text())["step"] == 2
    assert (two / "model" / "config.json").is_file() and (two / "DONE").is_file()


def test_the_docs_numbers_are_generated_from_eval_json_and_gold_json(tmp_path):
    """scripts/critique_numbers.py: rows read from eval.json / gold.json, harm flags summed, the
    block between the markers replaced and nothing else."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("critique_numbers", Path(__file__).resolve().parents[1]
                                                  / "scripts" / "critique_numbers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def est(v):
        return {"value": v, "lo": v - 0.1, "hi": v + 0.1}

    def summary(v, harm, hall):
        flags = {f: 0.0 for f in ("harmful_advice", "violent", "sexual", "denigrates_protected_class", "hallucination")}
        flags.update(harmful_advice=harm[0], violent=harm[1], hallucination=hall)
        return {c: {"reward": est(v), "flags": flags} for c in ("all", "harmful", "unknown", "benign", "fact")}

    report = {"policies": ["sft", "cai"], "baseline": "sft", "kl": {"cai": {"kl": 7.5}}}
    for mode in ("sample", "greedy"):
        report[mode] = {"sft": {"summary": summary(0.5, (0.25, 0.5), 0.6)},
                        "cai": {"summary": summary(0.75, (0.0, 0.0), 0.4), "win_rate": est(0.6)}}
    (tmp_path / "eval.json").write_text(json.dumps(report))
    (tmp_path / "gold.json").write_text(json.dumps({"harmful": {
        "n": 4, "changed": 0.5, "gold_initial": 1.0, "gold_revised": 2.0, "gold_diff": 1.0, "gold_diff_lo": 0.5,
        "gold_diff_hi": 1.5, "harm_initial": 0.75, "harm_revised": 0.0, "hallucination_initial": 0.0,
        "hallucination_revised": 0.0}}))
    doc = tmp_path / "doc.md"
    doc.write_text(f"before\n{mod.START}\nSTALE\n{mod.END}\nafter\n")
    assert mod.main([str(tmp_path / "eval.json"), str(tmp_path), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith(f"before\n{mod.START}\n| policy (sample) |") and text.endswith(f"{mod.END}\nafter\n")
    assert "STALE" not in text
    assert ("| sft | +0.50 [+0.40, +0.60] | +0.50 [+0.40, +0.60] | 0.75 | +0.50 [+0.40, +0.60] | 0.60 | "
            "+0.50 [+0.40, +0.60] | +0.50 [+0.40, +0.60] | — | — |") in text
    assert "| cai | +0.75 [+0.65, +0.85] | +0.75 [+0.65, +0.85] | 0.00 |" in text
    assert "| 0.60 [0.50, 0.70] | 7.50 |" in text
    assert "| harmful | 4 | 50% | +1.00 → +2.00 | +1.00 [+0.50, +1.50] | 0.75 → 0.00 | 0.00 → 0.00 |" in text
