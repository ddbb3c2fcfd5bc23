"""``alignforge eval``: evaluate one or more checkpoints with the one evaluation protocol (design §8).

    alignforge eval runs/world/dpo runs/world/sft --world runs/world/world
    alignforge eval runs/hf/dpo runs/hf/sft --judge reward reward.init=runs/hf/reward

On the world (``judge: gold``): every checkpoint answers the test prompts (one sample at T = 1
and the greedy answer); the hidden gold judge scores them; the world's reference policies
(oracle, demonstrator, random) are scored on the same prompts. Reported per category: mean gold
reward with 95% bootstrap CIs, helpful / honest / harmless, flag rates, words; against the
baseline: win-rate (ties = ½) and reward difference with paired-bootstrap CIs, the share of the
SFT→oracle gap closed, length-controlled reward; KL(π‖π_ref) on the samples; the reward model's
mean score (when ``reward.init`` is set); held-out bits per byte.

On real data (``judge: reward``): the reward model is the judge (win-rates judged by it), and
the same table is printed without gold columns.

Outputs: ``eval.json`` (everything above), ``samples.jsonl`` (every prompt's answers with their
scores), ``report.md`` (the tables), and a printed table.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from alignforge.config import ConfigError, EvalConfig, save_config
from alignforge.data.records import read_records, write_records
from alignforge.io import atomic_write_text


def _name_of(path: str) -> str:
    p = Path(path.rstrip("/"))
    return p.parent.name if p.name == "model" else p.name


def _heldout_bpb(model, tok, texts: list[str], device) -> float:
    """Bits per byte of held-out text (the same routine and token stream as ``pretrain``)."""
    from alignforge.train.loop import bits_per_byte, heldout_nats, pack_stream

    stream = pack_stream(tok(texts, add_special_tokens=False)["input_ids"], tok.eos_token_id)
    nats, _ = heldout_nats(model, stream, 256, 16, device, list(tok.all_special_ids))
    return bits_per_byte(nats, sum(len(t.encode("utf-8")) for t in texts))


def run(cfg: EvalConfig) -> dict[str, Any]:
    import torch

    from alignforge.eval.protocol import compare, evaluate_policy, evaluate_reference, markdown
    from alignforge.models.load import load_causal_lm
    from alignforge.train.loop import apply_threads, autocast, resolve_device
    from alignforge.train.memcheck import check_memory

    ev = cfg.eval
    if not ev.checkpoints:
        raise ConfigError("eval needs at least one checkpoint (positional arguments or eval.checkpoints)")
    apply_threads(cfg.runtime)
    device = resolve_device(cfg.runtime)
    out = cfg.out_dir()
    names = ev.names or [_name_of(c) for c in ev.checkpoints]
    if len(set(names)) != len(names):
        raise ConfigError(f"eval: two checkpoints share a name ({names}); set eval.names")
    baseline = ev.baseline or ("sft" if "sft" in names else names[-1])
    if baseline not in names:
        raise ConfigError(f"eval.baseline={baseline!r} is not one of the checkpoints' names {names}")
    if ev.fewshot is not None and ev.judge != "gold":
        raise ConfigError("eval.fewshot (the knowledge probe) needs the world: eval.judge=gold and eval.world")
    if ev.judge == "gold":
        from alignforge.world.policies import check_reference_names

        check_reference_names(ev.references, "eval.references")
    unknown = [n for n in ev.prompted if n not in names]
    if unknown:
        raise ConfigError(f"eval.prompted: {unknown} name no checkpoint (the checkpoints are {names})")
    clash = sorted({f"{n}-prompted" for n in ev.prompted} & set(names))
    if clash:
        raise ConfigError(f"eval.prompted: the names {clash} are taken by checkpoints; rename them (eval.names)")
    if ev.prompted and not (ev.shots or ev.world):
        raise ConfigError("eval.prompted needs eval.shots (demonstration records for the few-shot prefix) or eval.world")
    if ev.best_of_n and not cfg.reward.init:
        raise ConfigError("eval.best_of_n needs reward.init (the reward model that picks the best of n)")

    # --- the judge and the prompts ---
    world = None
    if ev.judge == "gold":
        if not ev.world:
            raise ConfigError("eval.judge=gold needs eval.world (a folder from `alignforge world generate`)")
        from alignforge.eval.oracle import load_world

        world = load_world(ev.world)
    elif not cfg.reward.init:
        raise ConfigError("eval.judge=reward needs reward.init (a reward-model folder)")
    prompts_path = ev.prompts or (str(Path(ev.world) / "prompts_test.jsonl") if ev.world else None)
    if not prompts_path:
        raise ConfigError("eval needs eval.prompts (prompt records) or eval.world")
    prompts = read_records(prompts_path, kind="prompt")
    if ev.max_prompts is not None:
        prompts = prompts[: ev.max_prompts]
    # The memory estimate (every checkpoint at once, the longest prompt) against the device; refused
    # here, before any model is loaded.
    check_memory(cfg, device, prompts=[getattr(p, "prompt", p) for p in prompts])
    judge: Any = world
    if ev.judge == "reward":
        from alignforge.eval.scorers import RewardModelScorer

        try:
            judge = RewardModelScorer(cfg.reward.init, device=str(device), batch_size=cfg.reward.batch_size,
                                      head=cfg.reward.head)
        except ValueError as e:  # reward.head names no head of this model
            raise ConfigError(f"config key 'reward.head': {e}") from None
    solved = []
    if ev.prompted:
        from alignforge.eval.protocol import pick_shots

        if ev.shots:
            solved = [(r.prompt, r.response) for r in pick_shots(read_records(ev.shots, kind="demonstration"),
                                                                 ev.prompted_shots, cfg.seed)]
        else:  # the world's train prompts, answered right: the best prefix a prompt writer could choose
            train = read_records(Path(ev.world) / "prompts_train.jsonl", kind="prompt")
            solved = [(r.prompt, world.oracle(r.prompt)) for r in pick_shots(train, ev.prompted_shots, cfg.seed)]
    heldout_path = ev.heldout or (str(Path(ev.world) / "heldout.jsonl") if ev.world else None)
    heldout = [r.text for r in read_records(heldout_path, kind="text")] if heldout_path else []
    # Only now, with every input checked, does the stage write anything.
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")

    # --- the policies (sampled, scored and probed at runtime.precision, like training) ---
    ctx = autocast(cfg.runtime, device)
    evals, bpb, knowledge = [], {}, {}
    loaded = {name: load_causal_lm(path, device=str(device)) for name, path in zip(names, ev.checkpoints)}
    ref_model = None
    if ev.kl:
        ref_model = load_causal_lm(cfg.ref.init, device=str(device))[0] if cfg.ref.init else loaded[baseline][0]
    for name in names:
        model, tok = loaded[name]
        print(f"eval: {name}: answering {len(prompts)} prompts ...", file=sys.stderr)
        with ctx:
            evals.append(evaluate_policy(model, tok, prompts, judge=judge, samples=ev.samples,
                                         temperature=ev.temperature, max_new_tokens=ev.max_new_tokens, seed=cfg.seed,
                                         ref=ref_model if (ref_model is not None and ref_model is not model) else None,
                                         batch_size=ev.batch_size, name=name))
        if heldout:
            with torch.no_grad(), ctx:
                bpb[name] = _heldout_bpb(model, tok, heldout, device)
        if ev.fewshot is not None:
            from alignforge.eval.knowledge import knowledge_probe

            shots = sorted({0, ev.fewshot})
            print(f"eval: {name}: knowledge probe ({'/'.join(map(str, shots))}-shot) ...", file=sys.stderr)
            with ctx:
                knowledge[name] = knowledge_probe(model, tok, world, shots=shots, per_split=ev.probe_questions,
                                                  seed=cfg.seed, batch_size=ev.batch_size,
                                                  chat=ev.probe_format == "chat")
    for name in ev.prompted:
        with ctx:
            evals.append(_prompted_eval(cfg, name, loaded[name], prompts, judge, solved))
    if ev.best_of_n:
        clash = sorted({f"bon-{n}" for n in ev.best_of_n} & set(names))
        if clash:
            raise ConfigError(f"eval.best_of_n: the names {clash} are taken by checkpoints; rename them (eval.names)")
        with ctx:
            evals.extend(_best_of_n_evals(cfg, baseline, loaded[baseline], prompts, judge, device))
    oracle = teacher = None
    if world is not None:
        from alignforge.world.policies import reference_policy

        for ref_name in ev.references:
            evals.append(evaluate_reference(reference_policy(ref_name, world, cfg.seed), prompts, judge=world,
                                            name=ref_name))
        oracle = "oracle" if "oracle" in ev.references else None
        teacher = "demonstrator" if "demonstrator" in ev.references else None

    report = compare(evals, baseline=baseline, oracle=oracle, teacher=teacher, seed=cfg.seed)
    report["bits_per_byte"] = bpb
    prompted = {e.name: e.meta for e in evals if "shots" in e.meta}
    if prompted:
        report["prompted"] = prompted  # each prompted policy's solved examples, as its prefix showed them
    if knowledge:
        report["knowledge"] = knowledge
    report["judge"] = ev.judge
    report["references"] = list(ev.references) if world is not None else []
    report["checkpoints"] = dict(zip(names, ev.checkpoints))
    report["n_prompts"] = len(prompts)
    if cfg.reward.init and ev.judge == "gold":
        with ctx:
            report["reward_model"] = _reward_model_means(cfg, evals, device)

    # --- outputs ---
    atomic_write_text(out / "eval.json", json.dumps(report, indent=1, default=float) + "\n")
    rows = []
    for e in evals:
        for mode, mode_rows in e.rows.items():
            for r in mode_rows:
                rows.append({"policy": e.name, "mode": mode, **r})
    write_records(out / "samples.jsonl", rows)
    tables = [f"## {mode}\n\n{markdown(report, mode)}\n" for mode in ("sample", "greedy") if mode in report]
    if bpb:
        tables.append("held-out bits per byte: " + ", ".join(f"{k} {v:.3f}" for k, v in bpb.items()) + "\n")
    if knowledge:
        from alignforge.eval.knowledge import probe_table

        tables.append("## knowledge probe (exact answers, greedy)\n\n" + probe_table(knowledge) + "\n")
    atomic_write_text(out / "report.md", "\n".join(tables))
    print_report(report)
    return report


def bon_kl_bound(n: int) -> float:
    """KL(best-of-n ‖ π) ≤ log n − (n − 1)/n (Stiennon et al. 2020; Beirami et al. 2024), in nats."""
    return math.log(n) - (n - 1) / n


def _best_of_n_evals(cfg: EvalConfig, base_name: str, policy, prompts, judge, device) -> list:
    """Best-of-n of the baseline policy (n samples at T, the reward model picks one), per n.

    Sample mode only (a greedy best-of-n is one answer); the KL column is the analytic bound
    because the best-of-n distribution has no tractable per-token log-probs.
    """
    from alignforge.eval.protocol import PolicyEval, _prompt_and_category, score_responses
    from alignforge.eval.scorers import RewardModelScorer, best_of_n

    ev = cfg.eval
    scorer = RewardModelScorer(cfg.reward.init, device=str(device), batch_size=cfg.reward.batch_size,
                               head=cfg.reward.head)
    model, tok = policy
    plain = [_prompt_and_category(p)[0] for p in prompts]
    out = []
    for n in ev.best_of_n:
        print(f"eval: best-of-{n} of {base_name}: {n * len(prompts)} samples ...", file=sys.stderr)
        best = best_of_n(model, tok, plain, scorer, n, temperature=ev.temperature, max_new_tokens=ev.max_new_tokens,
                         seed=cfg.seed, batch_size=ev.batch_size)
        rows = score_responses(prompts, [[b] for b in best], judge)
        out.append(PolicyEval(f"bon-{n}", {"sample": rows}, {"kl": bon_kl_bound(n), "analytic_bound": True},
                              {"best_of_n": n, "temperature": ev.temperature}))
    return out


def _prompted_eval(cfg: EvalConfig, name: str, policy, prompts, judge, solved):
    """``<name>-prompted``: the checkpoint with the few-shot prefix before every prompt (InstructGPT's
    "GPT-3 prompted": a pretrained model coaxed into following instructions by examples alone)."""
    from alignforge.data.batching import encode_prompt
    from alignforge.eval.kl import prompt_budget
    from alignforge.eval.protocol import _prompt_and_category, evaluate_policy, fewshot_prefix

    ev = cfg.eval
    model, tok = policy
    longest = max(len(encode_prompt(tok, _prompt_and_category(p)[0])) for p in prompts)
    prefix, kept = fewshot_prefix(tok, solved, prompt_budget(model, ev.max_new_tokens), longest)
    if not kept:
        raise ConfigError(f"eval.prompted: not one solved example fits {name}'s positions beside the longest "
                          f"prompt ({longest} tokens) and eval.max_new_tokens={ev.max_new_tokens}")
    print(f"eval: {name}-prompted ({kept}-shot, {len(prefix)} prefix tokens): answering {len(prompts)} prompts ...",
          file=sys.stderr)
    e = evaluate_policy(model, tok, prompts, judge=judge, samples=ev.samples, temperature=ev.temperature,
                        max_new_tokens=ev.max_new_tokens, seed=cfg.seed, batch_size=ev.batch_size,
                        name=f"{name}-prompted", prefix_ids=prefix)
    e.meta["shots"] = [{"prompt": p, "response": r} for p, r in solved[len(solved) - kept:]]
    return e


def _reward_model_means(cfg: EvalConfig, evals, device) -> dict[str, float]:
    from alignforge.eval.scorers import RewardModelScorer

    scorer = RewardModelScorer(cfg.reward.init, device=str(device), batch_size=cfg.reward.batch_size,
                               head=cfg.reward.head)
    out = {}
    for e in evals:
        rows = e.rows["sample"]
        scores = scorer([r["prompt"] for r in rows], [r["response"] for r in rows])
        out[e.name] = sum(scores) / max(len(scores), 1)
    return out


def print_report(report: dict[str, Any]) -> None:
    """The headline table: gold (or RM-judged) reward per policy, win-rate vs baseline, KL."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 150))  # a narrow pipe must not truncate the numbers
    for mode in ("sample", "greedy"):
        if mode not in report:
            continue
        sec = report[mode]
        names = [n for n in report["policies"] if n in sec]
        cats = list(sec[names[0]]["summary"])
        t = Table(title=f"{report['judge']} reward by category ({mode}; 95% CI)")
        t.add_column("policy")
        for c in cats:
            t.add_column(c, justify="right")
        t.add_column(f"win vs {report['baseline']}", justify="right")
        t.add_column("KL", justify="right")
        for n in names:
            cells = []
            for c in cats:
                r = sec[n]["summary"][c]["reward"]
                cells.append(f"{r['value']:+.2f}" + (f" ±{(r['hi'] - r['lo']) / 2:.2f}" if c == "all" else ""))
            w = sec[n].get("win_rate")
            kl = (report.get("kl") or {}).get(n)
            t.add_row(n, *cells, f"{w['value']:.2f} [{w['lo']:.2f},{w['hi']:.2f}]" if w else "—",
                      f"{kl['kl']:.2f}" if kl else "—")
        console.print(t)


def main(argv: Sequence[str] | None = None) -> int:
    from alignforge.cli import run_stage

    # Sugar: bare positional paths are checkpoints; --judge/--world/--baseline set eval.* keys.
    argv = list(argv or [])
    checkpoints, rest = [], []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--judge", "--world", "--baseline", "--prompts") and i + 1 < len(argv):
            rest.append(f"eval.{a[2:]}={argv[i + 1]}")
            i += 2
            continue
        if not a.startswith("-") and "=" not in a and not (i > 0 and argv[i - 1] in ("--config", "--out", "--seed",
                                                                                     "--run")):
            checkpoints.append(a)
        else:
            rest.append(a)
        i += 1
    if checkpoints:
        rest.append("eval.checkpoints=[" + ",".join(json.dumps(c) for c in checkpoints) + "]")
    return run_stage("eval", EvalConfig, run, rest)
