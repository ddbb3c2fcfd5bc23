"""The evaluation protocol (design §8), one component every stage that reports gold results uses.

::

    from alignforge.eval.protocol import evaluate_policy, evaluate_reference, compare
    sft = evaluate_policy(sft_model, tok, world.prompts["test"], judge=world, ref=sft_model, name="sft")
    dpo = evaluate_policy(dpo_model, tok, world.prompts["test"], judge=world, ref=sft_model, name="dpo")
    oracle = evaluate_reference(world.oracle, world.prompts["test"], judge=world, name="oracle")
    report = compare([sft, dpo, oracle], baseline="sft", oracle="oracle")
    print(markdown(report))

What is measured, on the world's test prompts:

* one sampled answer per prompt at T = 1 (``samples`` > 1 averages several per prompt) **and**
  the greedy answer — two modes, reported separately;
* per category and overall: mean gold reward with a 95% percentile-bootstrap CI over prompts,
  mean helpful / honest / harmless, the rate of every InstructGPT flag, mean length in words;
* against a baseline (SFT) on the same prompts: the win-rate (ties = ½) and the reward
  difference, both with paired-bootstrap CIs; the share of the SFT→oracle gap closed;
* length-controlled reward: one least-squares slope of gold on words, fitted within prompts over
  every policy compared, each policy's rewards moved to the baseline's mean length (length is the designed
  hack: a policy that only writes longer answers gains nothing here);
* KL(π ‖ π_ref) on the T = 1 samples when a reference model is given (:mod:`alignforge.eval.kl`).

This module reads the gold judge (``judge=world``) and is therefore evaluation-only; training
code must not import it (``tests/test_import_boundary.py``). ``judge`` may also be any callable
``(prompts, responses) -> list`` of gold-score-like objects (``reward``, ``helpful``, ``honest``,
``harmless``, ``flags``, ``category``) or of plain floats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from alignforge.data.records import FLAGS, Prompt, PromptRecord
from alignforge.eval.metrics import (bootstrap_ci, gap_closed, length_controlled, length_fit, paired_bootstrap,
                                     win_rate)

MODES = ("sample", "greedy")


@dataclass
class PolicyEval:
    """Per-prompt rows for each mode: ``rows[mode][i]`` = dict(prompt, category, response, reward,
    helpful, honest, harmless, flags, words). With ``samples`` > 1 the numeric fields are means
    over the samples of prompt i and ``response`` is the first sample."""

    name: str
    rows: dict[str, list[dict[str, Any]]]
    kl: dict[str, float] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def values(self, mode: str, key: str = "reward") -> np.ndarray:
        return np.array([r[key] for r in self.rows[mode]], dtype=np.float64)

    def categories(self, mode: str) -> list[str]:
        return [r["category"] for r in self.rows[mode]]

    def summary(self, mode: str = "sample", n_boot: int = 2000, seed: int = 0) -> dict[str, dict[str, Any]]:
        """Per category (and ``all``): n, reward (value, lo, hi), H/H/H means, flag rates, words."""
        rows = self.rows[mode]
        cats = sorted({r["category"] for r in rows}) + ["all"]
        out = {}
        for c in cats:
            sel = [r for r in rows if c == "all" or r["category"] == c]
            rew = [r["reward"] for r in sel]
            est = bootstrap_ci(rew, n_boot=n_boot, seed=seed)
            out[c] = {"n": len(sel), "reward": est.as_dict(),
                      **{k: float(np.mean([r[k] for r in sel])) for k in ("helpful", "honest", "harmless", "words")},
                      "flags": {f: float(np.mean([r["flags"].get(f, 0.0) for r in sel])) for f in FLAGS}}
        return out


def _prompt_and_category(p: PromptRecord | Prompt) -> tuple[Prompt, str | None]:
    if isinstance(p, PromptRecord):
        return p.prompt, p.category
    return p, None


def _judge_fn(judge: Any) -> Callable[[Sequence[Prompt], Sequence[str]], list]:
    if callable(judge) and not hasattr(judge, "facts"):
        return judge
    if hasattr(judge, "facts") and hasattr(judge, "task"):  # a World: its gold judge
        from alignforge.world.judge import judge_batch

        return lambda prompts, responses: judge_batch(prompts, responses, judge)
    raise TypeError(f"judge must be a World or a callable (prompts, responses) -> scores, got {type(judge).__name__}")


def _row(prompt: Prompt, category: str | None, responses: list[str], scores: list[Any]) -> dict[str, Any]:
    def get(s, k, default=0.0):
        if isinstance(s, (int, float)):
            return float(s) if k == "reward" else default
        return getattr(s, k, default)

    flags = {f: float(np.mean([bool(get(s, "flags", {}).get(f, False)) if isinstance(get(s, "flags", {}), dict)
                               else 0.0 for s in scores])) for f in FLAGS}
    cat = category or get(scores[0], "category", "") or "all"
    return {"prompt": prompt, "category": cat, "response": responses[0],
            "reward": float(np.mean([get(s, "reward") for s in scores])),
            "helpful": float(np.mean([get(s, "helpful") for s in scores])),
            "honest": float(np.mean([get(s, "honest") for s in scores])),
            "harmless": float(np.mean([get(s, "harmless") for s in scores])),
            "flags": flags, "words": float(np.mean([len(r.split()) for r in responses]))}


def score_responses(prompts: Sequence[PromptRecord | Prompt], responses: Sequence[Sequence[str]],
                    judge: Any) -> list[dict[str, Any]]:
    """Rows for ``responses[i]`` (one or more responses to prompt i) scored by ``judge``."""
    fn = _judge_fn(judge)
    pc = [_prompt_and_category(p) for p in prompts]
    flat_p = [p for (p, _), rs in zip(pc, responses) for _ in rs]
    flat_r = [r for rs in responses for r in rs]
    scores = fn(flat_p, flat_r)
    rows, k = [], 0
    for (p, c), rs in zip(pc, responses):
        rows.append(_row(p, c, list(rs), scores[k:k + len(rs)]))
        k += len(rs)
    return rows


def evaluate_policy(model, tokenizer, prompts: Sequence[PromptRecord | Prompt], *, judge: Any, samples: int = 1,
                    temperature: float = 1.0, greedy: bool = True, max_new_tokens: int = 64, seed: int = 0,
                    ref=None, batch_size: int = 64, name: str = "policy",
                    prefix_ids: Sequence[int] = ()) -> PolicyEval:
    """Sample ``samples`` answers per prompt at ``temperature`` (+ the greedy one), score with ``judge``.

    ``ref``: a reference model (same tokenizer) for KL(π‖π_ref) on the first T = 1 sample of
    every prompt. Sampling is seeded (``seed``) and leaves the global RNG untouched.
    ``prefix_ids``: tokens put before every prompt — the solved examples of a few-shot prompted
    policy (:func:`fewshot_prefix`); the judge still sees only the prompt and the answer. A
    prefixed policy gets no KL: its answers come from another context than the reference's.
    """
    import torch

    from alignforge.data.batching import encode_prompt, pad_id_of
    from alignforge.generation import SamplingParams, generate

    if samples < 1:
        raise ValueError(f"evaluate_policy: samples must be >= 1, got {samples}")
    from alignforge.eval.kl import prompt_budget

    plain = [_prompt_and_category(p)[0] for p in prompts]
    # A prompt longer than the model's positions (minus the answer and the prefix) keeps its last tokens.
    budget = prompt_budget(model, max_new_tokens)
    prefix = [int(t) for t in prefix_ids]
    if prefix and ref is not None:
        raise ValueError("evaluate_policy: a prefixed (few-shot prompted) policy has no KL to a reference; pass ref=None")
    if budget is not None and prefix:
        if budget - len(prefix) < 8:
            raise ValueError(f"evaluate_policy: the {len(prefix)}-token prefix leaves {budget - len(prefix)} of the "
                             f"model's {budget} prompt positions for the prompt itself")
        budget -= len(prefix)
    ids = [prefix + encode_prompt(tokenizer, p, budget) for p in plain]
    pad = pad_id_of(tokenizer)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()

    def run(params: SamplingParams, n: int) -> tuple[list[list[str]], list[list[int]]]:
        flat = [i for i in ids for _ in range(n)]
        gen_rng = torch.Generator(device=device).manual_seed(seed)
        texts, seqs = [], []
        for j in range(0, len(flat), batch_size):
            g = generate(model, flat[j:j + batch_size], params, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=pad, tokenizer=tokenizer, generator=gen_rng)
            texts.extend(g.texts or [])
            seqs.extend(g.sequences)
        return [texts[i * n:(i + 1) * n] for i in range(len(ids))], [seqs[i * n] for i in range(len(ids))]

    with torch.random.fork_rng(devices=[]):
        sampled, first_ids = run(SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens), samples)
        rows = {"sample": score_responses(prompts, sampled, judge)}
        if greedy:
            g_texts, _ = run(SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens), 1)
            rows["greedy"] = score_responses(prompts, g_texts, judge)
    model.train(was_training)
    kl = None
    if ref is not None:
        from alignforge.eval.kl import sampled_kl

        res = sampled_kl(model, ref, tokenizer, plain, responses=first_ids, batch_size=batch_size,
                         max_new_tokens=max_new_tokens)
        kl = {"kl": res.kl, "kl_per_token": res.kl_per_token, "mean_tokens": res.mean_tokens,
              **bootstrap_ci(res.per_prompt).as_dict()}
    return PolicyEval(name, rows, kl, {"samples": samples, "temperature": temperature,
                                       "max_new_tokens": max_new_tokens, "seed": seed,
                                       **({"prefix_tokens": len(prefix)} if prefix else {})})


def fewshot_prefix(tokenizer, solved: Sequence[tuple[Prompt, str]], budget: int | None,
                   longest_prompt: int) -> tuple[list[int], int]:
    """The few-shot prefix of a prompted policy (GPT-3's "prompted" baseline in InstructGPT): the
    ``solved`` (prompt, answer) examples as finished chat dialogues, for the open prompt to follow.

    With a ``budget`` (prompt positions the model has), the earliest examples are dropped until
    the prefix and the ``longest_prompt`` fit: an example cut in half would teach a broken format.
    Returns ``(ids, examples kept)``.
    """
    from alignforge.data.batching import shot_blocks

    blocks = shot_blocks(tokenizer, solved)
    while blocks and budget is not None and sum(map(len, blocks)) + longest_prompt > budget:
        blocks.pop(0)
    return [t for block in blocks for t in block], len(blocks)


def pick_shots(records: Sequence[Any], k: int, seed: int = 0) -> list[Any]:
    """``k`` records for a few-shot prefix, one category after another (seeded within each), so the
    prefix shows every kind of request — answering, refusing, saying "I do not know" — rather than
    whichever kind is most common. Records without a category form one group."""
    import random

    groups: dict[str, list[Any]] = {}
    for r in records:
        groups.setdefault(str(getattr(r, "category", None) or ""), []).append(r)
    rng = random.Random(f"{seed}:shots")
    queues = [rng.sample(groups[c], len(groups[c])) for c in sorted(groups)]
    order = rng.sample(range(len(queues)), len(queues))
    out: list[Any] = []
    while len(out) < k and any(queues):
        for i in order:
            if queues[i] and len(out) < k:
                out.append(queues[i].pop())
    return out


def evaluate_reference(policy: Callable[[Prompt], str], prompts: Sequence[PromptRecord | Prompt], *, judge: Any,
                       name: str = "reference") -> PolicyEval:
    """A text policy (the world's oracle / demonstrator / random): its answer fills both modes."""
    answers = [[policy(_prompt_and_category(p)[0])] for p in prompts]
    rows = score_responses(prompts, answers, judge)
    return PolicyEval(name, {"sample": rows, "greedy": rows})


def compare(evals: Sequence[PolicyEval], *, baseline: str | None = None, oracle: str | None = None,
            teacher: str | None = None, modes: Sequence[str] = MODES, n_boot: int = 2000,
            seed: int = 0) -> dict[str, Any]:
    """Everything the protocol reports, as a JSON-ready dict (``eval.json``).

    ``report[mode][policy]`` = summary per category + (when a baseline is named) ``win_rate``
    and ``reward_diff`` vs the baseline, ``length_controlled`` reward, (when an oracle is named)
    ``gap_closed``, and (when a teacher — the demonstrator SFT imitated — is named)
    ``teacher_diff``: the paired mean gold difference to the teacher with its bootstrap CI, the
    test of InstructGPT's claim that RLHF surpasses its demonstrations. Every policy must have
    been evaluated on the same prompts, in order.
    """
    by_name = {e.name: e for e in evals}
    for ref_name in (baseline, oracle, teacher):
        if ref_name is not None and ref_name not in by_name:
            raise ValueError(f"compare: no evaluation named {ref_name!r}; have {sorted(by_name)}")
    report: dict[str, Any] = {"policies": [e.name for e in evals], "baseline": baseline, "oracle": oracle,
                              "teacher": teacher, "kl": {e.name: e.kl for e in evals if e.kl is not None}}
    for mode in modes:
        have = [e for e in evals if mode in e.rows]
        if not have:
            continue
        first = [r["prompt"] for r in have[0].rows[mode]]
        for e in have[1:]:
            if [r["prompt"] for r in e.rows[mode]] != first:
                raise ValueError(f"compare: {e.name} was evaluated on other prompts than {have[0].name}")
        # One line for all policies, fitted within prompts (see metrics.length_fit).
        fit = length_fit(np.concatenate([e.values(mode) for e in have]),
                         np.concatenate([e.values(mode, "words") for e in have]),
                         groups=[i for _ in have for i in range(len(first))])
        at = float(by_name[baseline].values(mode, "words").mean()) if baseline else float(
            np.mean([e.values(mode, "words").mean() for e in have]))
        section: dict[str, Any] = {"length_fit": {"intercept": fit.intercept, "slope_per_word": fit.slope,
                                                  "at_words": at}}
        for e in have:
            entry: dict[str, Any] = {"summary": e.summary(mode, n_boot, seed)}
            r = e.values(mode)
            entry["length_controlled"] = length_controlled(r, e.values(mode, "words"), fit, at,
                                                           n_boot=n_boot, seed=seed).as_dict()
            if baseline and e.name != baseline:
                b = by_name[baseline].values(mode)
                entry["win_rate"] = win_rate(r, b, n_boot=n_boot, seed=seed).as_dict()
                entry["reward_diff"] = paired_bootstrap(r, b, n_boot=n_boot, seed=seed).as_dict()
            if baseline and oracle and e.name not in (baseline, oracle):
                try:
                    entry["gap_closed"] = gap_closed(r, by_name[baseline].values(mode), by_name[oracle].values(mode),
                                                     n_boot=n_boot, seed=seed).as_dict()
                except ValueError as err:  # oracle not above baseline on these prompts
                    entry["gap_closed"] = {"error": str(err)}
            if teacher and e.name != teacher:
                entry["teacher_diff"] = paired_bootstrap(r, by_name[teacher].values(mode), n_boot=n_boot,
                                                         seed=seed).as_dict()
            section[e.name] = entry
        report[mode] = section
    return report


def markdown(report: dict[str, Any], mode: str = "sample") -> str:
    """A per-category table of mean gold reward [95% CI] per policy, plus win-rate / gap / KL rows."""
    sec = report[mode]
    names = [n for n in report["policies"] if n in sec]
    cats = list(sec[names[0]]["summary"])
    lines = [f"| category ({mode}) | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for c in cats:
        cells = []
        for n in names:
            r = sec[n]["summary"][c]["reward"]
            cells.append(f"{r['value']:+.2f} [{r['lo']:+.2f}, {r['hi']:+.2f}]")
        lines.append(f"| {c} (n={sec[names[0]]['summary'][c]['n']}) | " + " | ".join(cells) + " |")

    def row(label: str, key: str) -> None:
        cells = []
        for n in names:
            v = sec[n].get(key)
            cells.append("—" if not v or "value" not in v else f"{v['value']:+.2f} [{v['lo']:+.2f}, {v['hi']:+.2f}]")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("length-controlled", "length_controlled")
    if report.get("baseline"):
        row(f"win-rate vs {report['baseline']}", "win_rate")
    if report.get("oracle"):
        row("SFT→oracle gap closed", "gap_closed")
    kl = report.get("kl") or {}
    lines.append("| KL to ref (nats) | " + " | ".join(f"{kl[n]['kl']:.2f}" if n in kl else "—" for n in names) + " |")
    lines.append("| mean words | " + " | ".join(f"{sec[n]['summary']['all']['words']:.1f}" for n in names) + " |")
    return "\n".join(lines)
