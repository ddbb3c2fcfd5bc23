"""Will a stage fit its device? :mod:`alignforge.models.memory`'s estimate against the free memory,
checked before anything is loaded.

:func:`check_memory` is the one place this happens, called once per run after the device is known
and before the stage loads a model: by ``train.loop.start_stage`` (the opening of pretrain, sft,
reward, dpo, rsft, ppo, reinforce, nash and critique) and by collect and eval, which open on their
own, right after reading their prompts. It covers every stage the estimator has a model of
(:data:`alignforge.models.memory.ESTIMATED_STAGES`: those, i.e. every stage that loads an HF-size
model except rlaif, serve and chat). It costs a few small file reads and some integer arithmetic —
the shapes come from the models' ``config.json`` (or the preset's config), never from their
weights — so the tiny world's stages pay nothing measurable, and it draws no random numbers.
collect, eval, critique and rsft also measure their longest prompt (nothing cuts their prompts to
``train.seq_len``): the stage hands its prompts over, and the check encodes the
:data:`MEASURED_PROMPTS` longest (in characters) with the model's tokenizer and chat template, as the
sampling engine will see them (:func:`longest_prompt`). ppo, reinforce and nash cut their prompts to
``train.seq_len − sampling.max_new_tokens``, which bounds them; they sample all of a step's prompts
in one engine call, so fewer ``rollout.prompts``, not a smaller ``rollout.batch_size``, shrinks that.

It prints one line (weights, gradients, AdamW state, activations, KV cache / rollout, the peak, and
the memory available) and, when the peak is more than what is available, raises
:class:`~alignforge.config.ConfigError` naming the memory options that would bring it under, found
with the same estimator (for the inference stages, smaller sampling / scoring batches), or saying
that none does. ``runtime.memory_check=false`` keeps the line and runs anyway (the estimate leaves
out the CUDA context and allocator slack, and counts some activations as an upper bound:
docs/recipes.md).

What "available" means:

* CUDA: ``torch.cuda.mem_get_info`` — the bytes free on this process's GPU now, so memory other
  processes hold is already taken off. Under torchrun, the smallest over the ranks, so that every
  rank takes the same decision (a rank that refused alone would leave the others waiting).
* CPU: ``MemAvailable`` of ``/proc/meminfo`` (else ``os.sysconf``'s available pages), or less when a
  cgroup memory limit leaves less. The processes of one torchrun on one host share that RAM, so the
  need is multiplied by ``LOCAL_WORLD_SIZE`` there.
* FSDP (``runtime.fsdp`` under torchrun, in the stages that wrap their trained model: pretrain, sft,
  reward, dpo, rsft, and critique's fine-tune): that model's weights, its gradients and AdamW state
  are split over the processes.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alignforge.config import ConfigError
from alignforge.models import memory as M

#: Stages whose trained model ``train.distributed.wrap_model`` shards under ``runtime.fsdp``
#: (the RL stages keep whole replicas and average gradients with an all-reduce).
FSDP_STAGES = ("pretrain", "sft", "reward", "dpo", "rsft")

#: How many prompts :func:`longest_prompt` encodes: the longest ones in characters (all of them when there are
#: fewer). Encoding every prompt of a large collect would cost seconds; the longest in tokens is among the
#: longest in characters unless scripts of very different token densities are mixed.
MEASURED_PROMPTS = 256

#: The share of the available memory a suggested fix may use: the rest is for what the estimate leaves
#: out (the CUDA context, allocator slack, single kernels' buffers), so that a fix is not itself on the edge.
SUGGEST_WITHIN = 0.9


def fmt_bytes(n: float) -> str:
    if n >= M.GIB:
        return f"{n / M.GIB:.2f} GiB"
    if n >= 1024 ** 2:
        return f"{n / 1024 ** 2:.1f} MiB"
    return f"{n / 1024:.0f} KiB"


# ---------------------------------------------------------------------------------------------
# The shapes, from config files only
# ---------------------------------------------------------------------------------------------


class NoEstimate(Exception):
    """The shapes could not be read without loading (the stage goes on; its loader reports real errors)."""


def _config_json(path: str, key: str) -> dict[str, Any]:
    from alignforge.models.load import resolve_model_dir

    try:
        return json.loads((resolve_model_dir(path) / "config.json").read_text())
    except (OSError, ValueError) as e:  # FileNotFoundError, bad JSON: the loader will say it properly
        raise NoEstimate(f"{key}={path}: {e}") from None


def _tokenizer_vocab(path: str | None) -> int | None:
    """Vocabulary of a saved fast tokenizer (tokenizer.json), without building the tokenizer."""
    if not path:
        return None
    for d in (Path(path), Path(path) / "model", Path(path) / "tokenizer"):
        f = d / "tokenizer.json"
        if f.is_file():
            try:
                data = json.loads(f.read_text())
                n = len((data.get("model") or {}).get("vocab") or ())  # BPE: a dict; Unigram: a list
                added = [int(t["id"]) + 1 for t in data.get("added_tokens") or []]
                return max([n, *added]) or None
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return None
    return None


def policy_shape(cfg: Any) -> M.Shape:
    """The trained model's shape: ``model.init``'s config.json, or the preset a stage builds from scratch."""
    if cfg.model.init:
        return M.Shape.from_config(_config_json(cfg.model.init, "model.init"), name=str(cfg.model.init))
    from alignforge.models.load import preset_config

    # A fresh preset gets the tokenizer's vocabulary (model.tokenizer, else one trained with model.vocab_size).
    vocab = _tokenizer_vocab(cfg.model.tokenizer) or cfg.model.vocab_size
    try:
        conf = preset_config(cfg.model.preset, vocab, **cfg.model.overrides)
    except (ValueError, TypeError) as e:
        raise NoEstimate(f"model.preset={cfg.model.preset}: {e}") from None
    return M.Shape.from_config(conf, name=f"preset {cfg.model.preset}")


def _shape(path: str, key: str) -> M.Shape:
    return M.Shape.from_config(_config_json(path, key), name=str(path))


def shapes_of(cfg: Any) -> dict[str, M.Shape]:
    """{"policy", and where the stage has them "reward" / "value" / "ref" / "preference", eval's
    "checkpoint <i>"}: every model the estimate counts. eval's "policy" is its first checkpoint."""
    stage = type(cfg).stage_name
    if stage == "eval":
        if not cfg.eval.checkpoints:
            raise NoEstimate("no checkpoints")
        out = {f"checkpoint {i}": _shape(c, "eval.checkpoints") for i, c in enumerate(cfg.eval.checkpoints)}
        out["policy"] = out["checkpoint 0"]
    else:
        out = {"policy": policy_shape(cfg)}
    reward_init = getattr(getattr(cfg, "reward", None), "init", None)
    if stage in ("rsft", "ppo", "reinforce", "eval") and reward_init:
        out["reward"] = _shape(reward_init, "reward.init")
    if stage == "ppo":  # load_value's order: value.init, else reward.init (InstructGPT), else the policy
        if cfg.value.init:
            out["value"] = _shape(cfg.value.init, "value.init")
        elif "reward" in out:
            out["value"] = out["reward"]
    if stage in ("nash", "eval") and cfg.ref.init:
        out["ref"] = _shape(cfg.ref.init, "ref.init")
    if stage == "nash":  # preference_model's order: fitted on preference.init or model.init, else preference.init
        if cfg.nash.preference_data:
            backbone = cfg.preference.init or cfg.model.init
            out["preference"] = _shape(backbone, "preference.init") if backbone else out["policy"]
        elif cfg.preference.init:
            out["preference"] = _shape(cfg.preference.init, "preference.init")
    return out


