"""A constitution: the written principles an AI judge and the critique → revision loop follow.

Constitutional AI (Bai et al. 2022) replaces human labels with a model's own judgements, steered
by a short list of natural-language principles. One YAML file holds them (the default ships
beside this module, ``alignforge/aifeedback/constitution.yaml``; pass your own with ``load_constitution``)::

    principles:
      - name: harmless            # recorded on every judgement made under it
        axis: harmless            # helpful | honest | harmless (the world writes examples by it)
        compare: Which response is less harmful ...?
        critique: Point out anything in the response that ...
        revision: Rewrite the response so that ...

Loading is strict like every config: an unknown key, a missing one, a duplicate name or an empty
text is an error that names the file, the principle and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from alignforge.config import ConfigError

AXES = ("helpful", "honest", "harmless")
#: The constitution shipped inside the package (the world's default).
DEFAULT_CONSTITUTION = Path(__file__).resolve().with_name("constitution.yaml")


@dataclass(frozen=True)
class Principle:
    name: str
    axis: str
    compare: str
    critique: str
    revision: str


@dataclass(frozen=True)
class Constitution:
    principles: tuple[Principle, ...]
    source: str = "<memory>"

    def get(self, name: str) -> Principle:
        for p in self.principles:
            if p.name == name:
                return p
        raise KeyError(f"{self.source}: no principle named {name!r} (have {[p.name for p in self.principles]})")

    def names(self) -> list[str]:
        return [p.name for p in self.principles]


def parse_constitution(data: object, source: str = "<memory>") -> Constitution:
    """Validate a loaded YAML/JSON object into a :class:`Constitution`."""
    if not isinstance(data, dict) or set(data) != {"principles"}:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f"{source}: expected a mapping with the one key 'principles', got {keys}")
    items = data["principles"]
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{source}: 'principles' must be a non-empty list")
    wanted = [f.name for f in fields(Principle)]
    principles: list[Principle] = []
    for i, item in enumerate(items):
        where = f"{source}: principles[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected a mapping with keys {wanted}, got {type(item).__name__}")
        unknown = sorted(set(item) - set(wanted))
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r} (valid keys: {wanted})")
        for key in wanted:
            value = item.get(key)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{where}: key {key!r} must be a non-empty string, got {value!r}")
        if item["axis"] not in AXES:
            raise ConfigError(f"{where}: axis {item['axis']!r} is not one of {list(AXES)}")
        principles.append(Principle(**{k: item[k].strip() for k in wanted}))
    names = [p.name for p in principles]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{source}: principle name {dupes[0]!r} appears more than once")
    return Constitution(tuple(principles), source)


def load_constitution(path: str | Path | None = None) -> Constitution:
    """Read a constitution YAML file (the shipped default when ``path`` is None)."""
    p = Path(path) if path is not None else DEFAULT_CONSTITUTION
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read constitution: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    return parse_constitution(data, str(p))


# ---------------------------------------------------------------------------------------------
# The AI judge's question (RLAIF). ONE renderer: the world's judging demonstrations
# (alignforge.world.judging) and the judge (alignforge.aifeedback.judge) both call it, so a judge model
# trained on the world sees at judging time exactly the text it was trained on.
# ---------------------------------------------------------------------------------------------

#: The two answers a judge may give; the first names the response shown first.
JUDGE_CHOICES = ("(A)", "(B)")


def render_conversation(prompt) -> str:
    """A prompt (a string or a message list) as ``Human: … / Assistant: …`` lines."""
    if isinstance(prompt, str):
        return f"Human: {prompt}"
    names = {"user": "Human", "assistant": "Assistant", "system": "System"}
    return "\n".join(f"{names.get(m['role'], m['role'])}: {m['content']}" for m in prompt)


def judge_prompt(principle: Principle, prompt, response_a: str, response_b: str) -> str:
    """The feedback-model question of Constitutional AI (Bai et al. 2022, §4.1), one principle:

    the conversation, the principle's ``compare`` question, the two responses as options (A) and
    (B), and "The answer is:". The judge answers ``(A)`` or ``(B)`` (:data:`JUDGE_CHOICES`).
    """
    return (f"Consider the following conversation between a human and an assistant:\n"
            f"{render_conversation(prompt)}\n"
            f"{principle.compare}\n"
            f"Options:\n"
            f"(A) {response_a.strip()}\n"
            f"(B) {response_b.strip()}\n"
            f"The answer is:")


# ---------------------------------------------------------------------------------------------
# Critique → revision (Constitutional AI's supervised phase, Bai et al. 2022 §3). ONE builder:
# the world's critique demonstrations (alignforge.world.critiques) and `alignforge critique`
# (alignforge.stages.critique) both call it, so a model SFT'd on the world is asked exactly the
# conversation it was trained on.
# ---------------------------------------------------------------------------------------------

#: What the user turns of the critique loop start with (the paper's "Critique Request:" /
#: "Revision Request:" labels), so a model can tell the requests from an ordinary question.
CRITIQUE_REQUEST = "Critique request: "
REVISION_REQUEST = "Revision request: "


def critique_messages(principle: Principle, prompt, response: str) -> list[dict[str, str]]:
    """The conversation whose next assistant turn is the critique: the prompt's turns, the
    ``response`` under critique, then a user turn with the principle's critique request."""
    from alignforge.data.records import as_messages

    return [*as_messages(prompt), {"role": "assistant", "content": response},
            {"role": "user", "content": CRITIQUE_REQUEST + principle.critique}]


def revision_messages(principle: Principle, prompt, response: str, critique: str) -> list[dict[str, str]]:
    """:func:`critique_messages` + the critique + a user turn with the principle's revision
    request: the conversation whose next assistant turn is the revised response."""
    return [*critique_messages(principle, prompt, response), {"role": "assistant", "content": critique},
            {"role": "user", "content": REVISION_REQUEST + principle.revision}]
