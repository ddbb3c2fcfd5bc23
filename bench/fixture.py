"""The deterministic fixture alignforge and TRL both read in ``bench/vs_trl.py`` (issue 11).

    python bench/fixture.py                 # -> bench/_fixture/ (git-ignored)
    python bench/fixture.py --out /tmp/fx

Everything comes from a corpus every Python install has — the text of ``pydoc_data.topics`` —
so the fixture is the same bytes on every machine with the same library versions:

- ``model/``: a byte-level BPE tokenizer (vocab 4096) and a random Llama (d 256, 4 layers,
  4 heads, intermediate 688, *untied* embeddings, ≈5.3 M parameters) in plain HF format;
- ``sft.jsonl``: 256 demonstrations, prompt ≈40 tokens, completion ≈60 tokens;
- ``pref.jsonl``: 256 comparisons on the same prompts; chosen = the true continuation,
  rejected = the continuation of another window (same length class, different text);
- ``prompts.jsonl``: the same 256 prompts alone (online stages);
- ``reward/``: a scalar-head reward model on the same random backbone (head seeded with
  ``REWARD_HEAD_SEED``), the fixed reward both libraries' GRPO / RLOO / PPO rows score with;
- ``fixture.json``: sizes, parameter counts and the versions that built it.

``ensure_scale(out, "30m")`` adds ``model-30m/``: the same tokenizer with the ≈30 M ``small-30m``
Llama (d 512, 8 layers, untied), for the scale row of SFT and DPO.

Rows are cut from the tokenised corpus on token ids (window of 40 + 60 ids) and decoded, so
their lengths re-tokenise to about 40/60: byte-level BPE merges can shift a boundary token.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROWS = 256
PROMPT_TOKENS = 40
COMPLETION_TOKENS = 60
VOCAB = 4096
SEED = 0
# d 256, 4 layers, 4 heads, intermediate 688 is exactly the tiny-4m preset; only the untying
# differs (TRL's and our trainers both handle either; untied is what the issue fixes).
PRESET = "tiny-4m"
REWARD_HEAD_SEED = 1
# The scale row (issue 11): same tokenizer and data, a bigger model. name -> (preset, folder).
SCALES = {"30m": ("small-30m", "model-30m")}
DEFAULT_OUT = Path(__file__).resolve().parent / "_fixture"


def corpus() -> list[str]:
    """The topics' texts in key order (dict order is insertion order, but sort to be safe)."""
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def windows(tok, texts: list[str], rows: int = ROWS, prompt_len: int = PROMPT_TOKENS,
            completion_len: int = COMPLETION_TOKENS) -> list[tuple[str, str]]:
    """``rows`` (prompt, completion) text pairs cut from the token stream at an even stride.

    The stride spreads the rows over the whole corpus instead of the first few topics; windows
    whose prompt or completion decodes to blank text are skipped (deterministically).
    """
    ids: list[int] = []
    for t in texts:
        ids.extend(tok(t, add_special_tokens=False)["input_ids"])
    span = prompt_len + completion_len
    n_windows = len(ids) // span
    if n_windows < rows:
        raise ValueError(f"corpus has only {n_windows} windows of {span} tokens, need {rows}")
    stride = n_windows // rows
    out: list[tuple[str, str]] = []
    # Windows at multiples of the stride first, then the ones between (only needed if some
    # strided window was blank).
    for w in sorted(range(n_windows), key=lambda w: (w % stride, w)):
        chunk = ids[w * span:(w + 1) * span]
        prompt = tok.decode(chunk[:prompt_len])
        completion = tok.decode(chunk[prompt_len:])
        if prompt.strip() and completion.strip():
            out.append((prompt, completion))
            if len(out) == rows:
                break
    if len(out) < rows:
        raise ValueError(f"could only cut {len(out)} non-blank windows, need {rows}")
    return out


