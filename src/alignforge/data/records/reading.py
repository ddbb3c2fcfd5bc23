"""Reading record files: :func:`iter_raw` (raw rows of JSONL/.gz, a JSON list, Parquet or a Hugging Face
``datasets`` directory, with ``path:line`` on every error: invalid JSON, bytes that are not UTF-8, lone
surrogates), :class:`ReadReport` (what a read did: nothing is dropped silently) and :func:`read_records`
(our own record format, validated by :func:`alignforge.data.records.kinds.parse_record`). Other datasets'
layouts go through :mod:`alignforge.data.formats`, which reads with :func:`iter_raw` too.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from alignforge.data.records.kinds import Record, RecordError, parse_record
from alignforge.textcheck import find_surrogate, json_line_may_hold_surrogate


@dataclass
class ReadReport:
    """What a read did, so nothing is dropped silently.

    - ``read``: records produced; ``rows``: raw rows (lines) seen; ``kinds``: records per kind.
    - ``skipped`` / ``errors``: malformed rows skipped under ``on_bad="skip"`` (first 20 messages).
    - ``dropped``: rows (or parts of rows) a format adapter leaves out *by documented policy*,
      counted per reason (e.g. HH-RLHF pairs whose chosen and rejected are identical).
    - ``notes``: repairs and oddities counted per kind (e.g. merged consecutive assistant turns).
    """

    path: str
    read: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)
    rows: int = 0
    format: Optional[str] = None
    kinds: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)

    def note(self, err: RecordError) -> None:
        """Count one skipped malformed row (``on_bad="skip"``)."""
        self.skipped += 1
        if len(self.errors) < 20:
            self.errors.append(str(err))

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def notice(self, what: str, n: int = 1) -> None:
        self.notes[what] = self.notes.get(what, 0) + n

    def summary(self) -> str:
        s = f"{self.path}: {self.read} records"
        if self.format:
            s += f" ({self.format} format, {self.rows} rows)"
        if len(self.kinds) > 1:
            s += " [" + ", ".join(f"{k}: {v}" for k, v in sorted(self.kinds.items())) + "]"
        if self.skipped:
            s += f", {self.skipped} bad records skipped (first: {self.errors[0]})"
        if self.dropped:
            s += "; dropped: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.dropped.items()))
        if self.notes:
            s += "; notes: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.notes.items()))
        return s


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_raw(path: str | os.PathLike, bad_json: str = "raise") -> Iterator[tuple[int, Any]]:
    """(line or row number, raw object) from JSONL(.gz), JSON list, Parquet or an HF datasets dir.

    A line that is not valid JSON raises :class:`RecordError` with the path and line number; with
    ``bad_json="yield"`` the error is yielded in place of the object instead, so a reader that
    skips bad lines (``on_bad="skip"``) can count it and go on to the next line.
    """
    if bad_json not in ("raise", "yield"):
        raise ValueError(f"bad_json must be 'raise' or 'yield', got {bad_json!r}")
    p = Path(path)
    if not p.exists():
        raise RecordError("file not found", path=str(p))
    if p.is_dir():
        yield from _iter_hf_dir(p, bad_json)
        return
    name = p.name.removesuffix(".gz")
    if name.endswith(".parquet"):
        yield from _iter_parquet(p)
        return
    if name.endswith(".json") and not name.endswith(".jsonl"):
        try:
            with _open_text(p) as f:
                head = f.read(4096).lstrip()
        except UnicodeDecodeError as e:
            raise _utf8_error(p, e) from None
        # Many datasets ship JSON Lines under a .json name; a JSON list starts with '['.
        if head.startswith("["):
            with _open_text(p) as f:
                try:
                    data = json.load(f)
                except json.JSONDecodeError as e:
                    # A JSON document is all or nothing: no line can be skipped, so this always raises.
                    raise RecordError(f"not valid JSON: {e.msg} (column {e.colno}); expected a JSON list of "
                                      f"records", path=str(p), line=e.lineno) from None
                except UnicodeDecodeError as e:
                    raise _utf8_error(p, e) from None
            # Numbered by element (a JSON list has no lines of its own).
            for i, obj in enumerate(data, 1):
                err = _surrogate_error(obj, p, i)
                if err is not None and bad_json == "raise":
                    raise err
                yield i, (obj if err is None else err)
            return
    with _open_text(p) as f:
        lineno = 0
        try:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    # Without its newline, so a line cut short reports the column where it ends.
                    obj = json.loads(line.rstrip("\r\n"))
                except json.JSONDecodeError as e:
                    err = RecordError(f"not valid JSON: {e.msg} (column {e.pos + 1}); expected one JSON object "
                                      f"per line", path=str(p), line=lineno)
                else:
                    err = _surrogate_error(obj, p, lineno) if json_line_may_hold_surrogate(line) else None
                if err is not None and bad_json == "raise":
                    raise err from None
                yield lineno, (obj if err is None else err)
        except UnicodeDecodeError as e:  # bytes that are not UTF-8: say on which line
            raise _utf8_error(p, e) from None
        except (OSError, EOFError) as e:  # truncated .gz, binary junk
            raise RecordError(f"cannot read the file after line {lineno}: {e}", path=str(p)) from None


def _surrogate_error(obj: Any, path: Path, line: int) -> RecordError | None:
    """A record whose text holds a lone surrogate (JSON ``"\\udcff"``) is refused here, where its
    file and line are known: such text is not Unicode, and would otherwise fail much later and far
    away (a tokenizer's TypeError, a 500 in the feedback app, an export that cannot be written)."""
    found = find_surrogate(obj)
    if found is None:
        return None
    return RecordError(found.message(), path=str(path), line=line, field=found.field or None)


def _utf8_error(p: Path, e: UnicodeDecodeError) -> RecordError:
    """The text decoder reads ahead in blocks, so the line it was on says nothing: find the first
    byte that is not UTF-8 by line, in the raw (decompressed) bytes."""
    try:
        with (gzip.open(p, "rb") if p.suffix == ".gz" else open(p, "rb")) as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as bad:
                    byte = raw[bad.start]
                    return RecordError(f"not valid UTF-8: byte 0x{byte:02x} at byte {bad.start + 1} of the line "
                                       f"({bad.reason}); expected UTF-8 text", path=str(p), line=lineno)
    except (OSError, EOFError):
        pass
    return RecordError(f"not valid UTF-8 ({e.reason}); expected UTF-8 text", path=str(p))


def _iter_parquet(p: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise RecordError(f"not a readable Parquet file: {e}", path=str(p)) from None
    for i, row in enumerate(table.to_pylist(), 1):
        yield i, _drop_nulls(row)


def _iter_hf_dir(p: Path, bad_json: str = "raise") -> Iterator[tuple[int, Any]]:
    """A directory saved with ``datasets.Dataset.save_to_disk`` (or a DatasetDict: 'train' split)."""
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - datasets is a base dependency
        raise RecordError("reading a datasets directory needs the `datasets` package", path=str(p)) from e
    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as e:
        files = sorted(x for x in p.iterdir() if x.suffix in (".jsonl", ".parquet", ".gz", ".json"))
        if files:  # a plain folder of data files
            for f in files:
                yield from iter_raw(f, bad_json)
            return
        raise RecordError(f"not a datasets directory (load_from_disk failed: {e})", path=str(p)) from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise RecordError(f"DatasetDict without a 'train' split (splits: {list(ds)})", path=str(p))
        ds = ds["train"]
    for i, row in enumerate(ds, 1):
        yield i, _drop_nulls(row)


def _drop_nulls(value: Any) -> Any:
    """Columnar formats (Parquet, Arrow) give every row every column and every struct every key,
    filling the absent ones with null; a record treats null as absent. Recursive, because a
    ``flags``/``meta`` mapping becomes a struct with the union of the keys seen in the file."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def read_records(path: str | os.PathLike, kind: str | None = None, on_bad: str = "error",
                 report: ReadReport | None = None, strict_fields: bool = True) -> list[Record]:
    """Read and validate every record in ``path`` (our own record format, design §3).

    ``on_bad="error"`` raises the first :class:`RecordError` (with path and line);
    ``on_bad="skip"`` skips bad records (invalid JSON lines included) and counts them in
    ``report`` (pass one in to see them). For other datasets' schemas use
    :func:`alignforge.data.formats.load_dataset_records`.
    """
    if on_bad not in ("error", "skip"):
        raise ValueError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")
    report = report if report is not None else ReadReport(str(path))
    report.format = report.format or "records"
    out: list[Record] = []
    for lineno, obj in iter_raw(path, bad_json="raise" if on_bad == "error" else "yield"):
        report.rows += 1
        if isinstance(obj, RecordError):
            report.note(obj)
            continue
        try:
            rec = parse_record(obj, kind, strict_fields=strict_fields)
        except RecordError as e:
            err = RecordError(e.reason, path=str(path), line=lineno, field=e.field)
            if on_bad == "error":
                raise err from None
            report.note(err)
            continue
        out.append(rec)
        report.kinds[rec.kind] = report.kinds.get(rec.kind, 0) + 1
    report.read = len(out)
    return out
