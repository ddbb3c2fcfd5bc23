"""Strict, documented dataclass configs: YAML files + dotted ``key=value`` overrides.

Every stage has one config dataclass built from shared sections. Loading is strict on purpose:
a typo in a config key silently falling back to a default is the most expensive bug in ML
tooling (a run that looks fine and trained the wrong thing). So an unknown key is an error that
names the key, lists the valid ones and suggests the closest; a wrong type names the field, the
expected type and the value given.

Fields carry their documentation in ``metadata["doc"]`` (use :func:`option`), which is what
``alignforge <stage> --help`` prints.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from alignforge.io import atomic_write_text


class ConfigError(ValueError):
    """A config could not be loaded: the message says which key, where, and what was expected."""


def option(default: Any = dataclasses.MISSING, doc: str = "", *, factory: Any = None) -> Any:
    """A documented dataclass field. Use ``factory`` for mutable defaults (lists, sections)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


def section(cls: type, doc: str = "") -> Any:
    """A nested config section with its defaults."""
    return field(default_factory=cls, metadata={"doc": doc})


# ---------------------------------------------------------------------------------------------
# Type checking / coercion
# ---------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = " or ".join(_type_name(a) for a in args)
        return f"{inner} or null" if len(args) < len(typing.get_args(tp)) else inner
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        args = typing.get_args(tp)
        return f"mapping of {_type_name(args[1])}" if args else "mapping"
    if dataclasses.is_dataclass(tp):
        return f"section {tp.__name__}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return the (lightly) coerced value."""
    origin = typing.get_origin(tp)
    bad = ConfigError(
        f"config key '{key}': expected {_type_name(tp)}, got {value!r} ({type(value).__name__})"
    )
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise bad
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise bad
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise bad
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad
        (inner,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        kt, vt = typing.get_args(tp) or (str, Any)
        return {str(k): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad
        return from_dict(tp, value, prefix=key + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise bad


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unknown_key_error(cls: type, key: str, prefix: str) -> ConfigError:
    valid = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
    return ConfigError(
        f"unknown config key '{prefix}{key}'.{hint} Valid keys"
        f"{' in ' + prefix.rstrip('.') if prefix else ''}: {', '.join(valid)}"
    )


def from_dict(cls: type, data: dict[str, Any] | None, prefix: str = "") -> Any:
    """Build ``cls`` from a (nested) dict, strictly: unknown keys and wrong types are errors."""
    data = dict(data or {})
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise _unknown_key_error(cls, key, prefix)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], prefix + f.name)
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field without default
        raise ConfigError(f"config section '{prefix.rstrip('.') or cls.__name__}': {e}") from e
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(f"config '{prefix.rstrip('.') or cls.__name__}': {e}") from e
    return obj


def to_dict(cfg: Any) -> dict[str, Any]:
    """The plain-dict (YAML-ready) form of a config."""
    return dataclasses.asdict(cfg)


# ---------------------------------------------------------------------------------------------
# Overrides and files
# ---------------------------------------------------------------------------------------------


def _field_type(cls: type, dotted: str) -> Any:
    """The annotation at a dotted path, raising the unknown-key error on the way."""
    tp: Any = cls
    prefix = ""
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"config key '{prefix}{part}': '{prefix.rstrip('.')}' is not a section")
        if part not in {f.name for f in dataclasses.fields(tp)}:
            raise _unknown_key_error(tp, part, prefix)
        tp = _hints(tp)[part]
        # Optional[Section] -> Section
        if typing.get_origin(tp) in (Union, types.UnionType):
            dcs = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
            if dcs:
                tp = dcs[0]
        prefix += part + "."
    return tp


def _accepts_str(tp: Any) -> bool:
    if tp is str:
        return True
    if typing.get_origin(tp) in (Union, types.UnionType):
        return any(_accepts_str(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is Literal:
        return all(isinstance(a, str) for a in typing.get_args(tp))
    return False


def parse_override(cls: type, text: str) -> tuple[str, Any]:
    """``"train.lr=3e-4"`` -> ``("train.lr", 0.0003)``, typed by the target field."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    tp = _field_type(cls, key)
    if raw.strip() in ("null", "None", "~"):
        return key, None
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{text}': value is not valid YAML: {e}") from e
    # "model.init=123" must stay a string when the field is a string (paths, names, ids).
    if _accepts_str(tp) and not isinstance(value, str) and not isinstance(value, (list, dict)):
        if value is None or isinstance(value, (int, float, bool)):
            if not (typing.get_origin(tp) in (Union, types.UnionType) and
                    any(a in (int, float, bool) for a in typing.get_args(tp))):
                value = raw
    # A float that YAML read as a string ("3e-4" in YAML 1.1 is a str).
    if isinstance(value, str) and not _accepts_str(tp):
        try:
            value = float(value) if "." in value or "e" in value.lower() else int(value)
        except ValueError:
            pass
    return key, value


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file not found: {p}")
    try:
        with open(p, encoding="utf-8") as f:  # a stream, so YAML errors show the file name, not "<unicode string>"
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of config keys, got {type(data).__name__}")
    return data


def load_config(cls: type, path: str | os.PathLike | None = None, overrides: list[str] | tuple = (),
                base: dict[str, Any] | None = None) -> Any:
    """File (optional) → dict, dotted overrides applied in order, then strict construction."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        file_data = load_yaml(path)  # its errors already name the file
        try:
            data = _deep_merge(data, file_data)
            from_dict(cls, data)  # validate the file on its own for a file-named error
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    for text in overrides:
        key, value = parse_override(cls, text)
        _set_dotted(data, key, value)
    return from_dict(cls, data)


def build_config(cls: type, path: str | os.PathLike | None = None, values: dict[str, Any] | None = None) -> Any:
    """File (optional) + typed values at dotted keys (``{"train.lr": 1e-3}``) → a validated config.

    What ``pipeline`` and ``demo`` use: stages get config objects, never argument strings.
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = load_yaml(path)
        try:
            from_dict(cls, data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    for key, value in (values or {}).items():
        _field_type(cls, key)  # unknown keys fail here, naming the key and the valid ones
        _set_dotted(data, key, value)
    return from_dict(cls, data)


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(dotted key, type, default, doc) for every leaf field: what ``--help`` prints."""
    rows = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        doc = f.metadata.get("doc", "")
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, prefix + f.name + "."))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "(required)"
        rows.append((prefix + f.name, _type_name(tp), default, doc))
    return rows


# ---------------------------------------------------------------------------------------------
# Shared sections (design §8: model.init, ref.init, reward.init, value.init, data.train, data.eval, out)
# ---------------------------------------------------------------------------------------------


@dataclass
class LoraSection:
    enabled: bool = option(False, "train LoRA adapters (peft) instead of all weights")
    r: int = option(16, "LoRA rank")
    alpha: int = option(32, "LoRA scaling alpha")
    dropout: float = option(0.0, "LoRA dropout")
    target_modules: list[str] = option(doc="module names to adapt",
                                       factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                        "gate_proj", "up_proj", "down_proj"])


