"""Rollouts for online RL, shared by ``alignforge ppo``, ``reinforce`` (RLOO/GRPO) and ``nash``.

One rollout = sample responses with the one sampling engine (:func:`alignforge.generation.generate`,
KV-cached, batched) → score them with the frozen reward model (or an injected ``reward_fn``) →
log π_ref of the same tokens (one batched forward of the reference) → optionally V(s_t) (one
forward of the value model) → a :class:`Rollout` of right-aligned ``[B, L]`` tensors that the
stages turn into per-token rewards, advantages and losses (``alignforge.rl`` / ``alignforge.losses``).

Log-probs. The engine returns log π(token) at the sampling temperature *before* top-k/top-p
truncation (design §8). With ``top_k = 0`` and ``top_p = 1`` the sampled distribution is exactly
π_T, so those numbers ARE the old log-probs of PPO's ratio and of the KL: no extra forward
(``rollout.reuse_logprobs``). With truncation the behaviour policy is not π_T, so we recompute
them with a training-style forward instead (and say so in the metrics). The reference and the
policy's training forward use the same temperature, as TRL does, so at step 0 the ratio is 1 and
the KL is 0 up to float rounding (tested).

Layout. Prompts are left-padded and responses right-padded, exactly as the engine returns them
(``Generation.model_inputs``): logits at columns ``P-1 … P+L-2`` predict the response tokens.
:meth:`Rollout.select` takes a minibatch and trims the all-padding columns on both sides, so a
minibatch of short answers costs only its own length.

Evaluation helpers (:func:`proxy_eval`, :func:`gold_eval`, :func:`final_report`) are here too: the
gold reward is reached only through ``alignforge.eval`` (the evaluation gateway), never by
importing the world's judge (``tests/test_import_boundary.py``).

The RL stages' shared set-up and step tail live here once (each stage still writes its own loop):
:func:`check_rl_config`, :func:`encode_prompts`, :func:`resume_rl`, :func:`reward_eval`,
:func:`initial_eval`, :func:`step_timings` and :func:`end_step` (eval, samples, log line, metrics,
checkpoint, out-of-time stop, in that order).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from alignforge.config import ConfigError
from alignforge.generation import Generation, SamplingParams, fp32_head, generate
from alignforge.losses import token_logprobs

#: An injected reward: the engine's :class:`Generation` (token ids, mask, texts) → one score per row.
RewardFn = Callable[[Generation], torch.Tensor]


@dataclass
class Rollout:
    """A batch of sampled responses and everything the RL losses need, as ``[B, L]`` tensors."""

    input_ids: torch.Tensor        # [B, P+L] prompt (left-padded) + response (right-padded)
    attention_mask: torch.Tensor   # [B, P+L] long
    prompt_len: int                # P
    response_ids: torch.Tensor     # [B, L]
    mask: torch.Tensor             # [B, L] float, 1 on response tokens (eos included)
    logprobs: torch.Tensor         # [B, L] old log π at the sampling temperature
    ref_logprobs: torch.Tensor     # [B, L] log π_ref at the same temperature
    scores: torch.Tensor           # [B] reward used for training (after penalty / clipping)
    raw_scores: torch.Tensor       # [B] reward model output (normalised as the RM stores it)
    finish_reason: list[str]
    texts: list[str] | None = None
    values: torch.Tensor | None = None       # [B, L] V(s_t) from the value model (PPO)
    advantages: torch.Tensor | None = None   # [B, L], filled in by the stage
    returns: torch.Tensor | None = None      # [B, L], filled in by the stage
    timings: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(1)

    @property
    def position_ids(self) -> torch.Tensor:
        return (self.attention_mask.cumsum(1) - 1).clamp(min=0)

    def select(self, idx: torch.Tensor | Sequence[int]) -> Rollout:
        """Rows ``idx``, with the columns that are padding in every selected row cut off."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        P = self.prompt_len
        am = self.attention_mask[idx]
        first = int((am[:, :P].sum(0) > 0).nonzero()[0]) if P else 0  # leftmost real prompt column
        L = max(int(self.mask[idx].sum(1).max()), 1)
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor) and v.dim() == 2 and v.shape[1] == P + self.response_ids.shape[1]:
                out[f.name] = v[idx][:, first:P + L]
            elif isinstance(v, torch.Tensor) and v.dim() == 2:
                out[f.name] = v[idx][:, :L]
            elif isinstance(v, torch.Tensor):
                out[f.name] = v[idx]
            elif isinstance(v, list):
                out[f.name] = [v[i] for i in idx.tolist()]
            else:
                out[f.name] = v
        out["prompt_len"] = P - first
        return Rollout(**out)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "position_ids": self.position_ids}


