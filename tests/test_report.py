"""``report.html`` from synthetic run folders: panels present when their runs exist, families on the
frontier, the iterate rounds, embedded images only, and model text escaped."""

import base64
import json
import re

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="the HTML report draws its plots with matplotlib")

from alignforge.eval.protocol import PolicyEval, compare  # noqa: E402
from alignforge.eval.report import frontier_groups, write_report  # noqa: E402

EVIL = "<script>alert('x')</script> & more"


def _policy(name, mean, n=12, seed=0, evil=False, modes=("sample", "greedy")):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        resp = EVIL if (evil and i == 0) else f"answer {i} of {name}"
        rows.append({"prompt": f"prompt <b>{i}</b>", "category": "fact" if i % 2 else "arith", "response": resp,
                     "reward": float(mean + rng.normal(0, 0.3)), "helpful": 4.0, "honest": 4.0, "harmless": 4.0,
                     "flags": {}, "words": float(len(resp.split()))})
    return PolicyEval(name, {m: [dict(r) for r in rows] for m in modes})


def _eval_folder(folder, evals, kl, baseline="sft"):
    folder.mkdir(parents=True)
    for e in evals:
        e.kl = kl.get(e.name)
    report = compare(evals, baseline=baseline, oracle="oracle" if any(e.name == "oracle" for e in evals) else None,
                     n_boot=200)
    report.update(judge="gold", n_prompts=12, checkpoints={e.name: f"runs/x/{e.name}" for e in evals
                                                           if e.name != "oracle"})
    (folder / "eval.json").write_text(json.dumps(report))
    lines = [json.dumps({"policy": e.name, "mode": m, **r}) for e in evals for m, rows in e.rows.items() for r in rows]
    (folder / "samples.jsonl").write_text("\n".join(lines) + "\n")
    return report


@pytest.fixture()
def runs(tmp_path):
    refs = {}
    # Main eval: a PPO and a DPO β sweep, best-of-n, two lone points, the oracle; sft answers a <script>.
    kls = {"ppo-b0.2": 0.5, "ppo-b0.01": 3.0, "ppo-b0.05": 1.2, "dpo-b0.1": 2.0, "dpo-b0.3": 0.8, "bon-4": 0.636,
           "bon-16": 1.835, "rloo": 1.5, "ppo-hack": 9.0}
    means = {"sft": 0.1, "ppo-b0.2": 0.3, "ppo-b0.05": 0.5, "ppo-b0.01": 0.45, "dpo-b0.3": 0.3, "dpo-b0.1": 0.4,
             "rloo": 0.4, "ppo-hack": -0.5, "oracle": 1.5}
    evals = [_policy(n, means[n], seed=i, evil=n in ("sft", "ppo-b0.05")) for i, n in enumerate(means)]
    evals += [_policy(n, m, seed=9, modes=("sample",)) for n, m in (("bon-4", 0.3), ("bon-16", 0.5))]
    _eval_folder(tmp_path / "eval", evals, {n: {"kl": v} for n, v in kls.items()})
    refs["eval"] = str(tmp_path / "eval")
    # Three iterate rounds, each with its own eval folder (iterate.yaml's eval-r<k>).
    round_means = {1: 0.3, 2: 0.6, 3: 0.8}
    for k, m in round_means.items():
        rep = _eval_folder(tmp_path / f"eval-r{k}", [_policy(f"round-{k}", m, seed=k), _policy("sft", 0.1, seed=0),
                                                     _policy("oracle", 1.5, seed=5)], {f"round-{k}": {"kl": 0.5 * k}})
        refs[f"eval-r{k}"] = str(tmp_path / f"eval-r{k}")
        round_means[k] = rep["sample"][f"round-{k}"]["summary"]["all"]["reward"]["value"]
    # Training curves: SFT loss, and the β = 0 hack (proxy up, gold down) with a line cut by a kill.
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 2.0 / s}) + "\n"
                                                            for s in range(1, 6)))
    (tmp_path / "ppo-hack").mkdir()
    (tmp_path / "ppo-hack" / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "score": 0.2 * s, **({"gold_all": -0.1 * s} if s % 2 else {})}) + "\n"
                for s in range(10)) + '{"step": 10, "sco')
    refs.update(sft=str(tmp_path / "sft"), policy=str(tmp_path / "sft"), **{"ppo-hack": str(tmp_path / "ppo-hack")},
                round="3", prev_round="2")
    return tmp_path, refs, round_means


