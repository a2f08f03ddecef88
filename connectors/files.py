"""Training and replay files as batches of JSON payloads: JSONL, CSV or Parquet.

Every source is turned into the bytes the stream's decoder reads from Kafka, so a
file, a topic and a replay go through exactly the same decoding. CSV has no types:
a column named in ``field_types`` is converted (``float``, ``int``, ``bool``; an
empty cell is null), others stay text; the event-time column becomes a number when
it is one and stays text (ISO-8601) otherwise.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "f.csv").write_text("x,ok,at\\n1.5,true,2025-01-01T00:00:00Z\\n,no,17\\n")
>>> list(read_file_payloads(d / "f.csv", {"x": "float", "ok": "bool"}, event_time="at"))
[[b'{"x":1.5,"ok":true,"at":"2025-01-01T00:00:00Z"}', b'{"x":null,"ok":false,"at":17.0}']]
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec

from connectors.errors import DriftwardenError, InputFileError

__all__ = ["FILE_SUFFIXES", "read_file_payloads"]

FILE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")


_TRUE = frozenset({"1", "true", "yes"})
_FALSE = frozenset({"0", "false", "no"})
# A CSV cell may be this large (the csv module's default is 128 KiB); a larger one is
# an unreadable file, a smaller one an event the decoder judges (``too_large``).
_CSV_FIELD_LIMIT = 64 << 20
_BOM = b"\xef\xbb\xbf"


def _typed(value: str | None, kind: str | None) -> Any:
    """A CSV cell as its column's type; a cell that is not one stays text (so the
    decoder reports it as ``wrong_type``)."""
    if value is None or value == "":
        return None
    try:
        if kind == "float":
            return float(value)
        if kind == "int":
            return int(float(value)) if float(value).is_integer() else float(value)
    except ValueError:
        return value
    if kind == "bool":
        text = value.strip().lower()
        return True if text in _TRUE else False if text in _FALSE else value
    return value


def _time(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value  # ISO-8601 text: the decoder parses it


def read_file_payloads(
    path: Path,
    field_types: Mapping[str, str],
    *,
    event_time: str | None = None,
    chunk: int = 50_000,
) -> Iterator[list[bytes | None]]:
    """Batches of at most ``chunk`` JSON payloads from the file at ``path``.

    ``field_types`` maps a CSV column to ``float``, ``int``, ``bool`` (or anything
    else for text); JSONL lines are passed as they are and Parquet rows are encoded.
    A leading UTF-8 byte-order mark is skipped; a CSV row shorter than the header has
    nulls in the missing cells. ``InputFileError`` (one line, naming the file) when the
    file cannot be read as its type: missing, not UTF-8 (CSV), a row longer than the
    header, a cell over 64 MiB, not Parquet.
    """
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise InputFileError(
            f"{path}: unsupported file type {suffix!r}; allowed: {', '.join(FILE_SUFFIXES)}"
        )
    try:
        if suffix == ".csv":
            yield from _csv(path, field_types, event_time, chunk)
        elif suffix == ".parquet":
            yield from _parquet(path, chunk)
        else:
            yield from _jsonl(path, chunk)
    except OSError as exc:
        raise InputFileError(f"{path}: cannot be read: {exc.strerror or exc}") from exc


def _jsonl(path: Path, chunk: int) -> Iterator[list[bytes | None]]:
    with path.open("rb") as fh:
        batch: list[bytes | None] = []
        for number, line in enumerate(fh):
            if number == 0 and line.startswith(_BOM):
                line = line[len(_BOM) :]
            if line.strip():
                batch.append(line.strip())
            if len(batch) >= chunk:
                yield batch
                batch = []
        if batch:
            yield batch


def _csv(
    path: Path, field_types: Mapping[str, str], event_time: str | None, chunk: int
) -> Iterator[list[bytes | None]]:
    encode = msgspec.json.encode
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader, None)
            if header is None:
                return
            width = len(header)
            kinds = [field_types.get(k) for k in header]
            out: list[bytes | None] = []
            for row in reader:
                if not row:
                    continue
                if len(row) > width:
                    raise InputFileError(
                        f"{path}: line {reader.line_num} has {len(row)} cells, the header {width}"
                    )
                doc = dict.fromkeys(header)
                doc.update(
                    (k, _typed(v, kind)) for k, v, kind in zip(header, row, kinds, strict=False)
                )
                if event_time is not None and doc.get(event_time):
                    doc[event_time] = _time(doc[event_time])
                out.append(encode(doc))
                if len(out) >= chunk:
                    yield out
                    out = []
            if out:
                yield out
        except UnicodeDecodeError as exc:
            raise InputFileError(f"{path}: not UTF-8 text ({exc.reason})") from exc
        except csv.Error as exc:
            raise InputFileError(f"{path}: line {reader.line_num}: {exc}") from exc


def _parquet(path: Path, chunk: int) -> Iterator[list[bytes | None]]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise DriftwardenError("reading Parquet needs pyarrow: pip install pyarrow") from exc
    encode = msgspec.json.encode
    try:
        for record_batch in pq.ParquetFile(path).iter_batches(batch_size=chunk):
            yield [encode(r) for r in record_batch.to_pylist()]
    except (pa.ArrowException, TypeError, ValueError) as exc:
        problem = " ".join(str(exc).split())[:300]
        raise InputFileError(f"{path}: not a readable Parquet file: {problem}") from exc
