"""Critique → revision demonstrations: how the world teaches a model Constitutional AI's loop.

Constitutional AI's supervised phase (Bai et al. 2022, §3) asks a model to critique its own
answer under a principle and then to revise it. A 1–10 M-parameter world model has never seen a
critique, so the world writes examples of the whole exchange (``critique_sft.jsonl``)::

    user       How do I poison the food of Vorn?
    assistant  Sneak into Vorn at night and mix bad berries into the food.      (a flawed answer)
    user       Critique request: <the principle's critique request>
    assistant  The response says "Sneak into ..." That helps someone poison the food of Vorn.
    user       Revision request: <the principle's revision request>
    assistant  I am sorry, but I cannot help with that.                          (the revision)

Each conversation becomes two demonstrations, one per assistant turn the model should learn —
the critique and the revision — and never the flawed answer itself (SFT puts loss on the final
assistant turn only). The conversation is built by :func:`alignforge.aifeedback.constitution.critique_messages`
/ :func:`~alignforge.aifeedback.constitution.revision_messages`, the builder ``alignforge critique`` uses.

What the world's critic does:

* flawed answers — harmful compliance, a moralising refusal, an invented answer about something
  the world lacks, a wrong fact or sum, a refused harmless look-alike — get a *specific* critique
  (it quotes the answer and names the harm, the invented claim, or the wrong and the right value)
  and the oracle's answer as revision (a polite refusal, "I do not know …", the correct value);
* a share of answers is already right: the critique says so and the revision repeats the answer
  unchanged, so a model does not learn that every answer must turn into a refusal;
* the principle is drawn uniformly from the constitution, as ``alignforge critique`` draws it,
  and the critique names the answer's actual flaw whatever the principle's axis: the model learns
  to read the answer, not to pattern-match the request.

Answers come from the world's :class:`~alignforge.world.demonstrator.Demonstrator` with one
mistake rate set to 1 (or all to 0 for right answers), so they read like the SFT data. Prompts
are drawn from the TRAIN split only (test prompts stay unseen) with their own random stream, so
the rest of the world (and its frozen defaults) is unchanged. Nothing here reads the gold judge.
"""

from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import dataclass

from alignforge.aifeedback.constitution import Constitution, critique_messages, load_constitution, revision_messages
from alignforge.data.records import Demonstration
from alignforge.world.config import DemonstratorSection
from alignforge.world.demonstrator import Demonstrator
from alignforge.world.tasks import Task, sample_prompts

#: Category weights of the critique examples' prompts: the red-team categories first, plus
#: questions with a checkable value (facts, sums) and harmless look-alikes of harmful requests.
MIX = {"harmful": 0.30, "unknown": 0.25, "fact": 0.15, "arithmetic": 0.15, "benign": 0.15}
#: Share of examples whose answer is flawed; the others are already fine.
FLAWED = 0.6
#: Conversations written per SFT demonstration of the world (750 for the default 3000).
PER_SFT = 0.25

#: category -> [(flaw, weight)]: which demonstrator mistake makes the flawed answer.
FLAWS: dict[str, list[tuple[str, float]]] = {
    "harmful": [("comply", 0.75), ("moralize", 0.25)],
    "unknown": [("invent", 1.0)],
    "fact": [("wrong_value", 1.0)],
    "arithmetic": [("wrong_value", 1.0)],
    "benign": [("over_refuse", 1.0)],
}
#: flaw -> the demonstrator rates that produce it (every other rate is 0).
_RATES = {"comply": {"comply_harmful": 1.0}, "moralize": {"moralize": 1.0}, "invent": {"invent": 1.0},
          "wrong_value": {"wrong_fact": 1.0, "arithmetic_error": 1.0}, "over_refuse": {"over_refuse": 1.0},
          "none": {}}
#: harmful subtype -> what complying helps someone do (named in the critique).
HARM_DOES = {"poison": "poison the food of {name}", "hurt": "hurt {name}", "steal": "steal the pet of {name}",
             "insult": "insult the people of {name}", "burn": "burn down {name}",
             "lewd": "write a lewd story about {name}"}


@dataclass(frozen=True)
class CritiqueExample:
    """One critique → revision exchange (``flaw == "none"``: the answer was already fine)."""

    prompt: str
    category: str
    answer: str
    principle: str
    flaw: str
    critique: str
    revision: str


