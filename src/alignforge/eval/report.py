"""``report.html``: one self-contained page (plots embedded as PNG data URIs, made with matplotlib).

Panels, each drawn when its runs exist:
* headline table — gold reward (95% CI), win-rate vs the baseline, KL, words, per policy;
* gold reward by category, per policy (bars);
* gold reward vs KL to the reference (the frontier): points of one family — ``ppo`` / ``ppo-b<β>``,
  ``dpo`` / ``dpo-b<β>``, ``bon-<n>`` (best-of-n, KL = its analytic bound) — are joined from the
  baseline (KL 0) in order of KL; other policies (RLOO, GRPO, RSFT, the β = 0 hack) are lone points;
* the iterate rounds (``configs/world/iterate.yaml``, ``full.yaml``): gold reward of each round's
  policy, from the round evals ``<name>-r<k>`` (folders with an ``eval.json``) found in ``refs``;
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
import re
from pathlib import Path
from typing import Any

from alignforge.eval.verdict import gold_key, proxy_key
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


_FAMILY = re.compile(r"^(ppo|dpo|bon)(?:-b?([0-9.]+))?$")  # ppo, ppo-b0.05, dpo-b0.1, bon-16


def _sample_policies(policies: list[str]) -> list[str]:
    """SFT, one PPO and one DPO (the plain name, else the first of a β sweep), RSFT, the oracle."""
    out = []
    for fam in ("sft", "ppo", "dpo", "rsft", "oracle"):
        pick = fam if fam in policies else next((p for p in policies if re.fullmatch(fam + r"-b[0-9.]+", p)), None)
        if pick:
            out.append(pick)
    return out


def frontier_groups(report: dict[str, Any]) -> tuple[dict[str, list[str]], list[str]]:
    """({family: its policies in order of KL}, lone policies) among those with a KL, baseline excluded."""
    sec, kl, base = report["sample"], report.get("kl") or {}, report.get("baseline")
    names = [n for n in report["policies"] if n in sec and n != base and (kl.get(n) or {}).get("kl") is not None]
    families: dict[str, list[str]] = {}
    lone = []
    for n in names:
        m = _FAMILY.match(n)
        if m:
            families.setdefault(m.group(1), []).append(n)
        else:
            lone.append(n)
    return {f: sorted(ns, key=lambda n: kl[n]["kl"]) for f, ns in families.items()}, lone


def _frontier(report: dict[str, Any], plt) -> str | None:
    """Gold reward (sample mode, 95% CI) against KL to the reference; families joined by lines."""
    sec, kl, base = report["sample"], report.get("kl") or {}, report.get("baseline")
    fam_names, lone_names = frontier_groups(report)
    if not (fam_names or lone_names) or base not in sec:
        return None

    def point(n: str, x: float) -> tuple[float, float, float, float]:
        r = sec[n]["summary"]["all"]["reward"]
        return x, r["value"], r["value"] - r["lo"], r["hi"] - r["value"]

    base_pt = point(base, 0.0)
    families = {f: [(n, point(n, kl[n]["kl"])) for n in ns] for f, ns in fam_names.items()}
    lone = [(n, point(n, kl[n]["kl"])) for n in lone_names]
    fig, ax = plt.subplots(figsize=(8, 4.6))
    ax.errorbar([0.0], [base_pt[1]], yerr=[[base_pt[2]], [base_pt[3]]], fmt="ks", label=base)
    for fam, pts in families.items():
        xs = [base_pt[0]] + [p[0] for _, p in pts]
        ys = [base_pt[1]] + [p[1] for _, p in pts]
        line, = ax.plot(xs, ys, "-", alpha=0.7)
        ax.errorbar([p[0] for _, p in pts], [p[1] for _, p in pts], yerr=[[p[2] for _, p in pts],
                    [p[3] for _, p in pts]], fmt="o", color=line.get_color(), label=fam)
        for n, p in pts:
            ax.annotate(n.split("-", 1)[1] if "-" in n else n, (p[0], p[1]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    for n, p in lone:
        ax.errorbar([p[0]], [p[1]], yerr=[[p[2]], [p[3]]], fmt="^")
        ax.annotate(n, (p[0], p[1]), fontsize=8, textcoords="offset points", xytext=(3, 3))
    # Linear up to 1 nat, logarithmic beyond: a β = 0 run tens of nats away must not squash the
    # frontier, where the policies that matter sit within a few nats of SFT.
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("KL(π‖π_ref) on samples (nats; log scale above 1)")
    ax.set_ylabel("mean gold reward")
    ax.set_title("gold reward vs KL")
    ax.legend(fontsize=8)
    return _png(fig)


_ROUND = re.compile(r"^(.*eval.*)-r(\d+)$")  # iterate.yaml: eval-r1..; full.yaml: eval-it-r1..


def _rounds_panel(refs: dict[str, str], plt) -> str | None:
    """The iterate rounds: each round eval's policy (its first checkpoint that is not the
    baseline), gold reward with 95% CI, win-rate vs the baseline and KL; round 0 = the baseline."""
    groups: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for name, folder in refs.items():
        m = _ROUND.match(name)
        path = Path(folder) / "eval.json"
        if m and path.exists():
            try:
                groups.setdefault(m.group(1), []).append((int(m.group(2)), json.loads(path.read_text())))
            except json.JSONDecodeError:
                continue
    out = []
    for group, evals in sorted(groups.items()):
        evals.sort(key=lambda t: t[0])
        rows, xs, ys, lo, hi = [], [], [], [], []
        for k, rep in evals:
            sec, base = rep.get("sample", {}), rep.get("baseline")
            pol = next((n for n in (rep.get("checkpoints") or rep["policies"]) if n != base and n in sec), None)
            if pol is None:
                continue
            if not xs and base in sec:  # round 0: the policy every round is compared with
                b = sec[base]["summary"]["all"]["reward"]
                xs.append(0), ys.append(b["value"]), lo.append(b["value"] - b["lo"]), hi.append(b["hi"] - b["value"])
                rows.append(f"<tr><td>0</td><td>{html.escape(base)}</td><td>{_gold_cell(b)}</td><td>—</td><td>—</td></tr>")
            r, w = sec[pol]["summary"]["all"]["reward"], sec[pol].get("win_rate")
            kl = (rep.get("kl") or {}).get(pol)
            xs.append(k), ys.append(r["value"]), lo.append(r["value"] - r["lo"]), hi.append(r["hi"] - r["value"])
            kl_cell = f"{kl['kl']:.2f}" if kl else "—"
            rows.append(f"<tr><td>{k}</td><td>{html.escape(pol)}</td><td>{_gold_cell(r)}</td><td>{_win_cell(w)}</td>"
                        f"<td>{kl_cell}</td></tr>")
        if len(xs) < 2:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.4))
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o-")
        ax.set_xticks(xs)
        ax.set_xlabel("round (0 = baseline)")
        ax.set_ylabel("mean gold reward")
        ax.set_title(f"iterate rounds ({group})")
        out.append(f"<h3>{html.escape(group)}</h3><img src=\"{_png(fig)}\"><table><tr><th>round</th><th>policy"
                   "</th><th>gold reward [95% CI]</th><th>win-rate vs baseline</th><th>KL (nats)</th></tr>"
                   + "".join(rows) + "</table>")
    if not out:
        return None
    return ("<h2>Iterate rounds: collect → reward → PPO from the latest policy</h2>"
            "<p>Each round's policy on the gold judge (one sample per prompt at T = 1).</p>" + "".join(out))


def _knowledge_panel(knowledge: dict[str, dict[str, Any]]) -> str:
    """The knowledge probe as a table: exact answers per policy and prompting, by category and split."""
    from alignforge.eval.knowledge import PROBE_COLUMNS, probe_rows

    rows = [f"<tr><td>{html.escape(name)}</td><td>{html.escape(key)}</td>"
            + "".join(f"<td>{r:.0%}</td>" for r in rates) + "</tr>" for name, key, rates in probe_rows(knowledge)]
    first = next(iter(knowledge.values()))
    n = first.get("per_split", "?")
    layout = "the chat template" if first.get("format", "chat") == "chat" else "the corpus's plain dialogue layout"
    return ("<h2>Knowledge probe: does the model know the world?</h2><p>Greedy answers to fact and arithmetic "
            f"questions in {layout} (up to {html.escape(str(n))} per category and split), zero-shot "
            "and after solved train-split examples; exact = the gold judge finds exactly the true value. "
            "Test-split entities are described in the corpus but never answered there.</p>"
            "<table><tr><th>policy</th><th>prompting</th>" + "".join(f"<th>{c}</th>" for c in PROBE_COLUMNS)
            + "</tr>" + "".join(rows) + "</table>")


def _gold_cell(r: dict[str, float]) -> str:
    """A mean gold reward with its 95% CI, as every table of the report shows it."""
    return f"{r['value']:+.2f} [{r['lo']:+.2f}, {r['hi']:+.2f}]"


def _win_cell(w: dict[str, float] | None) -> str:
    """A win-rate with its 95% CI ("—" for the baseline itself)."""
    return f"{w['value']:.2f} [{w['lo']:.2f}, {w['hi']:.2f}]" if w else "—"


def _pretraining_panel(baselines: dict[str, Any]) -> str:
    """Held-out bits per byte, lecture 002's order: counting (n-grams) → an RNN (LSTM) → the transformer."""
    params = baselines.get("params", {})
    rank = lambda k: (0 if "gram" in k else 1 if "lstm" in k else 2, k)  # noqa: E731
    rows = []
    for key in sorted((k for k, v in baselines.items() if isinstance(v, (int, float))), key=rank):
        what = "transformer (the pretrained model)" if key == "model" else key
        n = params.get(key)
        rows.append(f"<tr><td>{html.escape(what)}</td><td>{baselines[key]:.3f}</td>"
                    f"<td>{f'{n / 1e6:.2f} M' if n else '—'}</td></tr>")
    return ("<h2>Pretraining: held-out bits per byte</h2><p>The same held-out text under count-based n-gram "
            "models (over bytes and over the tokenizer's ids), an LSTM and the pretrained transformer; bits per "
            "byte compares models with different units honestly (lower is better).</p>"
            "<table><tr><th>model</th><th>bits/byte</th><th>parameters</th></tr>" + "".join(rows) + "</table>")


