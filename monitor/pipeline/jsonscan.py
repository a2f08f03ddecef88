"""A compiled, schema-specialised JSON batch decoder with the msgspec decoder as exact fallback.

One numba kernel scans the concatenated payloads of a batch once (one ``uint8``
buffer plus offsets, built with ``b"".join`` and ``np.frombuffer``) and fills the
declared columns directly: float64 values of numeric fields, int64 codes of bool
and category fields, entity codes and event times. No Python object is made per
event.

Exactness comes first. The kernel accepts a row only when it is sure of every
byte of it: a flat object of declared keys (each at most once; unknown keys only
on lenient streams, with scalar values), the four JSON whitespace bytes, numbers
that follow the JSON grammar and are either integer literals within int64 (one
correctly rounded conversion, as msgspec's and Python's ``float(int)``) or lie on
Clinger's fast path (a decimal mantissa ``w <= 2**53`` and a power of ten
``|e| <= 22``, so ``float(w)`` and ``10.0**|e|`` are exact and the one IEEE
multiply or divide that joins them is correctly rounded), strings of printable
ASCII without escapes, category and entity values already in the vocabulary, and
values of the declared JSON type. Every other row goes, as it is, to
``StreamDecoder.decode_msgspec`` (the existing decoder) and the two results are
merged by row index, so the ``Batch`` equals the msgspec decoder's output: same
columns (bit for bit), masks, codes, vocabulary order, event times, rows, and
rejects with their reasons and details. Rows that fail the schema check (ranges,
categories) are also decoded by the fallback, so the reject path and its semantics
exist once.

Vocabularies stay owned by the ``StreamDecoder``: the kernel reads a mirror of them
(a hash table of UTF-8 bytes to codes, refreshed when a vocabulary grows) and never
adds a value itself. A row with a value outside the mirror falls back, so new codes
are handed out in exactly the order the msgspec decoder would use.

>>> from monitor.config.schema import StreamSpec
>>> from monitor.pipeline.decode import StreamDecoder
>>> spec = StreamSpec.model_validate({"name": "s", "topic": "t",
...     "fields": {"x": {"type": "float"}, "k": {"type": "category", "categories": ["a"]}}})
>>> compiled = CompiledDecoder(StreamDecoder(spec))
>>> batch = compiled.decode([b'{"x": 0.1, "k": "a"}', b'{"x": 1e400, "k": "a"}', b'{"k": "a"}'])
>>> batch.rows.tolist(), batch.columns["k"].tolist(), batch.valid["x"].tolist()
([0, 1], [0, 0], [True, False])
>>> [(r.index, r.reason) for r in batch.rejects], [(v.index, v.reason) for v in batch.violations]
([(2, 'missing_field')], [(1, 'number_too_large')])
>>> batch.fallback_rows
2
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from itertools import islice
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from numba import njit

from monitor.config.schema import NUMERIC_TYPES, FieldSpec, FieldType, StreamSpec

if TYPE_CHECKING:
    from monitor.pipeline.decode import Batch, StreamDecoder, _Vocabulary

__all__ = ["CAUSES", "CompiledDecoder", "compiled_supported", "scan_batch"]

# Why a row left the compiled path; index 0 means it did not.
CAUSES = (
    "",
    "tombstone_or_too_large",
    "syntax",  # not a flat object of the JSON grammar, unusual whitespace, trailing bytes
    "number",  # a number off the exact fast path
    "string",  # an escape, a control or non-ASCII byte
    "new_value",  # a category or entity value not yet in the vocabulary
    "type",  # null where not allowed, another JSON type, a nested value
    "keys",  # missing, duplicate or (strict) unknown key, more than max_fields
    "schema",  # failed the range or category check
    "unprobed",  # the whole batch went to msgspec: recent batches almost all fell back
)
_PRE, _SYNTAX, _NUMBER, _STRING, _NEW, _TYPE, _KEYS, _SCHEMA, _UNPROBED = range(1, 10)
# A batch of at least _PROBE_MIN rows of which _PROBE_SHARE or more fell back for the
# shape of their bytes (not for values new to a vocabulary, which the next batch knows)
# sends the next _PROBE_EVERY - 1 batches to msgspec whole: a producer whose payloads
# defeat the kernel then costs msgspec alone plus one scan in _PROBE_EVERY.
_PROBE_MIN, _PROBE_SHARE, _PROBE_EVERY = 100, 0.9, 16

# Key kinds of the kernel's key table.
_K_FLOAT, _K_INT, _K_BOOL, _K_CATEGORY, _K_STRING, _K_ENTITY, _K_TIME = range(7)
_KIND = {
    FieldType.FLOAT: _K_FLOAT,
    FieldType.INT: _K_INT,
    FieldType.BOOL: _K_BOOL,
    FieldType.CATEGORY: _K_CATEGORY,
    FieldType.STRING: _K_STRING,
}
# Exact powers of ten: every 10**k for k <= 22 is a double.
_POW10 = np.array([float(10**k) for k in range(23)], dtype=np.float64)
_TWO53 = 2**53
_INT64_TENTH = (2**63 - 1) // 10
# Settings whose effect the kernel knows; any other setting away from its default
# turns the compiled path off for the stream (the msgspec path decodes everything).
_KNOWN_FIELD_SETTINGS = frozenset(
    {"type", "required", "nullable", "range", "categories", "detectors"}
)
_KNOWN_STREAM_SETTINGS = frozenset(
    {
        "name",
        "topic",
        "topics",
        "format",
        "entity",
        "event_time",
        "event_time_unit",
        "strict",
        "max_event_bytes",
        "max_entities",
        "max_depth",  # a flat object has depth 1, and max_depth >= 1
        "max_fields",  # the kernel counts the members of each row
        "max_string_length",  # only new values are checked, and they fall back
        "max_categories",  # the vocabulary's bound; new values fall back
        "fields",
        "baseline",
        "window",
        "model",
        "fleet",
        "decoder",
    }
)


# ---------------------------------------------------------------- kernels


@njit(cache=True, nogil=True)
def _hash(buf: Any, a: int, b: int, tid: int) -> Any:
    """FNV-1a of ``buf[a:b]`` salted with a table id."""
    h = np.uint64(14695981039346656037) ^ np.uint64(tid)
    for i in range(a, b):
        h = (h ^ np.uint64(buf[i])) * np.uint64(1099511628211)
    return h


@njit(cache=True, nogil=True)
def _int_hash(key: int) -> Any:
    h = np.uint64(key) * np.uint64(11400714819323198485)
    return h ^ (h >> np.uint64(29))


@njit(cache=True, nogil=True)
def _insert_bytes(
    slots: Any, tbuf: Any, toff: Any, ttid: Any, first: int, stop: int
) -> None:  # pragma: no cover - compiled
    """Put entries ``first..stop-1`` of a byte table into its open-addressing slots."""
    mask = np.uint64(len(slots) - 1)
    for e in range(first, stop):
        s = _hash(tbuf, toff[e], toff[e + 1], ttid[e]) & mask
        while slots[s] >= 0:
            s = (s + np.uint64(1)) & mask
        slots[s] = e


@njit(cache=True, nogil=True)
def _insert_ints(slots: Any, ikey: Any, first: int, stop: int) -> None:  # pragma: no cover
    """Put entries ``first..stop-1`` of an int table into its open-addressing slots."""
    mask = np.uint64(len(slots) - 1)
    for e in range(first, stop):
        s = _int_hash(ikey[e]) & mask
        while slots[s] >= 0:
            s = (s + np.uint64(1)) & mask
        slots[s] = e


@njit(cache=True, nogil=True)
def _find_bytes(
    buf: Any, a: int, b: int, tid: int, slots: Any, tbuf: Any, toff: Any, ttid: Any
) -> int:  # pragma: no cover - compiled
    """The entry holding ``buf[a:b]`` in table ``tid``, or -1."""
    mask = np.uint64(len(slots) - 1)
    s = _hash(buf, a, b, tid) & mask
    n = b - a
    while True:
        e = slots[s]
        if e < 0:
            return -1
        if ttid[e] == tid and toff[e + 1] - toff[e] == n:
            o = toff[e]
            same = True
            for i in range(n):
                if tbuf[o + i] != buf[a + i]:
                    same = False
                    break
            if same:
                return int(e)
        s = (s + np.uint64(1)) & mask


@njit(cache=True, nogil=True)
def _find_int(key: int, slots: Any, ikey: Any) -> int:  # pragma: no cover - compiled
    mask = np.uint64(len(slots) - 1)
    s = _int_hash(key) & mask
    while True:
        e = slots[s]
        if e < 0:
            return -1
        if ikey[e] == key:
            return int(e)
        s = (s + np.uint64(1)) & mask


@njit(cache=True, nogil=True)
def _skip_ws(buf: Any, p: int, end: int) -> int:  # pragma: no cover - compiled
    """Past the JSON whitespace at ``p``. Callers test ``buf[p] <= 32`` first: most
    payloads have none, and a call per token cost a fifth of the scan."""
    while p < end:
        c = buf[p]
        if c == 32 or c == 10 or c == 13 or c == 9:
            p += 1
        else:
            break
    return p


@njit(cache=True, nogil=True, inline="always")
def _number(buf: Any, p: int, end: int, pow10: Any) -> Any:  # pragma: no cover - compiled
    """Parse a JSON number at ``p``.

    Returns ``(p_after, status, value, integral, signed_mantissa)``: status 0 is an
    exact value on the fast path, 1 valid JSON off the fast path, 2 not a number.
    """
    limit = np.int64(100_000_000_000_000_000)  # w < 1e17 can take one more digit
    neg = False
    if p < end and buf[p] == 45:
        neg = True
        p += 1
    if p >= end:
        return p, 2, 0.0, False, np.int64(0)
    c = buf[p]
    w = np.int64(0)
    big = False
    if c == 48:
        p += 1
    elif 49 <= c <= 57:
        while p < end and 48 <= buf[p] <= 57:
            d = np.int64(buf[p] - 48)
            if w < _INT64_TENTH or (w == _INT64_TENTH and d <= 7):  # stays <= 2**63 - 1
                w = w * 10 + d
            else:
                big = True
            p += 1
    else:
        return p, 2, 0.0, False, np.int64(0)
    integral = True
    frac = 0
    if p < end and buf[p] == 46:
        integral = False
        p += 1
        start = p
        while p < end and 48 <= buf[p] <= 57:
            if w < limit:
                w = w * 10 + np.int64(buf[p] - 48)
                frac += 1
            else:
                big = True
            p += 1
        if p == start:
            return p, 2, 0.0, False, np.int64(0)
    exp = 0
    if p < end and (buf[p] == 101 or buf[p] == 69):
        integral = False
        p += 1
        eneg = False
        if p < end and (buf[p] == 43 or buf[p] == 45):
            eneg = buf[p] == 45
            p += 1
        start = p
        while p < end and 48 <= buf[p] <= 57:
            if exp < 100_000:
                exp = exp * 10 + int(buf[p] - 48)
            p += 1
        if p == start:
            return p, 2, 0.0, False, np.int64(0)
        if eneg:
            exp = -exp
    e10 = exp - frac
    # -0 is a float -0.0 but an integer 0 (then 0.0): let the fallback say which.
    if big or (neg and w == 0):
        return p, 1, 0.0, integral, np.int64(0)
    if integral:  # an int64 literal: one correctly rounded conversion, as float(int)
        v = np.float64(w)
        if neg:
            return p, 0, -v, True, -w
        return p, 0, v, True, w
    if w > _TWO53 or e10 < -22 or e10 > 22:
        return p, 1, 0.0, integral, np.int64(0)
    v = np.float64(w)
    v = v * pow10[e10] if e10 >= 0 else v / pow10[-e10]
    if neg:
        return p, 0, -v, integral, -w
    return p, 0, v, integral, w


@njit(cache=True, nogil=True, inline="always")
def _string_end(buf: Any, p: int, end: int) -> int:  # pragma: no cover - compiled
    """Index of the closing quote of a plain string starting at ``p`` (after the
    opening quote), or -1 at an escape, a control or non-ASCII byte, or the end."""
    while p < end:
        c = buf[p]
        if c == 34:
            return p
        if c == 92 or c < 32 or c >= 128:
            return -1
        p += 1
    return -1


@njit(cache=True, nogil=True, inline="always")
def _literal(buf: Any, p: int, end: int) -> int:  # pragma: no cover - compiled
    """0 null, 1 true, 2 false (each followed by its length), -1 none of them."""
    if p + 4 <= end:
        c0, c1, c2, c3 = buf[p], buf[p + 1], buf[p + 2], buf[p + 3]
        if c0 == 110 and c1 == 117 and c2 == 108 and c3 == 108:
            return 0
        if c0 == 116 and c1 == 114 and c2 == 117 and c3 == 101:
            return 1
        if (
            p + 5 <= end
            and c0 == 102
            and c1 == 97
            and c2 == 108
            and c3 == 115
            and buf[p + 4] == 101
        ):
            return 2
    return -1


@njit(cache=True, nogil=True)
def scan_batch(
    buf: Any,
    starts: Any,
    cause: Any,
    kind: Any,
    null_ok: Any,
    required: Any,
    plain: Any,
    column: Any,
    table: Any,
    kbuf: Any,
    koff: Any,
    kslots: Any,
    kid: Any,
    tbuf: Any,
    toff: Any,
    ttid: Any,
    tval: Any,
    tslots: Any,
    ikey: Any,
    ival: Any,
    islots: Any,
    strict: bool,
    max_fields: int,
    pow10: Any,
    fout: Any,
    iout: Any,
    entity: Any,
    etime: Any,
) -> None:  # pragma: no cover - compiled
    """Scan payload ``r`` = ``buf[starts[r]:starts[r+1]]`` for every row whose
    ``cause`` is 0 on entry; leave ``cause`` 0 where the row was decoded exactly,
    else set the reason it must go to the fallback (index into ``CAUSES``).

    Keys ``0..K-1`` have a ``kind`` (``_K_*``), ``null_ok`` and ``required`` flags,
    ``plain`` (the name is printable ASCII without quote or backslash, so its bytes
    followed by a quote can only be that key), an output ``column`` (row of ``fout``
    for numbers, of ``iout`` for bool and category codes) and a vocabulary ``table``
    id. ``kbuf``/``koff``/``kslots``/``kid`` is the hash table of key names,
    ``tbuf``/``toff``/``ttid``/``tval``/``tslots`` the vocabularies' string values
    and codes, ``ikey``/``ival``/``islots`` the integer entity ids. A row of more than
    ``max_fields`` members falls back. Missing optional
    numbers become NaN, missing optional codes -2 (null).
    """
    n = len(starts) - 1
    K = len(kind)
    seen = np.full(K, -1, dtype=np.int64)
    after = np.empty(K + 1, dtype=np.int64)  # the key that followed each key last time
    for k in range(K):
        after[k] = k + 1 if k + 1 < K else 0
    after[K] = 0
    nan = np.float64(np.nan)
    for r in range(n):
        if cause[r] != 0:
            continue
        p = starts[r]
        end = starts[r + 1]
        p = p
        if p < end and buf[p] <= 32:
            p = _skip_ws(buf, p, end)
        if p >= end or buf[p] != 123:
            cause[r] = _SYNTAX
            continue
        p = p + 1
        if p < end and buf[p] <= 32:
            p = _skip_ws(buf, p, end)
        matched = 0
        members = 0
        bad = 0
        prev = K
        if p < end and buf[p] == 125:
            p += 1
        else:
            while True:
                if p >= end or buf[p] != 34:
                    bad = _SYNTAX
                    break
                ka = p + 1
                # The key: first the one that followed the previous key last time (its
                # bytes then a quote; only for names of plain printable ASCII).
                k = after[prev]
                o = koff[k]
                kb = ka + koff[k + 1] - o
                hit = plain[k] and kb < end and buf[kb] == 34
                if hit:
                    for i in range(kb - ka):
                        if kbuf[o + i] != buf[ka + i]:
                            hit = False
                            break
                if not hit:
                    kb = _string_end(buf, ka, end)
                    if kb < 0:
                        bad = _STRING
                        break
                    e = _find_bytes(buf, ka, kb, 0, kslots, kbuf, koff, kid)
                    k = e if e >= 0 else -1
                members += 1
                if members > max_fields:
                    bad = _KEYS
                    break
                p = kb + 1
                if p < end and buf[p] <= 32:
                    p = _skip_ws(buf, p, end)
                if p >= end or buf[p] != 58:
                    bad = _SYNTAX
                    break
                p = p + 1
                if p < end and buf[p] <= 32:
                    p = _skip_ws(buf, p, end)
                if p >= end:
                    bad = _SYNTAX
                    break
                if k < 0:
                    if strict:
                        bad = _KEYS
                        break
                    # An unknown key on a lenient stream: skip a scalar value.
                    c = buf[p]
                    if c == 34:
                        q = _string_end(buf, p + 1, end)
                        if q < 0:
                            bad = _STRING
                            break
                        p = q + 1
                    elif c == 45 or 48 <= c <= 57:
                        p, status, _v, _i, _w = _number(buf, p, end, pow10)
                        if status == 2:
                            bad = _SYNTAX
                            break
                    else:
                        lit = _literal(buf, p, end)
                        if lit < 0:
                            bad = _TYPE
                            break
                        p += 5 if lit == 2 else 4
                else:
                    if seen[k] == r:
                        bad = _KEYS
                        break
                    seen[k] = r
                    matched += 1
                    after[prev] = k
                    prev = k
                    kd = kind[k]
                    col = column[k]
                    c = buf[p]
                    if c == 110:  # null
                        if _literal(buf, p, end) != 0 or not null_ok[k]:
                            bad = _TYPE
                            break
                        p += 4
                        if kd in (_K_FLOAT, _K_INT):
                            fout[col, r] = nan
                        elif kd in (_K_BOOL, _K_CATEGORY):
                            iout[col, r] = -2
                    elif kd in (_K_FLOAT, _K_INT, _K_TIME):
                        if not (c == 45 or 48 <= c <= 57):
                            bad = _TYPE
                            break
                        p, status, v, integral, _w = _number(buf, p, end, pow10)
                        if status != 0:
                            bad = _NUMBER if status == 1 else _SYNTAX
                            break
                        if kd == _K_INT and not integral:
                            bad = _TYPE
                            break
                        if kd == _K_TIME:
                            etime[r] = v
                        else:
                            fout[col, r] = v
                    elif kd in (_K_CATEGORY, _K_STRING):
                        if c != 34:
                            bad = _TYPE
                            break
                        q = _string_end(buf, p + 1, end)
                        if q < 0:
                            bad = _STRING
                            break
                        if kd == _K_CATEGORY:
                            e = _find_bytes(buf, p + 1, q, table[k], tslots, tbuf, toff, ttid)
                            if e < 0:
                                bad = _NEW
                                break
                            iout[col, r] = tval[e]
                        p = q + 1
                    elif kd == _K_BOOL:
                        lit = _literal(buf, p, end)
                        if lit == 1:
                            iout[col, r] = 1
                            p += 4
                        elif lit == 2:
                            iout[col, r] = 0
                            p += 5
                        else:
                            bad = _TYPE
                            break
                    else:  # entity: a string or an integer
                        if c == 34:
                            q = _string_end(buf, p + 1, end)
                            if q < 0:
                                bad = _STRING
                                break
                            e = _find_bytes(buf, p + 1, q, table[k], tslots, tbuf, toff, ttid)
                            if e < 0:
                                bad = _NEW
                                break
                            entity[r] = tval[e]
                            p = q + 1
                        elif c == 45 or 48 <= c <= 57:
                            p, status, _v, integral, w = _number(buf, p, end, pow10)
                            if status != 0:
                                bad = _NUMBER if status == 1 else _SYNTAX
                                break
                            if not integral:
                                bad = _TYPE
                                break
                            e = _find_int(w, islots, ikey)
                            if e < 0:
                                bad = _NEW
                                break
                            entity[r] = ival[e]
                        else:
                            bad = _TYPE
                            break
                p = p
                if p < end and buf[p] <= 32:
                    p = _skip_ws(buf, p, end)
                if p >= end:
                    bad = _SYNTAX
                    break
                if buf[p] == 44:
                    p = p + 1
                    if p < end and buf[p] <= 32:
                        p = _skip_ws(buf, p, end)
                    continue
                if buf[p] == 125:
                    p += 1
                    break
                bad = _SYNTAX
                break
        if bad == 0 and _skip_ws(buf, p, end) != end:
            bad = _SYNTAX
        if bad == 0 and matched != K:
            for k in range(K):
                if seen[k] == r:
                    continue
                if required[k]:
                    bad = _KEYS
                    break
                kd = kind[k]
                if kd in (_K_FLOAT, _K_INT):
                    fout[column[k], r] = nan
                elif kd in (_K_BOOL, _K_CATEGORY):
                    iout[column[k], r] = -2
        cause[r] = bad


# ---------------------------------------------------------------- vocabulary mirror


def _pow2_at_least(n: int) -> int:
    size = 16
    while size < n:
        size *= 2
    return size


class _ByteTable:
    """UTF-8 byte strings (with a table id) -> int64 value, an open-addressing hash
    table in numpy arrays that the kernels read; entries are only ever appended."""

    def __init__(self) -> None:
        self.buf = np.zeros(0, dtype=np.uint8)
        self.off = np.zeros(1, dtype=np.int64)
        self.tid = np.zeros(0, dtype=np.int64)
        self.val = np.zeros(0, dtype=np.int64)
        self.slots = np.full(16, -1, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.tid)

    def add(self, tids: Sequence[int], keys: Sequence[bytes], values: Sequence[int]) -> None:
        if not keys:
            return
        first = len(self)
        lengths = np.fromiter(map(len, keys), dtype=np.int64, count=len(keys))
        self.buf = np.concatenate([self.buf, np.frombuffer(b"".join(keys), dtype=np.uint8)])
        self.off = np.concatenate([self.off, self.off[-1] + np.cumsum(lengths)])
        self.tid = np.concatenate([self.tid, np.asarray(tids, dtype=np.int64)])
        self.val = np.concatenate([self.val, np.asarray(values, dtype=np.int64)])
        if 2 * len(self) > len(self.slots):
            self.slots = np.full(_pow2_at_least(4 * len(self)), -1, dtype=np.int64)
            first = 0
        _insert_bytes(self.slots, self.buf, self.off, self.tid, first, len(self))


class _IntTable:
    """int64 keys -> int64 values, an open-addressing hash table in numpy arrays."""

    def __init__(self) -> None:
        self.key = np.zeros(0, dtype=np.int64)
        self.val = np.zeros(0, dtype=np.int64)
        self.slots = np.full(16, -1, dtype=np.int64)

    def add(self, keys: Sequence[int], values: Sequence[int]) -> None:
        if not keys:
            return
        first = len(self.key)
        self.key = np.concatenate([self.key, np.asarray(keys, dtype=np.int64)])
        self.val = np.concatenate([self.val, np.asarray(values, dtype=np.int64)])
        if 2 * len(self.key) > len(self.slots):
            self.slots = np.full(_pow2_at_least(4 * len(self.key)), -1, dtype=np.int64)
            first = 0
        _insert_ints(self.slots, self.key, first, len(self.key))


@dataclasses.dataclass
class _Mirror:
    """How much of one vocabulary the tables hold."""

    vocab: _Vocabulary
    codes: dict[Any, int]
    synced: int = 0


class _VocabularyTables:
    """The string and integer values of the decoder's vocabularies, as kernel tables.

    Vocabularies only grow by appending (a dict keeps insertion order), so a refresh
    copies the entries past the last one seen; a vocabulary replaced or shrunk
    (e.g. restored from a checkpoint) rebuilds the tables.
    """

    def __init__(self, sources: Sequence[tuple[int, _Vocabulary]]) -> None:
        self._sources = list(sources)
        self._reset()

    def _reset(self) -> None:
        self.strings = _ByteTable()
        self.ints = _IntTable()
        self._mirrors = {tid: _Mirror(v, v.codes) for tid, v in self._sources}

    def refresh(self, sources: Sequence[tuple[int, _Vocabulary]]) -> None:
        """Bring the tables up to date with ``sources`` (table id, vocabulary)."""
        for tid, vocab in sources:
            m = self._mirrors.get(tid)
            if m is None or m.vocab is not vocab or m.codes is not vocab.codes:
                self._sources = list(sources)
                self._reset()
                break
            if len(vocab.codes) < m.synced:
                self._reset()
                break
        tids: list[int] = []
        keys: list[bytes] = []
        values: list[int] = []
        int_keys: list[int] = []
        int_values: list[int] = []
        for tid, m in self._mirrors.items():
            size = len(m.codes)
            if size == m.synced:
                continue
            for key, code in islice(m.codes.items(), m.synced, None):  # the new values only
                if code < 0:
                    continue
                if type(key) is str:
                    tids.append(tid)
                    keys.append(key.encode("utf-8", "surrogatepass"))
                    values.append(code)
                elif type(key) is int and -(2**63) < key < 2**63:
                    int_keys.append(key)
                    int_values.append(code)
            m.synced = size
        self.strings.add(tids, keys, values)
        self.ints.add(int_keys, int_values)


# ---------------------------------------------------------------- the decoder


def compiled_supported(spec: StreamSpec) -> bool:
    """Whether the kernel knows the meaning of every setting of ``spec``.

    A setting it does not know (added to the configuration after the kernel was
    written) must be at its default, or the stream is decoded by msgspec alone.
    """
    if spec.format != "json":
        return False
    for name, info in type(spec).model_fields.items():
        if name not in _KNOWN_STREAM_SETTINGS and getattr(spec, name) != info.default:
            return False
    for fs in spec.fields.values():
        if fs.type not in _KIND:
            return False
        for name, info in FieldSpec.model_fields.items():
            if name not in _KNOWN_FIELD_SETTINGS and getattr(fs, name) != info.default:
                return False
    keys = [*spec.fields, spec.entity, spec.event_time]
    named = [k for k in keys if k is not None]
    return len(set(named)) == len(named)


class CompiledDecoder:
    """Decodes batches for a ``StreamDecoder`` with the compiled kernel; the rows it
    is not sure of are decoded by ``StreamDecoder.decode_msgspec`` and merged.

    It shares the ``StreamDecoder``'s vocabularies and schema check, so codes and
    rejects are the msgspec decoder's own. ``last_causes`` holds, per input row of
    the last batch, why it fell back (an index into ``CAUSES``, 0 = compiled).
    """

    def __init__(self, base: StreamDecoder) -> None:
        spec = base.spec
        self.base = base
        self.spec = spec
        names = [*spec.fields]
        kinds: list[int] = []
        null_ok: list[bool] = []
        required: list[bool] = []
        column: list[int] = []
        table: list[int] = []
        self._float_names: list[str] = []
        self._code_names: list[str] = []
        self._table_of: dict[str, int] = {}
        self._order: list[tuple[str, bool, int]] = []  # (name, is numeric, row in fout/iout)
        for name, fs in spec.fields.items():
            kind = _KIND[fs.type]
            kinds.append(kind)
            null_ok.append(fs.nullable or not fs.required)
            required.append(fs.required)
            tid = 0
            if fs.type in NUMERIC_TYPES:
                col = len(self._float_names)
                self._float_names.append(name)
                self._order.append((name, True, col))
            elif fs.type in (FieldType.CATEGORY, FieldType.BOOL):
                col = len(self._code_names)
                self._code_names.append(name)
                self._order.append((name, False, col))
                if fs.type is FieldType.CATEGORY:
                    tid = len(self._table_of) + 1
                    self._table_of[name] = tid
            else:
                col = 0
            column.append(col)
            table.append(tid)
        self._entity_tid = len(self._table_of) + 1
        for key, kind in ((spec.entity, _K_ENTITY), (spec.event_time, _K_TIME)):
            if key is not None:
                names.append(key)
                kinds.append(kind)
                null_ok.append(False)
                required.append(True)
                column.append(0)
                table.append(self._entity_tid if kind == _K_ENTITY else 0)
        self._kind = np.asarray(kinds, dtype=np.int64)
        self._null_ok = np.asarray(null_ok, dtype=np.bool_)
        self._required = np.asarray(required, dtype=np.bool_)
        self._column = np.asarray(column, dtype=np.int64)
        self._table = np.asarray(table, dtype=np.int64)
        self._plain = np.array(
            [all(0x20 <= ord(ch) < 0x7F and ch not in '"\\' for ch in n) for n in names],
            dtype=np.bool_,
        )
        self._keys = _ByteTable()
        encoded = [n.encode("utf-8", "surrogatepass") for n in names]
        self._keys.add([0] * len(names), encoded, list(range(len(names))))
        self._vocab = _VocabularyTables(self._sources())
        self._time_scale = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}[spec.event_time_unit]
        self.last_causes = np.zeros(0, dtype=np.int8)
        self._unprobed = 0  # batches left to send to msgspec whole

    def _sources(self) -> list[tuple[int, _Vocabulary]]:
        out = [(tid, self.base.vocabularies[name]) for name, tid in self._table_of.items()]
        if self.base.entities is not None:
            out.append((self._entity_tid, self.base.entities))
        return out

    def decode(self, payloads: Sequence[bytes | None]) -> Batch:
        """Decode one batch; identical to ``StreamDecoder.decode_msgspec(payloads)``
        except that ``fallback_rows`` counts the rows that went through msgspec."""
        from monitor.pipeline.decode import Batch, Reject, Violation

        n = len(payloads)
        if self._unprobed > 0:
            self._unprobed -= 1
            self.last_causes = np.full(n, _UNPROBED, dtype=np.int8)
            return dataclasses.replace(self.base.decode_msgspec(payloads), fallback_rows=n)
        cause = np.zeros(n, dtype=np.int8)
        try:
            sizes = np.fromiter(map(len, payloads), dtype=np.int64, count=n)  # type: ignore[arg-type]
            joined = b"".join(payloads)  # type: ignore[arg-type]
        except TypeError:  # a None value (tombstone) somewhere in the batch
            present = [p if p is not None else b"" for p in payloads]
            sizes = np.fromiter(map(len, present), dtype=np.int64, count=n)
            cause[[i for i, p in enumerate(payloads) if p is None]] = _PRE
            joined = b"".join(present)
        cause[sizes > self.spec.max_event_bytes] = _PRE
        starts = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(sizes, out=starts[1:])
        buf = np.frombuffer(joined, dtype=np.uint8)
        self._vocab.refresh(self._sources())
        fout = np.empty((len(self._float_names), n), dtype=np.float64)
        iout = np.empty((len(self._code_names), n), dtype=np.int64)
        entity = np.empty(n, dtype=np.int64)
        etime = np.empty(n, dtype=np.float64)
        strings, ints = self._vocab.strings, self._vocab.ints
        scan_batch(
            buf,
            starts,
            cause,
            self._kind,
            self._null_ok,
            self._required,
            self._plain,
            self._column,
            self._table,
            self._keys.buf,
            self._keys.off,
            self._keys.slots,
            self._keys.tid,
            strings.buf,
            strings.off,
            strings.tid,
            strings.val,
            strings.slots,
            ints.key,
            ints.val,
            ints.slots,
            self.spec.strict,
            self.spec.max_fields,
            _POW10,
            fout,
            iout,
            entity,
            etime,
        )
        ok = cause == 0
        all_ok = bool(ok.all())
        if not all_ok:
            fout, iout, entity, etime = fout[:, ok], iout[:, ok], entity[ok], etime[ok]
        columns, valid = self._columns(fout, iout)
        # The schema check's rejects and their details are the fallback's to produce.
        reason, _ = self.base._check.check(columns, valid)
        if reason.any():
            kept = np.flatnonzero(ok)
            cause[kept[reason != 0]] = _SCHEMA
            passed = reason == 0
            ok = cause == 0
            all_ok = False
            columns = {k: v[passed] for k, v in columns.items()}
            valid = {k: v[passed] for k, v in valid.items()}
            entity, etime = entity[passed], etime[passed]
        self.last_causes = cause
        rows = np.flatnonzero(ok).astype(np.int64) if not all_ok else np.arange(n, dtype=np.int64)
        has_entity = self.spec.entity is not None
        has_time = self.spec.event_time is not None
        if has_time and self._time_scale != 1.0:
            etime *= self._time_scale
        if all_ok:
            return Batch(
                stream=self.spec.name,
                n_input=n,
                rows=rows,
                columns=columns,
                valid=valid,
                entity=entity if has_entity else None,
                event_time=etime if has_time else None,
            )
        back = np.flatnonzero(~ok)
        if n >= _PROBE_MIN and len(back) >= _PROBE_SHARE * n:
            per_cause = np.bincount(cause, minlength=len(CAUSES))
            if len(back) - per_cause[_NEW] - per_cause[_PRE] >= _PROBE_SHARE * n:
                self._unprobed = _PROBE_EVERY - 1
        if len(back) == n:
            return dataclasses.replace(self.base.decode_msgspec(payloads), fallback_rows=n)
        sub = self.base.decode_msgspec(list(map(payloads.__getitem__, back.tolist())))
        merged_rows = np.concatenate([rows, back[sub.rows]])
        order = np.argsort(merged_rows, kind="stable")

        def merge(mine: npt.NDArray[Any], theirs: npt.NDArray[Any]) -> npt.NDArray[Any]:
            return np.concatenate([mine, theirs])[order]

        return Batch(
            stream=self.spec.name,
            n_input=n,
            rows=merged_rows[order],
            columns={k: merge(v, sub.columns[k]) for k, v in columns.items()},
            valid={k: merge(v, sub.valid[k]) for k, v in valid.items()},
            entity=merge(entity, sub.entity) if sub.entity is not None else None,
            event_time=merge(etime, sub.event_time) if sub.event_time is not None else None,
            rejects=tuple(Reject(int(back[r.index]), r.reason, r.detail) for r in sub.rejects),
            new_entities=sub.new_entities,
            entity_overflow=sub.entity_overflow,
            violations=tuple(
                Violation(int(back[v.index]), v.field, v.reason, v.detail) for v in sub.violations
            ),
            limit_hits=sub.limit_hits,
            fallback_rows=len(back),
        )

    def _columns(
        self, fout: npt.NDArray[np.float64], iout: npt.NDArray[np.int64]
    ) -> tuple[dict[str, npt.NDArray[Any]], dict[str, npt.NDArray[np.bool_]]]:
        """The columns and masks in the msgspec decoder's layout (same key order)."""
        columns: dict[str, npt.NDArray[Any]] = {}
        valid: dict[str, npt.NDArray[np.bool_]] = {}
        n = fout.shape[1]
        for name, numeric, col in self._order:
            fs = self.spec.fields[name]
            if numeric:
                values = fout[col]
                columns[name] = values
                if fs.nullable or not fs.required:
                    valid[name] = ~np.isnan(values)
                else:
                    valid[name] = np.ones(n, dtype=np.bool_)
            else:
                codes = iout[col]
                columns[name] = codes
                valid[name] = codes >= -1  # as the msgspec decoder: -2 null, -3 too long
        return columns, valid
