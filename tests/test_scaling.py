"""Scaling-law fits (alignforge.eval.scaling): the power law against exact data and numpy's polyfit,
Kaplan's N against the built models, the points read from finished pipeline folders, the report panel."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from alignforge.eval.scaling import fits, non_embedding_params, power_law_fit, pretrain_points, reward_points


def test_an_exact_power_law_is_recovered_with_zero_residuals():
    xs = [1e5, 4e5, 1.6e6, 6.4e6]
    f = power_law_fit(xs, [3.0 * x ** -0.25 for x in xs])
    assert f.a == pytest.approx(3.0, rel=1e-9) and f.alpha == pytest.approx(0.25, rel=1e-9)
    assert max(abs(r) for r in f.residuals) < 1e-12 and f(1e6) == pytest.approx(3.0 * 1e6 ** -0.25)


def test_noisy_fit_equals_numpy_polyfit_in_log_space():
    rng = np.random.default_rng(0)
    xs = np.array([7.9e5, 3.2e6, 1.24e7, 2.53e7])
    ys = 2.0 * xs ** -0.1 * np.exp(rng.normal(0, 0.05, 4))
    slope, intercept = np.polyfit(np.log(xs), np.log(ys), 1)
    f = power_law_fit(xs.tolist(), ys.tolist())
    assert f.alpha == pytest.approx(-slope, rel=1e-9) and f.a == pytest.approx(math.exp(intercept), rel=1e-9)
    assert f.residuals == pytest.approx((np.log(ys) - (intercept + slope * np.log(xs))).tolist(), abs=1e-12)
    assert f.rms_residual == pytest.approx(float(np.sqrt(np.mean(np.square(f.residuals)))))


@pytest.mark.parametrize("x, y, match", [([1.0], [1.0], "≥ 2"), ([1.0, 0.0], [1.0, 1.0], "positive"),
                                         ([2.0, 2.0], [1.0, 3.0], "all x are equal")])
def test_bad_fits_are_refused(x, y, match):
    with pytest.raises(ValueError, match=match):
        power_law_fit(x, y)


def test_non_embedding_params_match_the_built_presets_and_grouped_query_attention():
    from alignforge.models.load import PRESETS, build_model, matmul_params

    for name in PRESETS:
        model = build_model(name, 300)
        assert non_embedding_params(model.config.to_dict()) == matmul_params(model), name
    # GQA: k and v project to kv_heads · head_dim (Qwen2/Llama-3 style)
    cfg = {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128, "num_attention_heads": 8,
           "num_key_value_heads": 2}
    assert non_embedding_params(cfg) == 2 * (64 * 64 * 2 + 64 * 16 * 2 + 3 * 64 * 128)


def _folder(root, name, config_yaml, model_cfg, metrics=(), eval_json=None):
    f = root / name
    (f / "model").mkdir(parents=True)
    (f / "DONE").write_text("{}")
    (f / "config.yaml").write_text(config_yaml)
    (f / "model" / "config.json").write_text(json.dumps(model_cfg))
    (f / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    if eval_json is not None:
        (f / "eval.json").write_text(json.dumps(eval_json))
    return str(f)


def _llama(h, layers=2):
    return {"hidden_size": h, "num_hidden_layers": layers, "intermediate_size": 2 * h, "num_attention_heads": 4}


@pytest.fixture()
def scale_refs(tmp_path):
    refs = {}
    for h in (32, 64, 128):
        for steps in (10, 40):
            bpb = 4.0 * (h ** -0.3) * (steps ** -0.2)
            refs[f"pretrain-{h}-{steps}"] = _folder(tmp_path, f"pretrain-{h}-{steps}", "baselines: []\n", _llama(h),
                                                    [{"step": steps, "loss": 1.0, "tokens": steps * 100},
                                                     {"step": steps, "eval_bpb": bpb}])
    rm = "reward:\n  heads: [reward]\n"
    for h, labels in ((32, 700), (64, 700), (128, 700), (64, 100), (64, 300)):
        refs[f"reward-{h}-{labels}"] = _folder(tmp_path, f"reward-{h}-{labels}", rm, _llama(h), eval_json={
            "gold_accuracy": 0.5 + h / 1000 + labels / 10000, "comparisons": labels // 2, "rankings": labels // 4,
            "ratings": labels - labels // 2 - labels // 4, "pairs": 3 * labels, "gold_pairs": 400})
    # an SFT folder logs eval_bpb too but is not a pretraining run; an alias repeats a folder
    refs["sft"] = _folder(tmp_path, "sft", "sft:\n  epochs: 1\n", _llama(64), [{"step": 1, "eval_bpb": 0.5, "tokens": 9}])
    refs["policy"] = refs["sft"]
    refs["alias"] = refs["pretrain-32-10"]
    return refs


def test_points_and_fits_from_finished_folders(scale_refs):
    pts = pretrain_points(scale_refs)
    assert len(pts) == 6 and {p["tokens"] for p in pts} == {1000, 4000}
    assert {p["params"] for p in pts} == {non_embedding_params(_llama(h)) for h in (32, 64, 128)}
    laws = fits(pts)
    # the synthetic bpb is an exact power of h, and params ∝ h², so α over params = 0.3 / 2
    for f in laws["vs_params"].values():
        assert f["alpha"] == pytest.approx(0.15, rel=1e-9) and f["rms_residual"] < 1e-12
    for f in laws["vs_tokens"].values():
        assert f["alpha"] == pytest.approx(0.2, rel=1e-9)
    # A budget past a size's best held-out loss is left out of its tokens law but keeps its residual.
    bent = [dict(p, bpb=p["bpb"] * (1.5 if p["tokens"] == 4000 else 1.0)) for p in pts]
    laws = fits(bent + [dict(p, tokens=2000, bpb=4.0 * (64 ** -0.3) * (20 ** -0.2), name="mid") for p in pts
                        if p["name"] == "pretrain-64-10"])
    f = laws["vs_tokens"][non_embedding_params(_llama(64))]
    assert f["alpha"] == pytest.approx(0.2, rel=1e-9) and f["fitted_points"] == 2
    assert [round(q["residual"], 6) for q in f["points"]] == [0.0, 0.0, round(math.log(1.5), 6)]
    assert [q["fitted"] for q in f["points"]] == [True, True, False]
    rms = reward_points(scale_refs)
    assert sorted((p["labels"], round(p["gold_accuracy"], 4)) for p in rms)[:2] == [(100, 0.574), (300, 0.594)]
    assert len(rms) == 5 and {p["gold_pairs"] for p in rms} == {400}


def test_accuracy_interval_is_the_normal_approximation():
    from alignforge.eval.scaling import accuracy_half_width

    assert accuracy_half_width(0.6, 1000) == pytest.approx(1.96 * math.sqrt(0.24 / 1000))
    assert accuracy_half_width(0.5, 100) == pytest.approx(0.098)
    assert math.isnan(accuracy_half_width(0.5, 0))


def test_report_draws_the_scaling_panels(scale_refs, tmp_path):
    pytest.importorskip("matplotlib")
    from alignforge.eval.report import write_report

    page = write_report(tmp_path, scale_refs).read_text()
    assert "Scaling: held-out bits per byte" in page and "Scaling: the reward model" in page
    assert "<td>0.150</td>" in page  # α vs parameters
    assert "<td>reward-64-100</td>" in page and "± 0.048" in page  # 1.96·√(0.5744·0.4256/400)