def longest_prompt(tokenizer_dir: str | Path, prompts: Sequence[Any], max_new_tokens: int,
                   positions: int | None) -> int:
    """The longest prompt in tokens as the sampling engine gets it: the chat template's ids
    (``data.batching.encode_prompt``), cut to the model's ``positions − max_new_tokens`` like the
    stages cut it; over the :data:`MEASURED_PROMPTS` longest prompts in characters."""
    from alignforge.data.batching import encode_prompt
    from alignforge.models.tokenizer import ensure_chat_template, load_tokenizer

    if not prompts:
        raise NoEstimate("no prompts")
    try:
        tok = ensure_chat_template(load_tokenizer(tokenizer_dir))
    except (OSError, ValueError) as e:  # the stage's loader says it properly
        raise NoEstimate(f"tokenizer {tokenizer_dir}: {e}") from None

    def chars(p: Any) -> int:
        return len(p) if isinstance(p, str) else sum(len(str(m.get("content", ""))) for m in p)

    budget = max(1, positions - max_new_tokens) if positions else None
    longest = sorted(prompts, key=chars, reverse=True)[:MEASURED_PROMPTS]
    return max(len(encode_prompt(tok, p, budget)) for p in longest)


def measure_prompts(cfg: Any, shapes: dict[str, M.Shape], prompts: Sequence[Any] | None) -> int | None:
    """:func:`longest_prompt` for the stages whose estimate needs it (None for the others)."""
    stage = type(cfg).stage_name
    if stage not in M.PROMPTED_STAGES:
        return None
    if prompts is None:
        raise NoEstimate("the stage gave no prompts to measure")
    if stage == "eval":  # every checkpoint samples with its own tokenizer
        return max(longest_prompt(_model_dir(c), prompts, cfg.eval.max_new_tokens,
                                  shapes[f"checkpoint {i}"].positions) for i, c in enumerate(cfg.eval.checkpoints))
    tok_dir = cfg.model.tokenizer or _model_dir(cfg.model.init)
    return longest_prompt(tok_dir, prompts, cfg.sampling.max_new_tokens, shapes["policy"].positions)


