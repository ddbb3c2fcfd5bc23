"""Design §8: training code never reads the gold judge.

Every module under ``src/alignforge`` is parsed with ``ast``. A module *taints* if it imports
``alignforge.world.judge`` or ``alignforge.world.annotators`` (the annotators read gold scores),
directly or through another tainted alignforge module, at any depth (imports inside functions
count too, and so do literal module names given to ``importlib.import_module`` / ``__import__``;
the CLI's lazy stage registry is a table of names, not an import, and is not counted).
Only the allow-list below may import tainted modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
HIDDEN = ("alignforge.world.judge", "alignforge.world.annotators")

#: Who may read gold scores, and why.
ALLOWED_PREFIXES = (
    "alignforge.world.",         # the world itself (annotators, examples, its CLI `world judge`)
    "alignforge.eval.",          # evaluation: gold reward per category, win-rates against gold
)
ALLOWED_MODULES = {
    "alignforge.world",          # package __init__ (it does not import the judge; checked below)
    "alignforge.eval",
    "alignforge.stages.collect",   # simulated annotators label samples (the stand-in for humans)
    "alignforge.stages.eval",      # evaluation stage
    "alignforge.stages.demo",      # the demo reports gold results
    "alignforge.stages.pipeline",  # oracle ablations (gold reward as the RL reward) are run from here
}


#: The evaluation package is the sanctioned gateway to gold scores: taint does not propagate
#: through it, so a training stage may import it to *report* gold metrics on held-out prompts
#: (design §8 evaluation protocol). Training on gold scores is an oracle ablation (pipeline).
GATEWAY = ("alignforge.eval",)


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(tree: ast.AST, name: str, is_package: bool, known: set[str]) -> set[str]:
    """Every alignforge module ``tree`` imports (absolute, relative, ``from pkg import submodule``,
    and ``importlib.import_module("literal")``)."""
    out: set[str] = set()
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Call) and _call_name(node) in ("import_module", "__import__"):
            out.update(a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str))
    return {m for m in out if m in known}


def _call_name(node: ast.Call) -> str:
    f = node.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def allowed(name: str) -> bool:
    return name in ALLOWED_MODULES or name.startswith(ALLOWED_PREFIXES)


def scan(sources: dict[str, tuple[str, bool]]) -> tuple[set[str], list[str]]:
    """(tainted modules, violations) for {module name: (source, is_package)}."""
    known = set(sources)
    imports = {n: imported_modules(ast.parse(src), n, pkg, known) for n, (src, pkg) in sources.items()}
    tainted = {m for m in HIDDEN if m in known}
    changed = True
    while changed:  # transitive closure: importing a module that reads the judge reads the judge
        changed = False
        for n, deps in imports.items():
            if n not in tainted and not n.startswith(GATEWAY) and deps & tainted:
                tainted.add(n)
                changed = True
    violations = [f"{n} imports {sorted(imports[n] & tainted)}" for n in sorted(sources)
                  if not allowed(n) and imports[n] & tainted]
    return tainted, violations


def project_sources() -> dict[str, tuple[str, bool]]:
    return {module_name(p): (p.read_text(encoding="utf-8"), p.name == "__init__.py")
            for p in sorted((SRC / "alignforge").rglob("*.py"))}


def test_training_code_never_imports_the_gold_judge():
    sources = project_sources()
    assert "alignforge.world.judge" in sources and "alignforge.world.annotators" in sources
    tainted, violations = scan(sources)
    assert not violations, "modules outside the allow-list reach the gold judge:\n" + "\n".join(violations)
    # training code may use the world's prompts, corpus, demonstrator and reference policies
    for ok in ("alignforge.world", "alignforge.world.core", "alignforge.world.tasks", "alignforge.world.corpus",
               "alignforge.world.facts", "alignforge.world.demonstrator", "alignforge.world.policies",
               "alignforge.world.config",
               # the AI judge and the RLAIF stage are training code: they learn nothing from gold
               "alignforge.aifeedback.judge", "alignforge.stages.rlaif", "alignforge.aifeedback.constitution"):
        assert ok not in tainted, ok
    # Constitutional AI's critique → revision: the world's examples (world.core imports them) and the stage
    for ok in ("alignforge.world.critiques", "alignforge.stages.critique"):
        assert ok not in tainted, ok


@pytest.mark.parametrize("source", [
    "import alignforge.world.judge",
    "from alignforge.world.judge import judge",
    "from alignforge.world import annotators",
    "from ..world import judge",
    "def f():\n    from alignforge.world.annotators import AnnotatorPool",
    "import importlib\nimportlib.import_module('alignforge.world.judge')",
    "from alignforge.world.examples import example_table",   # transitively reads the judge
    "from alignforge.stages import helper",                  # ... through a non-allowed module too
])
def test_the_scanner_catches_violations(source):
    sources = {
        "alignforge.world": ("", True),
        "alignforge.world.judge": ("", False),
        "alignforge.world.annotators": ("from alignforge.world.judge import judge", False),
        "alignforge.world.examples": ("from .judge import judge", False),
        "alignforge.world.tasks": ("", False),
        "alignforge.stages": ("", True),
        "alignforge.stages.helper": ("from alignforge.world.judge import judge", False),
        "alignforge.stages.ppo": (source, False),
        "alignforge.stages.eval": (source, False),
    }
    _, violations = scan(sources)
    offenders = [v.split()[0] for v in violations]
    assert "alignforge.stages.ppo" in offenders and "alignforge.stages.eval" not in offenders  # eval is allowed


def test_the_scanner_lets_safe_imports_through():
    sources = {
        "alignforge.eval": ("", True),
        "alignforge.eval.protocol": ("from alignforge.world.judge import judge_batch", False),
        "alignforge.stages.sft": ("from alignforge.eval.protocol import evaluate", False),  # reporting via eval
        "alignforge.world": ("from alignforge.world.core import build_world", True),
        "alignforge.world.core": ("from alignforge.world.tasks import Task", False),
        "alignforge.world.tasks": ("", False),
        "alignforge.world.judge": ("", False),
        "alignforge.stages.ppo": ("from alignforge.world import build_world\nfrom ..world.tasks import Task", False),
    }
    assert scan(sources)[1] == []


#: Modules under stages/ that run other stages, and so may import them.
RUNNERS = {"alignforge.stages.pipeline", "alignforge.stages.demo"}


def stage_imports(sources: dict[str, tuple[str, bool]]) -> list[str]:
    """'<stage> imports <other stage>' for every module under stages/ (runners excepted) that imports
    another stage module other than the pipeline's public entry point."""
    known = set(sources)
    stages = {n for n in known if n.startswith("alignforge.stages.")}
    out = []
    for n in sorted(stages - RUNNERS):
        src, pkg = sources[n]
        bad = sorted(imported_modules(ast.parse(src), n, pkg, known) & (stages - {n, "alignforge.stages.pipeline"}))
        out += [f"{n} imports {b}" for b in bad]
    return out


def test_stages_import_components_never_each_other():
    """Issue 21: what two stages share is a component (models/, data/, train/); a stage that runs another
    does it through alignforge.stages.pipeline.run_stage_config."""
    assert stage_imports(project_sources()) == []


def test_the_stage_scanner_catches_a_stage_importing_a_stage():
    fake = {"alignforge.stages.a": ("from alignforge.stages.b import load_model\n", False),
            "alignforge.stages.b": ("def load_model(): ...\n", False),
            "alignforge.stages.c": ("def f():\n    from alignforge.stages import b\n", False),
            "alignforge.stages.d": ("from alignforge.stages.pipeline import run_stage_config\n", False),
            "alignforge.stages.pipeline": ("import alignforge.stages.b\n", False)}
    assert stage_imports(fake) == ["alignforge.stages.a imports alignforge.stages.b",
                                   "alignforge.stages.c imports alignforge.stages.b"]
