"""Models: tiny Llama presets built from scratch, and loading/saving any local HF causal LM.

Everything saved here is a standard Hugging Face directory (``config.json`` + safetensors +
tokenizer files) that plain ``transformers`` ``from_pretrained`` loads.

Public API::

    resolve_model_dir(path)            stage folder runs/<run>/<stage> -> its model/; HF dir -> itself
    load_causal_lm(path) -> (model, tok)   fp32 on CPU by default; tok has a chat template and pad
    save_model(model, tok, dir)        atomic, safetensors; LoRA adapters are merged first
    frozen_copy(model)                 the reference model: eval mode, no grads
    apply_lora(model, LoraSection)     peft LoRA (optional extra ``[peft]``)
    prepare_for_training(model, cfg)   cfg.model's gradient checkpointing, then LoRA
    load_policy(cfg) -> (model, tok)   the model a stage trains: model.init or a fresh preset, prepared
    load_reference(ref_init, policy)   the frozen reference: ref.init, a frozen copy of the policy, or
                                       (ref.share_base) the LoRA policy with its adapters disabled
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from alignforge.io import atomic_dir


@dataclass(frozen=True)
class Preset:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    max_positions: int = 1024
    tie_embeddings: bool = True


# Llama-architecture presets sized for the embedded world on a CPU. Parameter counts are the
# non-embedding (matmul) parameters, the ones that set FLOPs (design §8).
PRESETS: dict[str, Preset] = {
    "tiny-1m": Preset(hidden=128, layers=4, heads=4, kv_heads=4, intermediate=344),
    "tiny-4m": Preset(hidden=256, layers=4, heads=4, kv_heads=4, intermediate=688),
    # Between tiny-4m and small-30m for the scaling ladder (bench/scale.py): 12.4M matmul params.
    "small-12m": Preset(hidden=384, layers=7, heads=6, kv_heads=6, intermediate=1024),
    "small-30m": Preset(hidden=512, layers=8, heads=8, kv_heads=8, intermediate=1376),
}


def preset_config(name: str, vocab_size: int, **overrides):
    """A ``transformers.LlamaConfig`` for a named preset.

    Special ids default to alignforge's tokenizer (``models.tokenizer``: pad ``<|pad|>`` = 0,
    eos ``<|end|>`` = 1, no bos) — LlamaConfig's own defaults (bos 1, eos 2) would make
    ``generate`` stop on ``<|system|>``. Pass ``pad_token_id=…, eos_token_id=…`` for another tokenizer.
    """
    from transformers import LlamaConfig

    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; expected one of {', '.join(PRESETS)}")
    p = PRESETS[name]
    kw = dict(
        vocab_size=vocab_size,
        hidden_size=p.hidden,
        num_hidden_layers=p.layers,
        num_attention_heads=p.heads,
        num_key_value_heads=p.kv_heads,
        intermediate_size=p.intermediate,
        max_position_embeddings=p.max_positions,
        tie_word_embeddings=p.tie_embeddings,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        attention_bias=False,
        mlp_bias=False,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    kw.update(overrides)
    return LlamaConfig(**kw)


def build_model(name: str, vocab_size: int, seed: int = 0, **overrides):
    """A freshly initialised ``LlamaForCausalLM`` from a preset (deterministic for a seed)."""
    import torch
    from transformers import LlamaForCausalLM

    cfg = preset_config(name, vocab_size, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    return model


def matmul_params(model) -> int:
    """Non-embedding matmul parameters (design §8 FLOPs): linear weights, minus embeddings/LM head."""
    import torch
    from transformers.pytorch_utils import Conv1D

    # The output projection is found by identity, not by name: it is lm_head (Llama, Qwen2,
    # GPT-2) or embed_out (GPT-NeoX). GPT-2 builds its other matmuls from Conv1D, not Linear.
    get_out = getattr(unwrap(model), "get_output_embeddings", None)
    out = get_out() if callable(get_out) else None
    total = 0
    for name, module in model.named_modules():
        if module is out or name.endswith("lm_head"):
            continue
        if isinstance(module, (torch.nn.Linear, Conv1D)):
            total += module.weight.numel()
    return total


# ---------------------------------------------------------------------------------------------
# Loading and saving local HF directories
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' per-call progress bars and load reports (stage logs stay readable)."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """The HF model directory for ``path``: a stage folder's ``model/``, or ``path`` itself.

    Design §8: ``model.init`` (and ``ref.init``, ``reward.init``, ``value.init``) may name a stage
    folder ``runs/<run>/<stage>`` or any local HF directory; both resolve here.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"model path does not exist: {p}")
    if p.is_file():
        raise FileNotFoundError(f"model path {p} is a file; expected a directory with config.json "
                                "(an HF model dir) or a stage folder containing model/")
    if (p / "config.json").is_file():
        return p
    if (p / "model" / "config.json").is_file():
        return p / "model"
    if (p / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{p} holds only LoRA adapter weights; alignforge saves merged models "
                                "(save_model) — merge the adapter into its base model first")
    hint = ""
    if (p / "state").is_dir():
        hint = " It has state/ but no model/: the stage was interrupted before it finished; rerun it to resume."
    contents = ", ".join(sorted(x.name for x in p.iterdir())[:12]) or "(empty)"
    raise FileNotFoundError(
        f"no loadable model in {p}: expected {p / 'config.json'} (an HF model dir) or "
        f"{p / 'model' / 'config.json'} (a stage folder). Found: {contents}.{hint}")


