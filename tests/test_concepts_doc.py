"""docs/concepts.md points at real code: every reference it makes is checked here, without imports.

The page's notation (its introduction defines it): a code reference is an inline code span
`` `path/to/file.py: name, name` `` (a path from the repository root; each name a module-level
function or class, or ``Class.method``). Also checked, wherever they appear in code spans or fenced
blocks: ``tests/….py::test_name`` (the test function exists), ``tests/….py`` (the file exists),
``alignforge <stage>`` (a stage of ``src/alignforge/cli.py``'s ``STAGES`` table) with its dotted
``section.key=value`` overrides (fields of that stage's config class in ``src/alignforge/config.py``),
``python -m alignforge.x.y`` (the module exists and has a ``__main__`` block), ``configs/….yaml``
(the file exists), and relative ``.md`` links. Everything is read with ``ast`` / regexes, so this
runs in well under a second.
"""

from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "concepts.md"

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
SPAN = re.compile(r"(`+)(.+?)\1", re.S)  # a span may wrap onto the next line
CODE_REF = re.compile(r"^((?:src|tests|bench|scripts)/[\w/.-]+\.py): ([A-Za-z_][\w.]*(?:, [A-Za-z_][\w.]*)*)$")
TEST_REF = re.compile(r"\b(tests/[\w/]+\.py)::(\w+)")
TEST_FILE = re.compile(r"\b(tests/[\w/]+\.py)\b")
CLI = re.compile(r"(?:^|(?<=[\s;&|(]))alignforge\s+([a-z][\w-]*)([^\n#]*)")
OVERRIDE = re.compile(r"^([a-z_]+(?:\.[a-z_]+)+)=")
MODULE = re.compile(r"python -m (alignforge(?:\.\w+)+)(?=\s|$)")
CONFIG_FILE = re.compile(r"\b(configs/[\w/.-]+\.ya?ml)\b")
MD_LINK = re.compile(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)")


def _doc() -> str:
    assert DOC.is_file(), f"{DOC} is missing"
    return DOC.read_text(encoding="utf-8")


def _code_texts() -> list[str]:
    """Every fenced block line and every inline code span of the page."""
    text = _doc()
    out = [line for block in FENCE.findall(text) for line in block.splitlines()]
    prose = FENCE.sub("", text)
    out += [" ".join(m.group(2).split()) for m in SPAN.finditer(prose)]
    return out


@lru_cache(maxsize=None)
def _tree(rel: str) -> ast.Module:
    path = ROOT / rel
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _defines(rel: str, name: str) -> bool:
    body = _tree(rel).body
    head, _, rest = name.partition(".")
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == head:
            if not rest:
                return True
            if isinstance(node, ast.ClassDef) and "." not in rest:
                return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == rest
                           for n in node.body)
    return False


def _code_refs() -> list[tuple[str, str]]:
    refs = []
    for span in _code_texts():
        m = CODE_REF.match(span)
        if m:
            refs += [(m.group(1), name) for name in m.group(2).split(", ")]
    return refs


def _cli_stages() -> dict[str, str]:
    """``STAGES`` of src/alignforge/cli.py: stage name → module, read with ast."""
    for node in _tree("src/alignforge/cli.py").body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
        if isinstance(target, ast.Name) and target.id == "STAGES" and isinstance(node.value, ast.Dict):
            return {ast.literal_eval(k): ast.literal_eval(v)[0] for k, v in zip(node.value.keys, node.value.values)}
    raise AssertionError("src/alignforge/cli.py: no STAGES = {...} table found (how does the CLI dispatch now?)")


@lru_cache(maxsize=None)
def _config_classes() -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """config.py's classes → {field: annotation} (bases' fields included), and stage_name → class."""
    raw: dict[str, tuple[list[str], dict[str, str]]] = {}
    stage_of: dict[str, str] = {}
    for node in _tree("src/alignforge/config.py").body:
        if not isinstance(node, ast.ClassDef):
            continue
        fields = {}
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                if item.target.id == "stage_name":
                    if isinstance(item.value, ast.Constant):
                        stage_of[item.value.value] = node.name
                    continue
                fields[item.target.id] = ast.unparse(item.annotation)
        raw[node.name] = ([ast.unparse(b) for b in node.bases], fields)

    def resolved(name: str) -> dict[str, str]:
        bases, fields = raw[name]
        out: dict[str, str] = {}
        for b in bases:
            if b in raw:
                out.update(resolved(b))
        out.update(fields)
        return out

    return {name: resolved(name) for name in raw}, stage_of


