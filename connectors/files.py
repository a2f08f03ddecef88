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

from connectors.errors import DriftwardenError

__all__ = ["FILE_SUFFIXES", "read_file_payloads"]

FILE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")


def _typed(value: str, kind: str | None) -> Any:
    if value == "":
        return None
    if kind == "float":
        return float(value)
    if kind == "int":
        return int(float(value)) if float(value).is_integer() else float(value)
    if kind == "bool":
        return value.strip().lower() in {"1", "true", "yes"}
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
    """
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        with path.open("rb") as fh:
            batch: list[bytes | None] = []
            for line in fh:
                if line.strip():
                    batch.append(line.strip())
                if len(batch) >= chunk:
                    yield batch
                    batch = []
            if batch:
                yield batch
        return
    if suffix == ".csv":
        encode = msgspec.json.encode
        with path.open(newline="", encoding="utf-8") as fh:
            out: list[bytes | None] = []
            for row in csv.DictReader(fh):
                doc = {k: _typed(v, field_types.get(k)) for k, v in row.items()}
                if event_time is not None and doc.get(event_time):
                    doc[event_time] = _time(doc[event_time])
                out.append(encode(doc))
                if len(out) >= chunk:
                    yield out
                    out = []
            if out:
                yield out
        return
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise DriftwardenError("reading Parquet needs pyarrow: pip install pyarrow") from exc
        encode = msgspec.json.encode
        for record_batch in pq.ParquetFile(path).iter_batches(batch_size=chunk):
            yield [encode(r) for r in record_batch.to_pylist()]
        return
    raise DriftwardenError(
        f"{path}: unsupported file type {suffix!r}; allowed: {', '.join(FILE_SUFFIXES)}"
    )
