import pytest

from alignforge.config import ConfigError
from alignforge.aifeedback.constitution import AXES, load_constitution, parse_constitution


def test_default_constitution_loads_with_one_principle_per_axis():
    c = load_constitution()
    assert c.names() == ["harmless", "honest", "helpful"]
    assert sorted(p.axis for p in c.principles) == sorted(AXES)
    assert c.get("honest").revision.startswith("Rewrite")
    with pytest.raises(KeyError, match="no principle named 'kind'"):
        c.get("kind")


def _one(**over):
    item = {"name": "p", "axis": "harmless", "compare": "Which?", "critique": "Point out.", "revision": "Rewrite."}
    item.update(over)
    return {"principles": [item]}


@pytest.mark.parametrize("data, message", [
    ({"principles": []}, "non-empty list"),
    ({"rules": []}, "one key 'principles'"),
    (_one(colour="red"), "principles\\[0\\]: unknown key 'colour'"),
    (_one(compare="  "), "key 'compare' must be a non-empty string"),
    (_one(axis="kind"), "axis 'kind' is not one of"),
    ({"principles": _one()["principles"] * 2}, "'p' appears more than once"),
])
def test_bad_constitutions_name_what_is_wrong(data, message):
    with pytest.raises(ConfigError, match=message):
        parse_constitution(data, "c.yaml")


def test_bad_file_names_the_path(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("principles: [\n")
    with pytest.raises(ConfigError, match=f"{bad}: not valid YAML"):
        load_constitution(bad)
    with pytest.raises(ConfigError, match="cannot read constitution"):
        load_constitution(tmp_path / "missing.yaml")