def _override_error(stage: str, key: str) -> str | None:
    classes, stage_of = _config_classes()
    if stage not in stage_of:
        return f"alignforge {stage}: no config class with stage_name={stage!r} in config.py to check {key}="
    cls = stage_of[stage]
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = classes[cls]
        if part not in fields:
            return f"alignforge {stage} {key}=: {cls} has no field {part!r} (fields: {', '.join(sorted(fields))})"
        if i < len(parts) - 1:
            cls = fields[part]
            if cls not in classes:
                return f"alignforge {stage} {key}=: {'.'.join(parts[:i + 1])} is not a config section ({cls})"
    return None


def test_code_references_name_real_definitions():
    refs = _code_refs()
    assert len(refs) >= 30, (f"only {len(refs)} `path.py: name` references parsed from {DOC.name}; "
                             "the parser or the page's notation is broken")
    missing = []
    for rel, name in refs:
        if not (ROOT / rel).is_file():
            missing.append(f"`{rel}: {name}`: no file {rel}")
        elif not _defines(rel, name):
            missing.append(f"`{rel}: {name}`: {rel} defines no function/class/method {name!r}")
    assert not missing, "docs/concepts.md refers to code that does not exist:\n" + "\n".join(missing)


def test_no_malformed_code_references():
    bad = [s for s in _code_texts()
           if re.match(r"(?:src|tests|bench|scripts)/\S+\.py:\s", s) and not CODE_REF.match(s)]
    assert not bad, ("docs/concepts.md: code spans that look like references but do not follow "
                     "`path.py: name, Class.method`:\n" + "\n".join(bad))


def test_test_references_exist():
    texts = _code_texts()
    refs = sorted({m.groups() for t in texts for m in TEST_REF.finditer(t)})
    assert len(refs) >= 20, f"only {len(refs)} tests/...py::test_name references parsed; the parser is broken"
    missing = []
    for rel, name in refs:
        if not (ROOT / rel).is_file():
            missing.append(f"{rel}::{name}: no file {rel}")
        elif not any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name
                     for n in _tree(rel).body):
            missing.append(f"{rel}::{name}: {rel} has no test function {name!r}")
    files = sorted({m.group(1) for t in texts for m in TEST_FILE.finditer(t)})
    missing += [f"{rel}: no such file" for rel in files if not (ROOT / rel).is_file()]
    assert not missing, "docs/concepts.md names tests that do not exist:\n" + "\n".join(missing)


def test_cli_commands_are_real_stages_with_real_overrides():
    stages = _cli_stages()
    commands = [m.groups() for t in _code_texts() for m in CLI.finditer(t)]
    assert len(commands) >= 15, f"only {len(commands)} `alignforge <stage>` commands parsed; the parser is broken"
    problems = []
    for stage, rest in commands:
        if stage not in stages:
            problems.append(f"alignforge {stage}: not a stage of src/alignforge/cli.py (stages: {', '.join(stages)})")
            continue
        for token in rest.split():
            m = OVERRIDE.match(token)
            if m:
                err = _override_error(stage, m.group(1))
                if err:
                    problems.append(err)
    assert not problems, "docs/concepts.md has commands that would not run:\n" + "\n".join(problems)


def test_python_modules_configs_and_links_exist():
    texts = _code_texts()
    problems = []
    modules = sorted({m.group(1) for t in texts for m in MODULE.finditer(t)})
    assert len(modules) >= 3, f"only {len(modules)} `python -m alignforge...` modules parsed"
    for mod in modules:
        base = ROOT / "src" / Path(*mod.split("."))
        if (base / "__main__.py").is_file():
            continue
        path = base.with_suffix(".py")
        if not path.is_file():
            problems.append(f"python -m {mod}: no {path.relative_to(ROOT)}")
        elif not re.search(r"""if __name__ == ["']__main__["']""", path.read_text(encoding="utf-8")):
            problems.append(f"python -m {mod}: {path.relative_to(ROOT)} has no `if __name__ == \"__main__\"` block")
    configs = sorted({m.group(1) for t in texts for m in CONFIG_FILE.finditer(t)})
    problems += [f"{rel}: no such config file" for rel in configs if not (ROOT / rel).is_file()]
    links = sorted(set(MD_LINK.findall(_doc())))
    problems += [f"link ({link}): no such file docs/{link}" for link in links if not (DOC.parent / link).is_file()]
    assert not problems, "docs/concepts.md:\n" + "\n".join(problems)
