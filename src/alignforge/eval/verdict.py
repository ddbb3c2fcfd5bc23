"""The demo's verdict in words, computed from an ``eval.json`` (and the β = 0 run's metrics).

One home for the rule "a policy beat the baseline": its gold win-rate's paired 95% CI lies above ½.
The README's per-seed table (``scripts/readme_numbers.py``) and the demo's closing lines both use it.
"""

from __future__ import annotations

from typing import Any

HEADLINE = ("ppo", "dpo")  # the demo's goal: each beats SFT on gold win-rate with the 95% CI above ½
PRETRAINED = "pretrain"  # ... and SFT beats the pretrained model
TEACHER = "demonstrator"  # SFT's teacher: RLHF should surpass it (InstructGPT)
HACK = "ppo-hack"  # PPO at β = 0 on the length-biased reward model


def beat_baseline(report: dict[str, Any], name: str) -> bool:
    """Did ``name`` beat the report's baseline: gold win-rate with its 95% CI above ½?"""
    w = report["sample"][name].get("win_rate")
    return bool(w) and w["lo"] > 0.5


def gold_key(rows: list[dict[str, Any]]) -> str | None:
    """The gold-reward column of an RL stage's metrics.jsonl."""
    keys = {k for r in rows for k in r}
    for k in ("eval_gold", "gold_reward", "eval_gold_reward", "gold"):
        if k in keys:
            return k
    cands = sorted(k for k in keys if "gold" in k and "all" in k) or sorted(k for k in keys if "gold" in k)
    return cands[0] if cands else None


def proxy_key(rows: list[dict[str, Any]]) -> str | None:
    """The proxy-reward (reward-model score) column of an RL stage's metrics.jsonl."""
    keys = {k for r in rows for k in r}
    for k in ("score", "reward_score", "rm_score", "proxy_reward", "reward"):
        if k in keys:
            return k
    return None


def _series(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if isinstance(r.get(key), (int, float))]


def hack_sentence(rows: list[dict[str, Any]]) -> str | None:
    """'the β = 0 run shows reward hacking (proxy +2.0, gold −0.07)' from its metrics, first to last."""
    pk, gk = proxy_key(rows), gold_key(rows)
    proxy, gold = (_series(rows, pk) if pk else []), (_series(rows, gk) if gk else [])
    if len(proxy) < 2 or len(gold) < 2:
        return None
    dp, dg = proxy[-1] - proxy[0], gold[-1] - gold[0]
    what = "shows reward hacking" if dp > 0 and dg <= 0 else "does not show reward hacking"
    return f"the β = 0 run {what} (proxy {dp:+.2f}, gold {dg:+.2f} from its first to its last step)"


def verdict_lines(report: dict[str, Any], hack_rows: list[dict[str, Any]] | None = None) -> list[str]:
    """Sentences for a person: did PPO and DPO beat the baseline, against the teacher, the hack."""
    sec, base = report["sample"], report["baseline"]
    kl = report.get("kl") or {}
    lines = []
    for name in [n for n in HEADLINE if n in sec]:
        w = sec[name].get("win_rate")
        if not w:
            continue
        at = f" at KL {kl[name]['kl']:.1f} nats" if name in kl else ""
        verb = "beat" if beat_baseline(report, name) else "did not beat"
        why = "" if verb == "beat" else (" (CI includes ½)" if w["hi"] > 0.5 else " (CI below ½)")
        lines.append(f"{name.upper()} {verb} {base.upper()}: gold win-rate {w['value']:.2f} "
                     f"[{w['lo']:.2f}, {w['hi']:.2f}]{at}{why}.")
    if PRETRAINED in sec and sec[PRETRAINED].get("win_rate"):
        w = sec[PRETRAINED]["win_rate"]
        lines.append(f"{base.upper()} vs the pretrained model: the pretrained model's win-rate {w['value']:.2f} "
                     f"[{w['lo']:.2f}, {w['hi']:.2f}]" + (" (SFT better)." if w["hi"] < 0.5 else "."))
    teacher = [n for n in HEADLINE if n in sec and "teacher_diff" in sec[n]]
    if teacher and TEACHER in sec:
        parts = []
        for n in teacher:
            d = sec[n]["teacher_diff"]
            side = "above" if d["lo"] > 0 else "below" if d["hi"] < 0 else "level with"
            parts.append(f"{n.upper()} {d['value']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}] ({side})")
        lines.append(f"Against SFT's teacher ({TEACHER}), gold difference: " + "; ".join(parts) + ".")
    if hack_rows:
        s = hack_sentence(hack_rows)
        if s:
            lines.append(s[0].upper() + s[1:] + ".")
    return lines