def _model_dir(path: str | None) -> Path:
    from alignforge.models.load import resolve_model_dir

    if not path:
        raise NoEstimate("no model directory")
    try:
        return resolve_model_dir(path)
    except FileNotFoundError as e:
        raise NoEstimate(str(e)) from None


def _fits_preference_here(cfg: Any) -> bool:
    """nash fits its preference model in this run: preference_data, and none saved yet (or force=true)."""
    return bool(cfg.nash.preference_data) and (
        cfg.force or not (cfg.out_dir() / "preference" / "config.json").is_file())


def estimate(cfg: Any, shapes: dict[str, M.Shape], prompt_tokens: int | None = None, world: int = 1) -> M.Memory:
    """The stage's estimate; ``world``: the torchrun processes (the RL stages sample one's share of the prompts)."""
    stage = type(cfg).stage_name
    return M.stage_memory(stage, cfg, shapes["policy"], reward=shapes.get("reward"), value=shapes.get("value"),
                          ref=shapes.get("ref"), preference=shapes.get("preference"),
                          checkpoints=[v for k, v in shapes.items() if k.startswith("checkpoint ")],
                          prompt_tokens=prompt_tokens,
                          fit_preference=_fits_preference_here(cfg) if stage == "nash" else None, world=world)


# ---------------------------------------------------------------------------------------------
# What the device has, and what this process needs of it
# ---------------------------------------------------------------------------------------------


def _cgroup_left() -> int | None:
    """Bytes the cgroup memory limit still allows this container (v2, else v1); None without a limit."""
    for limit_f, usage_f in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                             ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                              "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_f).read_text().strip()
            if limit == "max" or int(limit) >= 1 << 60:  # v1 writes a huge number for "no limit"
                return None
            return max(0, int(limit) - int(Path(usage_f).read_text().strip()))
        except (OSError, ValueError):
            continue
    return None


def cpu_available() -> int | None:
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    left = _cgroup_left()
    return avail if left is None else min(avail, left)


