"""``report.html``: one self-contained page (plots embedded as PNG data URIs, made with matplotlib).

Panels, each drawn when its runs exist:
* headline table — gold reward (95% CI), win-rate vs the baseline, KL, words, per policy;
* gold reward by category, per policy (bars);
* gold reward vs KL to the reference (the frontier: PPO / DPO / RSFT points, β sweeps when run);
* reward hacking — proxy (reward-model) score and gold reward over PPO steps, at β = 0 on the
  length-biased reward model vs β > 0 on the default one;
* training curves of every stage (loss, and reward where logged);
* sample answers of the policies for the same prompts (escaped: model text is untrusted).
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from alignforge.io import atomic_write_text


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _metrics(folder: Path) -> list[dict[str, Any]]:
    path = folder / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill: the rest of the curve still plots
    return rows


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and "step" in r:
            xs.append(r["step"])
            ys.append(v)
    return xs, ys


def _gold_key(rows: list[dict[str, Any]]) -> str | None:
    keys = {k for r in rows for k in r}
    for k in ("eval_gold", "gold_reward", "eval_gold_reward", "gold"):
        if k in keys:
            return k
    cands = sorted(k for k in keys if "gold" in k and "all" in k) or sorted(k for k in keys if "gold" in k)
    return cands[0] if cands else None


def _proxy_key(rows: list[dict[str, Any]]) -> str | None:
    keys = {k for r in rows for k in r}
    for k in ("score", "reward_score", "rm_score", "proxy_reward", "reward"):
        if k in keys:
            return k
    return None


def write_report(root: Path, refs: dict[str, str], out: Path | None = None) -> Path:
    """Build ``report.html`` from the runs in ``refs`` ({step name: folder}); returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = out or Path(root) / "report.html"
    parts: list[str] = []
    eval_path = Path(refs["eval"]) / "eval.json" if "eval" in refs else None
    report = json.loads(eval_path.read_text()) if eval_path and eval_path.exists() else None

    if report:
        sec = report["sample"]
        names = [n for n in report["policies"] if n in sec]
        rows = []
        for n in names:
            r = sec[n]["summary"]["all"]["reward"]
            w = sec[n].get("win_rate")
            kl = (report.get("kl") or {}).get(n)
            rows.append("<tr><td>{}</td><td>{:+.2f} [{:+.2f}, {:+.2f}]</td><td>{}</td><td>{}</td><td>{:.1f}</td></tr>".format(
                html.escape(n), r["value"], r["lo"], r["hi"],
                f"{w['value']:.2f} [{w['lo']:.2f}, {w['hi']:.2f}]" if w else "—",
                f"{kl['kl']:.2f}" if kl else "—", sec[n]["summary"]["all"]["words"]))
        parts.append(f"<h2>Headline (gold judge, one sample per prompt at T = 1, {report['n_prompts']} test prompts)</h2>"
                     f"<table><tr><th>policy</th><th>gold reward [95% CI]</th><th>win-rate vs "
                     f"{html.escape(str(report['baseline']))} [95% CI]</th><th>KL to ref (nats)</th><th>words</th></tr>"
                     + "".join(rows) + "</table>")

        cats = [c for c in sec[names[0]]["summary"] if c != "all"]
        fig, ax = plt.subplots(figsize=(10, 3.6))
        width = 0.8 / len(names)
        for i, n in enumerate(names):
            vals = [sec[n]["summary"][c]["reward"]["value"] for c in cats]
            ax.bar([j + i * width for j in range(len(cats))], vals, width, label=n)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cats))], cats)
        ax.set_ylabel("mean gold reward")
        ax.legend(fontsize=7, ncol=4)
        ax.set_title("gold reward by category")
        parts.append(f'<h2>By category</h2><img src="{_png(fig)}">')

        kl = report.get("kl") or {}
        pts = [(kl[n]["kl"], sec[n]["summary"]["all"]["reward"]["value"], n) for n in names if n in kl]
        base = report.get("baseline")
        if pts and base in sec:
            pts.append((0.0, sec[base]["summary"]["all"]["reward"]["value"], base))
            fig, ax = plt.subplots(figsize=(5, 3.6))
            for x, y, n in pts:
                ax.scatter([x], [y])
                ax.annotate(n, (x, y), fontsize=8)
            ax.set_xlabel("KL(π‖π_SFT) on samples (nats)")
            ax.set_ylabel("mean gold reward")
            ax.set_title("gold reward vs KL")
            parts.append(f'<h2>Gold reward vs KL</h2><img src="{_png(fig)}">')

    hack_panels = []
    for name in ("ppo-hack", "ppo"):
        if name not in refs:
            continue
        rows = _metrics(Path(refs[name]))
        pk, gk = _proxy_key(rows), _gold_key(rows)
        if not rows or not pk:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.4))
        ax.plot(*_series(rows, pk), ".-", label=f"proxy ({pk})")
        if gk:
            ax.plot(*_series(rows, gk), "o-", label=f"gold ({gk})")
        ax.set_xlabel("PPO step")
        ax.legend(fontsize=8)
        ax.set_title(f"{name}: proxy vs gold")
        hack_panels.append(f'<img src="{_png(fig)}">')
    if hack_panels:
        parts.append("<h2>Reward hacking: β = 0 on the length-biased reward model (left) vs β &gt; 0</h2>"
                     + "".join(hack_panels))

    curves = []
    for name, folder in refs.items():
        rows = _metrics(Path(folder))
        xs, ys = _series(rows, "loss")
        if not xs:
            continue
        fig, ax = plt.subplots(figsize=(3.4, 2.4))
        ax.plot(xs, ys, ".-")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        curves.append(f'<img src="{_png(fig)}">')
    if curves:
        parts.append("<h2>Training curves (loss)</h2>" + "".join(curves))

    samples_path = Path(refs["eval"]) / "samples.jsonl" if "eval" in refs else None
    if samples_path and samples_path.exists():
        by_prompt: dict[str, dict[str, str]] = {}
        order: list[str] = []
        for line in samples_path.read_text().splitlines():
            r = json.loads(line)
            if r["mode"] != "greedy" or r["policy"] not in ("sft", "ppo", "dpo", "rsft", "oracle"):
                continue
            key = r["prompt"] if isinstance(r["prompt"], str) else json.dumps(r["prompt"])
            if key not in by_prompt:
                by_prompt[key] = {}
                order.append(key)
            by_prompt[key][r["policy"]] = f"{r['response']} ({r['reward']:+.2f})"
        pols = [p for p in ("sft", "ppo", "dpo", "rsft", "oracle") if any(p in v for v in by_prompt.values())]
        rows = ["<tr><td>" + html.escape(k) + "</td>" + "".join(
            f"<td>{html.escape(by_prompt[k].get(p, ''))}</td>" for p in pols) + "</tr>" for k in order[:12]]
        parts.append("<h2>Sample answers (greedy; gold reward in brackets)</h2><table><tr><th>prompt</th>"
                     + "".join(f"<th>{p}</th>" for p in pols) + "</tr>" + "".join(rows) + "</table>")

    page = ("<!doctype html><html><head><meta charset='utf-8'><title>alignforge report</title><style>"
            "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
            "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:4px 8px;"
            "vertical-align:top}img{margin:4px}</style></head><body><h1>alignforge report</h1>"
            + "".join(parts) + "</body></html>")
    atomic_write_text(out, page)
    return out
