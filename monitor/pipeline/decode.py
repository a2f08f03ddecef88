"""A whole batch of JSON payloads to numpy columns, bad rows to rejects with reasons.

The fast path is C all the way: msgspec decodes each payload into a typed Struct
(``map`` over the batch, no Python bytecode per event), ``operator.attrgetter``
pulls each field out and ``np.fromiter`` / ``np.array`` build the columns. A row
msgspec does not accept costs one exception, and the batch loop resumes right
after it; only those rows are parsed again, one by one, by a lenient parser that
tells their problems apart (``_fallback``).

Order of checks, each a reason code (``REASONS``):

1. raw bytes, whole batch (``monitor.pipeline.payload_checks``): ``invalid_json`` (empty
   value / tombstone), ``too_large`` (> ``max_event_bytes``), ``invalid_utf8``,
   ``too_deep`` (> ``max_depth``), ``too_many_fields`` (> ``max_fields``);
2. per row: ``invalid_json`` (not JSON), ``not_an_object``, ``unknown_field``
   (strict streams), ``missing_field``, and for the entity / event-time fields
   ``wrong_type``, ``string_too_long`` (entity) and ``invalid_time``;
3. per value of a declared field (field-level): ``wrong_type``,
   ``null_not_allowed``, ``non_finite`` (``NaN``/``Infinity`` literals),
   ``number_too_large`` (a literal that does not fit a float64, or an int field
   outside int64), ``string_too_long`` (a new category longer than
   ``max_string_length``), then vectorised (``detectors.schema``)
   ``out_of_range`` and ``unknown_category``.

Event-level problems (1, 2) reject the event: it is in ``Batch.rejects`` and in
no statistic. Field-level problems (3) exclude only that value: the event is
accepted (in ``Batch.rows``), the value is invalid (``valid`` False; NaN in a
numeric column, -2 for a wrong-typed/null code, -1 unknown, -3 too long), and
every violation of the event is in ``Batch.violations``; the service
dead-letters such an event once, listing all its violations.

Any other exception while decoding a batch is isolated by bisection to the rows
that raise it, which are rejected as ``undecodable``; the rest of the batch
decodes normally.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import compress, repeat
from typing import Annotated, Any

import msgspec
import numpy as np
import numpy.typing as npt

from connectors.records import PackedValues
from detectors.schema import SCHEMA_REASONS, ColumnRule, SchemaCheck
from monitor.config.schema import NUMERIC_TYPES, FieldSpec, FieldType, StreamSpec
from monitor.pipeline.event_time import parse_event_times, valid_time_value
from monitor.pipeline.jsonscan import CompiledDecoder, compiled_supported
from monitor.pipeline.payload_checks import NonFinite, TooLarge, lenient_parse, precheck

__all__ = ["FIELD_REASONS", "LIMITS", "REASONS", "Batch", "Reject", "StreamDecoder", "Violation"]

# Every reason an event or a value can be refused for; metrics and dead letters use
# these codes (metrics pre-bind each one).
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
    "too_deep",
    "too_many_fields",
    "number_too_large",
    "string_too_long",
    "invalid_utf8",
    "invalid_time",
    "undecodable",
)
# The reasons that exclude one value of a declared field, not the whole event.
FIELD_REASONS = frozenset(
    {
        "wrong_type",
        "null_not_allowed",
        "non_finite",
        "out_of_range",
        "unknown_category",
        "number_too_large",
        "string_too_long",
    }
)
# The configurable limits (StreamSpec settings), counted when hit.
LIMITS = (
    "max_event_bytes",
    "max_depth",
    "max_fields",
    "max_string_length",
    "max_categories",
    "max_entities",
)
_LIMIT_OF = {
    "too_large": "max_event_bytes",
    "too_deep": "max_depth",
    "too_many_fields": "max_fields",
    "string_too_long": "max_string_length",
}

_INT64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
_PY_TYPES: dict[FieldType, Any] = {
    FieldType.FLOAT: float,
    FieldType.INT: _INT64,
    FieldType.BOOL: bool,
    FieldType.CATEGORY: str,
    FieldType.STRING: str,
}
_TYPE_NAMES = {
    FieldType.FLOAT: "float",
    FieldType.INT: "int",
    FieldType.BOOL: "bool",
    FieldType.CATEGORY: "str",
    FieldType.STRING: "str",
}
_AT = re.compile(r" - at `\$\.?([^`]*)`$")
# Codes the category lookup gives to values outside the vocabulary, to nulls and to
# new values longer than max_string_length.
_UNKNOWN, _NULL, _TOO_LONG = -1, -2, -3


def _unfit(v: Any, limit: int) -> bool:
    """A value no vocabulary takes: a string over ``limit`` characters, or an integer
    outside int64 (it could not be checkpointed)."""
    if isinstance(v, str):
        return len(v) > limit
    return type(v) is int and not -(2**63) <= v < 2**63


_MAX_DETAIL = 300
_FREE: Any = object()  # the value of a code not in use (_Vocabulary.by_code)


@dataclass(frozen=True, slots=True)
class Reject:
    """A row that did not pass: its index in the input batch, reason code and detail."""

    index: int
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Violation:
    """One excluded value of an accepted row: input index, field, reason code, detail."""

    index: int
    field: str
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Batch:
    """The accepted rows of one batch of one stream, as columns.

    All arrays have length ``n`` (the accepted rows) unless said otherwise.
    ``columns`` holds float64 for numeric and int64 codes for categorical and
    bool fields (-2 where null); ``valid`` is False where a value is null,
    missing or excluded by a field-level violation. ``rows`` are the accepted
    rows' indices into the input batch (ascending). ``rejects`` are the rows
    refused as a whole and ``violations`` the excluded values of accepted rows,
    both sorted by input index (violations then by declared field order);
    ``n_input == n + len(rejects)``. ``limit_hits`` counts, per limit name
    (``LIMITS``), the events or values of this batch that hit it.
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
    violations: tuple[Violation, ...] = ()
    limit_hits: tuple[tuple[str, int], ...] = ()
    fallback_rows: int = (
        0  # rows the compiled decoder handed to msgspec (monitor.pipeline.jsonscan)
    )

    @property
    def n(self) -> int:
        return len(self.rows)

    def reason_counts(self) -> dict[str, int]:
        """Rejected events per reason."""
        counts: dict[str, int] = {}
        for r in self.rejects:
            counts[r.reason] = counts.get(r.reason, 0) + 1
        return counts

    def violation_counts(self) -> dict[tuple[str, str], int]:
        """Excluded values per (field, reason)."""
        counts: dict[tuple[str, str], int] = {}
        for v in self.violations:
            key = (v.field, v.reason)
            counts[key] = counts.get(key, 0) + 1
        return counts

    def violated_events(self) -> dict[int, tuple[Violation, ...]]:
        """Accepted events with at least one excluded value: input index -> violations."""
        out: dict[int, list[Violation]] = {}
        for v in self.violations:
            out.setdefault(v.index, []).append(v)
        return {i: tuple(vs) for i, vs in out.items()}

    def violation_mask(self, name: str) -> npt.NDArray[np.bool_]:
        """Per accepted row: True where ``name``'s value was excluded by a violation."""
        mask = np.zeros(self.n, dtype=np.bool_)
        index = np.asarray([v.index for v in self.violations if v.field == name], np.int64)
        if index.size:
            pos = np.searchsorted(self.rows, index)
            inside = pos < self.n
            pos, index = pos[inside], index[inside]
            mask[pos[self.rows[pos] == index]] = True
        return mask