@dataclass
class ModelSection:
    init: Optional[str] = option(None, "a stage folder (runs/<run>/<stage>) or a local HF model directory; "
                                       "null = build from `preset`")
    preset: str = option("tiny-4m", "tiny model preset when training from scratch (tiny-1m, tiny-4m, small-12m, small-30m)")
    tokenizer: Optional[str] = option(None, "tokenizer directory (default: the one saved with model.init)")
    gradient_checkpointing: bool = option(False, "recompute activations in backward to save memory")
    overrides: dict[str, Any] = option(doc="transformers config fields that change the preset when building "
                                           "from scratch, e.g. {hidden_size: 64, num_hidden_layers: 2}",
                                       factory=dict)
    vocab_size: int = option(4096, "vocabulary of the BPE tokenizer trained on the training text "
                                   "when neither model.tokenizer nor model.init gives one")
    lora: LoraSection = section(LoraSection, "optional LoRA adapters")


@dataclass
class RefSection:
    init: Optional[str] = option(None, "reference model (default: the policy's init)")
    share_base: bool = option(False, "with model.lora.enabled and no ref.init: the reference is the policy with its "
                                     "LoRA adapters disabled (peft), not a second copy of the weights — the same "
                                     "numbers in half the weight memory")


@dataclass
class DataSection:
    train: Optional[str] = option(None, "training records: JSONL(.gz), Parquet, or a local HF datasets dir")
    eval: Optional[str] = option(None, "held-out records for evaluation")
    format: str = option("auto", "dataset layout: auto (detected from the first row), records, hh-rlhf, alpaca, dolly, "
                               "oasst, ultrafeedback, ultrafeedback-binarized, messages (ShareGPT too), "
                               "prompt-completion, unpaired, implicit-prompt (docs/datasets.md)")
    on_bad_record: Literal["error", "skip"] = option("error", "malformed record: stop with the error, or skip and count")
    max_records: Optional[int] = option(None, "use at most this many training records")


@dataclass
class TrainSection:
    lr: float = option(3e-4, "peak learning rate (AdamW)")
    weight_decay: float = option(0.1, "AdamW weight decay (not applied to norms/biases)")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.95, "AdamW beta2")
    eps: float = option(1e-8, "AdamW epsilon")
    schedule: Literal["cosine", "linear", "constant"] = option("cosine", "learning-rate schedule after warmup")
    warmup_steps: int = option(20, "linear warmup steps")
    min_lr_ratio: float = option(0.1, "final lr as a fraction of the peak (cosine/linear)")
    batch_size: int = option(16, "micro-batch size (sequences per forward) per process")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    max_steps: int = option(200, "optimizer steps")
    grad_clip: float = option(1.0, "clip the global grad norm to this (0 = off)")
    seq_len: int = option(256, "tokens per sequence / packed block")
    log_every: int = option(10, "log metrics every N steps")
    eval_every: int = option(100, "evaluate every N steps (0 = only at the end)")
    save_every: int = option(100, "checkpoint every N steps (0 = only at the end)")
    max_minutes: Optional[float] = option(None, "stop (and save) after this many minutes")


@dataclass
class RuntimeSection:
    device: Literal["auto", "cpu", "cuda"] = option("auto", "auto = CUDA when present, else CPU")
    precision: Literal["auto", "fp32", "bf16"] = option("auto", "auto = bf16 autocast on CUDA that supports it and on CPUs with AMX-BF16 or AVX512-BF16, fp32 elsewhere")
    fsdp: bool = option(False, "shard the model with FSDP (multi-GPU, models that do not fit one GPU)")
    threads: Optional[int] = option(None, "torch intra-op threads on CPU (default: torch's choice)")
    tensorboard: bool = option(False, "also log to TensorBoard (needs the [tb] extra)")
    progress: bool = option(True, "show rich progress bars")
    memory_check: bool = option(True, "before loading, estimate the stage's memory from the model's config "
                                      "(alignforge.models.memory) and refuse a run that cannot fit the device, "
                                      "naming the options that would; false = print the estimate and run anyway")


@dataclass
class StageConfig:
    """Keys every stage has."""

    run: str = option("default", "run name: outputs go to runs/<run>/<stage> unless `out` is set")
    out: Optional[str] = option(None, "output folder (default runs/<run>/<stage>)")
    seed: int = option(0, "random seed (data order, init, sampling)")
    force: bool = option(False, "recompute a finished stage (DONE marker present) from scratch")
    runtime: RuntimeSection = section(RuntimeSection, "device and precision")

    stage_name: typing.ClassVar[str] = "stage"

    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / self.run / self.stage_name


