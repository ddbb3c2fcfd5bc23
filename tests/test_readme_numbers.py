"""scripts/readme_numbers.py: the README's demo numbers and the 3-seed verdict come from eval.json."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "readme_numbers.py"


def _module():
    spec = importlib.util.spec_from_file_location("readme_numbers", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _report(ppo_lo: float, gold_ppo: float = 0.9) -> dict:
    def entry(gold, win=None):
        e = {"summary": {"all": {"reward": {"value": gold, "lo": gold - 0.1, "hi": gold + 0.1}, "words": 6.0}}}
        if win:
            e["win_rate"] = {"value": win[0], "lo": win[1], "hi": win[2]}
        return e
    return {"policies": ["sft", "ppo", "dpo", "oracle"], "baseline": "sft", "n_prompts": 160,
            "kl": {"ppo": {"kl": 3.5}, "dpo": {"kl": 2.0}},
            "sample": {"sft": entry(0.5), "ppo": entry(gold_ppo, (0.6, ppo_lo, 0.7)),
                       "dpo": entry(0.7, (0.58, 0.53, 0.63)), "oracle": entry(2.9, (0.95, 0.93, 0.97))}}


def test_readme_block_has_the_table_and_the_seed_verdict(tmp_path):
    mod = _module()
    paths = []
    for i, lo in enumerate([0.55, 0.52, 0.48]):
        p = tmp_path / f"s{i}.json"
        p.write_text(json.dumps(_report(lo)))
        paths.append(str(p))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- numbers:start -->\nOLD-TABLE\n<!-- numbers:end -->\noutro\n")
    assert mod.main([paths[0], "--seeds", *paths[1:], "--readme", str(readme), "--label", "L"]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n<!-- numbers:start -->\nL — gold judge") and text.endswith("<!-- numbers:end -->\noutro\n")
    assert "OLD-TABLE" not in text
    assert "| ppo | +0.90 [+0.80, +1.00] | 0.60 [0.55, 0.70] | 3.50 | 6.0 |" in text
    # ppo's CI is above ½ in 2 of the 3 seeds, dpo's in all three: the goal is computed as not met.
    assert "| ppo | 0.60 [0.55, 0.70], gold +0.90 (sft +0.50) |" in text and "| 2 of 3 |" in text
    assert "| dpo |" in text and "| 3 of 3 |" in text
    assert "oracle" not in text.split("Over 3 seeds")[1]
    assert "**not met** — ppo 2/3, dpo 3/3." in text

    (tmp_path / "s2.json").write_text(json.dumps(_report(0.51)))
    mod.main([paths[0], "--seeds", *paths[1:], "--readme", str(readme), "--seed-names", "0", "1", "2"])
    assert "**met** — ppo 3/3, dpo 3/3." in readme.read_text() and "| seed 0 | seed 1 | seed 2 |" in readme.read_text()


def test_missing_block_is_an_error(tmp_path, capsys):
    p = tmp_path / "e.json"
    p.write_text(json.dumps(_report(0.6)))
    readme = tmp_path / "README.md"
    readme.write_text("no block here\n")
    assert _module().main([str(p), "--readme", str(readme)]) == 2
    assert "no <!-- numbers:start -->" in capsys.readouterr().err
    assert readme.read_text() == "no block here\n"