@dataclass
class _Vocabulary:
    """Value -> int code, bounded; the first codes are the declared/baseline values.

    Codes can be given back (``release``): a released code is handed out again,
    smallest first, before any code never used, so live codes stay below ``limit``
    and the codes of values still present never change. ``journal``, when not
    None, records every change made by ``add`` and ``release`` as ``(value, code)``
    (code -1: released), for a mirror of the vocabulary (the compiled decoder's
    tables) to replay.
    """

    codes: dict[Any, int] = field(default_factory=dict)
    limit: int = 100_000
    frozen: bool = False
    max_length: int | None = None
    journal: list[tuple[Any, int]] | None = None
    # Released codes not yet handed out again: ``free[free_pos:]``, ascending.
    free: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    free_pos: int = 0
    _by_code: list[Any] = field(default_factory=list)
    _by_code_of: dict[Any, int] | None = None  # the dict ``_by_code`` follows

    def __post_init__(self) -> None:
        self.codes.setdefault(None, _NULL)

    def _next_code(self) -> int:
        if self.free_pos < len(self.free):
            code = int(self.free[self.free_pos])
            self.free_pos += 1
            return code
        return len(self.codes) - 1  # no free code: every code below the live count is taken

    def add(self, values: Sequence[Any]) -> int:
        """Give new codes to ``values`` while room lasts; return how many did not fit.

        Strings longer than ``max_length`` are never added (see ``encode``)."""
        overflow = 0
        for v in values:  # loops over the distinct new values of a batch only
            if v in self.codes:
                continue
            if self.max_length is not None and _unfit(v, self.max_length):
                continue
            if self.frozen or len(self.codes) - 1 >= self.limit:
                overflow += 1
                continue
            code = self.codes[v] = self._next_code()
            if self.journal is not None:
                self.journal.append((v, code))
            self._name(code, v)
        return overflow

    def commit(self, values: Sequence[Any], codes: Sequence[int]) -> None:
        """Take in new ``values`` with the codes ``add`` would have given them, in
        order (the compiled decoder's new values; not journalled)."""
        self.codes.update(zip(values, codes, strict=True))
        self.free_pos = min(self.free_pos + len(values), len(self.free))
        if self._by_code_of is self.codes:
            for v, c in zip(values, codes, strict=True):
                self._name(c, v)

    def release(self, codes: Sequence[int] | npt.NDArray[np.int64]) -> list[Any]:
        """Forget the values of ``codes`` (codes not in use are ignored) and hand the
        codes out again later. Returns the values forgotten, in the order given."""
        by_code = self.by_code()
        gone: list[Any] = []
        freed: list[int] = []
        for code in dict.fromkeys(np.asarray(codes, dtype=np.int64).tolist()):
            if 0 <= code < len(by_code) and by_code[code] is not _FREE:
                value = by_code[code]
                del self.codes[value]
                by_code[code] = _FREE
                gone.append(value)
                freed.append(code)
                if self.journal is not None:
                    self.journal.append((value, -1))
        if freed:
            rest = self.free[self.free_pos :]
            self.free = np.union1d(rest, np.asarray(freed, dtype=np.int64))
            self.free_pos = 0
        return gone

    def by_code(self) -> list[Any]:
        """Values indexed by code (``_FREE`` where a code is not in use). The list is
        kept up to date from then on; callers must not modify it."""
        if self._by_code_of is not self.codes:
            out: list[Any] = [_FREE] * (max(self.codes.values()) + 1)
            for value, code in self.codes.items():
                if code >= 0:
                    out[code] = value
            self._by_code, self._by_code_of = out, self.codes
        return self._by_code

    def _name(self, code: int, value: Any) -> None:
        if self._by_code_of is self.codes:
            out = self._by_code
            if code >= len(out):
                out.extend([_FREE] * (code + 1 - len(out)))
            out[code] = value

    def encode(self, values: list[Any]) -> tuple[npt.NDArray[np.int64], int, int]:
        """Codes for ``values`` (-1 outside the vocabulary, -3 a new value longer than
        ``max_length``); new values added if open."""
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
            if self.max_length is not None:
                limit = self.max_length
                long = {v for v in new if _unfit(v, limit)}
                if long:
                    hit = np.fromiter(map(long.__contains__, values), np.bool_, len(values))
                    codes[hit] = _TOO_LONG
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
            struct_fields.append(("event_time", float | str))
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
        self._known = set(rename.values())
        self._required = [n for n, fs in zip(self._names, self._specs, strict=True) if fs.required]
        self._required += [k for k in (spec.entity, spec.event_time) if k is not None]
        self.vocabularies: dict[str, _Vocabulary] = {}
        rules = []
        for name, fs in zip(self._names, self._specs, strict=True):
            if fs.type in NUMERIC_TYPES:
                lo, hi = fs.range if fs.range is not None else (None, None)
                rules.append(ColumnRule(name, numeric=True, low=lo, high=hi))
            elif fs.type is FieldType.CATEGORY:
                declared = fs.categories is not None
                vocab = _Vocabulary(limit=spec.max_categories)
                vocab.add(list(fs.categories or ()))
                vocab.frozen = declared
                vocab.max_length = spec.max_string_length
                self.vocabularies[name] = vocab
                n_declared = len(fs.categories or ()) if declared else None
                rules.append(ColumnRule(name, numeric=False, n_categories=n_declared))
            elif fs.type is FieldType.BOOL:
                self.vocabularies[name] = _Vocabulary({False: 0, True: 1}, frozen=True)
                rules.append(ColumnRule(name, numeric=False, n_categories=2))
        self._check = SchemaCheck(rules)
        # With a fleet section the fleet stage gives back (release_entities) the ids
        # of the devices it evicts or rejects once a batch is in; the new devices of
        # a batch arrive before that, so the vocabulary keeps room for them.
        limit = spec.max_entities
        if spec.fleet is not None:
            limit = max(limit, 2 * spec.fleet.max_entities)
        self.entities = (
            _Vocabulary(limit=limit, max_length=spec.max_string_length)
            if spec.entity is not None
            else None
        )
        self._time_scale = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}[spec.event_time_unit]
        self._compiled: CompiledDecoder | None = None
        if spec.decoder == "compiled" and compiled_supported(spec):
            self._compiled = CompiledDecoder(self)

    def seed_categories(self, name: str, categories: Sequence[str]) -> None:
        """Put a baseline's categories first in an open vocabulary (codes 0..K-1)."""
        vocab = self.vocabularies[name]
        if len(vocab.codes) == 1:  # only the null entry: nothing decoded yet
            vocab.add(list(categories))

    def release_entities(self, codes: Sequence[int] | npt.NDArray[np.int64]) -> int:
        """Forget the entities of ``codes`` (e.g. devices the fleet stage evicted);
        returns how many were forgotten (codes not in use are ignored).

        The codes of the entities still known never change; a released code is
        handed out again (smallest first) to a later new entity, so a churning
        fleet never exhausts ``max_entities`` while fewer are alive. Callers must
        hold no code they release (the decoder may give it to another entity).
        Both decoding paths share the vocabulary, so they stay identical.

        >>> from monitor.config.schema import StreamSpec
        >>> spec = StreamSpec.model_validate({"name": "s", "topic": "t", "entity": "id",
        ...     "max_entities": 2, "fields": {"x": {"type": "float"}}})
        >>> d = StreamDecoder(spec)
        >>> d.decode([b'{"id": "a", "x": 1}', b'{"id": "b", "x": 1}']).entity.tolist()
        [0, 1]
        >>> d.release_entities([0])
        1
        >>> d.decode([b'{"id": "c", "x": 1}', b'{"id": "b", "x": 1}']).entity.tolist()
        [0, 1]
        """
        if self.entities is None:
            return 0
        return len(self.entities.release(codes))

    def decode(self, payloads: Sequence[bytes | None]) -> Batch:
        """Decode one batch; every payload is either accepted (in the batch, perhaps
        with excluded values) or a reject. Never raises on any payload."""
        if self._compiled is not None:
            return self._compiled.decode(payloads)
        return self.decode_msgspec(payloads)

    def decode_msgspec(self, payloads: Sequence[bytes | None]) -> Batch:
        """``decode`` by msgspec alone (the compiled decoder's fallback)."""
        if isinstance(payloads, PackedValues):
            payloads = list(payloads)
        try:
            return self._decode(payloads)
        except Exception:  # something no check foresaw: find the rows that cause it
            return self._isolate(payloads)

    # -- the batch -------------------------------------------------------------------
    def _decode(self, payloads: Sequence[bytes | None]) -> Batch:
        n = len(payloads)
        spec = self.spec
        rejects: list[Reject] = []
        hits: dict[str, int] = {}
        limit = spec.max_event_bytes
        try:
            sizes = np.fromiter(map(len, payloads), dtype=np.int64, count=n)  # type: ignore[arg-type]
        except TypeError:  # a None value (tombstone) somewhere in the batch
            sizes = np.fromiter(map(_size, payloads), dtype=np.int64, count=n)
        candidates: list[bytes] = payloads  # type: ignore[assignment]  # None is filtered next
        index = np.arange(n, dtype=np.int64)
        if (sizes > limit).any() or (sizes < 0).any():
            keep = (sizes <= limit) & (sizes >= 0)
            for i in np.flatnonzero(~keep).tolist():
                if sizes[i] < 0:
                    rejects.append(Reject(i, "invalid_json", "empty value (tombstone)"))
                else:
                    _hit(hits, "max_event_bytes")
                    rejects.append(
                        Reject(i, "too_large", f"{int(sizes[i])} bytes > max_event_bytes {limit}")
                    )
            index = index[keep]
            candidates = list(compress(payloads, keep.tolist()))  # type: ignore[arg-type]
        failed_pre = precheck(
            candidates,
            max_depth=spec.max_depth,
            max_fields=spec.max_fields,
            sizes=sizes if len(candidates) == n else None,
        )
        if failed_pre:
            keep = np.ones(len(candidates), dtype=np.bool_)
            for pos, reason, detail in failed_pre:
                keep[pos] = False
                if reason in _LIMIT_OF:
                    _hit(hits, _LIMIT_OF[reason])
                rejects.append(Reject(int(index[pos]), reason, detail))
            index = index[keep]
            candidates = list(compress(candidates, keep.tolist()))
        rows, failed = self._decode_rows(candidates)
        # Field-level problems found while decoding: (row position, field number, reason, detail)
        found: list[tuple[int, int, str, str]] = []
        lenient = False
        if failed:
            rejected = np.zeros(len(candidates), dtype=np.bool_)
            removed = 0
            for pos, exc in failed:  # ascending positions
                outcome = self._fallback(candidates[pos], exc)
                if isinstance(outcome, Reject):
                    rejected[pos] = True
                    removed += 1
                    if outcome.reason in _LIMIT_OF:
                        _hit(hits, _LIMIT_OF[outcome.reason])
                    rejects.append(Reject(int(index[pos]), outcome.reason, outcome.detail))
                    continue
                row, problems = outcome
                at = pos - removed  # its place among the accepted rows
                rows.insert(at, row)
                lenient = True
                found.extend((at, f, reason, detail) for f, reason, detail in problems)
            index = index[~rejected]
        # Event time and entity: problems there exclude the event.
        drop = np.zeros(len(rows), dtype=np.bool_)
        event_time = None
        if spec.event_time is not None:
            values = list(map(operator.attrgetter("event_time"), rows))
            event_time, bad_time = parse_event_times(values, self._time_scale)
            for pos in np.flatnonzero(bad_time).tolist():
                drop[pos] = True
                shown = _show(values[pos])
                rejects.append(
                    Reject(
                        int(index[pos]),
                        "invalid_time",
                        f"{spec.event_time}={shown} is not an epoch number or ISO-8601 time",
                    )
                )
        entity, new_entities, overflow = None, 0, 0
        if self.entities is not None:
            names = list(map(operator.attrgetter("entity"), rows))
            if drop.any():
                names = [None if d else v for v, d in zip(names, drop.tolist(), strict=True)]
            entity, new_entities, overflow = self.entities.encode(names)
            long = entity == _TOO_LONG
            if long.any():
                for pos in np.flatnonzero(long & ~drop).tolist():
                    if isinstance(names[pos], int):  # outside int64
                        rejects.append(
                            Reject(
                                int(index[pos]),
                                "number_too_large",
                                f"{spec.entity} is an integer outside int64",
                            )
                        )
                        continue
                    _hit(hits, "max_string_length")
                    rejects.append(
                        Reject(
                            int(index[pos]),
                            "string_too_long",
                            f"{spec.entity} has {len(names[pos])} characters "
                            f"> max_string_length {spec.max_string_length}",
                        )
                    )
                drop |= long
            unknown = int(np.count_nonzero((entity == _UNKNOWN) & ~drop))
            if unknown:
                _hit(hits, "max_entities", unknown)
        if drop.any():
            ok = ~drop
            rows = list(compress(rows, ok.tolist()))
            index = index[ok]
            if event_time is not None:
                event_time = event_time[ok]
            if entity is not None:
                entity = entity[ok]
            if found:
                shift: npt.NDArray[np.int64] = np.cumsum(drop) - drop
                found = [(p - int(shift[p]), f, r, d) for p, f, r, d in found if ok[p]]
        columns, valid = self._columns(rows, lenient, hits)
        violations = self._violations(rows, index, columns, valid, found)
        rejects.sort(key=lambda r: r.index)
        return Batch(
            stream=spec.name,
            n_input=n,
            rows=index,
            columns=columns,
            valid=valid,
            entity=entity,
            event_time=event_time,
            rejects=tuple(rejects),
            new_entities=new_entities,
            entity_overflow=overflow,
            violations=violations,
            limit_hits=tuple(sorted(hits.items())),
        )

    def _decode_rows(
        self, payloads: Sequence[bytes]
    ) -> tuple[list[Any], list[tuple[int, Exception]]]:
        rows: list[Any] = []
        failed: list[tuple[int, Exception]] = []
        it = iter(payloads)
        decode = self._decoder.decode
        while True:
            try:
                # list.extend keeps what it appended before an exception; the iterator
                # has moved past the failing payload, so the loop resumes after it.
                rows.extend(map(decode, it))
                return rows, failed
            except Exception as exc:  # ValidationError, DecodeError, RecursionError, ...
                failed.append((len(rows) + len(failed), exc))

    def _columns(
        self, rows: list[Any], lenient: bool, hits: dict[str, int]
    ) -> tuple[dict[str, npt.NDArray[Any]], dict[str, npt.NDArray[np.bool_]]]:
        n = len(rows)
        columns: dict[str, npt.NDArray[Any]] = {}
        valid: dict[str, npt.NDArray[np.bool_]] = {}
        for name, fs, getter in zip(self._names, self._specs, self._getters, strict=True):
            if fs.type in NUMERIC_TYPES:
                if fs.nullable or not fs.required or lenient:
                    # An excluded value of a lenient row is None here, like a null.
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
                vocab = self.vocabularies[name]
                codes, _, _ = vocab.encode(list(map(getter, rows)))
                columns[name], valid[name] = codes, codes >= _UNKNOWN
                if not vocab.frozen and fs.type is FieldType.CATEGORY:
                    full = int(np.count_nonzero(codes == _UNKNOWN))
                    if full:
                        _hit(hits, "max_categories", full)
                    long = int(np.count_nonzero(codes == _TOO_LONG))
                    if long:
                        _hit(hits, "max_string_length", long)
        return columns, valid

    def _violations(
        self,
        rows: list[Any],
        index: npt.NDArray[np.int64],
        columns: dict[str, npt.NDArray[Any]],
        valid: dict[str, npt.NDArray[np.bool_]],
        found: list[tuple[int, int, str, str]],
    ) -> tuple[Violation, ...]:
        """Every field-level problem of the accepted rows; masks the values invalid."""
        codes: dict[int, npt.NDArray[np.int8]] = {}  # field number -> REASONS index + 1
        details: dict[tuple[int, int], str] = {}
        for pos, f, reason, detail in found:
            codes.setdefault(f, np.zeros(len(rows), dtype=np.int8))[pos] = _CODE[reason]
            details[(pos, f)] = detail
        for f, name in enumerate(self._names):
            col = columns.get(name)
            if col is not None and col.dtype == np.int64:
                long = col == _TOO_LONG
                if long.any():
                    arr = codes.setdefault(f, np.zeros(len(rows), dtype=np.int8))
                    arr[long & (arr == 0)] = _CODE["string_too_long"]
        schema = self._check.field_reasons(columns, valid)
        for f, name in enumerate(self._names):
            if name in schema:
                arr = codes.setdefault(f, np.zeros(len(rows), dtype=np.int8))
                fresh = (schema[name] > 0) & (arr == 0)
                arr[fresh] = _SCHEMA_CODE[schema[name][fresh]]
        if not codes:
            return ()
        out: list[Violation] = []
        for f in sorted(codes):
            name, arr = self._names[f], codes[f]
            bad = arr > 0
            if name in valid:  # string fields have no column
                valid[name] = valid[name] & ~bad
                col = columns[name]
                if col.dtype == np.float64:
                    col[bad] = np.nan
            for pos in np.flatnonzero(bad).tolist():
                reason = REASONS[int(arr[pos]) - 1]
                detail = details.get((pos, f)) or self._detail(reason, f, rows[pos])
                out.append(Violation(int(index[pos]), name, reason, detail[:_MAX_DETAIL]))
        order = {name: f for f, name in enumerate(self._names)}
        out.sort(key=lambda v: (v.index, order[v.field]))
        return tuple(out)

    def _detail(self, code: str, f: int, row: Any) -> str:
        name = self._names[f]
        value = getattr(row, f"f{f}")
        if code == "out_of_range":
            rng = self._specs[f].range
            lo = "-inf" if rng is None else _fmt(rng[0])
            hi = "inf" if rng is None else _fmt(rng[1])
            return f"{name}={_fmt(value)} outside [{lo}, {hi}]"
        if code == "non_finite":
            return f"{name}={value} is not finite"
        if code == "string_too_long":
            return (
                f"{name} has {len(value)} characters "
                f"> max_string_length {self.spec.max_string_length}"
            )
        allowed = self.vocabularies[name].names()
        return f"{name}={str(value)[:80]!r} is not one of {allowed}"[:_MAX_DETAIL]

    # -- one bad row -------------------------------------------------------------------
    def _fallback(
        self, payload: bytes, exc: Exception
    ) -> Reject | tuple[Any, list[tuple[int, str, str]]]:
        """A row the typed decoder refused: a reject, or the row with its value problems."""
        if isinstance(exc, RecursionError):
            return Reject(-1, "too_deep", "nesting too deep for the parser")
        syntax = isinstance(exc, msgspec.DecodeError) and not isinstance(
            exc, msgspec.ValidationError
        )
        try:
            value, non_finite = lenient_parse(payload)
        except UnicodeDecodeError as err:
            return Reject(-1, "invalid_utf8", f"the payload is not UTF-8 (byte {err.start})")
        except RecursionError:
            return Reject(-1, "too_deep", "nesting too deep for the parser")
        except ValueError as err:
            if not payload.strip():
                return Reject(-1, "invalid_json", "empty payload")
            message = str(exc) if syntax else str(err)
            return Reject(-1, "invalid_json", message[:_MAX_DETAIL])
        except Exception as err:
            return Reject(-1, "undecodable", f"{type(err).__name__}: {err}"[:_MAX_DETAIL])
        if syntax and not non_finite:
            # Python's parser is laxer (lone surrogates, huge exponents): msgspec's verdict holds.
            return Reject(-1, "invalid_json", str(exc)[:_MAX_DETAIL])
        if not isinstance(value, dict):
            if isinstance(value, NonFinite | TooLarge):
                return Reject(-1, "invalid_json", f"{value.text} is not a JSON document")
            return Reject(-1, "not_an_object", f"Expected `object`, got `{_json_type(value)}`")
        spec = self.spec
        if spec.strict:
            for key in value:
                if key not in self._known:
                    return Reject(
                        -1, "unknown_field", f"Object contains unknown field `{key}`"[:_MAX_DETAIL]
                    )
        for key in self._required:
            if key not in value:
                return Reject(-1, "missing_field", f"Object missing required field `{key}`")
        kwargs: dict[str, Any] = {}
        if spec.entity is not None:
            ent = value[spec.entity]
            if isinstance(ent, bool) or not isinstance(ent, str | int):
                return Reject(
                    -1,
                    "wrong_type",
                    f"Expected `str | int`, got `{_json_type(ent)}` - at `$.{spec.entity}`",
                )
            if isinstance(ent, str) and not _unicode_ok(ent):
                return Reject(-1, "invalid_json", f"{spec.entity} is not valid Unicode")
            kwargs["entity"] = ent
        if spec.event_time is not None:
            when = value[spec.event_time]
            if not valid_time_value(when) or (isinstance(when, str) and not _unicode_ok(when)):
                return Reject(
                    -1,
                    "invalid_time",
                    f"{spec.event_time}={_show(when)} is not an epoch number or ISO-8601 time",
                )
            kwargs["event_time"] = when
        problems: list[tuple[int, str, str]] = []
        for f, (name, fs) in enumerate(zip(self._names, self._specs, strict=True)):
            checked, reason, detail = _check_value(name, fs, value.get(name))
            if reason is not None:
                problems.append((f, reason, detail))
            kwargs[f"f{f}"] = checked
        return self._struct(**kwargs), problems

    # -- a batch that failed as a whole --------------------------------------------------
    def _isolate(self, payloads: Sequence[bytes | None]) -> Batch:
        """Bisect until the rows that raise are alone; those are ``undecodable``."""
        n = len(payloads)
        if n == 1:
            try:
                return self._decode(payloads)
            except Exception as exc:
                detail = f"{type(exc).__name__}: {exc}"[:_MAX_DETAIL]
                return _empty(self, 1, (Reject(0, "undecodable", detail),))
        if n == 0:
            return _empty(self, 0, ())
        half = n // 2
        parts = []
        for lo, hi in ((0, half), (half, n)):
            try:
                parts.append((lo, self._decode(payloads[lo:hi])))
            except Exception:
                parts.append((lo, self._isolate(payloads[lo:hi])))
        return _concat(self, n, parts)