@dataclass
class RNNBaselineSection:
    """The LSTM language model scored beside the n-grams (``alignforge.classic.rnn``; lecture 002's n-gram →
    RNN → transformer)."""

    steps: int = option(0, "optimizer steps of the LSTM LM trained on data.train and scored on data.eval (bits per "
                           "byte, over the tokenizer's ids) beside the model; 0 = none")
    max_minutes: Optional[float] = option(None, "wall-clock cap, e.g. the transformer's own training minutes for a "
                                                "same-time-budget comparison (a capped run depends on the machine)")
    embed: int = option(128, "token embedding width")
    hidden: int = option(512, "LSTM hidden (and cell) width")
    layers: int = option(1, "stacked LSTM layers")
    seq_len: int = option(128, "truncated back-propagation window, in tokens")
    batch_size: int = option(16, "windows per step")
    lr: float = option(3e-3, "peak learning rate (AdamW; warm-up then cosine to 10%)")
    save_every: int = option(50, "checkpoint every N steps (exact resume); 0 = only at the end")

    def validate(self) -> None:
        for key in ("steps", "save_every"):
            if getattr(self, key) < 0:
                raise ConfigError(f"config key 'rnn.{key}': expected >= 0, got {getattr(self, key)}")
        for key in ("embed", "hidden", "layers", "seq_len", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key 'rnn.{key}': expected >= 1, got {getattr(self, key)}")
        if self.lr <= 0:
            raise ConfigError(f"config key 'rnn.lr': expected > 0, got {self.lr}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f"config key 'rnn.max_minutes': expected > 0 (or null), got {self.max_minutes}")


@dataclass
class PretrainConfig(StageConfig):
    """Causal LM from scratch (or continued) on text records, packed into fixed blocks."""

    stage_name: typing.ClassVar[str] = "pretrain"
    model: ModelSection = section(ModelSection, "the model")
    data: DataSection = section(DataSection, "text records")
    train: TrainSection = section(TrainSection, "optimisation")
    baselines: list[int] = option(doc="n-gram orders fitted on data.train and scored on data.eval (bits per byte, "
                                      "over bytes and tokens) beside the model; [] = none",
                                  factory=lambda: [1, 3, 5])
    rnn: RNNBaselineSection = section(RNNBaselineSection, "an LSTM LM baseline beside the n-grams (off by default)")
    chat_dialogues: bool = option(False, "render records that carry meta.messages (the world's User/Assistant "
                                         "dialogues) in the tokenizer's chat template, laid out exactly as SFT "
                                         "and every later stage prompt (prompt, assistant header, answer, eos), "
                                         "instead of their plain text; held-out records too")


@dataclass
class TokenizerSection:
    vocab_size: int = option(4096, "BPE vocabulary size, including the 5 special tokens and 256 bytes")
    min_frequency: int = option(2, "a pair must occur this often to be merged")
    model_max_length: int = option(1024, "the tokenizer's model_max_length")
    also_train_on: list[str] = option(doc="more files (any format data.train takes) whose text the vocabulary "
                                          "should cover, e.g. the SFT demonstrations: a word the pretraining "
                                          "text never uses is otherwise spelled byte by byte, and a small model "
                                          "sampling at T = 1 misspells it", factory=list)


@dataclass
class TokenizerConfig(StageConfig):
    """Train a byte-level BPE tokenizer (with our chat template) on text records."""

    stage_name: typing.ClassVar[str] = "tokenizer"
    data: DataSection = section(DataSection, "text: records (any kind: their text fields are used), .txt files, "
                                             "or a local HF datasets dir")
    tokenizer: TokenizerSection = section(TokenizerSection, "BPE training")


@dataclass
class SFTSection:
    train_on_prompt: bool = option(False, "also put loss on prompt tokens (prompt masking off)")
    batching: Literal["pack", "sorted", "pad"] = option("pack", "pack: several examples per row, block-diagonal "
                                                       "attention; sorted: one per row, length-sorted; pad: naive")
    attention: Literal["mask", "position_ids"] = option("mask", "how packing is told to the model: a 4D block mask, "
                                                        "or restarting position_ids (flash-attention varlen on GPU)")
    epochs: Optional[float] = option(None, "passes over the data; sets train.max_steps when given")
    eval_fraction: float = option(0.05, "held-out share of data.train when data.eval is not given")
    max_eval_examples: int = option(256, "evaluate on at most this many held-out examples")
    samples: int = option(4, "greedy samples on held-out prompts logged to samples.jsonl at each eval (0 = none)")
    sample_max_new_tokens: int = option(64, "new tokens per logged sample")
    ptx_coef: float = option(0.0, "SFT-ptx: weight of the pretraining LM loss mixed into every optimizer step "
                                  "(keeps what pretraining stored, e.g. names the demonstrations never "
                                  "mention; 0 = off)")
    ptx_data: Optional[str] = option(None, "SFT-ptx text records (the pretraining corpus)")
    ptx_batch_size: int = option(4, "SFT-ptx blocks of train.seq_len tokens per optimizer step (per process)")
    ptx_chat_dialogues: bool = option(False, "render ptx_data's dialogue records in the chat template, as "
                                             "pretraining with chat_dialogues did")

    def validate(self) -> None:
        if self.ptx_coef < 0 or self.ptx_batch_size < 1:
            raise ConfigError("config keys 'sft.ptx_coef' >= 0 and 'sft.ptx_batch_size' >= 1 expected")
        if self.ptx_coef and not self.ptx_data:
            raise ConfigError("config key 'sft.ptx_coef' > 0 needs sft.ptx_data (text records)")


@dataclass
class SFTConfig(StageConfig):
    """Supervised fine-tuning on demonstrations: response-only loss, packed without cross-attention."""

    stage_name: typing.ClassVar[str] = "sft"
    model: ModelSection = section(ModelSection, "the model: model.init = a stage folder or a local HF model")
    data: DataSection = section(DataSection, "demonstrations (prompt + response, or message lists)")
    train: TrainSection = section(TrainSection, "optimisation")
    sft: SFTSection = section(SFTSection, "SFT specifics: masking, batching, eval samples")


@dataclass
class SamplingSection:
    temperature: float = option(1.0, "sampling temperature (0 = greedy)")
    top_p: float = option(1.0, "nucleus sampling mass (1 = off)")
    top_k: int = option(0, "top-k sampling (0 = off)")
    max_new_tokens: int = option(64, "longest response, in tokens")


@dataclass
class CollectSection:
    world: Optional[str] = option(None, "world folder (manifest.json) whose judge/annotators label the samples; "
                                        "default: the folder holding data.train")
    k: int = option(4, "responses sampled per prompt (K)")
    prompts: Optional[int] = option(None, "label at most this many training prompts (default: all)")
    eval_prompts: int = option(200, "held-out prompts (from data.eval) for annotator- and gold-labelled eval pairs")
    pool: Literal["default", "length_biased", "condorcet"] = option(
        "default", "simulated annotator pool preset (condorcet: three groups whose answer-style tastes cycle)")
    labels: list[str] = option(doc="label kinds to write: comparison, ranking, rating",
                               factory=lambda: ["comparison", "ranking", "rating"])
    pairs_per_prompt: int = option(2, "pairwise comparisons per prompt (distinct candidate pairs, each by a random annotator)")
    reference_policies: list[str] = option(doc="world reference policies (oracle, demonstrator, noisy, random, "
                                               "hedger, refuser) that add one candidate each beside the K samples",
                                           factory=list)
    round: int = option(0, "collection round, recorded as provenance (iterated RLHF)")
    batch_size: int = option(64, "prompts per sampling batch")
    length_probe_pad_words: int = option(20, "filler words of the padded wrong answers in length_probe.jsonl")


@dataclass
class CollectConfig(StageConfig):
    """Sample K responses per prompt from a policy and label them with simulated annotators."""

    stage_name: typing.ClassVar[str] = "collect"
    model: ModelSection = section(ModelSection, "the policy: model.init = a stage folder or a local HF model")
    data: DataSection = section(DataSection, "data.train: prompts to label; data.eval: held-out prompts "
                                             "(default: prompts_test beside data.train)")
    sampling: SamplingSection = section(SamplingSection, "how the policy samples")
    collect: CollectSection = section(CollectSection, "annotation")


@dataclass
class RewardSection:
    heads: list[str] = option(doc="scalar heads: one overall reward, or e.g. [helpful, honest, harmless] "
                                  "(trained from the ratings' separate axes)", factory=lambda: ["reward"])
    combine: dict[str, float] = option(doc="weights of the heads in the overall reward (default: equal weights "
                                           "summing to 1)", factory=dict)
    safety_head: Optional[str] = option(None, "Llama-2 safety gate: when this head's (normalised) score is below "
                                              "safety_threshold the reward is that score alone")
    safety_threshold: float = option(0.0, "the safety gate's threshold (normalised scale)")
    kinds: list[str] = option(doc="record kinds to learn from: comparison, ranking, rating",
                              factory=lambda: ["comparison", "ranking", "rating"])
    margins: Optional[list[float]] = option(None, "Llama-2 margin per strength level 0..3, e.g. [0, 0.33, 0.67, 1] "
                                                  "(null = no margin)")
    min_strength: int = option(0, "train only on pairs labelled at least this strong (0..3; see dpo.min_strength); "
                                  "held-out accuracy still uses every pair")
    label_smoothing: float = option(0.0, "assumed share ε of flipped labels: the conservative Bradley-Terry loss "
                                         "-(1-ε) log σ(Δ-m) - ε log σ(-Δ-m) (as cDPO); 0 = the plain loss")
    group_by_prompt: bool = option(False, "InstructGPT's batching: all pairs of a prompt in one micro-batch, each "
                                          "distinct response forwarded once (K forwards for a ranking's C(K,2) pairs); "
                                          "train.batch_size then counts pairs, a prompt's pairs are never split")
    ranking_weight: Literal["per_prompt", "per_pair"] = option("per_prompt", "per_prompt: a ranking's C(K,2) pairs "
                                                               "share one prompt's weight (InstructGPT); per_pair: 1 each")
    ratings: Literal["pairs", "regression"] = option("pairs", "Likert ratings → pairs between responses to one "
                                                     "prompt (ties dropped), or regression on likert - 4")
    eval_fraction: float = option(0.1, "prompts held out from data.train when data.eval is not set")
    gold_eval: Optional[str] = option(None, "gold-labelled comparisons (collect's gold_eval.jsonl) for gold accuracy")
    length_probe: Optional[str] = option(None, "comparisons (short right answer chosen, padded wrong rejected) "
                                               "for the length-bias rate (collect's length_probe.jsonl)")
    normalize_on: Optional[str] = option(None, "reference-policy samples (candidates/comparisons/demonstrations) "
                                               "whose mean score becomes 0; default: the training responses")
    normalize_std: bool = option(False, "also scale scores so the reference samples have std 1")
    max_norm_samples: int = option(1024, "score at most this many responses for the normalisation")
    epochs: Optional[float] = option(1.0, "passes over the training pairs; sets train.max_steps when given")


@dataclass
class RewardConfig(StageConfig):
    """Reward model: Bradley-Terry (+margins), rankings, Likert, helpful/honest/harmless heads."""

    stage_name: typing.ClassVar[str] = "reward"
    model: ModelSection = section(ModelSection, "backbone: model.init = an SFT stage folder or a local HF causal LM")
    data: DataSection = section(DataSection, "preference records: comparisons, rankings, ratings")
    train: TrainSection = section(TrainSection, "optimisation")
    reward: RewardSection = section(RewardSection, "reward-model specifics")


@dataclass
class DPOSection:
    loss: Literal["sigmoid", "ipo", "hinge"] = option("sigmoid", "sigmoid = DPO (with label_smoothing > 0: "
                                                      "conservative DPO), ipo = IPO, hinge = SLiC")
    beta: float = option(0.1, "β: strength of the implicit KL to the reference (higher = stay closer)")
    label_smoothing: float = option(0.0, "conservative DPO: assumed share of flipped labels ε (sigmoid loss only)")
    reference_free: bool = option(False, "drop the reference log-probs (π_ref ≡ uniform): no reference model at all")
    ref_cache: Literal["memory", "disk", "off"] = option("disk", "reference log-probs: computed once in a pre-pass and "
                                                         "kept in memory / also on disk (keyed by data + reference "
                                                         "weights); off = the naive reference forward every step")
    cache_dir: Optional[str] = option(None, "where ref_cache=disk stores them (default <out>/ref_cache)")
    packing: bool = option(True, "pack chosen+rejected examples into rows of train.seq_len (no padding waste); "
                                 "false = one example per row, padded to the longest in the micro-batch")
    attention: Literal["mask", "position_ids"] = option("mask", "how packing is told to the model (see sft.attention)")
    epochs: Optional[float] = option(None, "passes over the training pairs; sets train.max_steps when given")
    kinds: list[str] = option(doc="record kinds to learn from: comparison, ranking, rating",
                              factory=lambda: ["comparison", "ranking", "rating"])
    min_strength: int = option(0, "drop pairs labelled weaker than this (strength 0 negligibly … 3 significantly "
                                  "better; rating pairs get theirs from the Likert gap); pairs without a strength "
                                  "(rankings, HH-RLHF) are kept")
    eval_fraction: float = option(0.05, "held-out share of the pairs when data.eval is not given")
    max_eval_pairs: int = option(256, "evaluate on at most this many held-out pairs")
    kl_prompts: int = option(32, "held-out prompts sampled (T = 1) at each eval for KL(π‖π_ref); 0 = off")
    kl_max_new_tokens: int = option(64, "new tokens per KL sample")

    def validate(self) -> None:
        if self.beta <= 0:
            raise ConfigError(f"config key 'dpo.beta': expected > 0, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"config key 'dpo.label_smoothing': expected 0 <= ε < 0.5, got {self.label_smoothing}")
        if self.label_smoothing and self.loss != "sigmoid":
            raise ConfigError("config key 'dpo.label_smoothing' applies to dpo.loss=sigmoid only")
        if not 0 <= self.min_strength <= 3:
            raise ConfigError(f"config key 'dpo.min_strength': expected 0..3, got {self.min_strength}")


@dataclass
class DPOConfig(StageConfig):
    """Direct preference optimisation (DPO, IPO, conservative DPO, SLiC hinge) on preference pairs."""

    stage_name: typing.ClassVar[str] = "dpo"
    model: ModelSection = section(ModelSection, "the policy: model.init = an SFT stage folder or a local HF model")
    ref: RefSection = section(RefSection, "the reference (default: the policy's init)")
    data: DataSection = section(DataSection, "preference records (comparisons, rankings, ratings) or HH-RLHF")
    train: TrainSection = section(TrainSection, "optimisation")
    dpo: DPOSection = section(DPOSection, "loss, β, reference cache, eval")


@dataclass
class ScorerSection:
    init: Optional[str] = option(None, "reward model: a `alignforge reward` stage folder or scalar-head HF dir")
    head: str = option("overall", "which score: overall = the combined reward saved with the model "
                                  "(reward.combine weights and safety gate; a one-head model's head), or one "
                                  "head by index or name (e.g. helpful)")
    batch_size: int = option(32, "responses scored per forward")


@dataclass
class RSFTSection:
    rounds: int = option(2, "rejection-sampling rounds (each samples from the latest policy)")
    n: int = option(8, "responses sampled per prompt; the best-scoring one is kept")
    prompts_per_round: int = option(256, "training prompts sampled (without replacement per round) each round")
    min_score: Optional[float] = option(None, "keep a best response only if its score reaches this (null = always)")
    epochs: float = option(1.0, "SFT passes over each round's kept responses")
    accumulate: bool = option(False, "train each round on the best responses of all rounds so far (Llama-2 "
                                     "keeps the top samples across iterations), not only this round's")
    scorer: Literal["reward", "gold"] = option("reward", "reward = reward.init; gold = the world's gold judge, "
                                               "an oracle ablation run through `python -m alignforge.eval.oracle rsft`")
    batching: Literal["pack", "sorted", "pad"] = option("pack", "how SFT micro-batches are built (see sft.batching)")
    sample_batch_size: int = option(64, "sequences per sampling batch")

    def validate(self) -> None:
        if self.rounds < 1 or self.n < 1 or self.prompts_per_round < 1:
            raise ConfigError("config keys 'rsft.rounds', 'rsft.n', 'rsft.prompts_per_round': expected >= 1")
        if self.epochs <= 0:
            raise ConfigError(f"config key 'rsft.epochs': expected > 0, got {self.epochs}")


@dataclass
class RSFTConfig(StageConfig):
    """Rejection-sampling (best-of-n) fine-tuning: sample n, keep the best by reward, SFT on it; repeat."""

    stage_name: typing.ClassVar[str] = "rsft"
    model: ModelSection = section(ModelSection, "the policy: model.init = an SFT stage folder or a local HF model")
    reward: ScorerSection = section(ScorerSection, "the reward model that picks the best of n")
    data: DataSection = section(DataSection, "data.train: prompts (prompt records, or any records with a prompt)")
    sampling: SamplingSection = section(SamplingSection, "how the policy samples its n candidates")
    train: TrainSection = section(TrainSection, "optimisation (the SFT loss on the kept responses)")
    rsft: RSFTSection = section(RSFTSection, "rounds, n, selection")


@dataclass
class ValueSection:
    init: Optional[str] = option(None, "value model: a scalar-head dir (default: reward.init, InstructGPT) or a causal "
                                       "LM whose backbone gets a zero head; null with no reward.init = model.init")
    lr: Optional[float] = option(None, "value-model learning rate (default: train.lr)")
    lora: bool = option(False, "train the value model through LoRA adapters (model.lora's r, alpha, targets) and its "
                               "head: no gradients or AdamW state for its backbone")


@dataclass
class KLSection:
    coef: float = option(0.05, "β: per-token penalty −β·KL(π‖π_ref) (PPO/RLOO reward) or KL loss weight (GRPO)")
    estimator: Literal["k1", "k2", "k3"] = option("k1", "per-token KL estimator (Schulman): k1 = log π/π_ref, k3 = "
                                                  "(r−1) − log r (≥ 0)")
    target: Optional[float] = option(None, "adaptive controller (Ziegler et al.): target KL per response in nats; "
                                           "null = fixed β")
    horizon: int = option(10000, "adaptive controller horizon, in rollout samples")

    def validate(self) -> None:
        if self.coef < 0:
            raise ConfigError(f"config key 'kl.coef': expected >= 0, got {self.coef}")
        if self.target is not None and self.target <= 0:
            raise ConfigError(f"config key 'kl.target': expected > 0 (or null), got {self.target}")


@dataclass
class RolloutSection:
    prompts: int = option(64, "prompts per rollout (one PPO step / one REINFORCE step)")
    batch_size: int = option(64, "sequences per log-prob / scoring forward (the sampling takes all of a "
                                 "step's prompts at once: rollout.prompts bounds its memory)")
    reuse_logprobs: bool = option(True, "use the sampling engine's log-probs as the old log-probs when exact "
                                        "(top_k = 0, top_p = 1); false = recompute with a forward")
    missing_eos_penalty: Optional[float] = option(None, "subtract this from the score of a response that hit "
                                                        "max_new_tokens without an eos (null = no penalty)")
    score_clip: Optional[float] = option(None, "clip the reward-model score to ±this (null = no clipping)")
    whiten_rewards: bool = option(False, "rescale per-token rewards by their batch std (mean kept)")


@dataclass
class PPOSection:
    epochs: int = option(4, "PPO epochs over each rollout")
    minibatch_size: int = option(16, "sequences per minibatch (one optimizer step each)")
    clip: float = option(0.2, "policy ratio clip ε")
    value_clip: Optional[float] = option(0.2, "value clip around the rollout's values (null = unclipped)")
    vf_coef: float = option(0.1, "value-loss weight")
    gamma: float = option(1.0, "discount (1 for language: one episode per response)")
    lam: float = option(0.95, "GAE λ")
    whiten_advantages: bool = option(True, "normalise advantages over the rollout (mean 0, std 1)")
    ptx_coef: float = option(0.0, "PPO-ptx: weight γ of the pretraining LM loss mixed in (0 = off)")
    ptx_data: Optional[str] = option(None, "PPO-ptx text records (JSONL/Parquet text records)")
    ptx_batch_size: int = option(4, "PPO-ptx blocks of train.seq_len tokens per minibatch")
    ptx_chat_dialogues: bool = option(False, "render ptx_data's dialogue records in the chat template, as "
                                             "pretraining with chat_dialogues did")
    steps: int = option(20, "PPO steps (rollouts); each makes epochs × prompts/minibatch_size optimizer steps")
    eval_prompts: int = option(64, "data.eval prompts for the eval-time proxy reward / KL (0 = off)")
    eval_world: Optional[str] = option(None, "world folder: gold reward per category at eval time (through "
                                             "alignforge.eval); null = no gold metrics")

    def validate(self) -> None:
        if self.epochs < 1 or self.minibatch_size < 1 or self.steps < 1:
            raise ConfigError("config keys 'ppo.epochs', 'ppo.minibatch_size', 'ppo.steps': expected >= 1")
        if not 0 < self.clip < 1:
            raise ConfigError(f"config key 'ppo.clip': expected 0 < ε < 1, got {self.clip}")
        if self.ptx_coef and not self.ptx_data:
            raise ConfigError("config key 'ppo.ptx_coef' > 0 needs ppo.ptx_data (text records)")


@dataclass
class PPOConfig(StageConfig):
    """PPO from a reward model with per-token KL to the SFT policy (InstructGPT), optional PPO-ptx."""

    stage_name: typing.ClassVar[str] = "ppo"
    model: ModelSection = section(ModelSection, "the policy: model.init = an SFT stage folder or a local HF model")
    ref: RefSection = section(RefSection, "the frozen reference for the KL (default: the policy's init = SFT)")
    reward: ScorerSection = section(ScorerSection, "the frozen reward model (reward.init)")
    value: ValueSection = section(ValueSection, "the value model (critic)")
    data: DataSection = section(DataSection, "data.train: prompts; data.eval: held-out prompts for eval")
    sampling: SamplingSection = section(SamplingSection, "how rollouts sample (temperature is also the training "
                                                          "temperature of the log-probs)")
    train: TrainSection = section(TrainSection, "optimisation (train.max_steps is set from ppo.steps)")
    kl: KLSection = section(KLSection, "KL to the reference: β, estimator, adaptive controller")
    rollout: RolloutSection = section(RolloutSection, "rollout size, log-prob reuse, score shaping")
    ppo: PPOSection = section(PPOSection, "PPO: epochs, minibatches, clipping, GAE, ptx, eval")


@dataclass
class ReinforceSection:
    algorithm: Literal["reinforce", "rloo", "grpo"] = option("grpo", "reinforce: moving-average baseline; rloo: "
                                                             "leave-one-out baseline; grpo: group-normalised "
                                                             "advantages, KL as a loss term")
    k: int = option(4, "samples per prompt (rloo/grpo need >= 2)")
    epochs: int = option(1, "passes over each rollout (1 = on-policy: the ratio is 1, clipping inactive)")
    minibatch_size: int = option(32, "sequences per minibatch (whole groups; one optimizer step each)")
    clip: float = option(0.2, "ratio clip ε (matters when epochs > 1)")
    scale_advantages: bool = option(True, "grpo: divide by the group std (false = Dr. GRPO)")
    baseline_decay: float = option(0.9, "reinforce: moving-average baseline decay")
    steps: int = option(20, "REINFORCE steps (rollouts)")
    eval_prompts: int = option(64, "data.eval prompts for the eval-time proxy reward / KL (0 = off)")
    eval_world: Optional[str] = option(None, "world folder: gold reward per category at eval time (null = off)")

    def validate(self) -> None:
        if self.algorithm != "reinforce" and self.k < 2:
            raise ConfigError(f"config key 'reinforce.k': {self.algorithm} needs >= 2 samples per prompt, got {self.k}")
        if self.k < 1 or self.epochs < 1 or self.minibatch_size < 1 or self.steps < 1:
            raise ConfigError("config keys 'reinforce.k/epochs/minibatch_size/steps': expected >= 1")


@dataclass
class ReinforceConfig(StageConfig):
    """REINFORCE with a baseline, RLOO, GRPO: critic-free policy gradient from a reward model."""

    stage_name: typing.ClassVar[str] = "reinforce"
    model: ModelSection = section(ModelSection, "the policy: model.init = an SFT stage folder or a local HF model")
    ref: RefSection = section(RefSection, "the frozen reference for the KL (default: the policy's init)")
    reward: ScorerSection = section(ScorerSection, "the frozen reward model (reward.init)")
    data: DataSection = section(DataSection, "data.train: prompts; data.eval: held-out prompts for eval")
    sampling: SamplingSection = section(SamplingSection, "how rollouts sample")
    train: TrainSection = section(TrainSection, "optimisation (train.max_steps is set from reinforce.steps)")
    kl: KLSection = section(KLSection, "KL to the reference: in the reward (reinforce/rloo) or the loss (grpo)")
    rollout: RolloutSection = section(RolloutSection, "rollout size (prompts; × k samples), log-prob reuse, scores")
    reinforce: ReinforceSection = section(ReinforceSection, "algorithm, k, baseline")


@dataclass
class EvalSection:
    checkpoints: list[str] = option(doc="policies to evaluate: stage folders or local HF model dirs "
                                        "(also settable as positional arguments)", factory=list)
    names: Optional[list[str]] = option(None, "display names, one per checkpoint (default: the folder names)")
    baseline: Optional[str] = option(None, "name of the policy the others are compared with (win-rate, reward "
                                           "difference); default: 'sft' when present, else the last checkpoint")
    judge: Literal["gold", "reward"] = option("gold", "gold = the world's hidden judge (needs eval.world); "
                                                      "reward = the reward model reward.init (real data)")
    world: Optional[str] = option(None, "a folder written by `alignforge world generate` (gold judge, test prompts, "
                                        "held-out text)")
    prompts: Optional[str] = option(None, "prompt records to answer (default: <world>/prompts_test.jsonl)")
    heldout: Optional[str] = option(None, "text records for bits per byte (default: <world>/heldout.jsonl)")
    references: list[str] = option(doc="world reference policies evaluated beside the checkpoints: the "
                                       "ceiling (oracle), SFT's teacher (demonstrator), the floor (random) and "
                                       "the bar of always saying 'I do not know that.' (hedger)",
                                   factory=lambda: ["oracle", "demonstrator", "random", "hedger"])
    max_prompts: Optional[int] = option(300, "answer at most this many prompts (null = all)")
    samples: int = option(1, "sampled answers per prompt at `temperature` (the greedy answer is added)")
    temperature: float = option(1.0, "sampling temperature of the T=1 mode")
    max_new_tokens: int = option(48, "longest answer")
    batch_size: int = option(64, "prompts per sampling batch")
    kl: bool = option(True, "KL(π‖π_ref) on the sampled answers (needs ref.init or a baseline checkpoint)")
    fewshot: Optional[int] = option(None, "knowledge probe (world only): each checkpoint answers fact and "
                                          "arithmetic questions about train- and test-split entities zero-shot "
                                          "and with this many solved train-split examples first; exact-answer "
                                          "rates in eval.json['knowledge'] (null = off)")
    probe_questions: int = option(80, "knowledge probe: questions per category and split")
    probe_format: Literal["chat", "plain"] = option(
        "chat", "knowledge probe layout: chat = the tokenizer's chat template, as every policy is prompted "
                "(and a pretrain.chat_dialogues model saw its dialogues); plain = the corpus's "
                "'User: ...\\nAssistant:' text")
    prompted: list[str] = option(doc="checkpoint names also evaluated few-shot prompted (InstructGPT's "
                                     "'GPT-3 prompted' baseline): eval.prompted_shots solved examples from "
                                     "eval.shots before every prompt; reported as extra policies '<name>-prompted' "
                                     "(no KL column)", factory=list)
    prompted_shots: int = option(6, "solved examples in a prompted policy's prefix, one category after another "
                                    "(the earliest dropped if they would not fit the model's positions)")
    shots: Optional[str] = option(None, "demonstration records (prompt, response) the prompted prefix is drawn "
                                        "from (default on the world: its train prompts answered by the oracle — "
                                        "the best prefix a prompt writer could choose, so the baseline is at its "
                                        "strongest)")
    best_of_n: list[int] = option(doc="best-of-n of the baseline policy, scored by reward.init, for each n: "
                                      "reported as extra policies 'bon-<n>' (sample mode; KL = the analytic "
                                      "bound log n - (n-1)/n)", factory=list)

    def validate(self) -> None:
        if any(not isinstance(n, int) or n < 1 for n in self.best_of_n):
            raise ValueError(f"eval.best_of_n: expected a list of integers >= 1, got {self.best_of_n}")
        if self.names is not None and len(self.names) != len(self.checkpoints):
            raise ValueError(f"eval.names has {len(self.names)} entries for {len(self.checkpoints)} checkpoints")
        if self.samples < 1:
            raise ValueError(f"eval.samples must be >= 1, got {self.samples}")
        if self.fewshot is not None and self.fewshot < 0:
            raise ValueError(f"eval.fewshot must be >= 0 solved examples (or null = no probe), got {self.fewshot}")
        if self.probe_questions < 1:
            raise ValueError(f"eval.probe_questions must be >= 1, got {self.probe_questions}")
        if self.prompted_shots < 1:
            raise ValueError(f"eval.prompted_shots must be >= 1 solved examples, got {self.prompted_shots}")


@dataclass
class EvalConfig(StageConfig):
    """Evaluate checkpoints: gold reward per category with CIs, win-rates, KL, bits per byte."""

    stage_name: typing.ClassVar[str] = "eval"
    eval: EvalSection = section(EvalSection, "what to evaluate and how")
    ref: RefSection = section(RefSection, "reference for KL (default: the baseline checkpoint)")
    reward: ScorerSection = section(ScorerSection, "reward model: its mean score is reported; judge=reward uses it")


@dataclass
class ServeSection:
    host: str = option("127.0.0.1", "address to bind (0.0.0.0 exposes the server to the network: it has no auth)")
    port: int = option(8000, "TCP port (also `--port N`)")
    model_name: Optional[str] = option(None, "the model id clients must send (default: model.init as given)")
    max_batch: int = option(32, "most sequences (requests × n) in one generate call")
    batch_window_ms: float = option(10.0, "after the first request arrives, wait this long for others to batch with it")
    max_tokens: int = option(256, "max_tokens when a request gives none (capped by the model's context)")
    max_n: int = option(16, "largest n (choices per request) accepted")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = option("info", "uvicorn log level")

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"serve.port: expected 0..65535, got {self.port}")
        if self.max_batch < 1 or self.max_tokens < 1 or self.max_n < 1:
            raise ValueError("serve.max_batch, serve.max_tokens, serve.max_n: expected integers >= 1")
        if self.batch_window_ms < 0:
            raise ValueError(f"serve.batch_window_ms: expected >= 0, got {self.batch_window_ms}")


@dataclass
class ServeConfig(StageConfig):
    """OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, /v1/models) for a checkpoint."""

    stage_name: typing.ClassVar[str] = "serve"
    model: ModelSection = section(ModelSection, "model.init = the checkpoint to serve (also the positional argument)")
    serve: ServeSection = section(ServeSection, "address, batching, request limits")


@dataclass
class ChatSection:
    temperature: float = option(0.7, "sampling temperature (0 = greedy); `/temperature X` changes it")
    top_p: float = option(1.0, "nucleus sampling mass in (0, 1]; `/top_p X` changes it")
    max_tokens: int = option(128, "longest answer in tokens; `/max_tokens N` changes it")
    system: Optional[str] = option(None, "system message put before the conversation (kept by /reset)")

    def validate(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"chat.temperature: expected >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"chat.top_p: expected a number in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"chat.max_tokens: expected an integer >= 1, got {self.max_tokens}")


@dataclass
class ChatConfig(StageConfig):
    """Terminal chat with a checkpoint: multi-turn history, /reset, /temperature, works over a pipe."""

    stage_name: typing.ClassVar[str] = "chat"
    model: ModelSection = section(ModelSection, "model.init = the checkpoint to chat with (also the positional argument)")
    chat: ChatSection = section(ChatSection, "sampling and system message")


@dataclass
class NashSection:
    mixture_beta: float = option(0.125, "β of the geometric mixture π^β ∝ π^(1−β)·π_ref^β the opponent samples "
                                        "from, per token (Nash-MD); 0 = self-play against the current policy")
    steps: int = option(20, "Nash-MD steps (one rollout of rollout.prompts prompts each)")
    preference_max_len: int = option(512, "longest (prompt, y, y') sequence the preference model reads; longer "
                                          "pairs have the prompt cut from the left")
    eval_prompts: int = option(64, "data.eval prompts for the eval-time win-rate vs the mixture / KL (0 = off)")
    eval_world: Optional[str] = option(None, "world folder: gold reward, gold win-rate vs the previous eval's "
                                             "policy, and eval.json (gold protocol vs SFT) at the end; null = off")
    preference_data: Optional[str] = option(None, "comparison/ranking/rating records: fit the preference model "
                                                  "first, on the backbone preference.init (a causal LM; null = "
                                                  "model.init), saved to <out>/preference; null = load preference.init")
    preference_steps: int = option(200, "preference-model optimizer steps when fitting it (preference_data)")
    preference_lr: float = option(1e-4, "preference-model learning rate when fitting it")
    preference_batch_size: int = option(8, "pairs per preference-model step (2 × rows: both orders)")
    preference_warmup: int = option(0, "preference-model steps of linear learning-rate warmup when fitting it")
    preference_margins: Optional[list[float]] = option(None, "Llama-2 margin per strength level 0..3 when fitting "
                                                             "the preference model, e.g. [0, 0.33, 0.67, 1] (null = none)")
    preference_eval_data: Optional[str] = option(None, "held-out comparison records (e.g. collect's eval.jsonl): the "
                                                       "preference model's accuracy on them, in <out>/preference_eval.json")

    def validate(self) -> None:
        if self.preference_margins is not None and len(self.preference_margins) != 4:
            raise ConfigError(f"config key 'nash.preference_margins': expected 4 margins (strength 0..3), "
                              f"got {self.preference_margins}")
        if self.preference_warmup < 0:
            raise ConfigError(f"config key 'nash.preference_warmup': expected >= 0, got {self.preference_warmup}")
        if self.preference_steps < 1 or self.preference_batch_size < 1 or not self.preference_lr > 0:
            raise ConfigError("config keys 'nash.preference_steps/preference_batch_size' (>= 1) and "
                              "'nash.preference_lr' (> 0) out of range")
        if not 0.0 <= self.mixture_beta <= 1.0:
            raise ConfigError(f"config key 'nash.mixture_beta': expected a number in [0, 1], got {self.mixture_beta}")
        if self.steps < 1 or self.preference_max_len < 8:
            raise ConfigError("config keys 'nash.steps' (>= 1) and 'nash.preference_max_len' (>= 8) out of range")


@dataclass
class NashConfig(StageConfig):
    """Nash-MD (Munos et al. 2023): policy gradient on P(y ≻ y') against a geometric mixture with the reference."""

    stage_name: typing.ClassVar[str] = "nash"
    model: ModelSection = section(ModelSection, "the policy: model.init = an SFT stage folder or a local HF model")
    ref: RefSection = section(RefSection, "the reference for the mixture and the KL (default: the policy's init)")
    preference: ScorerSection = section(ScorerSection, "the pairwise preference model (preference.init: a "
                                                        "scalar-head dir from alignforge.models.preference)")
    data: DataSection = section(DataSection, "data.train: prompts; data.eval: held-out prompts for eval")
    sampling: SamplingSection = section(SamplingSection, "how both players sample (also the log-prob temperature)")
    train: TrainSection = section(TrainSection, "optimisation (train.max_steps is set from nash.steps)")
    kl: KLSection = section(KLSection, "KL(π‖π_ref) penalty β in the reward (separate from nash.mixture_beta)")
    rollout: RolloutSection = section(RolloutSection, "rollout size (prompts per step), log-prob reuse")
    nash: NashSection = section(NashSection, "mixture_beta, steps, preference-model length")


@dataclass
class JudgeSection:
    init: Optional[str] = option(None, "the AI judge as a local model: a stage folder or HF causal-LM dir, scored on "
                                       "the log-probs of its answers (A)/(B); null = ask judge.base_url")
    tokenizer: Optional[str] = option(None, "tokenizer directory of judge.init (default: the one saved with it)")
    base_url: Optional[str] = option(None, "an OpenAI-compatible endpoint instead, e.g. http://127.0.0.1:8000/v1 "
                                           "(`alignforge serve`); asked at temperature 0, the reply parsed")
    model: Optional[str] = option(None, "the model name sent to judge.base_url")
    api_key_env: Optional[str] = option(None, "name of the environment variable holding the endpoint's API key "
                                              "(sent as a Bearer token; null = none)")
    timeout_s: float = option(60.0, "endpoint: seconds to wait for one answer")
    max_tokens: int = option(8, "endpoint: longest answer (the verdict is '(A)' or '(B)')")
    concurrency: int = option(4, "endpoint: requests in flight at once")
    batch_size: int = option(32, "local judge: questions per forward (each is 2 rows: answer (A) and (B))")
    max_len: Optional[int] = option(None, "local judge: longest question + answer in tokens, the question cut from "
                                          "the left (null = the model's context)")

    def validate(self) -> None:
        if bool(self.init) == bool(self.base_url):
            raise ConfigError("config keys 'judge.init' / 'judge.base_url': set exactly one (a local model, or an "
                              "OpenAI-compatible endpoint)")
        if self.base_url and not self.model:
            raise ConfigError("config key 'judge.model': the endpoint judge.base_url needs a model name")
        if self.batch_size < 1 or self.concurrency < 1 or self.max_tokens < 1 or self.timeout_s <= 0:
            raise ConfigError("config keys 'judge.batch_size/concurrency/max_tokens' (>= 1) and "
                              "'judge.timeout_s' (> 0) out of range")


@dataclass
class RlaifSection:
    constitution: Optional[str] = option(None, "constitution YAML (principles); null = the one shipped with alignforge")
    principles: list[str] = option(doc="principle names to use (empty = all of the constitution's)", factory=list)
    per_pair: Literal["sample", "all", "ensemble"] = option("sample", "sample: one principle drawn per pair (seeded, "
                                                            "as in the CAI paper); all: one label per principle; "
                                                            "ensemble: one label from the mean over the principles")
    pairs_per_prompt: int = option(2, "distinct response pairs judged per prompt (a comparison record: its one pair)")
    k: int = option(4, "when data.train holds prompts: responses sampled per prompt from model.init")
    prompts: Optional[int] = option(None, "label at most this many data.train records (null = all)")
    eval_prompts: Optional[int] = option(None, "label at most this many data.eval records (null = all)")
    chunk_prompts: int = option(64, "records per chunk: each finished chunk is saved, a rerun skips it (exact "
                                    "resume); chunks are dealt round-robin to torchrun processes")
    batch_size: int = option(64, "prompts per sampling batch (prompt records only)")
    round: int = option(0, "labelling round, recorded as provenance")

    def validate(self) -> None:
        if self.pairs_per_prompt < 1 or self.k < 1 or self.chunk_prompts < 1 or self.batch_size < 1:
            raise ConfigError("config keys 'rlaif.pairs_per_prompt/k/chunk_prompts/batch_size': expected >= 1")


@dataclass
class RlaifConfig(StageConfig):
    """AI feedback with a constitution (RLAIF / Constitutional AI): an AI judge labels response pairs."""

    stage_name: typing.ClassVar[str] = "rlaif"
    judge: JudgeSection = section(JudgeSection, "the AI judge: a local model (judge.init) or an endpoint (judge.base_url)")
    model: ModelSection = section(ModelSection, "the policy that samples responses when data.train holds prompts")
    data: DataSection = section(DataSection, "data.train: candidates (what `collect` writes: prompt + K responses; its "
                                             "eval-split ones go to eval.jsonl), comparisons (their pair is relabelled) "
                                             "or prompts (sampled from model.init); data.eval: the same kinds, all "
                                             "to eval.jsonl")
    sampling: SamplingSection = section(SamplingSection, "how model.init samples (prompt records only)")
    rlaif: RlaifSection = section(RlaifSection, "constitution, principles per pair, pairs per prompt, chunks")


@dataclass
class CritiqueSection:
    constitution: Optional[str] = option(None, "constitution YAML (principles with critique / revision requests); "
                                               "null = the one shipped with alignforge")
    principles: list[str] = option(doc="names of the principles drawn from (uniformly, per prompt and round); "
                                       "[] = all of the constitution's", factory=list)
    rounds: int = option(1, "critique → revision iterations per prompt; each round critiques the previous "
                            "revision under a newly drawn principle")
    categories: list[str] = option(doc="keep only prompt records of these categories (e.g. [harmful, unknown, "
                                       "benign]); [] = every prompt", factory=list)
    max_prompts: Optional[int] = option(None, "critique at most this many (the first) prompts; null = all")
    batch_size: int = option(64, "prompts per chunk: each step (answer, critique, revision) of a chunk is one "
                                 "batched generate call; chunks are also the unit of resume and of sharding")
    critique_max_new_tokens: int = option(64, "longest critique in tokens (answers and revisions use "
                                              "sampling.max_new_tokens)")
    finetune: bool = option(False, "then fine-tune model.init on revisions.jsonl with `alignforge sft` (train.*, "
                                   "sft.*) in <out>/sft; the result is copied to <out>/model")
    eval_world: Optional[str] = option(None, "world folder: gold reward of the initial vs the revised answers per "
                                             "category, through alignforge.eval (gold.json); null = off")

    def validate(self) -> None:
        if self.rounds < 1 or self.batch_size < 1 or self.critique_max_new_tokens < 1:
            raise ConfigError("config keys 'critique.rounds', 'critique.batch_size', "
                              "'critique.critique_max_new_tokens': expected >= 1")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ConfigError(f"config key 'critique.max_prompts': expected >= 1 or null, got {self.max_prompts}")


@dataclass
class CritiqueConfig(StageConfig):
    """Constitutional AI, supervised phase: the policy critiques and revises its own answers; revisions → SFT."""

    stage_name: typing.ClassVar[str] = "critique"
    model: ModelSection = section(ModelSection, "the policy: model.init = an SFT stage folder or a local HF model")
    data: DataSection = section(DataSection, "data.train: red-team prompts (prompt records, or any with a prompt)")
    sampling: SamplingSection = section(SamplingSection, "how answers, critiques and revisions are sampled")
    train: TrainSection = section(TrainSection, "fine-tuning on the revisions (critique.finetune), as in sft")
    sft: SFTSection = section(SFTSection, "fine-tuning specifics (batching, epochs, held-out share), as in sft")
    critique: CritiqueSection = section(CritiqueSection, "constitution, principles, rounds, chunks, fine-tuning")
