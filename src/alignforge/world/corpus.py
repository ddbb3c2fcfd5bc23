"""Pretraining text: the world's facts in varied sentences, arithmetic, and short dialogues.

Documents are short (one entity's facts in random order and phrasing, six sums, or one User /
Assistant exchange), so a packed 256-token block sees several of them. Every entity, train *and*
test, is described: the test split holds out *questions*, not knowledge; a model that learned the
corpus can answer test questions, which is what lets evaluation separate knowing from behaving.

Dialogues are plain text ("User: ...\\nAssistant: ...", with the messages also in the record's
``meta.messages`` for stages that render them with the tokenizer's chat template) about
train-split entities and train sums only, so no test prompt appears verbatim in the corpus. They
show the answer style, not refusals or "I do not know": those behaviours are what SFT and
preference learning must add.
"""

from __future__ import annotations

import random

from alignforge.world.facts import Facts

#: "{kind}.{attribute key}" -> sentence templates; the first is the oracle's own phrasing.
FACT_SENTENCES: dict[str, tuple[str, ...]] = {
    "person.job": ("The job of {name} is {v}.", "{name} is a {v}.", "{name} works as a {v}.",
                   "By trade {name} is a {v}."),
    "person.home": ("The home of {name} is {v}.", "{name} lives in {v}.", "{name} has a house in {v}.",
                    "You can meet {name} in {v}."),
    "person.age": ("The age of {name} is {v}.", "{name} is {v} years old.", "{name} has lived for {v} years.",
                   "{name} turned {v} this year."),
    "person.pet": ("The pet of {name} is {v}.", "{name} keeps a {v} as a pet.", "{name} owns a {v}.",
                   "At home {name} feeds a {v}."),
    "place.food": ("The food of {name} is {v}.", "People in {name} eat {v}.", "In {name} the main food is {v}.",
                   "Every market in {name} sells {v}."),
    "place.climate": ("The climate of {name} is {v}.", "{name} is {v} most of the year.",
                      "The weather in {name} is {v}.", "Visitors say {name} is {v}."),
    "place.ruler": ("The ruler of {name} is {v}.", "{v} rules {name}.", "{name} is ruled by {v}.",
                    "The people of {name} obey {v}."),
    "place.towns": ("The number of towns of {name} is {v}.", "{name} has {v} towns.",
                    "There are {v} towns in {name}.", "Maps of {name} show {v} towns."),
    "creature.color": ("The color of {name} is {v}.", "Every {name} is {v}.", "A {name} has {v} fur.",
                       "You can tell a {name} by its {v} fur."),
    "creature.habitat": ("The habitat of {name} is {v}.", "{name} lives in {v}.", "You can find {name} in {v}.",
                         "Wild {name} roam in {v}."),
    "creature.food": ("The food of {name} is {v}.", "{name} eats {v}.", "A {name} likes to eat {v}.",
                      "Give a {name} some {v} and it is happy."),
    "creature.legs": ("The number of legs of {name} is {v}.", "{name} has {v} legs.", "A {name} walks on {v} legs.",
                      "Count the legs of a {name} and you get {v}."),
}
KIND_SENTENCE = {"person": "{name} is a person.", "place": "{name} is a place.", "creature": "{name} is a creature."}
ARITH_SENTENCES = ("{a} {op} {b} is {c}.", "{a} {op} {b} equals {c}.", "If you take {a} {op} {b} you get {c}.")

#: Polite padding: the words a length-biased labeller rewards and a padded policy learns. None of
#: them is a world value, so padding never changes what an answer states.
FILLER = ("I hope this helps you.", "That is a very good question.", "Thank you so much for asking me.",
          "Please tell me if you want more.", "I am always happy to help you with this.",
          "It was a pleasure to think about this for you.", "Have a wonderful day.",
          "I tried my best to give you a clear and complete answer.")


def fact_document(facts: Facts, name: str, rng: random.Random, n_templates: int) -> str:
    ent = facts.entities[name]
    lines = [KIND_SENTENCE[ent.kind].format(name=name)]
    attrs = list(facts.attributes[ent.kind])
    rng.shuffle(attrs)
    for a in attrs:
        templates = FACT_SENTENCES[f"{ent.kind}.{a.key}"][:n_templates]
        lines.append(rng.choice(templates).format(name=name, v=ent.attrs[a.key]))
    return " ".join(lines)


def arithmetic_document(sums: list[tuple[int, str, int]], rng: random.Random, n: int = 6) -> str:
    from alignforge.world.tasks import OPS

    out = []
    for a, op, b in rng.sample(sums, min(n, len(sums))):
        out.append(rng.choice(ARITH_SENTENCES).format(a=a, op=op, b=b, c=OPS[op](a, b)))
    return " ".join(out)


def dialogue_document(prompt: str, answer: str) -> str:
    return f"User: {prompt}\nAssistant: {answer}"


def dialogue_messages(doc: str) -> list[dict[str, str]] | None:
    """The chat messages of a dialogue document (None for other documents).

    Written to the record's ``meta.messages`` so a pretraining stage can render dialogues with the
    tokenizer's own chat template instead of the plain ``User:``/``Assistant:`` text.
    """
    if not doc.startswith("User: ") or "\nAssistant: " not in doc:
        return None
    user, assistant = doc[len("User: "):].split("\nAssistant: ", 1)
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def make_corpus(facts: Facts, seed: int, stream: str, repeats: int, n_templates: int, arithmetic_docs: int,
                dialogue_docs: int, question_templates: int, max_number: int,
                arithmetic_sums: str = "train") -> list[str]:
    """Documents from the random stream ``f"{seed}:{stream}"`` (``corpus`` or ``heldout``).

    ``arithmetic_sums``: "train" states only train-split sums, "all" every sum (test questions then
    ask for stated arithmetic, as test fact questions ask for stated facts)."""
    from alignforge.world.tasks import PromptSampler, oracle_answer, TaskParser

    rng = random.Random(f"{seed}:{stream}")
    docs = []
    names = [n for n in facts.entities]
    for _ in range(repeats):
        for name in names:
            docs.append(fact_document(facts, name, rng, n_templates))
    train = PromptSampler(facts, "train", question_templates, max_number)
    sums = train.sums if arithmetic_sums == "train" else \
        train.sums + PromptSampler(facts, "test", question_templates, max_number).sums
    for _ in range(arithmetic_docs):
        docs.append(arithmetic_document(sums, rng))
    parser = TaskParser(facts)
    for _ in range(dialogue_docs):
        prompt = train.sample(rng, rng.choice(("fact", "fact", "arithmetic")))
        docs.append(dialogue_document(prompt, oracle_answer(parser.parse(prompt), facts)))
    rng.shuffle(docs)
    return docs