_CODE = {reason: i + 1 for i, reason in enumerate(REASONS)}
_SCHEMA_CODE = np.array([0] + [_CODE[r] for r in SCHEMA_REASONS[1:]], dtype=np.int8)


def _hit(hits: dict[str, int], name: str, count: int = 1) -> None:
    hits[name] = hits.get(name, 0) + count


def _size(payload: bytes | None) -> int:
    return -1 if payload is None else len(payload)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | TooLarge):
        return "int"
    if isinstance(value, float | NonFinite):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list):
        return "array"
    return "object"


def _unicode_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a \\ud800 escape
        return False
    return True


def _show(value: Any) -> str:
    if isinstance(value, NonFinite | TooLarge):
        return value.text
    return repr(value)[:80]


def _check_value(name: str, fs: FieldSpec, value: Any) -> tuple[Any, str | None, str]:
    """The value to keep (None when excluded), the field-level reason, a detail."""
    kind = type(value)
    if kind is float and fs.type is FieldType.FLOAT and not math.isinf(value):
        return value, None, ""  # the common case, first
    if kind is str and fs.type in (FieldType.CATEGORY, FieldType.STRING) and _unicode_ok(value):
        return value, None, ""
    if value is None:
        if fs.nullable or not fs.required:
            return None, None, ""
        return (
            None,
            "null_not_allowed",
            f"Expected `{_TYPE_NAMES[fs.type]}`, got `null` - at `$.{name}`",
        )
    wrong = f"Expected `{_TYPE_NAMES[fs.type]}`, got `{_json_type(value)}` - at `$.{name}`"
    if fs.type in NUMERIC_TYPES:
        if kind is float and math.isinf(value):  # a literal beyond float64 (1e999)
            return None, "number_too_large", f"{name} does not fit a float64"
        if isinstance(value, NonFinite):
            return None, "non_finite", f"{name}={value.text} is not finite"
        if isinstance(value, TooLarge):
            return None, "number_too_large", f"{name}={value.text} does not fit a float64"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None, "wrong_type", wrong
        if fs.type is FieldType.INT:
            if isinstance(value, float):
                return None, "wrong_type", wrong
            if not -(2**63) <= value < 2**63:
                return None, "number_too_large", f"{name}={str(value)[:20]}... is outside int64"
            return value, None, ""
        try:
            return float(value), None, ""
        except OverflowError:
            return None, "number_too_large", f"{name}={str(value)[:20]}... does not fit a float64"
    if fs.type is FieldType.BOOL:
        return (value, None, "") if isinstance(value, bool) else (None, "wrong_type", wrong)
    if not isinstance(value, str):
        return None, "wrong_type", wrong
    if not _unicode_ok(value):
        return None, "wrong_type", f"{name} is not valid Unicode"
    return value, None, ""