def _default_dtype(dtype):
    import torch

    # fp32 master weights everywhere (design: bf16 only through autocast). transformers v5 loads
    # in the checkpoint's dtype ("auto") unless told, so we always tell it.
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        try:
            return {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
                    "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}[dtype]
        except KeyError:
            raise ValueError(f"unknown dtype {dtype!r}; expected fp32, bf16 or fp16") from None
    return dtype


def resolve_device(device: str = "cpu") -> str:
    """``"auto"`` → ``"cuda"`` when a GPU is visible, else ``"cpu"``; anything else unchanged."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_causal_lm(path: str | os.PathLike, device: str = "cpu", dtype=None,
                   tokenizer: str | os.PathLike | None = None):
    """``(model, tokenizer)`` from a stage folder or a local HF causal-LM directory.

    The model is in train mode on ``device`` (``"auto"``: CUDA if present) in ``dtype`` (default fp32). The tokenizer comes from
    ``tokenizer`` if given, else from the model directory, and always has a chat template and a
    pad token (``ensure_chat_template``); ``model.config.pad_token_id`` is set to match when the
    checkpoint had none. Nothing is downloaded.
    """
    from transformers import AutoModelForCausalLM

    from alignforge.models.tokenizer import ensure_chat_template, load_tokenizer

    model_dir = resolve_model_dir(path)
    try:
        tok = load_tokenizer(tokenizer if tokenizer is not None else model_dir)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}. Pass tokenizer=<dir> (config key model.tokenizer) "
                                f"for the model in {model_dir}") from None
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=_default_dtype(dtype),
                                                     local_files_only=True)
    ensure_chat_template(tok)
    if len(tok) > model.get_input_embeddings().weight.shape[0]:
        raise ValueError(f"tokenizer has {len(tok)} tokens but the model in {model_dir} embeds only "
                         f"{model.get_input_embeddings().weight.shape[0]}: they do not belong together")
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tok.pad_token_id
    return model.to(resolve_device(device)).train(), tok


def unwrap(model):
    """The plain HF model inside a DDP wrapper (``.module``), or the model itself."""
    while hasattr(model, "module") and not hasattr(model, "save_pretrained"):
        model = model.module
    return model


def save_model(model, tokenizer, path: str | os.PathLike) -> Path:
    """Save ``model`` (+ ``tokenizer``) as an HF directory (safetensors), atomically.

    A peft LoRA model is saved merged (a copy; ``model`` keeps its adapters), so the result
    loads with plain ``transformers`` like any other checkpoint.
    """
    model = unwrap(model)
    if _is_peft(model):
        model = copy.deepcopy(model).merge_and_unload()
    with quiet_transformers(), atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
            _warn_if_autotokenizer_reinterprets(tmp, model)
    return Path(path)


def _warn_if_autotokenizer_reinterprets(d: Path, model) -> None:
    """Plain AutoTokenizer ignores a generic tokenizer saved beside some model types (qwen2, …)."""
    from transformers.models.auto import tokenization_auto

    from alignforge.models.tokenizer import GENERIC_TOKENIZER_CLASSES, saved_tokenizer_class

    model_type = getattr(model.config, "model_type", None)
    forced = getattr(tokenization_auto, "MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS", ())
    if model_type in forced and saved_tokenizer_class(d) in GENERIC_TOKENIZER_CLASSES:
        warnings.warn(
            f"saving a generic tokenizer beside a {model_type!r} model: plain transformers "
            f"AutoTokenizer will rebuild it as that family's tokenizer and may give different ids; "
            f"alignforge.models.load_tokenizer loads it exactly", stacklevel=3)


def frozen_copy(model):
    """An independent copy for use as a reference model: eval mode (no dropout), no grads.

    A peft model is merged into a plain model first: the reference is the policy at this moment.
    """
    model = unwrap(model)
    ref = copy.deepcopy(model)
    if _is_peft(ref):
        ref = ref.merge_and_unload()
    ref.eval()
    ref.requires_grad_(False)
    return ref


class AdaptersOffReference:
    """The reference as the LoRA policy's own base model (``ref.share_base``): every call runs the
    policy with its adapters disabled, in eval mode, without gradients — one copy of the weights
    serves as both policy and reference.

    It offers what the stages use a reference for: a forward (``ref(**inputs)``); the body and the
    head separately for Llama / Qwen2 (``ref.model``, ``ref.lm_head``, so the sliced and fp32-head
    paths of ``data.batching.token_logprobs`` and ``rl.rollout.response_logits`` run exactly as for a
    separately loaded base model); generation (the engine's HF path); ``parameters()`` / ``state_dict()``
    of the base weights under their plain names (so ``refcache.model_fingerprint``, the DPO cache key,
    equals the base model's); ``config``. ``eval()``, ``train()``, ``requires_grad_()`` and ``to()``
    leave the policy alone: a reference is always frozen and in eval mode.

    A disabled LoRA layer computes ``base_layer(x)`` and nothing else, so the log-probs are those of
    the base model bit for bit (tests/test_recipes.py); the policy's train/eval mode and its
    adapters are restored after each call.
    """

    _DELEGATED = frozenset({"config", "generation_config", "device", "dtype", "name_or_path",
                            "main_input_name", "get_input_embeddings", "get_output_embeddings"})
    _SUBMODULES = frozenset({"model", "lm_head", "transformer", "gpt_neox", "embed_out"})

    def __init__(self, peft_model):
        from peft.tuners.tuners_utils import BaseTunerLayer

        self._peft = peft_model
        self._base = peft_model.get_base_model()
        self._layers = [m for m in peft_model.modules() if isinstance(m, BaseTunerLayer)]
        self._depth = 0

    @contextlib.contextmanager
    def adapters_off(self) -> Iterator[None]:
        """Adapters disabled, eval mode, no grad; re-entrant; restores the policy on exit."""
        import torch

        outer = self._depth == 0
        self._depth += 1
        on: list[bool] = []
        was_training = False
        try:
            if outer:
                on = [not layer.disable_adapters for layer in self._layers]
                for layer, enabled in zip(self._layers, on):
                    if enabled:
                        layer.enable_adapters(False)
                was_training = self._peft.training
                if was_training:
                    self._peft.eval()
            with torch.no_grad():
                yield
        finally:
            self._depth -= 1
            if outer:
                for layer, enabled in zip(self._layers, on):
                    if enabled:
                        layer.enable_adapters(True)
                if was_training:
                    self._peft.train(True)

    def __call__(self, *args, **kwargs):
        with self.adapters_off():
            return self._peft(*args, **kwargs)

    @property
    def forward(self):
        import functools

        @functools.wraps(self._base.forward)  # the engine reads the signature (cache argument, logits_to_keep)
        def forward(*args, **kwargs):
            return self(*args, **kwargs)
        return forward

    @property
    def plain_base(self):
        """The plain HF model under the adapters (``data.batching.plain_head`` asks for its class)."""
        return self._base

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._DELEGATED:
            return getattr(self._base, name)
        if name in self._SUBMODULES:
            return _AdaptersOffModule(self, getattr(self._base, name))
        raise AttributeError(f"{type(self).__name__} (the policy with its adapters disabled, ref.share_base) "
                             f"has no attribute {name!r}")

    # --- a frozen reference: mode and grad changes are no-ops ---
    training = False

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def requires_grad_(self, requires_grad: bool = True):
        return self

    def to(self, *args, **kwargs):
        return self

    # --- the base weights, under the names a plain model gives them ---
    @staticmethod
    def _plain_name(name: str) -> str | None:
        parts = name.split(".")
        if any(p.startswith("lora_") or p == "modules_to_save" for p in parts):
            return None
        return ".".join(p for p in parts if p not in ("base_layer", "original_module"))

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        for name, p in self._base.named_parameters(prefix=prefix, recurse=recurse, remove_duplicate=remove_duplicate):
            plain = self._plain_name(name)
            if plain is not None:
                yield plain, p

    def parameters(self, recurse: bool = True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def buffers(self, recurse: bool = True):
        return self._base.buffers(recurse=recurse)

    def state_dict(self, *args, **kwargs) -> dict[str, Any]:
        out = {}
        for name, t in self._base.state_dict(*args, **kwargs).items():
            plain = self._plain_name(name)
            if plain is not None:
                out[plain] = t
        return out

    def __repr__(self) -> str:
        return f"AdaptersOffReference({type(self._base).__name__}, {len(self._layers)} LoRA layers disabled per call)"


class _AdaptersOffModule:
    """A submodule of the base model (body, LM head) whose calls run with the adapters disabled."""

    def __init__(self, owner: AdaptersOffReference, module):
        self._owner, self._module = owner, module

    def __call__(self, *args, **kwargs):
        with self._owner.adapters_off():
            return self._module(*args, **kwargs)

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._module, name)


# ---------------------------------------------------------------------------------------------
# LoRA (optional: the [peft] extra)
# ---------------------------------------------------------------------------------------------


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def apply_lora(model, lora):
    """Wrap ``model`` with LoRA adapters per a ``LoraSection``; only adapters (and a scalar head) train.

    ``lora.target_modules`` are module-name suffixes; they must match at least one linear layer
    (Llama/Qwen2: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj; GPT-2: c_attn,
    c_proj, c_fc; GPT-NeoX: query_key_value, dense, dense_h_to_4h, dense_4h_to_h).
    """
    import torch

    try:
        from peft import LoraConfig, TaskType, get_peft_model
    except ImportError:
        raise ImportError("model.lora.enabled needs the optional peft package: "
                          "pip install 'alignforge[peft]' (or pip install peft)") from None
    from transformers.pytorch_utils import Conv1D

    linear_names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                    if isinstance(m, (torch.nn.Linear, Conv1D)) and name}
    conv1d_names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, Conv1D)}
    wanted = list(lora.target_modules)
    if not set(wanted) & linear_names:
        raise ValueError(f"model.lora.target_modules {wanted} match no linear layer of "
                         f"{type(model).__name__}; its linear layers are: {', '.join(sorted(linear_names))}")
    is_scorer = hasattr(model, "score") and not hasattr(model, "lm_head")
    cfg = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=[t for t in wanted if t in linear_names],
        # GPT-2's Conv1D stores weights transposed (in × out).
        fan_in_fan_out=bool(set(wanted) & conv1d_names),
        # SEQ_CLS keeps the fresh scalar head fully trainable (peft's modules_to_save).
        task_type=TaskType.SEQ_CLS if is_scorer else TaskType.CAUSAL_LM,
    )
    return get_peft_model(model, cfg)


def _enable_checkpointing(model) -> None:
    """Activation (gradient) checkpointing of every decoder layer (transformers 5 renamed the method)."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


@contextlib.contextmanager
def checkpointing_in_eval(*models) -> Iterator[None]:
    """Let activation checkpointing work in a forward of a model kept in eval mode.

    The RL stages keep their models in eval mode (dropout off, so the engine's log-probs are the
    training forward's), but transformers checkpoints a decoder layer only when that layer is in
    training mode: ``model.gradient_checkpointing`` would silently do nothing. Inside this context
    only the checkpointed layers themselves are put in training mode — their attention and MLP
    submodules, which hold the dropout, stay in eval mode — so the forward is the same and the
    backward recomputes each layer instead of keeping its activations."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for model in models if model is not None for m in model.modules()
              if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing and not m.training]
    for m in layers:
        m.training = True
    try:
        yield
    finally:
        for m in layers:
            m.training = False


def prepare_for_training(model, cfg):
    """The last step of loading a model a stage trains (``cfg.model``): gradient checkpointing,
    then LoRA adapters. Returns the model to train (a peft wrapper with LoRA)."""
    if cfg.model.gradient_checkpointing:
        _enable_checkpointing(model)
    if cfg.model.lora.enabled:
        model = apply_lora(model, cfg.model.lora)
    return model


def load_policy(cfg):
    """(model, tokenizer) of the model a stage trains — SFT's, DPO's, the RL stages' policy: ``model.init``
    (a stage folder or HF dir), else a fresh ``model.preset`` with ``model.tokenizer``; checked against
    ``train.seq_len`` and prepared for training (:func:`prepare_for_training`)."""
    from alignforge.config import ConfigError
    from alignforge.models.tokenizer import ensure_chat_template, load_tokenizer

    if cfg.model.init:
        try:
            model, tok = load_causal_lm(cfg.model.init, tokenizer=cfg.model.tokenizer)
        except FileNotFoundError as e:
            raise ConfigError(f"model.init={cfg.model.init}: {e}") from None
    else:
        if not cfg.model.tokenizer:
            raise ConfigError(f"{cfg.stage_name} needs model.init (a stage folder or HF model dir), or "
                              "model.tokenizer to fine-tune a fresh model.preset")
        tok = ensure_chat_template(load_tokenizer(cfg.model.tokenizer))
        model = build_model(cfg.model.preset, len(tok), seed=cfg.seed, **cfg.model.overrides)
    max_pos = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if max_pos is not None and cfg.train.seq_len > max_pos:
        raise ConfigError(f"train.seq_len={cfg.train.seq_len} exceeds the model's {max_pos} positions")
    return prepare_for_training(model, cfg), tok


def load_reference(ref_init: str | None, policy, device, share_base: bool = False, fsdp: bool = False):
    """The frozen reference model: ``ref_init`` if set, else a frozen copy of ``policy`` as loaded
    (before any update, that is the SFT policy). Shared by DPO, PPO, the REINFORCE family and Nash-MD.

    ``share_base`` (config ``ref.share_base``, LoRA policies only): no copy at all — the reference is
    the policy with its adapters disabled (:class:`AdaptersOffReference`). The policy's base weights
    are frozen under LoRA and its adapters start at zero (B = 0), so this is the same reference as
    the frozen copy, bit for bit, for the whole run, in one copy of the weights instead of two."""
    from alignforge.config import ConfigError

    if share_base:
        if ref_init:
            raise ConfigError(f"ref.share_base=true makes the policy's own base model the reference; it cannot be "
                              f"combined with ref.init={ref_init} (a different model): set one of them")
        if not _is_peft(unwrap(policy)):
            raise ConfigError("ref.share_base=true needs a LoRA policy (model.lora.enabled=true): without adapters "
                              "the base weights are trained and no longer the reference")
        if fsdp:
            raise ConfigError("ref.share_base=true cannot be used with runtime.fsdp (the reference forward runs "
                              "outside the sharded wrapper); use a frozen copy (ref.share_base=false)")
        return AdaptersOffReference(unwrap(policy))
    if ref_init:
        try:
            ref, _ = load_causal_lm(ref_init)
        except FileNotFoundError as e:
            raise ConfigError(f"ref.init={ref_init}: {e}") from None
        ref.eval().requires_grad_(False)
    else:
        ref = frozen_copy(policy)
    return ref.to(device)


def load_for_inference(cfg, stage: str):
    """``model.init`` of an inference stage (serve, chat) in eval mode, threads applied; a missing
    or unloadable checkpoint is a ConfigError that says which and why."""
    import torch

    from alignforge.config import ConfigError

    if not cfg.model.init:
        raise ConfigError(f"{stage} needs a checkpoint: `alignforge {stage} runs/<run>/<stage>` (or model.init=DIR)")
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    try:
        model, tok = load_causal_lm(cfg.model.init, device=cfg.runtime.device, tokenizer=cfg.model.tokenizer)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.init: cannot load '{cfg.model.init}': {e}") from None
    return model.eval(), tok


def _same_vocab(tok, other, what: str, path: str) -> None:
    from alignforge.config import ConfigError

    if tok.get_vocab() != other.get_vocab():
        raise ConfigError(f"{what}={path}: its tokenizer differs from the policy's; rollouts are scored on the "
                          "policy's token ids, so the models must share one tokenizer")

def load_reward(cfg, tok, device) -> tuple[Any, int | None]:
    """(frozen reward model, score column) from ``reward.init`` / ``reward.head`` (the RL stages'
    reward; column ``None`` = the overall reward, ``models.scoring.select_reward``)."""
    from alignforge.config import ConfigError
    from alignforge.models.heads import load_scorer
    from alignforge.models.scoring import head_index

    if not cfg.reward.init:
        raise ConfigError(f"{type(cfg).__name__}: reward.init is not set (an `alignforge reward` stage folder)")
    try:
        rm, rm_tok = load_scorer(cfg.reward.init, device=str(device))
    except FileNotFoundError as e:
        raise ConfigError(f"reward.init={cfg.reward.init}: {e}") from None
    _same_vocab(tok, rm_tok, "reward.init", cfg.reward.init)
    try:
        index = head_index(rm, cfg.reward.head, where=f"config key 'reward.head' ({cfg.reward.init})")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    rm.eval().requires_grad_(False)
    return rm, index

def load_value(cfg, tok, device):
    """The critic: ``value.init`` → else ``reward.init`` (InstructGPT) → else ``model.init`` with a zero head.

    A scalar-head folder is loaded as is; a causal LM gets a zero-initialised head (first values 0).
    """
    import json

    import torch

    from alignforge.config import ConfigError
    from alignforge.models.heads import init_from_causal_lm, load_scorer

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
    value.requires_grad_(True)
    if cfg.model.gradient_checkpointing:
        _enable_checkpointing(value)
    if getattr(cfg.value, "lora", False):  # adapters + the head train; the backbone stays frozen
        value = apply_lora(value, cfg.model.lora)
    return value
