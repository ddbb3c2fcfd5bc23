"""Scaling laws at toy scale: held-out bits per byte against parameters and tokens, reward-model gold
accuracy against parameters and labels (configs/world/scale.yaml, bench/scale.py, the report's panel).

* :func:`power_law_fit` — ``y = a · x^(−α)`` by least squares on ``log y = log a − α log x`` (Kaplan et
  al. 2020 fit pure power laws ``L(N) = (N_c / N)^α_N``), with each point's residual in log space, so
  where the law bends is a number, not an impression;
* :func:`non_embedding_params` — Kaplan's N (the matmul weights of the blocks, no embedding or readout)
  from a saved Llama ``config.json``;
* :func:`pretrain_points` / :func:`reward_points` — the points of a finished pipeline: every pretrain
  step's last held-out ``eval_bpb`` with its N and tokens; every reward step's gold accuracy with its
  backbone's N and the number of labels it learnt from.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from alignforge.train.tracking import last_value, read_metrics


@dataclass
class PowerLaw:
    """``y ≈ a · x^(−alpha)``; ``residuals`` are ``log y − log ŷ`` per point (natural log)."""

    a: float
    alpha: float
    residuals: list[float]

    def __call__(self, x: float) -> float:
        return self.a * x ** (-self.alpha)

    @property
    def rms_residual(self) -> float:
        return math.sqrt(sum(r * r for r in self.residuals) / len(self.residuals))


def power_law_fit(x: Sequence[float], y: Sequence[float]) -> PowerLaw:
    """Least squares in log-log space; needs ≥ 2 distinct positive ``x`` and positive ``y``."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"power_law_fit: need ≥ 2 (x, y) points of equal count, got {len(x)} and {len(y)}")
    if min(x) <= 0 or min(y) <= 0:
        raise ValueError("power_law_fit: x and y must be positive (it fits in log space)")
    lx, ly = [math.log(v) for v in x], [math.log(v) for v in y]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    sxx = sum((v - mx) ** 2 for v in lx)
    if sxx == 0:
        raise ValueError("power_law_fit: all x are equal")
    slope = sum((u - mx) * (v - my) for u, v in zip(lx, ly)) / sxx
    intercept = my - slope * mx
    return PowerLaw(a=math.exp(intercept), alpha=-slope,
                    residuals=[v - (intercept + slope * u) for u, v in zip(lx, ly)])


def non_embedding_params(config: dict[str, Any]) -> int:
    """Matmul weights of a Llama config's blocks: q, k, v, o projections and the gated MLP, every layer."""
    h, layers, inter = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or h // heads
    kv = config.get("num_key_value_heads") or heads
    attention = h * heads * head_dim * 2 + h * kv * head_dim * 2
    return layers * (attention + 3 * h * inter)


def _model_config(folder: Path) -> dict[str, Any] | None:
    path = folder / "model" / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _stage_config(folder: Path) -> dict[str, Any]:
    """The resolved config a finished step saved (``{}`` when there is none)."""
    import yaml

    path = folder / "config.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if (folder / "DONE").is_file() and path.is_file() else {}


def pretrain_points(refs: dict[str, str]) -> list[dict[str, Any]]:
    """``{name, params, tokens, bpb}`` of every finished pretrain step in ``refs`` (its config has the
    pretrain-only ``baselines`` key) from the last held-out ``eval_bpb`` it logged; aliases once."""
    points, seen = [], set()
    for name, folder in refs.items():
        folder = Path(folder)
        if folder.resolve() in seen or "baselines" not in _stage_config(folder):
            continue
        rows = read_metrics(folder) if (folder / "metrics.jsonl").is_file() else []
        cfg, bpb, tokens = _model_config(folder), last_value(rows, "eval_bpb"), last_value(rows, "tokens")
        if cfg is None or bpb is None or tokens is None:
            continue
        seen.add(folder.resolve())
        points.append({"name": name, "params": non_embedding_params(cfg), "tokens": int(tokens), "bpb": float(bpb)})
    return points


def reward_points(refs: dict[str, str]) -> list[dict[str, Any]]:
    """``{name, params, labels, gold_accuracy, gold_pairs}`` of every finished reward step in ``refs`` with a
    gold accuracy in its ``eval.json``; labels = the annotation records it read (comparisons + rankings +
    ratings)."""
    points, seen = [], set()
    for name, folder in refs.items():
        folder = Path(folder)
        if folder.resolve() in seen or "heads" not in (_stage_config(folder).get("reward") or {}):
            continue
        path, cfg = folder / "eval.json", _model_config(folder)
        r = json.loads(path.read_text()) if path.is_file() else {}
        if "gold_accuracy" not in r or cfg is None:
            continue
        seen.add(folder.resolve())
        labels = sum(int(r.get(k, 0)) for k in ("comparisons", "rankings", "ratings"))
        points.append({"name": name, "params": non_embedding_params(cfg), "labels": labels,
                       "gold_accuracy": float(r["gold_accuracy"]), "gold_pairs": int(r.get("gold_pairs", 0))})
    return points


def fits(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Power laws of bits per byte against params at each token budget, and against tokens at each size
    (a group of ≥ 2 points), as ``{"vs_params": {tokens: fit}, "vs_tokens": {params: fit}}`` dicts.

    A size's tokens law is fitted on its budgets up to its lowest held-out loss: past it more tokens made
    held-out loss worse (the corpus repeated too often), which no falling power law describes. Every
    point still gets its residual from the fitted law (``fitted: false`` past the best), so the bend is
    a number in the table.
    """
    out: dict[str, Any] = {"vs_params": {}, "vs_tokens": {}}
    for axis, group_key, key in (("vs_params", "tokens", "params"), ("vs_tokens", "params", "tokens")):
        for g in sorted({p[group_key] for p in points}):
            pts = sorted((p for p in points if p[group_key] == g), key=lambda p: p[key])
            best = min(range(len(pts)), key=lambda i: pts[i]["bpb"])
            used = pts if axis == "vs_params" else pts[:best + 1]
            if len({p[key] for p in used}) < 2:
                continue
            f = power_law_fit([p[key] for p in used], [p["bpb"] for p in used])
            out[axis][g] = {"a": f.a, "alpha": f.alpha, "rms_residual": f.rms_residual, "fitted_points": len(used),
                            "points": [{**p, "residual": math.log(p["bpb"] / f(p[key])), "fitted": p in used}
                                       for p in pts]}
    return out


def accuracy_half_width(accuracy: float, pairs: int) -> float:
    """Half-width of the normal-approximation 95% interval of an accuracy over ``pairs`` independent
    pairs (1.96·√(p(1−p)/n)); ``nan`` without pairs. Gold pairs share prompts, so it is a lower bound."""
    return 1.96 * math.sqrt(accuracy * (1 - accuracy) / pairs) if pairs > 0 else float("nan")