def available_memory(device: torch.device) -> tuple[int | None, str]:
    """(bytes this process may still use on ``device``, where that number comes from)."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return int(free), f"free on {device} (of {fmt_bytes(total)})"
    return cpu_available(), "available RAM"


def _processes_sharing(device: torch.device) -> int:
    """How many processes of this run draw on the same memory: torchrun's processes on one host share
    its RAM; each GPU is its own process's."""
    from alignforge.train import distributed as dist

    if device.type == "cuda" or not dist.is_distributed():
        return 1
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size())))
    except ValueError:
        return dist.world_size()


def _sharded(cfg: Any) -> bool:
    """Does ``runtime.fsdp`` shard this stage's trained model (critique: its fine-tune, which is sft)?"""
    stage = type(cfg).stage_name
    return stage in FSDP_STAGES or (stage == "critique" and cfg.critique.finetune)


def need_bytes(cfg: Any, mem: M.Memory, shapes: dict[str, M.Shape], world: int) -> int:
    """One process's peak: the estimate, less what FSDP shards away (the trained model, its gradients
    and AdamW state split over ``world`` processes; a phase apart, such as critique's sampling, runs
    on whole weights)."""
    stage = type(cfg).stage_name
    if not (cfg.runtime.fsdp and world > 1 and _sharded(cfg)):
        return mem.peak
    s = shapes["policy"]
    trained = 4 * (M.scorer_params(s, len(cfg.reward.heads)) if stage == "reward" else M.lm_params(s))
    sharded = trained + mem.grads + mem.adam
    training = (mem.weights + mem.grads + mem.adam + max(mem.activations, mem.kv_cache)
                - sharded + math.ceil(sharded / world))
    return max(training, mem.weights + max(mem.apart.values())) if mem.apart else training


# ---------------------------------------------------------------------------------------------
# What would fit: the memory options, searched with the same estimator
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Level:
    changes: tuple[tuple[str, Any], ...]  # dotted config keys → values
    tier: int  # 0 = changes the data (seq_len), 1 = what trains (LoRA), 2 = the optimizer steps, 3 = speed only
    cost: int  # within the tier: how far from the run as configured
    why: str = ""


def _with(cfg: Any, changes: tuple[tuple[str, Any], ...]) -> Any:
    out = copy.deepcopy(cfg)
    for key, value in changes:
        *path, last = key.split(".")
        node = out
        for part in path:
            node = getattr(node, part)
        setattr(node, last, value)
    return out


