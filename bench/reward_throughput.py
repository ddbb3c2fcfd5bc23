"""Reward-model training throughput (pairs/s, tokens/s, MFU) against the raw fwd+bwd limit of the same model.

    python bench/reward_throughput.py [--preset tiny-4m | --model DIR] [--batch 16] [--steps 10] [--threads 2]

Three timings on identical token batches (random ids; chosen and rejected share the prompt):

* ``raw``: the limit — the scalar-head model's forward on pre-built, padded tensors, ``.sum()``,
  backward; nothing else;
* ``stage fwd+bwd``: what ``alignforge reward`` does per micro-batch — collate the rows, ONE
  forward of chosen + rejected, Bradley–Terry loss, backward (:func:`alignforge.stages.reward.micro_loss`);
* ``stage step``: the same plus clipping and the AdamW step (the whole optimizer step).

MFU = 6 · matmul params · real tokens / time ÷ the measured fp32 matmul peak (design §8), in this
process. On a shared machine, run it when the machine is quiet and read the best of a few runs.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from alignforge.config import TrainSection
from alignforge.models.heads import init_from_causal_lm, sequence_scores
from alignforge.models.load import build_model, matmul_params, save_model
from alignforge.perf import measure_matmul_peak, train_flops
from alignforge.stages.reward import Item, collate_rows, micro_loss
from alignforge.train.loop import make_optimizer, optimizer_step


def make_batches(vocab: int, n_batches: int, batch: int, prompt_len: int, resp_len: int, seed: int = 0):
    """Encoded pairs as the stage holds them: (Item, [chosen ids, rejected ids]), lengths varying ±25%."""
    g = torch.Generator().manual_seed(seed)
    encoded, batches = [], []
    for _ in range(n_batches):
        idx = []
        for _ in range(batch):
            p = torch.randint(2, vocab, (prompt_len,), generator=g).tolist()
            lens = torch.randint(int(resp_len * 0.75), int(resp_len * 1.25) + 1, (2,), generator=g).tolist()
            rows = [p + torch.randint(2, vocab, (n,), generator=g).tolist() + [1] for n in lens]
            idx.append(len(encoded))
            encoded.append((Item("p", "c", "r"), rows))
        batches.append(idx)
    return encoded, batches


def timed(fn, n: int) -> float:
    fn()  # warm-up (allocator, kernels)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny-4m")
    ap.add_argument("--model", default=None, help="a local causal-LM dir / stage folder instead of --preset")
    ap.add_argument("--batch", type=int, default=16, help="pairs per micro-batch")
    ap.add_argument("--prompt-len", type=int, default=48)
    ap.add_argument("--response-len", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="/tmp/alignforge-bench-reward")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    path = args.model
    if path is None:
        from alignforge.models.tiny import tiny_tokenizer

        tok = tiny_tokenizer("llama")
        path = f"{args.out}/base"
        save_model(build_model(args.preset, len(tok)), tok, path)
    model, tok = init_from_causal_lm(path, 1)
    model.train()
    vocab = model.config.vocab_size
    n_matmul = matmul_params(model)
    encoded, batches = make_batches(vocab, args.steps, args.batch, args.prompt_len, args.response_len)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    weights = torch.ones(1)
    tokens = sum(len(r) for it in encoded for r in it[1])
    pairs = len(encoded)
    pre = [collate_rows([encoded[i][1][0] for i in b] + [encoded[i][1][1] for i in b], pad) for b in batches]
    opt = make_optimizer(model, TrainSection(lr=1e-5))
    peak = measure_matmul_peak(repeats=3)

    def raw():
        for ids, mask in pre:
            sequence_scores(model, ids, mask, normalize=False).sum().backward()
        model.zero_grad(set_to_none=True)

    def stage_fwd_bwd():
        for b in batches:
            loss, _ = micro_loss(model, encoded, b, weights, pad, "cpu")
            (loss / len(b)).backward()
        model.zero_grad(set_to_none=True)

    def stage_step():
        for b in batches:
            loss, _ = micro_loss(model, encoded, b, weights, pad, "cpu")
            (loss / len(b)).backward()
            optimizer_step(model, opt, None, 1.0)

    results = {"model": args.model or args.preset, "matmul_params": n_matmul, "pairs_per_batch": args.batch,
               "tokens_per_pair": tokens / pairs, "threads": torch.get_num_threads(), "peak_gflops": peak / 1e9}
    for name, fn in (("raw", raw), ("stage_fwd_bwd", stage_fwd_bwd), ("stage_step", stage_step)):
        best = min(timed(fn, 1) for _ in range(3))  # best of 3: the machine is shared
        results[name] = {"pairs_per_s": pairs / best, "tokens_per_s": tokens / best,
                         "mfu": train_flops(n_matmul, tokens) / best / peak}
    results["stage_fwd_bwd_vs_raw"] = results["stage_fwd_bwd"]["pairs_per_s"] / results["raw"]["pairs_per_s"]
    results["stage_step_vs_raw"] = results["stage_step"]["pairs_per_s"] / results["raw"]["pairs_per_s"]
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
