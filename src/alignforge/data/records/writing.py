"""Writing record files: :func:`write_records` (atomic; JSONL, reproducible ``.jsonl.gz``, or Parquet)."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any, Iterable

from alignforge.data.records.kinds import Record, RecordError
from alignforge.io import atomic_open


def write_records(path: str | os.PathLike, records: Iterable[Record | dict[str, Any]]) -> int:
    """Write records atomically as JSONL (``.jsonl``/``.jsonl.gz``) or Parquet. Returns the count."""
    p = Path(path)
    rows = [r.to_dict() if isinstance(r, Record) else r for r in records]
    if p.name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        # A Parquet column has one type: string prompts and message-list prompts cannot share one.
        prompt_types = {type(r["prompt"]).__name__ for r in rows if isinstance(r, dict) and "prompt" in r}
        if len(prompt_types) > 1:
            raise RecordError("a Parquet column holds one type, but these prompts mix plain strings and "
                              "message lists; write JSONL, or convert the prompts with as_messages()",
                              path=str(p), field="prompt")
        # Column by column over *all* rows: Table.from_pylist takes its schema from the first row
        # and silently drops keys that only later rows have (an `id` set from row 2 on, say).
        keys = list(dict.fromkeys(k for r in rows for k in r))
        try:
            table = pa.Table.from_pydict({k: pa.array([r.get(k) for r in rows]) for k in keys})
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise RecordError(f"cannot store these records as Parquet columns: {e}", path=str(p)) from None
        with atomic_open(p, "wb") as f:
            pq.write_table(table, f)
        return len(rows)
    if p.name.endswith(".gz"):
        with atomic_open(p, "wb") as f:
            # mtime=0: same records -> byte-identical file (reproducible world generation).
            with gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as gz:
                for row in rows:
                    gz.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
        return len(rows)
    with atomic_open(p, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)