# ---------------------------------------------------------------------------------------------
# Forward passes on a rollout
# ---------------------------------------------------------------------------------------------


def response_logits(model, ro: Rollout) -> torch.Tensor:
    """``[B, L, V]`` logits that predict the response tokens (only those go through the LM head).

    Under bf16 autocast a plain Llama / Qwen2 model runs its body in bf16 and its head in fp32
    (:func:`alignforge.generation.fp32_head`), as the sampler does; other models give bf16 logits,
    upcast by the loss."""
    from alignforge.data.batching import plain_head

    L = ro.response_ids.shape[1]
    if torch.is_autocast_enabled(ro.input_ids.device.type) and plain_head(model):
        hidden = model.model(**ro.model_inputs()).last_hidden_state[:, -(L + 1):-1]
        return fp32_head(model.lm_head, hidden)
    try:  # the head runs on L+1 positions instead of P+L: the prompt's logits are never needed
        logits = model(**ro.model_inputs(), logits_to_keep=L + 1).logits
    except TypeError:  # an architecture without logits_to_keep
        logits = model(**ro.model_inputs()).logits[:, -(L + 1):]
    return logits[:, :-1]


def response_logprobs(model, ro: Rollout, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(log π(response tokens) at ``temperature`` [B, L], the logits [B, L, V])."""
    logits = response_logits(model, ro)
    return token_logprobs(logits, ro.response_ids, temperature=_train_temperature(temperature)), logits


def response_values(value_model, ro: Rollout) -> torch.Tensor:
    """``[B, L]`` V(s_t): the value head at the position that predicts response token t."""
    from alignforge.models.heads import token_scores

    v = token_scores(value_model, ro.input_ids, ro.attention_mask)[..., 0]
    L = ro.response_ids.shape[1]
    return v[:, ro.prompt_len - 1: ro.prompt_len - 1 + L].float()


def _train_temperature(t: float) -> float:
    # Greedy sampling (T = 0) reports log-probs at T = 1 (generation.py); train at T = 1 then.
    return t if t > 0 else 1.0


def logprobs_reusable(params: SamplingParams) -> bool:
    """The engine's log-probs equal the behaviour policy's exactly: no truncation, not greedy."""
    return params.top_k == 0 and params.top_p == 1.0 and params.temperature > 0


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------



def _same_vocab(tok, other, what: str, path: str) -> None:
    if tok.get_vocab() != other.get_vocab():
        raise ConfigError(f"{what}={path}: its tokenizer differs from the policy's; rollouts are scored on the "
                          "policy's token ids, so the models must share one tokenizer")


def load_reward(cfg: Any, tok, device: torch.device) -> tuple[Any, int]:
    """(frozen reward model, head index) from ``reward.init``."""
    from alignforge.models.heads import load_scorer

    if not cfg.reward.init:
        raise ConfigError(f"{type(cfg).__name__}: reward.init is not set (an `alignforge reward` stage folder)")
    try:
        rm, rm_tok = load_scorer(cfg.reward.init, device=str(device))
    except FileNotFoundError as e:
        raise ConfigError(f"reward.init={cfg.reward.init}: {e}") from None
    _same_vocab(tok, rm_tok, "reward.init", cfg.reward.init)
    names = [rm.config.id2label[i] for i in range(rm.config.num_labels)]
    head = cfg.reward.head
    if head.isdigit() and int(head) < len(names):
        index = int(head)
    elif head in names:
        index = names.index(head)
    else:
        raise ConfigError(f"config key 'reward.head': {head!r} is not a head of {cfg.reward.init} "
                          f"(heads: {', '.join(names)}; or an index 0..{len(names) - 1})")
    rm.eval().requires_grad_(False)
    return rm, index


def load_value(cfg: Any, tok, device: torch.device):
    """The critic: ``value.init`` → else ``reward.init`` (InstructGPT) → else ``model.init`` with a zero head.

    A scalar-head folder is loaded as is; a causal LM gets a zero-initialised head (first values 0).
    """
    import json

    from alignforge.models.heads import init_from_causal_lm, load_scorer
    from alignforge.models.load import resolve_model_dir

    path = cfg.value.init or cfg.reward.init or cfg.model.init
    if not path:
        raise ConfigError("ppo needs a value model: set value.init, reward.init or model.init")
    try:
        d = resolve_model_dir(path)
        arch = json.loads((d / "config.json").read_text()).get("architectures") or [""]
        if arch[0].endswith("ForSequenceClassification"):
            value, vtok = load_scorer(path, device=str(device))
        else:
            value, vtok = init_from_causal_lm(path, head_init_std=0.0, device=str(device))
    except FileNotFoundError as e:
        raise ConfigError(f"value.init={path}: {e}") from None
    _same_vocab(tok, vtok, "value.init", str(path))
    if value.config.num_labels != 1:  # keep the first head only: V is one number per state
        import copy

        head = value.score
        new = torch.nn.Linear(head.in_features, 1, bias=False).to(head.weight.device, head.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(head.weight[:1])
        value.score = new
        value.config = copy.deepcopy(value.config)
        value.config.num_labels = 1
    return value.requires_grad_(True)


def read_prompts(data: Any, split: str) -> list:
    """Prompt records of ``data.train`` / ``data.eval`` (any record with a prompt; categories kept)."""
    from alignforge.data.formats import load_data_section
    from alignforge.data.records import PromptRecord, ReadReport, RecordError

    report = ReadReport(str(getattr(data, split)))
    out = []
    for r in load_data_section(data, split, report=report):
        p = getattr(r, "prompt", None)
        if p:
            out.append(r if isinstance(r, PromptRecord) else PromptRecord(prompt=p))
    if not out:
        raise RecordError("no prompts found (expected prompt records, or records with a prompt field)",
                          path=str(getattr(data, split)))
    return out


def kl_controller(kl: Any):
    from alignforge.rl import AdaptiveKLController, FixedKLController

    if kl.target is None:
        return FixedKLController(kl.coef)
    return AdaptiveKLController(kl.coef, kl.target, kl.horizon)


def sampling_params(cfg: Any) -> SamplingParams:
    s = cfg.sampling
    return SamplingParams(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, max_new_tokens=s.max_new_tokens)


def step_generator(seed: int, step: int, salt: int = 0) -> torch.Generator:
    """A generator that is a pure function of (seed, step): a resumed run redraws the same rollout."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7919 + salt) % (2**63 - 1))


# ---------------------------------------------------------------------------------------------
# Data parallel (torchrun): each rank samples its shard of the prompts with its own seed
# ---------------------------------------------------------------------------------------------


def global_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """:func:`alignforge.rl.whiten` with the mean and variance of the masked entries of ALL ranks
    (design §8: advantages are whitened globally, not per process). One process: exactly ``whiten``."""
    from alignforge.rl import whiten
    from alignforge.train import distributed as dist

    if not dist.is_distributed():
        return whiten(values, mask, shift_mean=shift_mean, eps=eps)
    m = mask.to(values.dtype)
    n = dist.all_reduce_sum(m.sum().double())
    mean = (dist.all_reduce_sum((values * m).sum().double()) / n.clamp_min(1)).to(values.dtype)
    var = (dist.all_reduce_sum((((values - mean) ** 2) * m).sum().double()) / (n - 1).clamp_min(1)).to(values.dtype)
    out = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def average_gradients(*models) -> None:
    """Mean of every gradient over ranks (no-op in one process). Plain all-reduce instead of DDP
    because the value model is called through ``token_scores`` (its backbone and head directly),
    which a DDP wrapper's forward hooks would not see."""
    from alignforge.train import distributed as dist

    if not dist.is_distributed():
        return
    import torch.distributed as tdist

    for model in models:
        for p in model.parameters():
            if p.grad is not None:
                tdist.all_reduce(p.grad, op=tdist.ReduceOp.SUM)
                p.grad /= dist.world_size()


def gathered_mean(row: dict[str, float]) -> dict[str, float]:
    """Every value averaged over ranks (each rank holds the same number of responses)."""
    from alignforge.train import distributed as dist

    if not dist.is_distributed():
        return row
    keys = sorted(row)
    t = dist.all_reduce_mean(torch.tensor([float(row[k]) for k in keys], dtype=torch.float64))
    return dict(zip(keys, t.tolist()))


# ---------------------------------------------------------------------------------------------
# The rollout
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def make_rollout(policy, ref, tok, prompt_ids: Sequence[Sequence[int]], params: SamplingParams, *,
                 generator: torch.Generator, reward_model=None, reward_head: int = 0,
                 reward_fn: RewardFn | None = None, value_model=None, reuse_logprobs: bool = True,
                 missing_eos_penalty: float | None = None, score_clip: float | None = None,
                 batch_size: int = 64) -> Rollout:
    """Sample one response per entry of ``prompt_ids`` and compute scores, old/ref log-probs, values.

    ``no_grad`` (not ``inference_mode``): these tensors are constants in the losses, and
    inference tensors cannot be saved for backward.
    """
    from alignforge.data.batching import pad_id_of
    from alignforge.models.heads import sequence_scores

    if (reward_model is None) == (reward_fn is None):
        raise ValueError("make_rollout: pass exactly one of reward_model and reward_fn")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    was_training = policy.training
    policy.eval()
    gen = generate(policy, prompt_ids, params, eos_token_id=tok.eos_token_id, pad_token_id=pad_id_of(tok),
                   tokenizer=tok, generator=generator)
    timings["generate_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    inputs = gen.model_inputs()
    ro = Rollout(input_ids=inputs["input_ids"].clone(), attention_mask=inputs["attention_mask"].clone(),
                 prompt_len=gen.prompt_ids.shape[1], response_ids=gen.response_ids.clone(),
                 mask=gen.response_mask.float(), logprobs=gen.response_logprobs.clone(),
                 ref_logprobs=torch.zeros_like(gen.response_logprobs), scores=torch.zeros(len(prompt_ids)),
                 raw_scores=torch.zeros(len(prompt_ids)), finish_reason=list(gen.finish_reason), texts=gen.texts)
    # Under autocast the engine's incremental bf16 forward and the full-sequence one round differently
    # (~1e-2 per token): the behaviour log-probs must come from the pass the loss will repeat.
    recompute = not (reuse_logprobs and logprobs_reusable(params)) or torch.is_autocast_enabled(inputs["input_ids"].device.type)
    values = []
    B = len(ro)
    for j in range(0, B, batch_size):
        sub = ro.select(range(j, min(B, j + batch_size)))
        rows = slice(j, j + len(sub))
        L = sub.response_ids.shape[1]
        ro.ref_logprobs[rows, :L] = response_logprobs(ref, sub, params.temperature)[0] * sub.mask
        if recompute:
            ro.logprobs[rows, :L] = response_logprobs(policy, sub, params.temperature)[0] * sub.mask
        if reward_model is not None:
            ro.raw_scores[rows] = sequence_scores(reward_model, sub.input_ids, sub.attention_mask)[:, reward_head].float()
        if value_model is not None:
            value_model.eval()
            v = torch.zeros(len(sub), ro.response_ids.shape[1])
            v[:, :L] = response_values(value_model, sub) * sub.mask
            values.append(v)
    if reward_fn is not None:
        ro.raw_scores = torch.as_tensor(reward_fn(gen), dtype=torch.float32).reshape(B).clone()
    if values:
        ro.values = torch.cat(values)
    scores = ro.raw_scores.clone()
    if missing_eos_penalty is not None:
        scores -= missing_eos_penalty * torch.tensor([r != "stop" for r in ro.finish_reason], dtype=torch.float32)
    if score_clip is not None:
        scores = scores.clamp(-score_clip, score_clip)
    ro.scores = scores
    policy.train(was_training)
    timings["score_s"] = time.perf_counter() - t1
    timings["recomputed_logprobs"] = float(recompute)
    ro.timings = timings
    return ro


def rollout_stats(ro: Rollout, kl_per_token: torch.Tensor) -> dict[str, float]:
    """What every RL step logs about its samples (per response, then averaged)."""
    kl_seq = (kl_per_token * ro.mask).sum(1)
    return {"score": float(ro.raw_scores.mean()), "score_std": float(ro.raw_scores.std()) if len(ro) > 1 else 0.0,
            "kl": float(kl_seq.mean()), "response_length": float(ro.lengths.mean()),
            "eos_rate": sum(r == "stop" for r in ro.finish_reason) / len(ro)}


# ---------------------------------------------------------------------------------------------
# Evaluation (the gold judge only through alignforge.eval)
# ---------------------------------------------------------------------------------------------


def proxy_eval(policy, ref, tok, prompt_ids, params: SamplingParams, *, seed: int, reward_model=None,
               reward_head: int = 0, reward_fn: RewardFn | None = None, batch_size: int = 64) -> dict[str, float]:
    """Proxy reward, KL(π‖π_ref) (sum of per-token log-ratios, k1) and length on held-out prompts."""
    ro = make_rollout(policy, ref, tok, prompt_ids, params, generator=step_generator(seed, 0, salt=17),
                      reward_model=reward_model, reward_head=reward_head, reward_fn=reward_fn,
                      batch_size=batch_size, reuse_logprobs=False)
    kl = (ro.logprobs - ro.ref_logprobs) * ro.mask
    stats = rollout_stats(ro, kl)
    return {f"eval_{k}": v for k, v in stats.items()}


def gold_eval(policy, tok, prompts: Sequence, world_dir: str, *, max_new_tokens: int, seed: int,
              name: str = "policy", ref=None):
    """Gold reward per category on ``prompts`` (one T = 1 sample each) via the shared protocol."""
    from alignforge.eval.oracle import load_world
    from alignforge.eval.protocol import evaluate_policy

    world = _WORLDS.get(world_dir) or _WORLDS.setdefault(world_dir, load_world(world_dir))
    return evaluate_policy(policy, tok, list(prompts), judge=world, greedy=False, max_new_tokens=max_new_tokens,
                           seed=seed, ref=ref, name=name)


_WORLDS: dict[str, Any] = {}


def gold_metrics(ev) -> dict[str, float]:
    """Flat metrics of a PolicyEval: gold reward overall and per category, words."""
    s = ev.summary("sample", n_boot=200)
    row = {f"gold_{c}": v["reward"]["value"] for c, v in s.items()}
    row["gold_words"] = s["all"]["words"]
    return row


def final_report(policy, ref, tok, prompts: Sequence, world_dir: str, *, max_new_tokens: int, seed: int,
                 name: str) -> tuple[dict[str, Any], Any]:
    """(report, the policy's PolicyEval): the gold protocol of the trained policy against its
    reference (SFT) on the same prompts — per-category gold reward with 95% bootstrap CIs, paired
    reward difference, win-rate, KL(π‖π_ref)."""
    from alignforge.eval.protocol import compare

    kw = {"max_new_tokens": max_new_tokens, "seed": seed, "ref": ref}
    base = gold_eval(ref, tok, prompts, world_dir, name="sft", **kw)
    mine = gold_eval(policy, tok, prompts, world_dir, name=name, **kw)
    report = compare([base, mine], baseline="sft", modes=("sample",))
    report["prompts"] = len(prompts)
    return report, mine


# ---------------------------------------------------------------------------------------------
# The RL stages' shared set-up and step tail (ppo, reinforce, nash). Each stage keeps its own
# loop; these are the pieces all three used to write out again.
# ---------------------------------------------------------------------------------------------


def check_rl_config(cfg: Any, stage: str) -> None:
    """What every RL stage needs before it loads anything: prompts, a policy to start from, and
    ``rollout.prompts`` that split evenly over the processes."""
    from alignforge.train import distributed as dist

    if not cfg.data.train:
        raise ConfigError(f"{stage} needs data.train (prompt records)")
    if not cfg.model.init:
        raise ConfigError(f"{stage} needs model.init (an SFT stage folder or a local HF model directory)")
    world = dist.world_size()
    if cfg.rollout.prompts % world:
        raise ConfigError(f"config key 'rollout.prompts' ({cfg.rollout.prompts}) must split evenly over "
                          f"{world} processes")


def encode_prompts(cfg: Any, tok, params: SamplingParams, n_eval: int) -> tuple[list, list, list, list]:
    """(train prompts, their token ids, the first ``n_eval`` prompts of ``data.eval``, their ids).
    Prompts are left-truncated so that prompt + response fits ``train.seq_len``."""
    from alignforge.data.batching import encode_prompt

    max_prompt = cfg.train.seq_len - params.max_new_tokens
    if max_prompt < 1:
        raise ConfigError(f"train.seq_len={cfg.train.seq_len} leaves no room for prompts with "
                          f"sampling.max_new_tokens={params.max_new_tokens}")
    prompts = read_prompts(cfg.data, "train")
    prompt_ids = [encode_prompt(tok, p.prompt, max_prompt) for p in prompts]
    eval_prompts = read_prompts(cfg.data, "eval")[:n_eval] if cfg.data.eval and n_eval else []
    return prompts, prompt_ids, eval_prompts, [encode_prompt(tok, p.prompt, max_prompt) for p in eval_prompts]


def resume_rl(out, *, model, optimizer, scheduler, sampler, kl_ctl) -> tuple[Any, int, float]:
    """Load ``out/state`` when an earlier run left one: the weights, optimizer and schedule, and the
    state every RL stage saves beside them (the prompt sampler's position, β). Returns (the
    checkpoint or None, the step to go on from, the training seconds already spent); the stage
    reads its own extras (ptx position, baseline) from ``checkpoint.data``."""
    from alignforge.train import checkpoint as ckpt

    resumed = ckpt.load_state(out, model=model, optimizer=optimizer, scheduler=scheduler)
    if resumed is None:
        return None, 0, 0.0
    sampler.load_state_dict(resumed.data["sampler"])
    kl_ctl.value = float(resumed.data["kl_coef"])
    return resumed, resumed.step, float(resumed.extra.get("elapsed_s", 0.0))


def reward_eval(policy, ref, tok, params: SamplingParams, *, final: bool, name: str, out, seed: int,
                eval_ids: Sequence, eval_prompts: Sequence, eval_world: str | None, **reward: Any) -> dict[str, Any]:
    """The evaluation of a reward-model stage (ppo, reinforce), on rank 0 only (there are no
    collectives inside; other ranks get ``{}``): proxy reward, KL and length on the eval prompts
    (``reward`` = the :func:`make_rollout` reward arguments); with ``eval_world`` the gold reward
    per category, and when ``final`` the gold protocol vs SFT written to ``out/eval.json``."""
    import json

    from alignforge.io import atomic_write_text
    from alignforge.train import distributed as dist

    row: dict[str, Any] = {}
    if not dist.is_main():
        return row
    if eval_ids:
        row.update(proxy_eval(policy, ref, tok, eval_ids, params, seed=seed, **reward))
    if eval_world and eval_prompts:
        kw = {"max_new_tokens": params.max_new_tokens, "seed": seed}
        if final:  # the gold protocol vs SFT (eval.json); its policy half gives the gold metrics
            report, ev = final_report(policy, ref, tok, eval_prompts, eval_world, name=name, **kw)
            atomic_write_text(out / "eval.json", json.dumps(report, indent=1))
        else:
            ev = gold_eval(policy, tok, eval_prompts, eval_world, **kw)
        row.update(gold_metrics(ev))
    return row


def initial_eval(step: int, train: Any, evaluate: Callable[[bool], dict], logger) -> None:
    """The curves start at the initial (SFT) policy: step 0 is evaluated and logged before any
    update (not on a resume, nor with ``train.eval_every = 0``)."""
    if step == 0 and train.eval_every:
        row = evaluate(False)
        if row:
            logger.log(0, **row)


def step_timings(ro: Rollout, train_s: float, train_tokens: int) -> dict[str, float]:
    """Where a step's time went: sampling, scoring, training, and the two token rates."""
    return {"generate_s": ro.timings["generate_s"], "score_s": ro.timings["score_s"], "train_s": train_s,
            "rollout_tokens_per_s": float(ro.lengths.sum()) / max(ro.timings["generate_s"], 1e-9),
            "train_tokens_per_s": train_tokens / max(train_s, 1e-9)}


def end_step(stage: str, step: int, row: dict[str, Any], *, last: bool, train: Any, out, logger, clock,
             evaluate: Callable[[bool], dict], samples: Sequence[dict], line: str,
             model, optimizer, scheduler, sampler, kl_ctl, data: dict[str, Any] | None = None) -> bool:
    """The end of every RL step after its metrics ``row``; returns True when the stage must stop
    early (out of time). In this order:

    1. out of time? (``train.max_minutes`` against ``clock``, a :class:`~alignforge.train.loop.StageClock`;
       rank 0 decides for every process);
    2. every ``train.eval_every`` steps, at the last step and when out of time: ``evaluate(final)``
       into ``row`` (final at the last step or out of time) and ``samples`` appended to
       ``samples.jsonl`` (rank 0);
    3. ``line`` printed at the first and last step and every ``train.log_every`` (rank 0); ``row``
       logged to ``metrics.jsonl``;
    4. every ``train.save_every`` steps, at the last step and when out of time: the checkpoint —
       weights, optimizer, schedule, the prompt sampler, β (``kl_ctl``) and the stage's own ``data``,
       with the metrics offset and the training time, which is all an exact resume needs.
    """
    import json

    from alignforge.train import checkpoint as ckpt
    from alignforge.train import distributed as dist
    from alignforge.train.loop import out_of_time

    stop = out_of_time(train, clock)
    main = dist.is_main()
    if (train.eval_every and step % train.eval_every == 0) or last or stop:
        row.update(evaluate(last or stop))
        if main:
            with open(out / "samples.jsonl", "a", encoding="utf-8") as f:
                f.writelines(json.dumps(s) + "\n" for s in samples)
    if main and (step % train.log_every == 0 or last or step == 1):
        print(line)
    logger.log(step, **row)
    if (train.save_every and step % train.save_every == 0) or last or stop:
        ckpt.save_state(out, model=model, optimizer=optimizer, scheduler=scheduler, step=step,
                        data={"sampler": sampler.state_dict(), "kl_coef": kl_ctl.value, **(data or {})},
                        metrics_offset=logger.offset(), extra={"elapsed_s": clock.elapsed_s()})
    if stop and not last:
        if main:
            print(f"{stage}: out of time after step {step} (train.max_minutes={train.max_minutes})")
        return True
    return False
