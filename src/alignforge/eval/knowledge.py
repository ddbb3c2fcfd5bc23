"""The knowledge probe: does a model *know* the world, apart from how it behaves?

Alignment can only teach a policy to use what it knows: a model that never stored "the job of
Melka is baker" cannot be taught by any reward to say it. So, before the behaviour numbers, the
probe asks the world's fact and arithmetic questions — in the tokenizer's chat template, as every
policy is prompted, or in the corpus's plain dialogue text — and scores the greedy answer by the gold judge's notion of correct: the answer states exactly the
true value (:meth:`alignforge.world.judge.GoldJudge.correct`), nothing else of the asked kind.

Two prompting regimes (GPT-3's "few-shot learners"):

* **zero-shot**: the open question (plain: ``User: What is the job of Melka?\\nAssistant:``)
* **K-shot**: K solved questions of the same kind about *train-split* entities (or train sums)
  come first, each its own document ended by eos, exactly as packed pretraining joins documents.

Questions are drawn separately from train-split and test-split entities (sums). Every entity is
described in the corpus, but only train-split entities appear in its dialogues, so the train
column measures recall of what the model saw answered, the test column whether it can *extract*
a stored fact for a question it never saw answered (the knowledge-extraction gap of small LMs).
"""

from __future__ import annotations

import random
from typing import Any, Sequence

#: The categories the probe asks (each in its first question phrasing).
_KINDS = ("fact", "arithmetic")
_SPLITS = ("train", "test")


def probe_questions(world, split: str, category: str, n: int, seed: int = 0) -> list[str]:
    """Up to ``n`` distinct questions of ``category`` about ``split``'s entities (sums), seeded."""
    from alignforge.world.tasks import ARITH_Q, FACT_Q

    sampler = world.sampler(split)
    if category == "fact":
        pool = [FACT_Q[0].format(attr=a.phrase, name=name) for name in sampler.all_names
                for a in world.facts.attributes[world.facts.entities[name].kind]]
    elif category == "arithmetic":
        pool = [ARITH_Q[0].format(a=a, op=op, b=b) for a, op, b in sampler.sums]
    else:
        raise ValueError(f"probe_questions: category must be one of {_KINDS}, got {category!r}")
    rng = random.Random(f"{seed}:probe:{split}:{category}")
    return rng.sample(pool, min(n, len(pool)))


def dialogue_text(question: str, answer: str | None = None) -> str:
    """The corpus's dialogue layout (``alignforge.world.corpus.dialogue_document``), open if no answer."""
    from alignforge.world.corpus import dialogue_document

    return dialogue_document(question, answer) if answer is not None else f"User: {question}\nAssistant:"


def probe_prompt_ids(tokenizer, world, question: str, shots: Sequence[str], budget: int | None = None,
                     chat: bool = False) -> list[int]:
    """Token ids of the K solved ``shots`` (each followed by eos, as packed pretraining joins
    documents) and then the open ``question``: plain ``User: …\nAssistant: …`` text, or with
    ``chat`` the tokenizer's chat template (prompt with assistant header, answer, eos — the layout
    of SFT and of ``pretrain.chat_dialogues``).

    With a ``budget`` (prompt tokens that fit the model's positions), the earliest shots are
    dropped until the prompt fits: a shot cut in half would teach a broken format, and the
    question itself is never cut.
    """
    eos = tokenizer.eos_token_id
    if chat:
        from alignforge.data.batching import prompt_ids, shot_blocks

        blocks = shot_blocks(tokenizer, [(shot, world.oracle(shot)) for shot in shots])
        tail = prompt_ids(tokenizer, question)
    else:
        blocks = [tokenizer(dialogue_text(shot, world.oracle(shot)), add_special_tokens=False)["input_ids"] + [eos]
                  for shot in shots]
        tail = tokenizer(dialogue_text(question), add_special_tokens=False)["input_ids"]
    if budget is not None:
        while blocks and sum(map(len, blocks)) + len(tail) > budget:
            blocks.pop(0)
        if len(tail) > budget:
            raise ValueError(f"knowledge probe: the question {question!r} is {len(tail)} tokens, "
                             f"more than the {budget} the model's positions leave for a prompt")
    return [t for block in blocks for t in block] + tail


