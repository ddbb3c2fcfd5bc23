"""``alignforge rlaif``: candidates / comparisons / prompts → AI comparison records in collect's layout,
principles per pair, summary counts, bad input with file:line, exact resume, and 2 processes = 1."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from alignforge.config import ConfigError, RlaifConfig, load_config
from alignforge.data.records import Comparison, RecordError, read_records
from alignforge.stages import rlaif

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


class LikesWord:
    """A content judge: P(A) = 0.9 when only option (A) contains ``word``, 0.1 when only (B), else ½."""

    id = "likes-word"

    def __init__(self, word="polite", fail_on_call: int | None = None):
        self.word, self.calls, self.fail_on_call, self.asked = word, 0, fail_on_call, 0

    def first_probs(self, questions):
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise KeyboardInterrupt("killed mid-run")
        self.asked += len(questions)
        out = []
        for q in questions:
            a = re.search(r"^\(A\) (.*)$", q, re.MULTILINE).group(1)
            b = re.search(r"^\(B\) (.*)$", q, re.MULTILINE).group(1)
            out.append(0.5 if (self.word in a) == (self.word in b) else 0.9 if self.word in a else 0.1)
        return out


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _candidates(tmp_path: Path, n: int = 10) -> Path:
    rows = []
    for i in range(n):
        rows.append({"prompt": f"Please help with task {i}", "responses": [f"a polite answer {i}", f"rude {i}",
                                                                           f"curt {i}"],
                     "policy": "runs/w/sft", "sampling": {"temperature": 1.0}, "id": f"p{i}",
                     "meta": {"split": "eval" if i >= 8 else "train", "policies": ["runs/w/sft", "runs/w/sft",
                                                                                     "world:demonstrator"]}})
    return _write(tmp_path / "candidates.jsonl", rows)


def _cfg(data, out, *extra, judge_init="unused-injected"):
    return load_config(RlaifConfig, None, [f"data.train={data}", f"out={out}", f"judge.init={judge_init}",
                                           "runtime.device=cpu", "runtime.threads=1", *extra])


def test_candidates_become_comparisons_in_collects_layout(tmp_path):
    out = rlaif.run(_cfg(_candidates(tmp_path), tmp_path / "r", "rlaif.pairs_per_prompt=3", "rlaif.chunk_prompts=4"),
                    judge=LikesWord())
    train, held = read_records(out / "train.jsonl"), read_records(out / "eval.jsonl")
    assert len(train) == 8 * 3 and len(held) == 2 * 3  # meta.split: eval → eval.jsonl
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs"] == summary["labels"] == 30 and summary["abstained"] == 0
    assert summary["by_split"]["train"]["pairs"] == 24 and summary["by_split"]["eval"]["pairs"] == 6
    for c in train + held:
        assert isinstance(c, Comparison) and c.annotator == "ai:likes-word" and c.source == "rlaif"
        assert c.policy == "runs/w/sft" and c.round == 0 and c.sampling == {"temperature": 1.0}
        assert c.meta["principle"] in ("harmless", "honest", "helpful")
        assert c.meta["policies"][0] == ("world:demonstrator" if c.chosen.startswith("curt") else "runs/w/sft")
        if "polite" in c.chosen + c.rejected:   # the judge decides: consistent, the polite one wins
            assert not c.tie and "polite" in c.chosen and c.meta["p"] == pytest.approx(0.9) and c.strength == 3
        else:                                    # the judge says ½ in both orders: a tie
            assert c.tie and not c.meta["consistent"]
    assert summary["ties"] == sum(c.tie for c in train + held) == 10 and summary["consistent"] == 20
    assert sum(v["pairs"] for v in summary["by_principle"].values()) == 30
    assert (out / "DONE").exists() and not (out / "parts").exists()
    # DPO reads the file as it reads collect's: the ties are dropped and counted, the rest are pairs
    from alignforge.config import DPOConfig
    from alignforge.stages.dpo import read_pairs

    pairs, stats = read_pairs(load_config(DPOConfig, None, [f"data.train={out / 'train.jsonl'}"]), "train")
    assert len(pairs) == sum(not c.tie for c in train) and stats.ties_dropped == sum(c.tie for c in train)


def test_per_pair_all_and_ensemble(tmp_path):
    data = _candidates(tmp_path, 4)
    out = rlaif.run(_cfg(data, tmp_path / "all", "rlaif.per_pair=all", "rlaif.pairs_per_prompt=1",
                         "rlaif.principles=[harmless, honest]"), judge=LikesWord())
    recs = read_records(out / "train.jsonl") + read_records(out / "eval.jsonl")
    assert len(recs) == 4 * 2 and {c.meta["principle"] for c in recs} == {"harmless", "honest"}
    out = rlaif.run(_cfg(data, tmp_path / "ens", "rlaif.per_pair=ensemble", "rlaif.pairs_per_prompt=1"),
                    judge=LikesWord())
    recs = read_records(out / "train.jsonl") + read_records(out / "eval.jsonl")
    assert len(recs) == 4 and all(c.meta["principle"] == "ensemble" and len(c.meta["principles"]) == 3 for c in recs)


def test_comparisons_are_relabelled_and_eval_file_goes_to_eval(tmp_path):
    rows = [{"prompt": "Q", "chosen": "rude one", "rejected": "polite one", "annotator": "human-3"},
            {"prompt": "Q2", "chosen": "a polite reply", "rejected": "a curt reply"}]
    data = _write(tmp_path / "prefs.jsonl", rows)
    ev = _write(tmp_path / "ev.jsonl", rows[:1])
    out = rlaif.run(_cfg(data, tmp_path / "r", f"data.eval={ev}"), judge=LikesWord())
    train = read_records(out / "train.jsonl")
    assert [(c.chosen, c.rejected) for c in train] == [("polite one", "rude one"), ("a polite reply", "a curt reply")]
    assert [c.annotator for c in train] == ["ai:likes-word"] * 2
    assert len(read_records(out / "eval.jsonl")) == 1


def test_prompts_are_sampled_from_the_policy(tmp_path):
    from alignforge.models.load import save_model
    from alignforge.models.tiny import tiny_random_model, tiny_tokenizer

    tok = tiny_tokenizer("llama")
    save_model(tiny_random_model("llama", len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id),
               tok, tmp_path / "policy")
    data = _write(tmp_path / "prompts.jsonl", [{"prompt": f"Where does heron {i} live?"} for i in range(3)])
    args = ("rlaif.k=3", "sampling.max_new_tokens=6", f"model.init={tmp_path / 'policy'}", "rlaif.chunk_prompts=2")
    out = rlaif.run(_cfg(data, tmp_path / "r", *args), judge=LikesWord())
    cands = read_records(out / "candidates.jsonl")
    assert len(cands) == 3 and all(c.policy == str(tmp_path / "policy") for c in cands)
    recs = read_records(out / "train.jsonl")
    assert recs and all(c.sampling["max_new_tokens"] == 6 and c.policy == str(tmp_path / "policy") for c in recs)
    again = rlaif.run(_cfg(data, tmp_path / "r2", *args), judge=LikesWord())  # seeded per chunk: same samples
    assert (again / "candidates.jsonl").read_bytes() == (out / "candidates.jsonl").read_bytes()
    with pytest.raises(ConfigError, match="needs model.init"):
        rlaif.run(_cfg(data, tmp_path / "r3"), judge=LikesWord())


def test_bad_input_names_file_line_and_field(tmp_path):
    good = json.dumps({"prompt": "Q", "responses": ["a", "b"]})
    bad = _write(tmp_path / "bad.jsonl", [json.loads(good), {"prompt": "Q", "responses": "a"}])
    with pytest.raises(RecordError, match=r"bad\.jsonl:2: field 'responses'"):
        rlaif.run(_cfg(bad, tmp_path / "r"), judge=LikesWord())
    rating = _write(tmp_path / "rating.jsonl", [{"prompt": "Q", "response": "a", "likert": 3}])
    with pytest.raises(RecordError, match=r"rating\.jsonl:1: a rating record; rlaif labels candidates"):
        rlaif.run(_cfg(rating, tmp_path / "r"), judge=LikesWord())
    with pytest.raises(ConfigError, match="no principle named 'kindness'"):
        rlaif.run(_cfg(_candidates(tmp_path, 2), tmp_path / "r", "rlaif.principles=[kindness]"), judge=LikesWord())
    with pytest.raises(ConfigError, match="set exactly one"):
        load_config(RlaifConfig, None, ["judge.init=a", "judge.base_url=http://x/v1", "judge.model=m"])
    with pytest.raises(ConfigError, match="set exactly one"):
        rlaif.run(load_config(RlaifConfig, None, [f"data.train={bad}", f"out={tmp_path / 'r'}"]), judge=LikesWord())
    with pytest.raises(ConfigError, match="unknown config key 'rlaif.pairs'"):
        load_config(RlaifConfig, None, ["rlaif.pairs=3"])
    # the CLI prints one clear line and exits 2
    from alignforge.cli import main
    assert main(["rlaif", f"data.train={bad}", f"out={tmp_path / 'cli'}", "judge.init=x"]) == 2


def test_killed_run_resumes_exactly(tmp_path):
    data = _candidates(tmp_path, 10)
    args = ("rlaif.chunk_prompts=2", "rlaif.pairs_per_prompt=2")
    whole = rlaif.run(_cfg(data, tmp_path / "whole", *args), judge=LikesWord())
    with pytest.raises(KeyboardInterrupt):
        rlaif.run(_cfg(data, tmp_path / "killed", *args), judge=LikesWord(fail_on_call=4))
    parts = sorted(p.name for p in (tmp_path / "killed" / "parts").iterdir())
    assert parts == ["chunk-00000.json", "chunk-00001.json", "chunk-00002.json"]  # chunks 0-2 saved
    with pytest.raises(ConfigError, match="another config"):
        rlaif.run(_cfg(data, tmp_path / "killed", "rlaif.chunk_prompts=2", "rlaif.pairs_per_prompt=1"),
                  judge=LikesWord())
    judge = LikesWord()
    resumed = rlaif.run(_cfg(data, tmp_path / "killed", *args), judge=judge)
    assert judge.calls == 2 and judge.asked == 2 * 2 * 2 * 2  # only chunks 3 and 4: 2 records × 2 pairs × 2 orders
    for name in ("train.jsonl", "eval.jsonl"):
        assert (resumed / name).read_bytes() == (whole / name).read_bytes()
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["pairs"] == 20 and summary["pairs_asked_this_run"] == 8
    # finished: not recomputed; force=true recomputes
    assert rlaif.run(_cfg(data, tmp_path / "killed", *args), judge=LikesWord(fail_on_call=1)) == resumed
    rlaif.run(_cfg(data, tmp_path / "killed", *args, "force=true"), judge=LikesWord())


def test_shipped_rlaif_configs_load_strictly():
    from alignforge.config import SFTConfig

    cfg = load_config(RlaifConfig, REPO / "configs" / "world" / "rlaif.yaml")
    assert cfg.judge.init and cfg.rlaif.per_pair == "sample"
    judge = load_config(SFTConfig, REPO / "configs" / "world" / "rlaif-judge.yaml")  # the judge model: plain SFT
    assert judge.data.train.endswith("judge_train.jsonl")


DDP_SCRIPT = '''
import sys
from alignforge.config import RlaifConfig, load_config
from alignforge.stages import rlaif
from alignforge.train import distributed as dist
rlaif.run(load_config(RlaifConfig, None, sys.argv[1:]))
dist.cleanup()
'''


@pytest.mark.slow  # two torchrun processes: ~20 s of interpreter start-up and imports
def test_two_process_gloo_equals_one_process(tmp_path):
    """torchrun × 2 with a local model judge: chunks dealt to both ranks, gathered by rank 0 in
    order; the files equal a 1-process run's byte for byte."""
    import os
    import subprocess

    from alignforge.models.load import save_model
    from alignforge.models.tiny import tiny_random_model, tiny_tokenizer

    tok = tiny_tokenizer("llama")
    save_model(tiny_random_model("llama", len(tok), seed=5, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id), tok, tmp_path / "judge")
    data = _candidates(tmp_path, 10)
    common = [f"data.train={data}", f"judge.init={tmp_path / 'judge'}", "judge.batch_size=4", "rlaif.chunk_prompts=3",
              "runtime.device=cpu", "runtime.threads=1", "rlaif.per_pair=ensemble"]
    one = rlaif.run(load_config(RlaifConfig, None, [*common, f"out={tmp_path / 'one'}"]))
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
           *common, f"out={tmp_path / 'two'}"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.count("rlaif: chunk") == 2  # rank 0 labelled chunks 0 and 2 of 4 (rank 1: 1 and 3)
    for name in ("train.jsonl", "eval.jsonl"):
        assert (tmp_path / "two" / name).read_bytes() == (one / name).read_bytes()
    a = json.loads((one / "summary.json").read_text())
    b = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert {k: a[k] for k in ("pairs", "labels", "consistent", "ties")} == {k: b[k] for k in ("pairs", "labels",
                                                                                           "consistent", "ties")}