def test_report_panels_embedded_and_escaped(runs):
    root, refs, round_means = runs
    out = write_report(root, refs)
    page = out.read_text()
    assert out == root / "report.html"
    # Model text and prompts are escaped: no live markup from the samples reaches the page.
    assert "<script>" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in page
    assert "prompt &lt;b&gt;0&lt;/b&gt;" in page
    # Self-contained: every image is an embedded PNG that decodes; nothing is fetched.
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert all(base64.b64decode(s.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n" for s in srcs)
    assert "http://" not in page and "https://" not in page
    heads = re.findall(r"<h2>(.*?)</h2>", page)
    assert [h.split(" ")[0] for h in heads] == ["Headline", "By", "Gold", "Iterate", "Reward", "Training", "Sample"]
    # by category, frontier, rounds, hack, curves (sft once although "policy" aliases it; ppo-hack score)
    assert len(srcs) == 1 + 1 + 1 + 1 + 2
    # The rounds table: round 0 is the baseline, then each round's gold reward from its eval.json.
    for k, v in round_means.items():
        assert f"<tr><td>{k}</td><td>round-{k}</td><td>{v:+.2f} [" in page
    assert "<tr><td>0</td><td>sft</td>" in page
    # Sample answers: SFT, the first PPO and DPO of the sweeps (no plain "ppo"/"dpo" here), oracle.
    assert "<th>prompt</th><th>sft</th><th>ppo-b0.2</th><th>dpo-b0.3</th><th>oracle</th>" in page


def test_frontier_groups_families_in_kl_order(runs):
    root, refs, _ = runs
    report = json.loads((root / "eval" / "eval.json").read_text())
    families, lone = frontier_groups(report)
    assert families == {"ppo": ["ppo-b0.2", "ppo-b0.05", "ppo-b0.01"], "dpo": ["dpo-b0.3", "dpo-b0.1"],
                        "bon": ["bon-4", "bon-16"]}
    assert lone == ["rloo", "ppo-hack"]


def test_report_without_eval_still_draws_curves(tmp_path):
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 3.0}) + "\n")
    page = write_report(tmp_path, {"pretrain": str(tmp_path / "pretrain")}).read_text()
    assert re.findall(r"<h2>(.*?)</h2>", page) == ["Training curves (loss; RL stages: reward-model score)"]


def test_knowledge_panel_after_the_categories_and_escaped(runs):
    root, refs, _ = runs
    path = root / "eval" / "eval.json"
    report = json.loads(path.read_text())
    cell = lambda v: {"fact": {"train": {"exact": v, "n": 8}, "test": {"exact": v / 2, "n": 8}},  # noqa: E731
                      "arithmetic": {"train": {"exact": 0.25, "n": 8}, "test": {"exact": 0.0, "n": 8}}}
    report["knowledge"] = {"sft<i>": {"per_split": 8, "format": "chat", "0-shot": cell(0.5), "4-shot": cell(1.0)}}
    path.write_text(json.dumps(report))
    page = write_report(root, refs).read_text()
    heads = [h.split(" ")[0] for h in re.findall(r"<h2>(.*?)</h2>", page)]
    assert heads[:3] == ["Headline", "By", "Knowledge"]
    assert "<tr><td>sft&lt;i&gt;</td><td>4-shot</td><td>100%</td><td>50%</td><td>25%</td><td>0%</td></tr>" in page
    assert "in the chat template (up to 8 per category and split)" in page


def test_pretraining_panel_orders_ngrams_then_lstm_then_transformer(tmp_path):
    folder = tmp_path / "pretrain"
    folder.mkdir()
    (folder / "baselines.json").write_text(json.dumps({
        "model": 1.157, "bytes-5gram-kn": 1.036, "tokens-lstm-1x512": 1.41, "tokens-3gram-kn": 0.778,
        "params": {"model": 4_210_000, "tokens-lstm-1x512": 2_354_005}}))
    page = write_report(tmp_path, {"pretrain": str(folder)}).read_text()
    panel = page[page.index("Pretraining: held-out bits per byte"):]
    order = [panel.index(k) for k in ("bytes-5gram-kn", "tokens-3gram-kn", "tokens-lstm-1x512", "transformer (the")]
    assert order == sorted(order)
    assert "<td>1.410</td><td>2.35 M</td>" in panel and "<td>1.157</td><td>4.21 M</td>" in panel
    assert "<td>0.778</td><td>—</td>" in panel  # n-grams have counts, not parameters


def test_versus_big_panel_lists_win_rates_against_the_larger_model(tmp_path):
    evals = [_policy(n, m, seed=i, evil=n == "ppo") for i, (n, m) in enumerate((("sft-big", 0.1), ("ppo", 0.6)))]
    _eval_folder(tmp_path / "eval-big", evals, {}, baseline="sft-big")
    page = write_report(tmp_path, {"eval-big": str(tmp_path / "eval-big")}).read_text()
    panel = page[page.index("Against a larger model: win-rate vs sft-big"):]
    assert "<td>ppo</td>" in panel and panel.count("<tr>") == 3
    assert "<script>" not in page
    # The 'GPT-3 prompted' sentence is there only for an eval that had a prompted policy.
    assert "GPT-3 prompted" not in panel
    from alignforge.eval.report import _versus_big_panel

    report = json.loads((tmp_path / "eval-big" / "eval.json").read_text())
    assert "big-prompted: the model with solved examples" in _versus_big_panel(
        {**report, "prompted": {"big-prompted": {"shots": []}}})