def knowledge_probe(model, tokenizer, world, *, shots: Sequence[int] = (0, 4), per_split: int = 80, seed: int = 0,
                    max_new_tokens: int = 16, batch_size: int = 64, chat: bool = True) -> dict[str, Any]:
    """Exact-answer rates of ``model`` on fact and arithmetic questions, per split, for each K in ``shots``.

    Returns ``{"K-shot": {"fact": {"train": {"exact": 0.9, "n": 80}, "test": ...}, "arithmetic": ...},
    ..., "examples": [...]}``; the few-shot examples are drawn (seeded) from the train split, never
    the asked question itself. Greedy decoding, cut at the first newline (the next turn).
    ``chat``: prompts in the tokenizer's chat template (how every policy is prompted), else in
    the corpus's plain dialogue text.
    """
    import torch

    from alignforge.data.batching import pad_id_of
    from alignforge.eval.kl import prompt_budget
    from alignforge.generation import SamplingParams, generate
    from alignforge.world.judge import GoldJudge

    judge = GoldJudge(world)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, stop_strings=("\n",))
    budget = prompt_budget(model, max_new_tokens)
    out: dict[str, Any] = {"per_split": per_split, "format": "chat" if chat else "plain", "examples": []}
    # Every train-split question (the pool the shots come from) and the asked ones, drawn once.
    shot_pool = {c: probe_questions(world, "train", c, 10_000, seed) for c in _KINDS}
    asked = {(c, sp): probe_questions(world, sp, c, per_split, seed) for c in _KINDS for sp in _SPLITS}
    for k in shots:
        key = f"{k}-shot"
        out[key] = {}
        for category in _KINDS:
            out[key][category] = {}
            train_pool = shot_pool[category]
            for split in _SPLITS:
                questions = asked[(category, split)]
                rng = random.Random(f"{seed}:probe-shots:{k}:{split}:{category}")
                prompts = []
                for q in questions:
                    pool = [t for t in train_pool if t != q]
                    prompts.append(probe_prompt_ids(tokenizer, world, q, rng.sample(pool, min(k, len(pool))), budget,
                                                    chat))
                answers: list[str] = []
                with torch.no_grad():
                    for j in range(0, len(prompts), batch_size):
                        g = generate(model, prompts[j:j + batch_size], params, eos_token_id=tokenizer.eos_token_id,
                                     pad_token_id=pad_id_of(tokenizer), tokenizer=tokenizer)
                        answers += [t.split("\n")[0].strip() for t in (g.texts or [])]
                correct = [judge.correct(q, a) for q, a in zip(questions, answers)]
                out[key][category][split] = {"exact": sum(correct) / max(len(correct), 1), "n": len(correct)}
                out["examples"] += [{"shots": k, "category": category, "split": split, "question": q, "answer": a,
                                     "correct": c, "oracle": world.oracle(q)}
                                    for q, a, c in list(zip(questions, answers, correct))[:3]]
    model.train(was_training)
    return out


#: The columns of :func:`probe_rows`, after policy and prompting.
PROBE_COLUMNS = tuple(f"{c} ({sp})" for c in _KINDS for sp in _SPLITS)


def probe_rows(probes: dict[str, dict[str, Any]]) -> list[tuple[str, str, list[float]]]:
    """``(policy, "K-shot", exact rates in PROBE_COLUMNS order)`` per policy and prompting: the
    rows both the markdown table and the HTML report show."""
    return [(name, key, [probe[key][c][sp]["exact"] for c in _KINDS for sp in _SPLITS])
            for name, probe in probes.items() for key in probe if key.endswith("-shot")]


def probe_table(probes: dict[str, dict[str, Any]]) -> str:
    """A markdown table: one row per (policy, K), exact-answer rates per category and split."""
    lines = ["| policy | prompting | " + " | ".join(PROBE_COLUMNS) + " |", "|---|---|" + "---|" * len(PROBE_COLUMNS)]
    for name, key, rates in probe_rows(probes):
        lines.append(f"| {name} | {key} | " + " | ".join(f"{r:.0%}" for r in rates) + " |")
    return "\n".join(lines)