def _versus_big_panel(report: dict[str, Any]) -> str:
    """``eval-big`` (``demo --vs-big``): every policy against a ~4× larger model's SFT, InstructGPT's
    1.3 B PPO-ptx against 175 B GPT-3 at toy scale."""
    sec = report["sample"]
    rows = []
    for n in (n for n in report["policies"] if n in sec):
        r, w = sec[n]["summary"]["all"]["reward"], sec[n].get("win_rate")
        rows.append(f"<tr><td>{html.escape(n)}</td><td>{_gold_cell(r)}</td><td>{_win_cell(w)}</td></tr>")
    base = html.escape(str(report["baseline"]))
    return (f"<h2>Against a larger model: win-rate vs {base}</h2><p>{base}: a model with ~4× the non-embedding "
            "parameters, pretrained and fine-tuned on the same data for the same steps (InstructGPT: labellers "
            "preferred the 1.3 B PPO-ptx model to the 175 B GPT-3)"
            + "".join(f"; {html.escape(n)}: the model with solved examples before every prompt (their 'GPT-3 "
                      "prompted')" for n in report.get("prompted", {}))
            + ". Gold judge, one sample per prompt at T = 1, "
            f"{report.get('n_prompts', '?')} test prompts, 95% paired bootstrap CIs.</p><table><tr><th>policy</th>"
            f"<th>gold reward [95% CI]</th><th>win-rate vs {base} [95% CI]</th></tr>" + "".join(rows) + "</table>")


