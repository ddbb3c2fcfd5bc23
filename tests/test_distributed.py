"""torchrun: 2 processes (gloo, CPU), each with half of every global batch, train the same model as
one process on the whole batch. Plus the single-process behaviour of the helpers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from alignforge.stages import pretrain
from alignforge.train import distributed as dist
from alignforge.train.testing import tiny_pretrain_args


def test_single_process_helpers():
    assert dist.world_size() == 1 and dist.rank() == 0 and dist.is_main()
    assert dist.all_reduce_mean(2.5) == 2.5
    assert dist.all_gather_object({"a": 1}) == [{"a": 1}]
    assert dist.rank_seed(7) == 7  # a 1-process run is rank 0 with the configured seed
    model = torch.nn.Linear(2, 2)
    assert dist.wrap_model(model, None, torch.device("cpu")) is model
    assert dist.unwrap(model) is model


def test_shard_range_splits_the_global_batch_contiguously():
    assert [dist.shard_range(8, r, 2) for r in range(2)] == [(0, 4), (4, 8)]
    assert [dist.shard_range(12, r, 3) for r in range(3)] == [(0, 4), (4, 8), (8, 12)]
    assert dist.shard(list(range(6)), 1, 3) == [2, 3]
    with pytest.raises(ValueError, match="does not split evenly over 3"):
        dist.shard_range(10, 0, 3)


def _torchrun(args, extra=()):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "alignforge", "pretrain", *args, *extra]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def _close(a_dir, b_dir):
    a = load_file(str(a_dir / "model" / "model.safetensors"))
    b = load_file(str(b_dir / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        # Same global batch and gradient mean; only the float summation order differs.
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=f"{k} differs")


def _rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_torchrun_ddp_then_fsdp_resume_match_one_process(tmp_path):
    """2 processes (gloo, CPU), each with half of every global batch and grad accumulation 2:
    DDP for 2 steps ≡ 1 process on the whole batch; then FSDP (runtime.fsdp=true) resumes that
    checkpoint in a new launch and 4 steps ≡ 1 process. Two launches keep this test short."""
    torch.set_num_threads(1)
    # constant lr: the schedule must not depend on max_steps, which the launches change
    kw = dict(save_every=2, eval_every=2, schedule="constant", warmup_steps=0, grad_accum=2)
    one2, one4 = tmp_path / "one2", tmp_path / "one4"
    assert pretrain.main(tiny_pretrain_args(tmp_path / "data", one2, batch_size=4, max_steps=2, **kw)) == 0
    assert pretrain.main(tiny_pretrain_args(tmp_path / "data", one4, batch_size=4, max_steps=4, **kw)) == 0

    ddp = tmp_path / "ddp"
    res = _torchrun(tiny_pretrain_args(tmp_path / "data", ddp, batch_size=2, max_steps=2, **kw))
    assert "2×2 accum×2 procs" in res.stdout
    _close(one2, ddp)
    rows_one, rows_ddp = _rows(one2), _rows(ddp)
    assert [r["step"] for r in rows_ddp] == [1, 2]  # rank 0 alone writes metrics
    for ra, rb in zip(rows_one, rows_ddp):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5)
        assert rb["tokens"] == ra["tokens"]
    # held-out bits per byte: blocks sharded over ranks, sums all-reduced
    assert rows_ddp[-1]["eval_bpb"] == pytest.approx(rows_one[-1]["eval_bpb"], rel=1e-5)
    assert json.loads((ddp / "state" / "trainer.json").read_text())["world_size"] == 2

    # FSDP continues the DDP run (same full-state checkpoint format) up to step 4
    (ddp / "DONE").unlink()
    res = _torchrun(tiny_pretrain_args(tmp_path / "data", ddp, batch_size=2, max_steps=4, **kw),
                    ["runtime.fsdp=true"])
    assert "resuming at step 2" in res.stdout
    _close(one4, ddp)
    assert [r["step"] for r in _rows(ddp)] == [1, 2, 3, 4]