def _demonstrator(world, flaw: str, seed: int) -> Demonstrator:
    rates = {f.name: 0.0 for f in dataclasses.fields(DemonstratorSection)}
    rates.update(_RATES[flaw])
    return Demonstrator(world, DemonstratorSection(**rates), seed=seed)


def _states_value(answer: str, value: str) -> bool:
    return value.lower() in re.findall(r"[a-z0-9]+", answer.lower())


def critique_text(task: Task, answer: str, flaw: str) -> str:
    """The world critic's critique of ``answer`` (specific: it quotes the answer and names what is wrong)."""
    quote = f'The response says "{answer}"'
    if flaw == "comply":
        return f"{quote} That helps someone {HARM_DOES[task.subtype].format(name=task.subject)}. It must refuse."
    if flaw == "moralize":
        return f"{quote} It refuses, but it lectures the user. A polite refusal is enough."
    if flaw == "invent":
        return f"{quote} Nothing is known about the {task.phrase} of {task.subject}, so that is made up."
    if flaw == "wrong_value":
        if task.category == "arithmetic":
            e = task.extra
            return f"{quote} But {e['a']} {e['op']} {e['b']} is {task.answer}, not what it says."
        return f"{quote} But the {task.phrase} of {task.subject} is {task.answer}, not what it says."
    if flaw == "over_refuse":
        return f"{quote} It refuses a harmless question about {task.subject}. It should answer it."
    # flaw == "none": the answer is right; say why, so "fine" is as specific as a fault.
    why = {"harmful": "it politely refuses to help with harm",
           "unknown": f"it says it does not know the {task.phrase} of {task.subject}",
           "benign": "it answers the harmless question"}.get(task.category)
    if why is None:  # fact / arithmetic: the right value
        why = f"{task.answer} is right"
    return f"The response is fine: {why}. Nothing needs to change."


def critique_examples(world, n: int | None = None, constitution: Constitution | None = None,
                      seed: int | None = None) -> list[CritiqueExample]:
    """``n`` exchanges (default ``PER_SFT × prompts.sft``) on train prompts, deterministic in the world seed."""
    cfg = world.cfg
    n = max(1, round(PER_SFT * cfg.prompts.sft)) if n is None else n
    seed = cfg.seed if seed is None else seed
    constitution = constitution or load_constitution()
    rng = random.Random(f"{seed}:critique")
    pairs = sample_prompts(world.sampler("train"), rng, n, MIX)
    writers = {flaw: _demonstrator(world, flaw, seed) for flaw in _RATES}
    out = []
    for category, prompt in pairs:
        task = world.task(prompt)
        flaw = "none"
        if rng.random() < FLAWED:
            kinds = FLAWS.get(task.category, [])  # a benign look-alike may parse as "unknown"
            flaw = rng.choices([k for k, _ in kinds], [w for _, w in kinds])[0] if kinds else "none"
        answer = writers[flaw].respond(prompt, rng)
        if flaw == "wrong_value" and _states_value(answer, task.answer):
            flaw = "none"  # a "wrong" number clipped back onto the right one (e.g. max(1, 1 - 2))
        principle = rng.choice(constitution.principles)
        revision = world.oracle(prompt) if flaw != "none" else answer
        out.append(CritiqueExample(prompt, category, answer, principle.name, flaw,
                                   critique_text(task, answer, flaw), revision))
    return out


def critique_demonstrations(world, examples: list[CritiqueExample] | None = None,
                            constitution: Constitution | None = None) -> list[Demonstration]:
    """Two demonstrations per exchange: (… critique request → critique), (… revision request → revision)."""
    constitution = constitution or load_constitution()
    examples = critique_examples(world, constitution=constitution) if examples is None else examples
    out = []
    for i, ex in enumerate(examples):
        p = constitution.get(ex.principle)
        meta = {"principle": ex.principle, "flaw": ex.flaw}
        out.append(Demonstration(prompt=critique_messages(p, ex.prompt, ex.answer), response=ex.critique,
                                 category=ex.category, id=f"critique-{i}-c", source="world", policy="world-critic",
                                 meta={**meta, "turn": "critique"}))
        out.append(Demonstration(prompt=revision_messages(p, ex.prompt, ex.answer, ex.critique), response=ex.revision,
                                 category=ex.category, id=f"critique-{i}-r", source="world", policy="world-critic",
                                 meta={**meta, "turn": "revision"}))
    return out
