"""``alignforge tokenizer``: train the byte-level BPE tokenizer on text.

Input (``data.train``): any records file our readers understand — text records (the world corpus)
or any other kind, whose text fields are used (prompt messages, responses, chosen/rejected), so a
tokenizer can be trained on SFT or preference data too — plain ``.txt`` files (one document a
non-empty line), or a directory of those / a local HF ``datasets`` directory.

Output (``runs/<run>/tokenizer/``, written atomically): a standard HF tokenizer directory with our
special tokens and chat template (:mod:`alignforge.models.tokenizer`), plus ``config.yaml`` and
``stats.json`` (documents, bytes, tokens, bytes per token on the training text).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator, Sequence

from alignforge.config import TokenizerConfig, save_config
from alignforge.data.records import ReadReport, Record, RecordError
from alignforge.io import atomic_dir, recover_dir

DONE = "DONE"


def record_texts(rec: Record) -> Iterator[str]:
    """Every piece of text in a record (prompt messages, responses, chosen/rejected, text)."""
    prompt = getattr(rec, "prompt", None)
    if isinstance(prompt, str):
        yield prompt
    elif isinstance(prompt, list):
        for m in prompt:
            yield m["content"]
    for name in ("text", "response", "chosen", "rejected"):
        value = getattr(rec, name, None)
        if isinstance(value, str) and value:
            yield value
    for value in getattr(rec, "responses", None) or ():
        yield value


def _txt_lines(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield line.rstrip("\n")


def read_texts(path: str, format: str = "auto", on_bad: str = "error", max_records: int | None = None,
               report: ReadReport | None = None) -> list[str]:
    """Documents from records, ``.txt`` files, or a folder of either (see the module doc)."""
    from alignforge.data.formats import load_dataset_records

    p = Path(path)
    if not p.exists():
        raise RecordError("file not found", path=str(p))
    txts = [p] if p.suffix == ".txt" else (sorted(p.glob("*.txt")) if p.is_dir() else [])
    if txts:
        out = [line for f in txts for line in _txt_lines(f)]
        return out[:max_records] if max_records is not None else out
    records = load_dataset_records(p, format=format, on_bad=on_bad, report=report, max_records=max_records)
    return [t for rec in records for t in record_texts(rec)]


def run(cfg: TokenizerConfig) -> Path:
    from alignforge.models.tokenizer import train_tokenizer

    out = cfg.out_dir()
    recover_dir(out)
    if (out / DONE).exists() and not cfg.force:
        print(f"tokenizer: {out} is finished (set force=true to retrain)")
        return out
    if not cfg.data.train:
        raise RecordError("data.train is not set: give the text to train the tokenizer on")
    report = ReadReport(cfg.data.train)
    t0 = time.perf_counter()
    texts = read_texts(cfg.data.train, cfg.data.format, cfg.data.on_bad_record, cfg.data.max_records, report)
    if not texts:
        raise RecordError("no text found to train a tokenizer on", path=cfg.data.train)
    t = cfg.tokenizer
    extra = [text for path in t.also_train_on for text in read_texts(path, on_bad=cfg.data.on_bad_record)]
    tok = train_tokenizer(texts + extra, vocab_size=t.vocab_size, min_frequency=t.min_frequency,
                          model_max_length=t.model_max_length)
    stats = corpus_stats(tok, texts)
    stats.update(documents=len(texts), extra_documents=len(extra), vocab_size=len(tok), seconds=round(time.perf_counter() - t0, 2),
                 skipped_records=report.skipped)
    with atomic_dir(out) as tmp:
        tok.save_pretrained(tmp)
        save_config(cfg, tmp / "config.yaml")
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        (tmp / DONE).write_text("")
    print(f"tokenizer: {len(tok)} tokens from {len(texts)} documents"
          + (f" (+{len(extra)} from {', '.join(t.also_train_on)})" if extra else "") + "; "
          f"{stats['bytes_per_token']:.2f} bytes/token; saved to {out}")
    return out


def corpus_stats(tok, texts: Sequence[str], limit: int = 20000) -> dict:
    """Bytes per token on (up to ``limit`` of) the training documents: the compression achieved."""
    sample = list(texts[:limit])
    n_bytes = sum(len(s.encode("utf-8")) for s in sample)
    # The backend tokenizer directly: no model_max_length warnings for long documents, and faster.
    n_tok = sum(len(e.ids) for e in tok.backend_tokenizer.encode_batch(sample, add_special_tokens=False))
    return {"bytes": n_bytes, "tokens": n_tok, "bytes_per_token": n_bytes / max(n_tok, 1)}


def main(argv: Sequence[str]) -> int:
    from alignforge.cli import run_stage

    return run_stage("tokenizer", TokenizerConfig, run, argv)
