"""A whole batch of JSON payloads to numpy columns, bad rows to rejects with reasons.

The fast path is C all the way: msgspec decodes each payload into a typed Struct
(``map`` over the batch, no Python bytecode per event), ``operator.attrgetter``
pulls each field out and ``np.fromiter`` / ``np.array`` build the columns.
msgspec validates while it parses: a payload that is not JSON, not an object,
misses a required field, has a value of the wrong type, a null where none is
allowed or (strict streams) an unknown field raises, and the batch loop resumes
right after it. So a bad row costs one exception, never a per-row re-decode of
the whole batch, and the reason comes from msgspec's own error message.

Range, finiteness and category checks run vectorised afterwards
(``detectors.schema``). Payloads over ``max_event_bytes`` are rejected before
decoding (``too_large``).
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import compress, repeat
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from detectors.schema import SCHEMA_REASONS, ColumnRule, SchemaCheck
from monitor.config import NUMERIC_TYPES, FieldType, StreamSpec
from monitor.jsonscan import CompiledDecoder, compiled_supported

__all__ = ["REASONS", "Batch", "Reject", "StreamDecoder"]

# Every reason an event can be rejected for; metrics and dead letters use these codes.
REASONS = (
    "invalid_json",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "null_not_allowed",
    "non_finite",
    "out_of_range",
    "unknown_category",
    "too_large",
    "unknown_field",
)

_PY_TYPES: dict[FieldType, Any] = {
    FieldType.FLOAT: float,
    FieldType.INT: int,
    FieldType.BOOL: bool,
    FieldType.CATEGORY: str,
    FieldType.STRING: str,
}
_AT = re.compile(r" - at `\$\.?([^`]*)`$")
_FIELD = re.compile(r"field `([^`]*)`")
# Codes the category lookup gives to values outside the vocabulary and to nulls.
_UNKNOWN, _NULL = -1, -2
_MAX_DETAIL = 300


@dataclass(frozen=True, slots=True)
class Reject:
    """A row that did not pass: its index in the input batch, reason code and detail."""

    index: int
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Batch:
    """The accepted rows of one batch of one stream, as columns.

    All arrays have length ``n`` (the accepted rows) unless said otherwise.
    ``columns`` holds float64 for numeric and int64 codes for categorical and
    bool fields (-2 where null); ``valid`` is False where a value is null or
    missing. ``rows`` are the accepted rows' indices into the input batch.
    """

    stream: str
    n_input: int
    rows: npt.NDArray[np.int64]
    columns: dict[str, npt.NDArray[Any]]
    valid: dict[str, npt.NDArray[np.bool_]]
    entity: npt.NDArray[np.int64] | None = None
    event_time: npt.NDArray[np.float64] | None = None
    rejects: tuple[Reject, ...] = ()
    new_entities: int = 0
    entity_overflow: int = 0
    fallback_rows: int = 0  # rows the compiled decoder handed to msgspec (monitor.jsonscan)

    @property
    def n(self) -> int:
        return len(self.rows)

    def reason_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.rejects:
            counts[r.reason] = counts.get(r.reason, 0) + 1
        return counts


@dataclass
class _Vocabulary:
    """Value -> int code, bounded; the first codes are the declared/baseline values."""

    codes: dict[Any, int] = field(default_factory=dict)
    limit: int = 100_000
    frozen: bool = False

    def __post_init__(self) -> None:
        self.codes.setdefault(None, _NULL)

    def add(self, values: Sequence[Any]) -> int:
        """Give new codes to ``values`` while room lasts; return how many did not fit."""
        overflow = 0
        for v in values:  # loops over the distinct new values of a batch only
            if v in self.codes:
                continue
            if self.frozen or len(self.codes) - 1 >= self.limit:
                overflow += 1
                continue
            self.codes[v] = len(self.codes) - 1
        return overflow

    def encode(self, values: list[Any]) -> tuple[npt.NDArray[np.int64], int, int]:
        """Codes for ``values`` (-1 outside the vocabulary); new values added if open."""
        get = self.codes.get
        codes = np.fromiter(map(get, values, repeat(_UNKNOWN)), dtype=np.int64, count=len(values))
        added = overflow = 0
        if not self.frozen and (codes == _UNKNOWN).any():
            new = list(dict.fromkeys(compress(values, codes == _UNKNOWN)))
            before = len(self.codes)
            overflow = self.add(new)
            added = len(self.codes) - before
            codes = np.fromiter(
                map(get, values, repeat(_UNKNOWN)), dtype=np.int64, count=len(values)
            )
        return codes, added, overflow

    def names(self) -> list[Any]:
        """Values in code order (without the null entry)."""
        return [k for k, c in sorted(self.codes.items(), key=lambda kv: kv[1]) if c >= 0]


class StreamDecoder:
    """Decodes batches of one stream's payloads. Keeps the category and entity
    vocabularies, so codes are stable across batches."""

    def __init__(self, spec: StreamSpec) -> None:
        self.spec = spec
        self._names = list(spec.fields)
        self._specs = [spec.fields[n] for n in self._names]
        struct_fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
        rename: dict[str, str] = {}
        # Internal attribute names are f0, f1, ...: JSON names need not be identifiers.
        for i, (name, fs) in enumerate(zip(self._names, self._specs, strict=True)):
            attr = f"f{i}"
            rename[attr] = name
            typ = _PY_TYPES[fs.type]
            if not fs.required:
                struct_fields.append((attr, typ | None, None))
            elif fs.nullable:
                struct_fields.append((attr, typ | None))
            else:
                struct_fields.append((attr, typ))
        if spec.entity is not None:
            rename["entity"] = spec.entity
            struct_fields.append(("entity", str | int))
        if spec.event_time is not None:
            rename["event_time"] = spec.event_time
            struct_fields.append(("event_time", float))
        # Required fields first: msgspec wants fields without defaults before those with.
        struct_fields.sort(key=lambda f: len(f) == 3)
        self._struct = msgspec.defstruct(
            f"{spec.name}Event",
            struct_fields,
            rename=rename,
            forbid_unknown_fields=spec.strict,
            gc=False,
        )
        self._decoder = msgspec.json.Decoder(self._struct)
        self._getters = [operator.attrgetter(f"f{i}") for i in range(len(self._names))]
        self.vocabularies: dict[str, _Vocabulary] = {}
        rules = []
        for name, fs in zip(self._names, self._specs, strict=True):
            if fs.type in NUMERIC_TYPES:
                lo, hi = fs.range if fs.range is not None else (None, None)
                rules.append(ColumnRule(name, numeric=True, low=lo, high=hi))
            elif fs.type is FieldType.CATEGORY:
                declared = fs.categories is not None
                vocab = _Vocabulary(limit=10_000)
                vocab.add(list(fs.categories or ()))
                vocab.frozen = declared
                self.vocabularies[name] = vocab
                n_declared = len(fs.categories or ()) if declared else None
                rules.append(ColumnRule(name, numeric=False, n_categories=n_declared))
            elif fs.type is FieldType.BOOL:
                self.vocabularies[name] = _Vocabulary({False: 0, True: 1}, frozen=True)
                rules.append(ColumnRule(name, numeric=False, n_categories=2))
        self._check = SchemaCheck(rules)
        self.entities = _Vocabulary(limit=spec.max_entities) if spec.entity is not None else None
        self._time_scale = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}[spec.event_time_unit]
        self._compiled: CompiledDecoder | None = None
        if spec.decoder == "compiled" and compiled_supported(spec):
            self._compiled = CompiledDecoder(self)

    def seed_categories(self, name: str, categories: Sequence[str]) -> None:
        """Put a baseline's categories first in an open vocabulary (codes 0..K-1)."""
        vocab = self.vocabularies[name]
        if len(vocab.codes) == 1:  # only the null entry: nothing decoded yet
            vocab.add(list(categories))

    def decode(self, payloads: Sequence[bytes | None]) -> Batch:
        """Decode one batch; every payload is either in the batch or a reject."""
        if self._compiled is not None:
            return self._compiled.decode(payloads)
        return self.decode_msgspec(payloads)

    def decode_msgspec(self, payloads: Sequence[bytes | None]) -> Batch:
        """Decode one batch; every payload is either in the batch or a reject."""
        n = len(payloads)
        rejects: list[Reject] = []
        limit = self.spec.max_event_bytes
        try:
            sizes = np.fromiter(map(len, payloads), dtype=np.int64, count=n)  # type: ignore[arg-type]
        except TypeError:  # a None value (tombstone) somewhere in the batch
            sizes = np.fromiter(map(_size, payloads), dtype=np.int64, count=n)
        candidates: Sequence[bytes | None] = payloads
        index = np.arange(n, dtype=np.int64)
        if (sizes > limit).any() or (sizes < 0).any():
            keep = (sizes <= limit) & (sizes >= 0)
            for i in np.flatnonzero(~keep).tolist():
                if sizes[i] < 0:
                    rejects.append(Reject(i, "invalid_json", "empty value (tombstone)"))
                else:
                    rejects.append(
                        Reject(i, "too_large", f"{int(sizes[i])} bytes > max_event_bytes {limit}")
                    )
            index = index[keep]
            candidates = list(compress(payloads, keep.tolist()))
        rows, failed = self._decode_rows(candidates)
        if failed:
            bad = np.zeros(len(candidates), dtype=np.bool_)
            for pos, exc in failed:
                bad[pos] = True
                why, detail = self._classify(candidates[pos], exc)
                rejects.append(Reject(int(index[pos]), why, detail))
            index = index[~bad]
        columns, valid = self._columns(rows)
        batch_rows = index
        reason, field_ix = self._check.check(columns, valid)
        if reason.any():
            failing = np.flatnonzero(reason)
            for pos in failing.tolist():
                rule = self._check.rules[int(field_ix[pos])]
                code = SCHEMA_REASONS[int(reason[pos])]
                detail = self._detail(code, rule, rows[pos])
                rejects.append(Reject(int(batch_rows[pos]), code, detail))
            ok = reason == 0
            batch_rows = batch_rows[ok]
            columns = {k: v[ok] for k, v in columns.items()}
            valid = {k: v[ok] for k, v in valid.items()}
            rows = list(compress(rows, ok.tolist()))
        entity, new_entities, overflow = None, 0, 0
        if self.entities is not None:
            entity, new_entities, overflow = self.entities.encode(
                list(map(operator.attrgetter("entity"), rows))
            )
        event_time = None
        if self.spec.event_time is not None:
            event_time = np.fromiter(
                map(operator.attrgetter("event_time"), rows), dtype=np.float64, count=len(rows)
            )
            if self._time_scale != 1.0:
                event_time *= self._time_scale
        rejects.sort(key=lambda r: r.index)
        return Batch(
            stream=self.spec.name,
            n_input=n,
            rows=batch_rows,
            columns=columns,
            valid=valid,
            entity=entity,
            event_time=event_time,
            rejects=tuple(rejects),
            new_entities=new_entities,
            entity_overflow=overflow,
        )

    def _decode_rows(
        self, payloads: Sequence[bytes | None]
    ) -> tuple[list[Any], list[tuple[int, Exception]]]:
        rows: list[Any] = []
        failed: list[tuple[int, Exception]] = []
        it = iter(payloads)
        decode = self._decoder.decode
        while True:
            try:
                # list.extend keeps what it appended before an exception; the iterator
                # has moved past the failing payload, so the loop resumes after it.
                rows.extend(map(decode, it))  # type: ignore[arg-type]  # None is pre-filtered
                return rows, failed
            except (msgspec.DecodeError, TypeError) as exc:
                failed.append((len(rows) + len(failed), exc))

    def _columns(
        self, rows: list[Any]
    ) -> tuple[dict[str, npt.NDArray[Any]], dict[str, npt.NDArray[np.bool_]]]:
        n = len(rows)
        columns: dict[str, npt.NDArray[Any]] = {}
        valid: dict[str, npt.NDArray[np.bool_]] = {}
        for name, fs, getter in zip(self._names, self._specs, self._getters, strict=True):
            if fs.type in NUMERIC_TYPES:
                if fs.nullable or not fs.required:
                    col = np.array(list(map(getter, rows)), dtype=np.float64)
                    if col.ndim != 1:  # an empty batch
                        col = np.empty(0, dtype=np.float64)
                    # JSON cannot carry NaN: a NaN here is a null turned float.
                    ok = ~np.isnan(col)
                else:
                    col = np.fromiter(map(getter, rows), dtype=np.float64, count=n)
                    ok = np.ones(n, dtype=np.bool_)
                columns[name], valid[name] = col, ok
            elif fs.type in (FieldType.CATEGORY, FieldType.BOOL):
                codes, _, _ = self.vocabularies[name].encode(list(map(getter, rows)))
                columns[name], valid[name] = codes, codes != _NULL
        return columns, valid

    def _detail(self, code: str, rule: ColumnRule, row: Any) -> str:
        value = getattr(row, f"f{self._names.index(rule.name)}")
        if code == "out_of_range":
            lo = "-inf" if rule.low is None else _fmt(rule.low)
            hi = "inf" if rule.high is None else _fmt(rule.high)
            return f"{rule.name}={_fmt(value)} outside [{lo}, {hi}]"
        if code == "non_finite":
            return f"{rule.name}={value} is not finite"
        allowed = self.vocabularies[rule.name].names()
        return f"{rule.name}={str(value)[:80]!r} is not one of {allowed}"[:_MAX_DETAIL]

    def _classify(self, payload: bytes | None, exc: Exception) -> tuple[str, str]:
        message = str(exc)
        if not isinstance(exc, msgspec.ValidationError):
            return _classify_syntax(payload, message)
        at = _AT.search(message)
        path = at.group(1) if at else ""
        if message.startswith("Expected `object`") and not path:
            return "not_an_object", message
        if message.startswith("Object missing required field"):
            return "missing_field", message
        if message.startswith("Object contains unknown field"):
            return "unknown_field", message
        if message.startswith("Number out of range"):
            return "non_finite", message
        if ", got `null`" in message:
            return "null_not_allowed", message
        return "wrong_type", message


def _size(payload: bytes | None) -> int:
    return -1 if payload is None else len(payload)


def _classify_syntax(payload: bytes | None, message: str) -> tuple[str, str]:
    """Not JSON for msgspec; Python's lenient parser tells NaN/Infinity apart."""
    if payload:
        try:
            value = json.loads(payload)
        except (ValueError, RecursionError):
            value = None
        else:
            if isinstance(value, dict) and any(
                isinstance(v, float) and not math.isfinite(v) for v in value.values()
            ):
                return "non_finite", "NaN or Infinity is not valid JSON"
    if not payload:
        return "invalid_json", "empty payload"
    return "invalid_json", message[:_MAX_DETAIL]


def _fmt(value: float) -> str:
    return f"{value:.6g}"