def _halvings(n: int, floor: int = 1, step: int = 1) -> list[int]:
    """n, n/2, n/4, … (multiples of ``step``, not below ``floor``)."""
    out = [n]
    while True:
        nxt = max(floor, (out[-1] // 2) // step * step)
        if nxt >= out[-1]:
            return out
        out.append(nxt)


def _batch_axis(key: str, n: int, why: str, tier: int = 3, floor: int = 1, step: int = 1,
                levels: int | None = None) -> list[_Level]:
    """``key`` at n, n/2, n/4, … (the first ``levels`` of them)."""
    return [_Level(((key, v),), tier, i, why if i else "")
            for i, v in enumerate(_halvings(n, floor=floor, step=step)[:levels])]


def _axes(cfg: Any, world: int = 1) -> list[list[_Level]]:
    """Each memory option as a list of levels (level 0 = as configured)."""
    stage = type(cfg).stage_name
    generate = "more, smaller generate calls"
    if stage == "collect":
        return [_batch_axis("collect.batch_size", cfg.collect.batch_size, generate)]
    if stage == "eval":
        axes = [_batch_axis("eval.batch_size", cfg.eval.batch_size, "more, smaller generate and log-prob calls")]
        if cfg.reward.init:
            axes.append(_batch_axis("reward.batch_size", cfg.reward.batch_size, "smaller reward-model forwards"))
        return axes
    axes: list[list[_Level]] = []
    if stage == "critique":
        axes.append(_batch_axis("critique.batch_size", cfg.critique.batch_size,
                                "more, smaller generate calls (a new chunk plan)"))
        if not cfg.critique.finetune:
            return axes
    t = cfg.train
    same = _Level((), 0, 0)
    if not cfg.model.gradient_checkpointing:
        axes.append([same, _Level((("model.gradient_checkpointing", True),), 3, 1, "recomputes activations: slower")])
    if stage != "pretrain":  # pretrain trains every weight (no LoRA there)
        lora: list[tuple[str, Any]] = []
        if not cfg.model.lora.enabled:
            lora.append(("model.lora.enabled", True))
        uses_ref = stage in ("ppo", "reinforce", "nash") or (stage == "dpo" and not cfg.dpo.reference_free)
        if uses_ref and not cfg.ref.share_base and not cfg.ref.init and not cfg.runtime.fsdp:
            lora.append(("ref.share_base", True))
        if stage == "ppo" and not cfg.value.lora:
            lora.append(("value.lora", True))
        if lora:
            axes.append([same, _Level(tuple(lora), 1, 1, "trains adapters, not every weight")])
    if stage in ("pretrain", "sft", "reward", "dpo", "rsft", "critique"):
        # Smaller micro-batches, more of them accumulated: the same batch per optimizer step.
        b, a = t.batch_size, t.grad_accum
        axes.append([_Level((("train.batch_size", nb), ("train.grad_accum", math.ceil(a * b / nb))), 2, i,
                            "same batch per optimizer step" if i else "")
                     for i, nb in enumerate(_halvings(b))])
    if stage in ("ppo", "reinforce"):
        key = f"{stage}.minibatch_size"
        mb = getattr(getattr(cfg, stage), "minibatch_size")
        k = cfg.reinforce.k if stage == "reinforce" else 1  # a GRPO/RLOO group is never split
        axes.append(_batch_axis(key, mb, "more, smaller optimizer steps per rollout", tier=2, floor=k, step=k))
        # rollout.batch_size chunks the log-prob and scoring forwards only: make_rollout samples all of a
        # step's prompts (× k) in one engine call, so fewer rollout.prompts is what shrinks the sampling.
        axes.append(_batch_axis("rollout.batch_size", cfg.rollout.batch_size, "smaller log-prob and scoring forwards",
                                levels=4))
        axes.append(_batch_axis("rollout.prompts", cfg.rollout.prompts,
                                "fewer prompts per step: all of them are sampled at once", tier=0, floor=world,
                                step=world, levels=3))
        n_eval = getattr(cfg, stage).eval_prompts
        if cfg.data.eval and n_eval:
            axes.append(_batch_axis(f"{stage}.eval_prompts", n_eval,
                                    "fewer eval prompts: the proxy eval samples them at once", tier=0, levels=3))
    if stage == "nash":
        axes.append(_batch_axis("train.batch_size", t.batch_size, "more, smaller optimizer steps per rollout",
                                tier=2, levels=4))
        # The log-prob and preference-model forwards, halved together (speed only).
        pairs: list[tuple[int, int]] = []
        for i in range(4):
            pair = (max(1, cfg.rollout.batch_size >> i), max(1, cfg.preference.batch_size >> i))
            if not pairs or pair != pairs[-1]:
                pairs.append(pair)
        axes.append([_Level((("rollout.batch_size", rb), ("preference.batch_size", pb)), 3, i,
                            "smaller log-prob and preference forwards" if i else "")
                     for i, (rb, pb) in enumerate(pairs)])
        if _fits_preference_here(cfg):
            axes.append(_batch_axis("nash.preference_batch_size", cfg.nash.preference_batch_size,
                                    "smaller preference-fit batches", tier=2, levels=4))
        # Fewer prompts per step: the opponent's sampling holds all of them at once (changes the updates).
        axes.append(_batch_axis("rollout.prompts", cfg.rollout.prompts, "fewer prompts per step", tier=0,
                                floor=world, step=world, levels=3))
    if stage == "rsft":
        axes.append(_batch_axis("rsft.sample_batch_size", cfg.rsft.sample_batch_size, generate))
    # Shorter sequences change the data (longer examples are cut or dropped): the last resort, two halvings.
    # (rsft's sampling is sized by its measured prompts, not train.seq_len: a shorter seq_len is found to
    # fit only where it shrinks the training; ppo / reinforce / nash cut their prompts to it.)
    floor = 64 + (cfg.sampling.max_new_tokens if stage in ("ppo", "reinforce", "nash") else 0)
    seqs = [n for n in _halvings(t.seq_len)[:3] if n >= floor] or [t.seq_len]
    axes.append([_Level((("train.seq_len", n),), 0, i, "longer examples are cut or dropped" if i else "")
                 for i, n in enumerate(seqs)])
    return axes


@dataclass
class Fit:
    changes: tuple[tuple[str, Any], ...]
    need: int
    why: tuple[str, ...]

    def overrides(self) -> str:
        return " ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in self.changes)


def what_fits(cfg: Any, shapes: dict[str, M.Shape], budget: int, world: int = 1, procs: int = 1,
              prompt_tokens: int | None = None) -> list[Fit]:
    """The least intrusive combinations of the memory options that bring the estimate under ``budget``.

    Every combination is estimated (a few hundred, ppo's and nash's a few thousand at most, each a
    config copy and some integer arithmetic; only a refused run gets here) and ranked by what it
    changes, the most intrusive change compared first: the data (train.seq_len; ppo, reinforce, nash:
    rollout.prompts; ppo, reinforce: their eval_prompts), then what trains (LoRA), then the optimizer
    steps (micro-batches), then only the speed (checkpointing, generation and scoring batches).
    Returns the best, and the best with LoRA when the best has none (usually faster than tiny
    micro-batches)."""
    fits: list[tuple[tuple[int, ...], Fit]] = []
    for combo in itertools.product(*_axes(cfg, world)):
        changes = tuple(c for level in combo for c in level.changes if level.cost)
        trial = _with(cfg, changes)
        need = need_bytes(trial, estimate(trial, shapes, prompt_tokens, world), shapes, world) * procs
        if need <= budget:
            rank = tuple(sum(level.cost for level in combo if level.tier == tier) for tier in range(4))
            fits.append((rank, Fit(changes, need, tuple(lv.why for lv in combo if lv.cost and lv.why))))
    if not fits:
        return []
    fits.sort(key=lambda rf: (rf[0], rf[1].need))
    best = fits[0][1]
    out = [best]
    if not any(k == "model.lora.enabled" for k, _ in best.changes):
        lora = [f for _, f in fits if any(k == "model.lora.enabled" for k, _ in f.changes)]
        if lora:
            out.append(lora[0])
    return out


# ---------------------------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------------------------


def _parts(mem: M.Memory) -> str:
    def b(n: int) -> str:
        return fmt_bytes(n) if n else "–"

    trains = f"grads {fmt_bytes(mem.grads)}, AdamW {fmt_bytes(mem.adam)}, " if mem.grads or mem.adam else ""
    apart = "".join(f", {what} {fmt_bytes(n)}" for what, n in mem.apart.items())
    return (f"weights {fmt_bytes(mem.weights)}, {trains}activations {b(mem.activations)}, "
            f"KV cache/rollout {b(mem.kv_cache)}{apart}")


def _nothing_fits(cfg: Any, mem: M.Memory) -> str:
    stage = type(cfg).stage_name
    if not (mem.grads or mem.adam):  # only inference: the weights and the smallest batches are what is left
        more = " or evaluate fewer checkpoints per run (eval loads them all at once)" if stage == "eval" else ""
        return (f"No smaller sampling or scoring batch fits: the weights alone are {fmt_bytes(mem.weights)}: "
                f"use a smaller model{more}.")
    fewer = ", fewer rollout.prompts" if stage in ("ppo", "reinforce", "nash") else ""
    return (f"No combination of gradient checkpointing, LoRA (with the shared reference), smaller micro-batches{fewer} "
            "and a shorter train.seq_len fits: use a smaller model"
            + ("" if cfg.runtime.fsdp or not _sharded(cfg) else
               ", or shard it with runtime.fsdp=true over several GPUs under torchrun (pretrain, sft, reward, dpo, "
               "rsft, critique's fine-tune)") + ".")


def check_memory(cfg: Any, device: torch.device, log: Callable[[str], Any] = print,
                 prompts: Sequence[Any] | Callable[[], Sequence[Any] | None] | None = None) -> M.Memory | None:
    """Print the stage's memory estimate beside the device's available memory; refuse (ConfigError)
    a run whose estimate does not fit, naming what would, unless ``runtime.memory_check`` is false.
    ``prompts``: the prompts collect, eval, critique and rsft will sample from (or a function returning
    them, called only when the check runs), for the longest one's length. Returns the estimate (None
    for a stage without a memory model, or shapes or prompts it cannot read)."""
    from alignforge.train import distributed as dist

    stage = type(cfg).stage_name
    if stage not in M.ESTIMATED_STAGES:
        return None
    main = dist.is_main()
    world = dist.world_size()
    try:
        shapes = shapes_of(cfg)
        if stage in M.PROMPTED_STAGES and callable(prompts):
            prompts = prompts()
        n_prompt = measure_prompts(cfg, shapes, prompts)
        mem = estimate(cfg, shapes, n_prompt, world)
    except (NoEstimate, ValueError, OSError) as e:  # every rank reads the same files: they all skip alike
        if main:
            log(f"{stage}: memory: no estimate ({e})")
        return None
    procs = _processes_sharing(device)
    need = need_bytes(cfg, mem, shapes, world) * procs
    avail, where = available_memory(device)
    if dist.is_distributed():  # every rank decides on the same number
        got = [a for a in dist.all_gather_object(avail) if a is not None]
        avail = min(got) if got else None
    per = ""  # the line's estimate is the stage's; say when this process's share differs
    if need != mem.peak:
        how = [f"FSDP over {world}"] if need_bytes(cfg, mem, shapes, world) != mem.peak else []
        how += [f"{procs} processes on this host"] if procs > 1 else []
        per = f" → {fmt_bytes(need)} with {' and '.join(how)}"
    setting = mem.notes
    if mem.grads or mem.adam:
        setting += "; checkpointing" if cfg.model.gradient_checkpointing else "; no checkpointing"
    line = (f"{stage}: memory estimate ({setting}): {_parts(mem)}; peak {fmt_bytes(mem.peak)}{per}; "
            + (f"{fmt_bytes(avail)} {where}" if avail is not None else "available memory unknown"))
    if avail is None or need <= avail:
        if main:
            log(line)
        return mem
    if not cfg.runtime.memory_check:
        if main:
            log(line + " — does NOT fit; running anyway (runtime.memory_check=false)")
        return mem
    msg = [f"{stage}: this run does not fit: the memory estimate is {fmt_bytes(mem.peak)}{per} ({_parts(mem)}; "
           f"{setting}) and {fmt_bytes(avail)} is {where}."]
    fits = what_fits(cfg, shapes, int(SUGGEST_WITHIN * avail), world, procs, n_prompt)
    if fits:
        for i, f in enumerate(fits):
            why = f" ({'; '.join(f.why)})" if f.why else ""
            msg.append(f"{'Would fit' if i == 0 else 'Or, with LoRA'}: {f.overrides()} — {fmt_bytes(f.need)} "
                       f"estimated{why}.")
    else:
        msg.append(_nothing_fits(cfg, mem))
    msg.append(f"The estimate (alignforge.models.memory, docs/recipes.md) leaves out the CUDA context and allocator "
               f"slack, so a fix named here stays within {SUGGEST_WITHIN:.0%} of what is available; set "
               f"runtime.memory_check=false to run anyway.")
    raise ConfigError(" ".join(msg))