def _empty(decoder: StreamDecoder, n: int, rejects: tuple[Reject, ...]) -> Batch:
    columns: dict[str, npt.NDArray[Any]] = {}
    valid: dict[str, npt.NDArray[np.bool_]] = {}
    for name, fs in zip(decoder._names, decoder._specs, strict=True):
        if fs.type in NUMERIC_TYPES:
            columns[name] = np.empty(0, dtype=np.float64)
        elif fs.type in (FieldType.CATEGORY, FieldType.BOOL):
            columns[name] = np.empty(0, dtype=np.int64)
        else:
            continue
        valid[name] = np.empty(0, dtype=np.bool_)
    spec = decoder.spec
    return Batch(
        stream=spec.name,
        n_input=n,
        rows=np.empty(0, dtype=np.int64),
        columns=columns,
        valid=valid,
        entity=np.empty(0, dtype=np.int64) if spec.entity is not None else None,
        event_time=np.empty(0, dtype=np.float64) if spec.event_time is not None else None,
        rejects=rejects,
    )


def _concat(decoder: StreamDecoder, n: int, parts: list[tuple[int, Batch]]) -> Batch:
    """One batch from consecutive parts (offset of each part in the input, its batch)."""
    first = parts[0][1]
    hits: dict[str, int] = {}
    for _, b in parts:
        for name, count in b.limit_hits:
            _hit(hits, name, count)

    def cat(arrays: list[npt.NDArray[Any]]) -> npt.NDArray[Any]:
        return np.concatenate(arrays)

    return Batch(
        stream=first.stream,
        n_input=n,
        rows=cat([b.rows + off for off, b in parts]),
        columns={k: cat([b.columns[k] for _, b in parts]) for k in first.columns},
        valid={k: cat([b.valid[k] for _, b in parts]) for k in first.valid},
        entity=None if first.entity is None else cat([b.entity for _, b in parts]),  # type: ignore[misc]
        event_time=None if first.event_time is None else cat([b.event_time for _, b in parts]),  # type: ignore[misc]
        rejects=tuple(
            Reject(r.index + off, r.reason, r.detail) for off, b in parts for r in b.rejects
        ),
        new_entities=sum(b.new_entities for _, b in parts),
        entity_overflow=sum(b.entity_overflow for _, b in parts),
        violations=tuple(
            Violation(v.index + off, v.field, v.reason, v.detail)
            for off, b in parts
            for v in b.violations
        ),
        limit_hits=tuple(sorted(hits.items())),
    )


def _fmt(value: float) -> str:
    return f"{value:.6g}"