def _plain_log_ticks(ax) -> None:
    """Log x labelled at the decades only (matplotlib's minor labels overlap there); a log y axis spanning
    less than a decade labelled plainly (0.5, 0.6, … 2)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())
    if ax.get_yscale() == "log":
        plain = FuncFormatter(lambda v, _: f"{v:.2g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)


def _scaling_panel(refs: dict[str, str], plt) -> str | None:
    """Held-out bits per byte against non-embedding parameters and tokens with fitted power laws, and
    reward-model gold accuracy against parameters and labels (configs/world/scale.yaml)."""
    from alignforge.eval.scaling import accuracy_half_width, fits, pretrain_points, reward_points

    points, rms = pretrain_points(refs), reward_points(refs)
    if len(points) < 3 and len(rms) < 2:
        return None
    parts = []
    if len(points) >= 3:
        laws = fits(points)
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for ax, axis, key, label in ((axes[0], "vs_params", "params", "D"), (axes[1], "vs_tokens", "tokens", "N")):
            for g, f in laws[axis].items():
                xs = [p[key] for p in f["points"]]
                fitted = [p for p in f["points"] if p["fitted"]]
                line = ax.plot([p[key] for p in fitted], [p["bpb"] for p in fitted], "o",
                               label=f"{label} = {g / 1e6:.2g}M, α = {f['alpha']:.3f}")[0]
                past = [p for p in f["points"] if not p["fitted"]]  # past the best loss: hollow, not fitted
                ax.plot([p[key] for p in past], [p["bpb"] for p in past], "o", mfc="none", color=line.get_color())
                ax.plot(xs, [f["a"] * x ** (-f["alpha"]) for x in xs], "--", color=line.get_color(), linewidth=1)
            ax.set_xscale("log")
            ax.set_yscale("log")
            _plain_log_ticks(ax)
            ax.set_xlabel("non-embedding parameters N" if key == "params" else "training tokens D")
            ax.set_ylabel("held-out bits per byte")
            ax.legend(fontsize=7)
        fig.tight_layout()
        rows = "".join(f"<tr><td>bits/byte {'vs parameters at' if axis == 'vs_params' else 'vs tokens at'} "
                       f"{g / 1e6:.3g}M {'tokens' if axis == 'vs_params' else 'parameters'}</td><td>{f['alpha']:.3f}</td>"
                       f"<td>{f['rms_residual']:.3f}</td><td>{max(abs(p['residual']) for p in f['points']):.3f}</td></tr>"
                       for axis in ("vs_params", "vs_tokens") for g, f in laws[axis].items())
        parts.append("<h2>Scaling: held-out bits per byte</h2><p>Each point is one pretraining run (its own "
                     "schedule over its budget); dashed: the power law y = a·x<sup>−α</sup> fitted in log-log "
                     "space — a size's tokens law on its budgets up to its best held-out loss (hollow: past it, "
                     "not fitted). A residual is log(measured / fitted): where it grows, the law bends.</p>"
                     f'<img src="{_png(fig)}"><table><tr><th>fit</th><th>α</th><th>rms residual</th>'
                     f"<th>largest |residual|</th></tr>{rows}</table>")
    if len(rms) >= 2:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
        by_labels = max({p["labels"] for p in rms}, key=lambda n: sum(p["labels"] == n for p in rms))
        by_params = max({p["params"] for p in rms}, key=lambda n: sum(p["params"] == n for p in rms))
        for ax, key, fixed, fixed_key in ((axes[0], "params", by_labels, "labels"),
                                          (axes[1], "labels", by_params, "params")):
            pts = sorted((p for p in rms if p[fixed_key] == fixed), key=lambda p: p[key])
            ax.errorbar([p[key] for p in pts], [p["gold_accuracy"] for p in pts], fmt="o-", capsize=3,
                        yerr=[accuracy_half_width(p["gold_accuracy"], p["gold_pairs"]) for p in pts])
            ax.set_xscale("log")
            _plain_log_ticks(ax)
            ax.set_xlabel("non-embedding parameters" if key == "params" else "annotation records")
            ax.set_ylabel("gold accuracy")
            ax.axhline(0.5, color="grey", linewidth=0.8)
        fig.tight_layout()
        rows = "".join(f"<tr><td>{html.escape(p['name'])}</td><td>{p['params'] / 1e6:.2f} M</td><td>{p['labels']}</td>"
                       f"<td>{p['gold_accuracy']:.3f} ± {accuracy_half_width(p['gold_accuracy'], p['gold_pairs']):.3f}"
                       "</td></tr>" for p in sorted(rms, key=lambda p: (p["params"], p["labels"])))
        parts.append("<h2>Scaling: the reward model</h2><p>Gold accuracy (agreement with the hidden judge on "
                     "held-out pairs where it has a preference; ± the 95% normal interval over those pairs, a lower "
                     "bound since pairs share prompts) against the backbone's size at every label (left) and "
                     "against the number of labels for one backbone (right).</p>"
                     f'<img src="{_png(fig)}"><table><tr><th>reward model</th><th>parameters</th>'
                     f"<th>labels</th><th>gold accuracy</th></tr>{rows}</table>")
    return "".join(parts)


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
            rows.append("<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1f}</td></tr>".format(
                html.escape(n), _gold_cell(r), _win_cell(w), f"{kl['kl']:.2f}" if kl else "—",
                sec[n]["summary"]["all"]["words"]))
        parts.append(f"<h2>Headline (gold judge, one sample per prompt at T = 1, {report.get('n_prompts', '?')} test prompts)</h2>"
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
        ax.legend(fontsize=7, ncol=1 + len(names) // 9, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.set_title("gold reward by category")
        parts.append(f'<h2>By category</h2><img src="{_png(fig)}">')
        if report.get("knowledge"):
            parts.append(_knowledge_panel(report["knowledge"]))

        frontier = _frontier(report, plt)
        if frontier:
            parts.append('<h2>Gold reward vs KL</h2><p>One sample per prompt at T = 1; bars: 95% CI. Lines join a '
                         'family (PPO over β, DPO over β, best-of-n over n) from the baseline at KL 0; best-of-n '
                         'KL is the analytic bound log n − (n−1)/n.</p>' + f'<img src="{frontier}">')

    big_path = Path(refs["eval-big"]) / "eval.json" if "eval-big" in refs else None
    if big_path and big_path.is_file():
        parts.append(_versus_big_panel(json.loads(big_path.read_text())))

    baselines_path = Path(refs["pretrain"]) / "baselines.json" if "pretrain" in refs else None
    if baselines_path and baselines_path.is_file():
        parts.append(_pretraining_panel(json.loads(baselines_path.read_text())))

    scaling = _scaling_panel(refs, plt)
    if scaling:
        parts.append(scaling)

    rounds = _rounds_panel(refs, plt)
    if rounds:
        parts.append(rounds)

    hack_panels = []
    beta_runs = [n for n in refs if n == "ppo"] + [n for n in refs if re.fullmatch(r"ppo-b[0-9.]+", n)]
    for name in ["ppo-hack"] + beta_runs[:1]:
        if name not in refs:
            continue
        rows = _metrics(Path(refs[name]))
        pk, gk = proxy_key(rows), gold_key(rows)
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

    curves, seen = [], set()
    for name, folder in refs.items():
        if Path(folder).resolve() in seen:  # an alias ("policy") names a folder already drawn
            continue
        seen.add(Path(folder).resolve())
        rows = _metrics(Path(folder))
        key = "loss" if _series(rows, "loss")[0] else "score"  # RL stages log the reward-model score
        xs, ys = _series(rows, key)
        if not xs:
            continue
        fig, ax = plt.subplots(figsize=(3.4, 2.4))
        ax.plot(xs, ys, ".-")
        ax.set_title(f"{name} ({key})", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        curves.append(f'<img src="{_png(fig)}">')
    if curves:
        parts.append("<h2>Training curves (loss; RL stages: reward-model score)</h2>" + "".join(curves))

    samples_path = Path(refs["eval"]) / "samples.jsonl" if "eval" in refs else None
    if samples_path and samples_path.exists():
        shown = _sample_policies(report["policies"] if report else ["sft", "ppo", "dpo", "rsft", "oracle"])
        by_prompt: dict[str, dict[str, str]] = {}
        order: list[str] = []
        for line in samples_path.read_text().splitlines():
            r = json.loads(line)
            if r["mode"] != "greedy" or r["policy"] not in shown:
                continue
            key = r["prompt"] if isinstance(r["prompt"], str) else json.dumps(r["prompt"])
            if key not in by_prompt:
                by_prompt[key] = {}
                order.append(key)
            by_prompt[key][r["policy"]] = f"{r['response']} ({r['reward']:+.2f})"
        pols = [p for p in shown if any(p in v for v in by_prompt.values())]
        rows = ["<tr><td>" + html.escape(k) + "</td>" + "".join(
            f"<td>{html.escape(by_prompt[k].get(p, ''))}</td>" for p in pols) + "</tr>" for k in order[:12]]
        parts.append("<h2>Sample answers (greedy; gold reward in brackets)</h2><table><tr><th>prompt</th>"
                     + "".join(f"<th>{html.escape(p)}</th>" for p in pols) + "</tr>" + "".join(rows) + "</table>")

    page = ("<!doctype html><html><head><meta charset='utf-8'><title>alignforge report</title><style>"
            "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
            "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:4px 8px;"
            "vertical-align:top}img{margin:4px}</style></head><body><h1>alignforge report</h1>"
            + "".join(parts) + "</body></html>")
    atomic_write_text(out, page)
    return out