def build(out: str | Path = DEFAULT_OUT, rows: int = ROWS, seed: int = SEED) -> dict:
    """Write the fixture to ``out`` (atomically: the folder appears whole). Returns the manifest."""
    import tokenizers
    import torch
    import transformers

    from alignforge.data.records import (
        Comparison,
        Demonstration,
        PromptRecord,
        write_records,
    )
    from alignforge.io import atomic_dir, atomic_write_text
    from alignforge.models.heads import init_from_causal_lm, save_scorer
    from alignforge.models.load import build_model, matmul_params, save_model
    from alignforge.models.tokenizer import train_tokenizer

    texts = corpus()
    tok = train_tokenizer(texts, vocab_size=VOCAB)
    model = build_model(PRESET, vocab_size=len(tok), seed=seed, tie_word_embeddings=False)
    pairs = windows(tok, texts, rows=rows)
    # The rejected answer of row i is row (i + rows//2)'s completion: far away in the corpus,
    # so it is a plausible-looking but wrong continuation, and every completion is used once.
    shift = rows // 2
    demos = [Demonstration(id=f"sft-{i}", prompt=p, response=c, source="pydoc_data.topics")
             for i, (p, c) in enumerate(pairs)]
    comps = [Comparison(id=f"pref-{i}", prompt=p, chosen=c, rejected=pairs[(i + shift) % rows][1],
                        source="pydoc_data.topics")
             for i, (p, c) in enumerate(pairs)]
    prompts = [PromptRecord(id=f"prompt-{i}", prompt=p, source="pydoc_data.topics")
               for i, (p, _) in enumerate(pairs)]
    manifest = {
        "rows": rows,
        "seed": seed,
        "vocab_size": len(tok),
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "model": {"hidden": 256, "layers": 4, "heads": 4, "intermediate": 688,
                  "tied_embeddings": False,
                  "params": sum(p.numel() for p in model.parameters()),
                  "matmul_params": matmul_params(model)},
        "reward": {"head_seed": REWARD_HEAD_SEED, "heads": 1},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__},
    }
    with atomic_dir(out) as tmp:
        save_model(model, tok, tmp / "model")
        # The reward model reads the saved causal LM back, so its backbone is that model, bit for bit.
        rm, rm_tok = init_from_causal_lm(tmp / "model", 1, ["reward"], seed=REWARD_HEAD_SEED)
        save_scorer(rm, rm_tok, tmp / "reward")
        write_records(tmp / "sft.jsonl", demos)
        write_records(tmp / "pref.jsonl", comps)
        write_records(tmp / "prompts.jsonl", prompts)
        atomic_write_text(tmp / "fixture.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def ensure(out: str | Path = DEFAULT_OUT) -> Path:
    """The fixture folder, built first if it is missing or older than this file's layout (no
    reward model yet); what ``vs_trl.py`` calls. Rebuilding gives the same bytes."""
    out = Path(out)
    manifest = out / "fixture.json"
    if not manifest.is_file() or "reward" not in json.loads(manifest.read_text()):
        build(out)
    return out


def ensure_scale(out: str | Path, scale: str, seed: int = SEED) -> Path:
    """``out/<folder>`` for ``scale`` (see ``SCALES``): the fixture's tokenizer with a bigger random,
    untied Llama, built once. Returns the model folder."""
    from alignforge.models.load import build_model, save_model
    from alignforge.models.tokenizer import load_tokenizer

    if scale not in SCALES:
        raise ValueError(f"scale {scale!r}: expected one of {', '.join(SCALES)}")
    preset, folder = SCALES[scale]
    out = ensure(out)
    target = out / folder
    if not (target / "model.safetensors").is_file():
        tok = load_tokenizer(out / "model")
        model = build_model(preset, vocab_size=len(tok), seed=seed, tie_word_embeddings=False)
        save_model(model, tok, target)  # atomic: the folder appears whole
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="fixture folder (default bench/_fixture)")
    ap.add_argument("--rows", type=int, default=ROWS)
    args = ap.parse_args(argv)
    manifest = build(args.out, rows=args.rows)
    print(json.dumps(manifest, indent=2))
    print(f"fixture written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
