"""What every online RL stage (``ppo``, ``reinforce``, ``nash``) does around its algorithm, once:
the config checks, the prompts, resume, the evaluation, and the step tail. Each stage keeps its own
loop — rollout (:mod:`alignforge.rl.rollout`), advantages (:mod:`alignforge.rl.advantages`), losses
(:mod:`alignforge.losses`) — and calls these for the rest.

- set-up: :func:`check_rl_config`, :func:`encode_prompts` (:func:`read_prompts`), :func:`kl_controller`,
  :func:`resume_rl`;
- evaluation: :func:`proxy_eval` (reward model, KL, length), :func:`gold_eval` / :func:`gold_metrics` /
  :func:`final_report` (the gold judge, reached only through ``alignforge.eval``, the evaluation gateway,
  never by importing the world's judge: ``tests/test_import_boundary.py``), :func:`reward_eval`,
  :func:`initial_eval`;
- the step tail: :func:`step_timings`, :func:`end_step` (eval, samples, log line, metrics, checkpoint,
  out-of-time stop, in that order).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from alignforge.config import ConfigError
from alignforge.generation import SamplingParams
from alignforge.rl.rollout import RewardFn, Rollout, make_rollout, rollout_stats, step_generator

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
    from alignforge.rl.advantages import AdaptiveKLController, FixedKLController

    if kl.target is None:
        return FixedKLController(kl.coef)
    return AdaptiveKLController(kl.coef, kl.target, kl.horizon)

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

def proxy_eval(policy, ref, tok, prompt_ids, params: SamplingParams, *, seed: int, reward_model=None,
               reward_head: int | None = None, reward_fn: RewardFn | None = None, batch_size: int = 64) -> dict[str, float]:
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
