"""A compiled, schema-specialised JSON batch decoder with the msgspec decoder as exact fallback.

One numba kernel scans the concatenated payloads of a batch once (one ``uint8``
buffer plus offsets, built with ``b"".join`` and ``np.frombuffer``) and fills, in
that one pass, the declared columns (float64 values of numeric fields, int64 codes
of bool and category fields), their validity masks, entity codes and event times
(epoch numbers scaled to seconds, ISO-8601 texts parsed), and checks declared
ranges. No Python object is made per event; what is left per batch is the join,
the sizes, and a few array allocations.

Exactness comes first. The kernel accepts a row only when it is sure of every
byte of it: a flat object of declared keys (each at most once; unknown keys only
on lenient streams, with scalar values), the four JSON whitespace bytes, numbers
that follow the JSON grammar and are either integer literals within int64 (one
correctly rounded conversion, as msgspec's and Python's ``float(int)``) or decimals
whose nearest double is proven: on Clinger's fast path (a decimal mantissa
``w <= 2**53`` and a power of ten ``|e| <= 22``, so ``float(w)`` and ``10.0**|e|``
are exact and the one IEEE multiply or divide that joins them is correctly
rounded), else by the Eisel-Lemire algorithm (as Go's ``strconv`` and fast_float:
up to 19 significant digits times a 128-bit power of ten, 10**-342..10**308, with
its proof that the truncated product rounds as the exact one; past 19 digits when
the truncated mantissa and the next one up round alike; it covers the shortest
round-trip floats of Python's ``repr``, Java and JavaScript, 16-17 digits), but
not exact ties nor subnormal or infinite results; strings of printable ASCII
without escapes, event-time texts of the form
``YYYY-MM-DD[T ]HH:MM:SS[.f{1,6}][Z|+HH:MM|-HH:MM]`` (computed with the
arithmetic of ``event_time``), values inside their declared range, and values of
the declared JSON type. Every other row goes, as it is, to
``StreamDecoder.decode_msgspec`` (the existing decoder) and the two results are
merged by row index, so the ``Batch`` equals the msgspec decoder's output: same
columns (bit for bit), masks, codes, vocabulary order, event times, rows, and
rejects with their reasons and details. Rows with a value out of range or any
other field-level violation are decoded by the fallback, so the violation path and
its semantics exist once.

Vocabularies stay owned by the ``StreamDecoder``; the kernel works on a mirror of
them (open-addressing hash tables of the ASCII values and of the integer entity
ids, ``_VocabularyTables``). A value new to an open vocabulary gets its code in the
kernel, the code ``_Vocabulary.add`` would give it (released codes first, see
``StreamDecoder.release_entities``), and is appended to the mirror; after the scan
the new values are committed to the vocabularies in the order met. This equals the
msgspec decoder's order as long as no earlier row of the batch fell back (such a
row may hold new values, which come first): after the first row that fell back, a
row with a new value falls back too. New values longer than ``max_string_length``,
or beyond the vocabulary's bound, fall back as well. Changes made outside the
kernel (the msgspec path, restores, releases) reach the mirror through each
vocabulary's journal.

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
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from numba import njit

from connectors.records import PackedValues
from monitor.config.schema import NUMERIC_TYPES, FieldSpec, FieldType, StreamSpec

if TYPE_CHECKING:
    from monitor.pipeline.decode import Batch, StreamDecoder, _Vocabulary

__all__ = ["CAUSES", "CompiledDecoder", "compiled_supported", "scan_batch"]

# Why a row left the compiled path; index 0 means it did not.
CAUSES = (
    "",
    "tombstone_or_too_large",
    "syntax",  # not a flat object of the JSON grammar, unusual whitespace, trailing bytes
    "number",  # a number not converted exactly (a tie, subnormal, infinite, -0.0, ...)
    "string",  # an escape, a control or non-ASCII byte
    "new_value",  # a category or entity value not yet in the vocabulary
    "type",  # null where not allowed, another JSON type, a nested value
    "keys",  # missing, duplicate or (strict) unknown key, more than max_fields
    "schema",  # failed the range or category check
    "unprobed",  # the whole batch went to msgspec: recent batches almost all fell back
    "time",  # an event time text the kernel does not parse (not the fixed ISO-8601 form)
)
_PRE, _SYNTAX, _NUMBER, _STRING, _NEW, _TYPE, _KEYS, _SCHEMA, _UNPROBED, _TIME = range(1, 11)
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
_INT64_MAX = 2**63 - 1
_INT64_TENTH = _INT64_MAX // 10
# Powers of five and ten below 2**64, to find decimals that are binary fractions or
# integers.
_POW5 = np.array([5**k for k in range(28)], dtype=np.uint64)
_POW10_U64 = np.array([10**k for k in range(20)], dtype=np.uint64)
_U64_MAX = np.uint64(2**64 - 1)
# Eisel-Lemire (as Go's strconv.eiselLemire64 and fast_float): decimal exponents it
# may be asked about, and the 128-bit mantissas of 10**e for them, rounded down.
_E10_MIN, _E10_MAX = -342, 308


def _powers_of_ten(lo: int, hi: int) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """The high and low 64-bit halves of ``floor(10**e * 2**k)`` for ``e`` in
    ``lo..hi``, ``k`` chosen so that the value has exactly 128 bits (for ``e >= 0``
    the top 128 bits of ``10**e``, else of ``2**k // 10**-e``): exact integer
    arithmetic, the table of Go's ``detailedPowersOfTen`` restricted to this range.

    >>> top, low = _powers_of_ten(-1, 1)
    >>> [hex(v) for v in top]
    ['0xcccccccccccccccc', '0x8000000000000000', '0xa000000000000000']
    >>> [hex(v) for v in low]
    ['0xcccccccccccccccc', '0x0', '0x0']
    """
    tops, lows = [], []
    for e in range(lo, hi + 1):
        if e >= 0:
            v = 10**e
            n = v.bit_length()
            m = v << (128 - n) if n <= 128 else v >> (n - 128)
        else:
            d = 10**-e
            m = (1 << (d.bit_length() + 127)) // d  # 127 or 128 bits
            if m.bit_length() < 128:
                m = (1 << (d.bit_length() + 128)) // d
        tops.append(m >> 64)
        lows.append(m & 0xFFFF_FFFF_FFFF_FFFF)
    return np.array(tops, dtype=np.uint64), np.array(lows, dtype=np.uint64)


_P10_HI, _P10_LO = _powers_of_ten(_E10_MIN, _E10_MAX)
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


@njit(cache=True, nogil=True, error_model="numpy")
def _number(buf: Any, p: int, end: int, pow10: Any) -> Any:  # pragma: no cover - compiled
    """Parse a JSON number at ``p``.

    Returns ``(p_after, status, value, integral, signed_mantissa)``: status 0 is an
    exact value (see ``_exact``), 1 valid JSON the kernel does not convert, 2 not a
    number. A decimal keeps its first 19 significant digits (a uint64); with more,
    the value lies between the truncated mantissa and the next one up, and is taken
    when Eisel-Lemire rounds both to the same double.
    """
    neg = False
    if p < end and buf[p] == 45:
        neg = True
        p += 1
    if p >= end:
        return p, 2, 0.0, False, np.int64(0)
    c = buf[p]
    w = np.int64(0)  # an integer literal's value
    big = False
    u = np.uint64(0)  # the first 19 significant digits
    nd = 0  # their count
    dropped = 0  # significant digits of the integer part past the 19th
    frac = 0  # digits of the fraction before the first one dropped
    many = False  # a significant digit was dropped
    ten = np.uint64(10)
    if c == 48:
        p += 1
    elif 49 <= c <= 57:
        while p < end and 48 <= buf[p] <= 57:
            d = np.int64(buf[p] - 48)
            if w < _INT64_TENTH or (w == _INT64_TENTH and d <= 7):  # stays <= 2**63 - 1
                w = w * 10 + d
            else:
                big = True
            if nd < 19:
                u = u * ten + np.uint64(d)
                nd += 1
            else:
                dropped += 1
                many = True
            p += 1
    else:
        return p, 2, 0.0, False, np.int64(0)
    integral = True
    if p < end and buf[p] == 46:
        integral = False
        p += 1
        start = p
        while p < end and 48 <= buf[p] <= 57:
            d = np.int64(buf[p] - 48)
            if nd < 19:
                if nd > 0 or d != 0:  # leading zeros are not significant
                    u = u * ten + np.uint64(d)
                    nd += 1
                frac += 1
            else:
                many = True
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
    if integral:
        # -0 is a float -0.0 but an integer 0 (then 0.0): let the fallback say which.
        if big or (neg and w == 0):
            return p, 1, 0.0, True, np.int64(0)
        return _exact(p, w, neg, True, 0, pow10)
    if neg and nd == 0:  # -0.0
        return p, 1, 0.0, False, np.int64(0)
    e10 = exp + dropped - frac
    if not many and u < np.uint64(_INT64_MAX):
        return _exact(p, np.int64(u), neg, False, e10, pow10)
    ok, v = _eisel_lemire(u, e10)
    if ok and many:  # the exact value is in [u, u + 1) * 10**e10
        ok, up = _eisel_lemire(u + np.uint64(1), e10)
        ok = ok and up == v
    if not ok:
        return p, 1, 0.0, False, np.int64(0)
    return p, 0, -v if neg else v, False, np.int64(0)


@njit(cache=True, nogil=True, inline="always")
def _mul64(a: Any, b: Any) -> Any:  # pragma: no cover - compiled
    """The 128-bit product of two uint64 as (high, low) uint64 halves, from four
    32x32-bit products (numba has no 128-bit integer)."""
    m32 = np.uint64(0xFFFF_FFFF)
    s32 = np.uint64(32)
    a0, a1 = a & m32, a >> s32
    b0, b1 = b & m32, b >> s32
    p00, p01, p10, p11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1
    mid = (p00 >> s32) + (p01 & m32) + (p10 & m32)  # < 2**34
    return p11 + (p01 >> s32) + (p10 >> s32) + (mid >> s32), (mid << s32) | (p00 & m32)


@njit(cache=True, nogil=True, inline="always")
def _normalized(x: Any) -> Any:  # pragma: no cover - compiled
    """``x`` (a nonzero uint64) shifted left until its top bit is set, and the shift
    (its count of leading zeros)."""
    n = 0
    if x >> np.uint64(32) == 0:
        x <<= np.uint64(32)
        n += 32
    if x >> np.uint64(48) == 0:
        x <<= np.uint64(16)
        n += 16
    if x >> np.uint64(56) == 0:
        x <<= np.uint64(8)
        n += 8
    if x >> np.uint64(60) == 0:
        x <<= np.uint64(4)
        n += 4
    if x >> np.uint64(62) == 0:
        x <<= np.uint64(2)
        n += 2
    if x >> np.uint64(63) == 0:
        x <<= np.uint64(1)
        n += 1
    return x, n


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _lemire(w: Any, e10: int) -> Any:  # pragma: no cover - compiled
    """The Eisel-Lemire algorithm as Go's ``strconv.eiselLemire64``, for a nonzero
    uint64 ``w`` and ``e10`` in the table: ``(ok, value)``, see ``_eisel_lemire``."""
    man, clz = _normalized(w)
    exp2 = ((217706 * e10) >> 16) + 64 + 1023 - clz  # the biased binary exponent
    i = e10 - _E10_MIN
    zero, one = np.uint64(0), np.uint64(1)
    low9 = np.uint64(0x1FF)
    x_hi, x_lo = _mul64(man, _P10_HI[i])
    if x_hi & low9 == low9 and x_lo + man < man:  # the low bits may carry: widen
        y_hi, y_lo = _mul64(man, _P10_LO[i])
        m_hi, m_lo = x_hi, x_lo + y_hi
        if m_lo < x_lo:
            m_hi += one
        if m_hi & low9 == low9 and m_lo + one == zero and y_lo + man < man:
            return False, 0.0
        x_hi, x_lo = m_hi, m_lo
    msb = x_hi >> np.uint64(63)
    mant = x_hi >> (msb + np.uint64(9))  # 54 bits
    exp2 -= 1 - int(msb)
    if x_lo == zero and x_hi & low9 == zero and mant & np.uint64(3) == one:
        return False, 0.0  # exactly halfway, maybe: round-half-even needs all bits
    mant = (mant + (mant & one)) >> one
    if mant >> np.uint64(53) != zero:
        mant >>= one
        exp2 += 1
    if exp2 <= 0 or exp2 >= 0x7FF:
        return False, 0.0  # subnormal or zero, or infinite
    bits = (np.uint64(exp2) << np.uint64(52)) | (mant & np.uint64(0xF_FFFF_FFFF_FFFF))
    return True, np.uint64(bits).view(np.float64)


@njit(cache=True, nogil=True, error_model="numpy")
def _eisel_lemire(w: Any, e10: int) -> Any:  # pragma: no cover - compiled
    """``(ok, value)``: the double nearest to ``w * 10**e10`` (``w`` a uint64).

    The Eisel-Lemire algorithm as Go's ``strconv.eiselLemire64``: the product of the
    normalized ``w`` and the 128-bit mantissa of ``10**e10`` (rounded down) gives the
    result's 54 top bits, and the algorithm proves they round as the exact product
    would. Where it cannot prove it (the truncated product too close to a rounding
    boundary, an exact halfway case), exact values are tried: trailing zeros dropped
    (then Clinger's fast path), integers below 2**64, and decimals that are binary
    fractions. Not ok (the caller falls back) for the rest of those, for a result
    that is subnormal, zero or infinite, an exponent outside the table, or ``w == 0``.
    """
    if w == 0:
        return False, 0.0
    if _E10_MIN <= e10 <= _E10_MAX:
        ok, v = _lemire(w, e10)
        if ok:
            return True, v
    # An exact value (6812229848299539.0 is 68122298482995390 times 10**-1) makes the
    # rounded-down product fall just short of it, undecided: drop trailing zeros.
    ten = np.uint64(10)
    while w % ten == 0:
        w //= ten
        e10 += 1
    if w <= np.uint64(_TWO53) and -22 <= e10 <= 22:  # Clinger's fast path after all
        v = np.float64(w)
        return True, v * _POW10[e10] if e10 >= 0 else v / _POW10[-e10]
    if 0 <= e10 <= 19 and w <= _U64_MAX // _POW10_U64[e10]:
        # an integer below 2**64 (9182368114234214.0): one correctly rounded conversion
        return True, np.float64(w * _POW10_U64[e10])
    if -27 <= e10 < 0 and w % _POW5[-e10] == 0:
        # w * 10**e10 = (w / 5**-e10) * 2**e10: a binary fraction (617655779845522.25).
        # One correctly rounded conversion of the integer, then an exact scaling.
        return True, math.ldexp(np.float64(w // _POW5[-e10]), e10)
    return False, 0.0


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _exact(
    p: int, w: Any, neg: bool, integral: bool, e10: int, pow10: Any
) -> Any:  # pragma: no cover
    """The parsers' result for mantissa ``w`` (< 2**63) times 10**e10: an int64 literal
    is one correctly rounded conversion (as float(int)); a decimal on Clinger's fast
    path (w <= 2**53, |e10| <= 22: one exact IEEE multiply or divide), else by
    Eisel-Lemire where it decides, else status 1 (the fallback parses it)."""
    if integral:
        v = np.float64(w)
        if neg:
            return p, 0, -v, True, -w
        return p, 0, v, True, w
    if w > _TWO53 or e10 < -22 or e10 > 22:
        # inlined here (the kernel's), a call returning this 5-tuple cost 40% on
        # 17-digit payloads; _eisel_lemire's own (ok, value) stays a call
        ok, v = _eisel_lemire(np.uint64(w), e10)
        if not ok:
            return p, 1, 0.0, False, np.int64(0)
        if neg:
            return p, 0, -v, False, -w
        return p, 0, v, False, w
    v = np.float64(w)
    v = v * pow10[e10] if e10 >= 0 else v / pow10[-e10]
    if neg:
        return p, 0, -v, False, -w
    return p, 0, v, False, w


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


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _fast_number(buf: Any, p: int, end: int, pow10: Any) -> Any:  # pragma: no cover - compiled
    """``_number`` for the common case (at most 18 digits), one pass without overflow
    checks; longer numbers are handed to ``_number``. Same results and statuses."""
    start = p
    neg = False
    if buf[p] == 45:
        neg = True
        p += 1
        if p >= end:
            return p, 2, 0.0, False, np.int64(0)
    w = np.int64(0)
    d0 = p
    c = np.int64(buf[p]) - 48
    if c == 0:
        p += 1
        if p < end and 0 <= np.int64(buf[p]) - 48 <= 9:
            return p, 2, 0.0, False, np.int64(0)  # a leading zero
    elif 0 < c <= 9:
        while p < end:
            c = np.int64(buf[p]) - 48
            if c < 0 or c > 9:
                break
            w = w * 10 + c
            p += 1
    else:
        return p, 2, 0.0, False, np.int64(0)
    digits = p - d0
    integral = True
    frac = 0
    if p < end and buf[p] == 46:
        integral = False
        p += 1
        f0 = p
        while p < end:
            c = np.int64(buf[p]) - 48
            if c < 0 or c > 9:
                break
            w = w * 10 + c
            p += 1
        frac = p - f0
        if frac == 0:
            return p, 2, 0.0, False, np.int64(0)
        digits += frac
    if digits > 18:  # w may have wrapped: the careful parser decides
        return _number(buf, start, end, pow10)
    exp = 0
    if p < end and (buf[p] == 101 or buf[p] == 69):
        integral = False
        p += 1
        eneg = False
        if p < end and (buf[p] == 43 or buf[p] == 45):
            eneg = buf[p] == 45
            p += 1
        e0 = p
        while p < end:
            c = np.int64(buf[p]) - 48
            if c < 0 or c > 9:
                break
            if exp < 100_000:
                exp = exp * 10 + int(c)
            p += 1
        if p == e0:
            return p, 2, 0.0, False, np.int64(0)
        if eneg:
            exp = -exp
    if neg and w == 0:  # -0: a float -0.0 but an integer 0; the fallback says which
        return p, 1, 0.0, integral, np.int64(0)
    return _exact(p, w, neg, integral, exp - frac, pow10)


@njit(cache=True, nogil=True, error_model="numpy")
def _number_call(buf: Any, p: int, end: int, pow10: Any) -> Any:  # pragma: no cover - compiled
    """``_fast_number`` as a call, for the less common numbers (ints, times, entity
    ids): inlined everywhere, the kernel took twice as long to compile cold."""
    return _fast_number(buf, p, end, pow10)


@njit(cache=True, nogil=True, error_model="numpy")
def _iso_time(buf: Any, a: int, b: int) -> Any:  # pragma: no cover - compiled
    """``YYYY-MM-DD[T ]HH:MM:SS[.f{1,6}][Z|+HH:MM|-HH:MM]`` at ``buf[a:b]`` to epoch
    seconds with the same arithmetic as ``event_time._fixed_width_seconds`` (and so
    the same double as the general path); ``(False, 0.0)`` for anything else."""
    n = b - a
    if n < 19:
        return False, 0.0
    for i in range(19):
        c = buf[a + i]
        if i == 4 or i == 7:
            if c != 45:
                return False, 0.0
        elif i == 10:
            if c != 84 and c != 32:
                return False, 0.0
        elif i == 13 or i == 16:
            if c != 58:
                return False, 0.0
        elif c < 48 or c > 57:
            return False, 0.0

    def d(i: int) -> int:
        return int(buf[a + i]) - 48

    year = d(0) * 1000 + d(1) * 100 + d(2) * 10 + d(3)
    month = d(5) * 10 + d(6)
    day = d(8) * 10 + d(9)
    hour = d(11) * 10 + d(12)
    minute = d(14) * 10 + d(15)
    second = d(17) * 10 + d(18)
    p = 19
    fraction = 0
    nf = 0
    if p < n and buf[a + p] == 46:
        p += 1
        while p < n and 48 <= buf[a + p] <= 57:
            fraction = fraction * 10 + d(p)
            nf += 1
            p += 1
        if nf == 0 or nf > 6:
            return False, 0.0
    zone = 0
    sign = 1.0
    zh = zm = 0
    if p < n and buf[a + p] == 90:
        zone = 1
        p += 1
    elif p < n and (buf[a + p] == 43 or buf[a + p] == 45):
        if p + 6 != n or buf[a + p + 3] != 58:
            return False, 0.0
        for i in (p + 1, p + 2, p + 4, p + 5):
            if buf[a + i] < 48 or buf[a + i] > 57:
                return False, 0.0
        zone = 6
        sign = -1.0 if buf[a + p] == 45 else 1.0
        zh = d(p + 1) * 10 + d(p + 2)
        zm = d(p + 4) * 10 + d(p + 5)
        if zh > 23 or zm > 59:
            return False, 0.0
        p += 6
    if p != n or year < 1:
        return False, 0.0
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if month < 1 or month > 12 or day < 1:
        return False, 0.0
    days_in = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)[month - 1]
    if leap and month == 2:
        days_in = 29
    if day > days_in or hour >= 24 or minute >= 60 or second >= 60:
        return False, 0.0
    cumulative = (0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)[month - 1]
    y = year - 1
    days = (
        365 * (year - 1970)
        + (y // 4 - y // 100 + y // 400)
        - (1969 // 4 - 1969 // 100 + 1969 // 400)
        + cumulative
        + (1 if leap and month >= 3 else 0)
        + day
        - 1
    )
    micros = (((days * 24 + hour) * 60 + minute) * 60 + second) * 1_000_000
    if nf:
        scale = 1
        for _ in range(6 - nf):
            scale *= 10
        micros += fraction * scale
    seconds = np.float64(micros) / 1e6
    if zone == 6:
        minutes = np.float64(zh) * 60.0 + np.float64(zm)
        return True, seconds - (sign * minutes) * 60.0
    return True, seconds - 0.0


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _unslot_bytes(e: int, slots: Any, tbuf: Any, toff: Any, ttid: Any) -> None:  # pragma: no cover
    """Take the last-inserted entry ``e`` out of its open-addressing slots."""
    mask = np.uint64(len(slots) - 1)
    s = _hash(tbuf, toff[e], toff[e + 1], ttid[e]) & mask
    while slots[s] != e:
        s = (s + np.uint64(1)) & mask
    slots[s] = -1


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _unslot_int(e: int, slots: Any, ikey: Any) -> None:  # pragma: no cover - compiled
    mask = np.uint64(len(slots) - 1)
    s = _int_hash(ikey[e]) & mask
    while slots[s] != e:
        s = (s + np.uint64(1)) & mask
    slots[s] = -1


@njit(cache=True, nogil=True, error_model="numpy")
def _rollback(
    upto: int,
    state: Any,
    new_e: Any,
    new_t: Any,
    new_k: Any,
    vused: Any,
    tbuf: Any,
    toff: Any,
    ttid: Any,
    tval: Any,
    tslots: Any,
    tmeta: Any,
    ikey: Any,
    ival: Any,
    islots: Any,
    imeta: Any,
) -> None:  # pragma: no cover - compiled
    """Undo the new values recorded after position ``upto``, newest first."""
    for j in range(state[0] - 1, upto - 1, -1):
        e = new_e[j]
        kind = new_k[j]
        vused[new_t[j]] -= 1
        if kind == 0:  # a string appended
            _unslot_bytes(e, tslots, tbuf, toff, ttid)
            tmeta[0] -= 1
            tmeta[1] = toff[e]
        elif kind == 1:  # a string revived
            tval[e] = -1
            tmeta[2] += 1
        elif kind == 2:  # an integer appended
            _unslot_int(e, islots, ikey)
            imeta[0] -= 1
        else:
            ival[e] = -1
            imeta[1] += 1
    state[0] = upto


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _new_code(
    t: int, vused: Any, vfree: Any, vfree_off: Any, vlive: Any
) -> int:  # pragma: no cover
    """The code ``_Vocabulary.add`` gives the next new value of table ``t``: its free
    codes first (ascending), then the codes after the live ones."""
    j = vused[t]
    nfree = vfree_off[t + 1] - vfree_off[t]
    if j < nfree:
        return int(vfree[vfree_off[t] + j])
    return int(vlive[t] + j)


@njit(cache=True, nogil=True, error_model="numpy")
def scan_batch(
    buf: Any,
    starts: Any,
    first_row: int,
    cause: Any,
    kind: Any,
    null_ok: Any,
    required: Any,
    plain: Any,
    column: Any,
    table: Any,
    vrow: Any,
    lo: Any,
    hi: Any,
    kbuf: Any,
    koff: Any,
    kslots: Any,
    kid: Any,
    tbuf: Any,
    toff: Any,
    ttid: Any,
    tval: Any,
    tslots: Any,
    tmeta: Any,
    ikey: Any,
    ival: Any,
    islots: Any,
    imeta: Any,
    vopen: Any,
    vmaxlen: Any,
    vroom: Any,
    vfree: Any,
    vfree_off: Any,
    vlive: Any,
    vused: Any,
    new_e: Any,
    new_t: Any,
    new_k: Any,
    state: Any,
    strict: bool,
    max_fields: int,
    pow10: Any,
    time_scale: float,
    fout: Any,
    iout: Any,
    vout: Any,
    entity: Any,
    etime: Any,
) -> int:  # pragma: no cover - compiled
    """Scan payload ``r`` = ``buf[starts[r]:starts[r+1]]`` for every row from
    ``first_row`` whose ``cause`` is 0 on entry; leave ``cause`` 0 where the row was
    decoded exactly, else set the reason it must go to the fallback (index into
    ``CAUSES``). Returns the number of rows (done) or the row to scan again once the
    vocabulary tables have grown (they were too small for a new value).

    Keys ``0..K-1`` have a ``kind`` (``_K_*``), ``null_ok`` and ``required`` flags,
    ``plain`` (the name is printable ASCII without quote or backslash, so its bytes
    followed by a quote can only be that key), an output ``column`` (row of ``fout``
    for numbers, of ``iout`` for bool and category codes), a row of the validity
    masks ``vout`` (-1: none), a range ``[lo, hi]`` (numbers outside it fall back:
    out_of_range is the fallback's to report) and a vocabulary ``table`` id.
    ``kbuf``/``koff``/``kslots``/``kid`` is the hash table of key names; the
    vocabularies are ``tbuf``/``toff``/``ttid``/``tval``/``tslots``/``tmeta``
    (strings) and ``ikey``/``ival``/``islots``/``imeta`` (integer entity ids); an
    entry whose value is -1 was released.

    A value new to an open vocabulary gets, in the kernel, the code
    ``_Vocabulary.add`` would give it (``_new_code``), as long as no earlier row of
    the batch fell back (that row may hold new values too, which come first), the
    vocabulary has room (``vroom``) and the value is not longer than ``vmaxlen``.
    New values are recorded in ``new_e``/``new_t``/``new_k`` (entry, table, how it
    was added), ``state[0]`` of them; a row that falls back takes its own back.
    ``state[1]`` is 1 once a row fell back. Numeric event times are multiplied by
    ``time_scale``; ISO-8601 texts are parsed (``_iso_time``).
    """
    n = len(starts) - 1
    K = len(kind)
    seen = np.full(K, -1, dtype=np.int64)
    after = np.empty(K + 1, dtype=np.int64)  # the key that followed each key last time
    for k in range(K):
        after[k] = k + 1 if k + 1 < K else 0
    after[K] = 0
    nan = np.float64(np.nan)
    for r in range(first_row, n):
        if cause[r] != 0:
            continue
        p = starts[r]
        end = starts[r + 1]
        if p < end and buf[p] <= 32:
            p = _skip_ws(buf, p, end)
        if p >= end or buf[p] != 123:
            cause[r] = _SYNTAX
            state[1] = 1
            continue
        p = p + 1
        if p < end and buf[p] <= 32:
            p = _skip_ws(buf, p, end)
        row_new = state[0]
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
                    if kd == _K_FLOAT and c != 110:  # the common case first
                        if not (c == 45 or 48 <= c <= 57):
                            bad = _TYPE
                            break
                        p, status, v, _i, _w = _fast_number(buf, p, end, pow10)
                        if status != 0:
                            bad = _NUMBER if status == 1 else _SYNTAX
                            break
                        if v < lo[k] or v > hi[k]:
                            bad = _SCHEMA
                            break
                        fout[col, r] = v
                        if vrow[k] >= 0:  # else valid wherever the row is compiled
                            vout[vrow[k], r] = True
                    elif c == 110:  # null
                        if _literal(buf, p, end) != 0 or not null_ok[k]:
                            bad = _TYPE
                            break
                        p += 4
                        if kd in (_K_FLOAT, _K_INT):
                            fout[col, r] = nan
                            vout[vrow[k], r] = False
                        elif kd in (_K_BOOL, _K_CATEGORY):
                            iout[col, r] = -2
                            vout[vrow[k], r] = False
                    elif kd == _K_INT or (kd == _K_TIME and c != 34):
                        if not (c == 45 or 48 <= c <= 57):
                            bad = _TYPE
                            break
                        p, status, v, integral, _w = _number_call(buf, p, end, pow10)
                        if status != 0:
                            bad = _NUMBER if status == 1 else _SYNTAX
                            break
                        if kd == _K_TIME:
                            etime[r] = v * time_scale
                        else:
                            if not integral:
                                bad = _TYPE
                                break
                            if v < lo[k] or v > hi[k]:
                                bad = _SCHEMA
                                break
                            fout[col, r] = v
                            vout[vrow[k], r] = True
                    elif kd == _K_TIME:  # text: ISO-8601
                        q = _string_end(buf, p + 1, end)
                        if q < 0:
                            bad = _STRING
                            break
                        good, seconds = _iso_time(buf, p + 1, q)
                        if not good:
                            bad = _TIME
                            break
                        etime[r] = seconds
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
                        vout[vrow[k], r] = True
                    elif kd == _K_STRING:
                        if c != 34:
                            bad = _TYPE
                            break
                        q = _string_end(buf, p + 1, end)
                        if q < 0:
                            bad = _STRING
                            break
                        p = q + 1
                    elif c == 34:  # a category or a text entity id
                        a = p + 1
                        q = _string_end(buf, a, end)
                        if q < 0:
                            bad = _STRING
                            break
                        t = table[k]
                        e = _find_bytes(buf, a, q, t, tslots, tbuf, toff, ttid)
                        if e >= 0 and tval[e] >= 0:
                            code = tval[e]
                        else:  # a new value
                            if (
                                state[1] != 0
                                or not vopen[t]
                                or vused[t] >= vroom[t]
                                or (vmaxlen[t] >= 0 and q - a > vmaxlen[t])
                            ):
                                bad = _NEW
                                break
                            code = _new_code(t, vused, vfree, vfree_off, vlive)
                            if e >= 0:
                                tval[e] = code
                                tmeta[2] -= 1
                                new_k[state[0]] = 1
                            else:
                                m = tmeta[0]
                                nb = tmeta[1]
                                if (
                                    m + 1 >= len(ttid)
                                    or nb + q - a > len(tbuf)
                                    or 2 * (m + 1) > len(tslots)
                                ):
                                    bad = -1  # the tables must grow first
                                    break
                                for i in range(q - a):
                                    tbuf[nb + i] = buf[a + i]
                                toff[m + 1] = nb + q - a
                                ttid[m] = t
                                tval[m] = code
                                _insert_bytes(tslots, tbuf, toff, ttid, m, m + 1)
                                tmeta[0] = m + 1
                                tmeta[1] = nb + q - a
                                e = m
                                new_k[state[0]] = 0
                            new_e[state[0]] = e
                            new_t[state[0]] = t
                            state[0] += 1
                            vused[t] += 1
                        if kd == _K_ENTITY:
                            entity[r] = code
                        else:
                            iout[col, r] = code
                            vout[vrow[k], r] = True
                        p = q + 1
                    elif kd == _K_ENTITY and (c == 45 or 48 <= c <= 57):
                        p, status, _v, integral, w = _number_call(buf, p, end, pow10)
                        if status != 0:
                            bad = _NUMBER if status == 1 else _SYNTAX
                            break
                        if not integral:
                            bad = _TYPE
                            break
                        t = table[k]
                        e = _find_int(w, islots, ikey)
                        if e >= 0 and ival[e] >= 0:
                            code = ival[e]
                        else:
                            if state[1] != 0 or vused[t] >= vroom[t]:
                                bad = _NEW
                                break
                            code = _new_code(t, vused, vfree, vfree_off, vlive)
                            if e >= 0:
                                ival[e] = code
                                imeta[1] -= 1
                                new_k[state[0]] = 3
                            else:
                                m = imeta[0]
                                if m + 1 >= len(ikey) or 2 * (m + 1) > len(islots):
                                    bad = -1
                                    break
                                ikey[m] = w
                                ival[m] = code
                                _insert_ints(islots, ikey, m, m + 1)
                                imeta[0] = m + 1
                                e = m
                                new_k[state[0]] = 2
                            new_e[state[0]] = e
                            new_t[state[0]] = t
                            state[0] += 1
                            vused[t] += 1
                        entity[r] = code
                    else:
                        bad = _TYPE
                        break
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
        if bad == 0 and p < end and _skip_ws(buf, p, end) != end:
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
                    vout[vrow[k], r] = False
                elif kd in (_K_BOOL, _K_CATEGORY):
                    iout[column[k], r] = -2
                    vout[vrow[k], r] = False
        if bad != 0:
            if state[0] > row_new:
                _rollback(
                    row_new, state, new_e, new_t, new_k, vused,
                    tbuf, toff, ttid, tval, tslots, tmeta, ikey, ival, islots, imeta,
                )  # fmt: skip
            if bad < 0:
                return r
            state[1] = 1
        cause[r] = bad
    return n


# ---------------------------------------------------------------- vocabulary mirror


def _pow2_at_least(n: int) -> int:
    size = 16
    while size < n:
        size *= 2
    return size


@njit(cache=True, nogil=True, error_model="numpy")
def _upsert_bytes(
    kbuf: Any,
    koff: Any,
    ktid: Any,
    kval: Any,
    slots: Any,
    tbuf: Any,
    toff: Any,
    ttid: Any,
    tval: Any,
    meta: Any,
) -> None:  # pragma: no cover - compiled
    """Set the value of each key ``kbuf[koff[j]:koff[j+1]]`` of table ``ktid[j]`` to
    ``kval[j]`` (-1: released), appending keys not there yet (room is ensured)."""
    for j in range(len(ktid)):
        a, b, t, v = koff[j], koff[j + 1], ktid[j], kval[j]
        e = _find_bytes(kbuf, a, b, t, slots, tbuf, toff, ttid)
        if e >= 0:
            if tval[e] < 0 and v >= 0:
                meta[2] -= 1
            elif tval[e] >= 0 and v < 0:
                meta[2] += 1
            tval[e] = v
        elif v >= 0:
            m, nb = meta[0], meta[1]
            for i in range(b - a):
                tbuf[nb + i] = kbuf[a + i]
            toff[m + 1] = nb + b - a
            ttid[m] = t
            tval[m] = v
            _insert_bytes(slots, tbuf, toff, ttid, m, m + 1)
            meta[0], meta[1] = m + 1, nb + b - a


@njit(cache=True, nogil=True, error_model="numpy")
def _upsert_ints(keys: Any, vals: Any, slots: Any, ikey: Any, ival: Any, meta: Any) -> None:
    for j in range(len(keys)):  # pragma: no cover - compiled
        e = _find_int(keys[j], slots, ikey)
        v = vals[j]
        if e >= 0:
            if ival[e] < 0 and v >= 0:
                meta[1] -= 1
            elif ival[e] >= 0 and v < 0:
                meta[1] += 1
            ival[e] = v
        elif v >= 0:
            m = meta[0]
            ikey[m] = keys[j]
            ival[m] = v
            _insert_ints(slots, ikey, m, m + 1)
            meta[0] = m + 1


class _ByteTable:
    """UTF-8 byte strings (with a table id) -> int64 value (-1: released), an
    open-addressing hash table in numpy arrays with spare room, which the kernel
    reads and appends to. ``meta`` holds (entries, bytes used, released entries)."""

    def __init__(self, entries: int = 64, nbytes: int = 1024) -> None:
        self.buf = np.zeros(nbytes, dtype=np.uint8)
        self.off = np.zeros(entries + 1, dtype=np.int64)
        self.tid = np.zeros(entries, dtype=np.int64)
        self.val = np.zeros(entries, dtype=np.int64)
        self.slots = np.full(_pow2_at_least(4 * entries), -1, dtype=np.int64)
        self.meta = np.zeros(3, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.meta[0])

    def reserve(self, entries: int, nbytes: int) -> None:
        """Room for ``entries`` more entries of ``nbytes`` more bytes; keeps the slots
        at most half full (of live and released entries)."""
        n, used = int(self.meta[0]), int(self.meta[1])
        if used + nbytes > len(self.buf):
            grown = np.zeros(max(2 * len(self.buf), used + nbytes), dtype=np.uint8)
            grown[:used] = self.buf[:used]
            self.buf = grown
        if n + entries + 1 > len(self.tid):
            size = max(2 * len(self.tid), n + entries + 1)
            for name in ("tid", "val"):
                old = getattr(self, name)
                new = np.zeros(size, dtype=np.int64)
                new[:n] = old[:n]
                setattr(self, name, new)
            off = np.zeros(size + 1, dtype=np.int64)
            off[: n + 1] = self.off[: n + 1]
            self.off = off
        if 2 * (n + entries + 1) > len(self.slots):
            self.slots = np.full(_pow2_at_least(4 * (n + entries + 1)), -1, dtype=np.int64)
            _insert_bytes(self.slots, self.buf, self.off, self.tid, 0, n)

    def upsert(self, tids: Sequence[int], keys: Sequence[bytes], values: Sequence[int]) -> None:
        if not keys:
            return
        joined = b"".join(keys)
        self.reserve(len(keys), len(joined))
        koff = np.zeros(len(keys) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, keys), np.int64, len(keys)), out=koff[1:])
        _upsert_bytes(
            np.frombuffer(joined, dtype=np.uint8),
            koff,
            np.asarray(tids, dtype=np.int64),
            np.asarray(values, dtype=np.int64),
            self.slots,
            self.buf,
            self.off,
            self.tid,
            self.val,
            self.meta,
        )

    def key(self, entry: int) -> bytes:
        return self.buf[self.off[entry] : self.off[entry + 1]].tobytes()

    def compacted(self) -> _ByteTable | None:
        """A copy without the released entries, when they are the majority."""
        n, dead = int(self.meta[0]), int(self.meta[2])
        if dead < 1024 or 2 * dead < n:
            return None
        live = np.flatnonzero(self.val[:n] >= 0)
        out = _ByteTable(max(64, 2 * len(live)), max(1024, int(self.meta[1])))
        keys = [self.key(int(e)) for e in live.tolist()]
        out.upsert(self.tid[live].tolist(), keys, self.val[live].tolist())
        return out


class _IntTable:
    """int64 keys -> int64 values (-1: released), like ``_ByteTable``; ``meta`` holds
    (entries, released entries)."""

    def __init__(self, entries: int = 64) -> None:
        self.key = np.zeros(entries, dtype=np.int64)
        self.val = np.zeros(entries, dtype=np.int64)
        self.slots = np.full(_pow2_at_least(4 * entries), -1, dtype=np.int64)
        self.meta = np.zeros(2, dtype=np.int64)

    def reserve(self, entries: int) -> None:
        n = int(self.meta[0])
        if n + entries + 1 > len(self.key):
            size = max(2 * len(self.key), n + entries + 1)
            for name in ("key", "val"):
                new = np.zeros(size, dtype=np.int64)
                new[:n] = getattr(self, name)[:n]
                setattr(self, name, new)
        if 2 * (n + entries + 1) > len(self.slots):
            self.slots = np.full(_pow2_at_least(4 * (n + entries + 1)), -1, dtype=np.int64)
            _insert_ints(self.slots, self.key, 0, n)

    def upsert(self, keys: Sequence[int], values: Sequence[int]) -> None:
        if not keys:
            return
        self.reserve(len(keys))
        _upsert_ints(
            np.asarray(keys, dtype=np.int64),
            np.asarray(values, dtype=np.int64),
            self.slots,
            self.key,
            self.val,
            self.meta,
        )

    def compacted(self) -> _IntTable | None:
        n, dead = int(self.meta[0]), int(self.meta[1])
        if dead < 1024 or 2 * dead < n:
            return None
        live = np.flatnonzero(self.val[:n] >= 0)
        out = _IntTable(max(64, 2 * len(live)))
        out.upsert(self.key[live].tolist(), self.val[live].tolist())
        return out


def _mirrored(key: Any) -> bool:
    """Whether the kernel can meet ``key``: printable ASCII text or an int64."""
    if type(key) is str:
        return key.isascii()
    return type(key) is int and -(2**63) <= key < 2**63


class _VocabularyTables:
    """The string and integer values of the decoder's open vocabularies and entity
    ids, as kernel tables.

    Changes made outside the kernel (the msgspec path, a restore, ``release``) are
    replayed from each vocabulary's journal; a vocabulary replaced (e.g. restored
    from a checkpoint) rebuilds the tables. The kernel's own new values are
    committed to the vocabularies by ``CompiledDecoder.decode``.
    """

    def __init__(self, sources: Sequence[tuple[int, _Vocabulary]]) -> None:
        self._sources = list(sources)
        self._reset()

    def _reset(self) -> None:
        self.strings = _ByteTable()
        self.ints = _IntTable()
        self._codes = {tid: v.codes for tid, v in self._sources}
        tids: list[int] = []
        keys: list[bytes] = []
        values: list[int] = []
        int_keys: list[int] = []
        int_values: list[int] = []
        for tid, vocab in self._sources:
            vocab.journal = []
            for key, code in vocab.codes.items():
                if code < 0 or not _mirrored(key):
                    continue
                if type(key) is str:
                    tids.append(tid)
                    keys.append(key.encode("ascii"))
                    values.append(code)
                else:
                    int_keys.append(key)
                    int_values.append(code)
        self.strings.upsert(tids, keys, values)
        self.ints.upsert(int_keys, int_values)

    def refresh(self, sources: Sequence[tuple[int, _Vocabulary]]) -> None:
        """Bring the tables up to date with ``sources`` (table id, vocabulary)."""
        for tid, vocab in sources:
            if self._codes.get(tid) is not vocab.codes or vocab.journal is None:
                self._sources = list(sources)
                self._reset()
                return
        tids: list[int] = []
        keys: list[bytes] = []
        values: list[int] = []
        int_keys: list[int] = []
        int_values: list[int] = []
        for tid, vocab in sources:
            journal = vocab.journal
            if not journal:
                continue
            vocab.journal = []
            for key, code in journal:
                if not _mirrored(key):
                    continue
                if type(key) is str:
                    tids.append(tid)
                    keys.append(key.encode("ascii"))
                    values.append(code)
                else:
                    int_keys.append(key)
                    int_values.append(code)
        self.strings.upsert(tids, keys, values)
        self.ints.upsert(int_keys, int_values)
        strings, ints = self.strings.compacted(), self.ints.compacted()
        if strings is not None:
            self.strings = strings
        if ints is not None:
            self.ints = ints


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

    It shares the ``StreamDecoder``'s vocabularies, so codes and rejects are the
    msgspec decoder's own. ``last_causes`` holds, per input row of the last batch,
    why it fell back (an index into ``CAUSES``, 0 = compiled).
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
        vrow: list[int] = []
        lo: list[float] = []
        hi: list[float] = []
        self._float_names: list[str] = []
        self._code_names: list[str] = []
        self._table_of: dict[str, int] = {}
        self._order: list[tuple[str, bool, int]] = []  # (name, is numeric, row in fout/iout)
        self._always: list[int] = []  # rows of the masks that are True for every compiled row
        for name, fs in spec.fields.items():
            kind = _KIND[fs.type]
            kinds.append(kind)
            null_ok.append(fs.nullable or not fs.required)
            required.append(fs.required)
            rng = fs.range if fs.type in NUMERIC_TYPES else None
            lo.append(-math.inf if rng is None else float(rng[0]))
            hi.append(math.inf if rng is None else float(rng[1]))
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
                    tid = len(self._table_of)
                    self._table_of[name] = tid
            else:
                col = 0
            always = fs.type in NUMERIC_TYPES and fs.required and not fs.nullable
            if always:  # a compiled row always has a value here: its mask is all True
                self._always.append(len(self._order) - 1)
            vrow.append(
                len(self._order) - 1 if fs.type is not FieldType.STRING and not always else -1
            )
            column.append(col)
            table.append(tid)
        self._entity_tid = len(self._table_of)
        for key, kind in ((spec.entity, _K_ENTITY), (spec.event_time, _K_TIME)):
            if key is not None:
                names.append(key)
                kinds.append(kind)
                null_ok.append(False)
                required.append(True)
                column.append(0)
                vrow.append(-1)
                lo.append(-math.inf)
                hi.append(math.inf)
                table.append(self._entity_tid if kind == _K_ENTITY else 0)
        self._kind = np.asarray(kinds, dtype=np.int64)
        self._null_ok = np.asarray(null_ok, dtype=np.bool_)
        self._required = np.asarray(required, dtype=np.bool_)
        self._column = np.asarray(column, dtype=np.int64)
        self._table = np.asarray(table, dtype=np.int64)
        self._vrow = np.asarray(vrow, dtype=np.int64)
        self._lo = np.asarray(lo, dtype=np.float64)
        self._hi = np.asarray(hi, dtype=np.float64)
        self._plain = np.array(
            [all(0x20 <= ord(ch) < 0x7F and ch not in '"\\' for ch in n) for n in names],
            dtype=np.bool_,
        )
        self._keys = _ByteTable()
        encoded = [n.encode("utf-8", "surrogatepass") for n in names]
        self._keys.upsert([0] * len(names), encoded, list(range(len(names))))
        n_tables = self._entity_tid + 1
        self._vocab_keys = len(self._table_of) + (spec.entity is not None)
        self._vopen = np.zeros(n_tables, dtype=np.bool_)
        self._vmaxlen = np.full(n_tables, -1, dtype=np.int64)
        self._vroom = np.zeros(n_tables, dtype=np.int64)
        self._vlive = np.zeros(n_tables, dtype=np.int64)
        self._vfree_off = np.zeros(n_tables + 1, dtype=np.int64)
        self._vocab = _VocabularyTables(self._sources())
        self._time_scale = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}[spec.event_time_unit]
        self.last_causes = np.zeros(0, dtype=np.int8)
        self._unprobed = 0  # batches left to send to msgspec whole

    def _sources(self) -> list[tuple[int, _Vocabulary]]:
        out = [(tid, self.base.vocabularies[name]) for name, tid in self._table_of.items()]
        if self.base.entities is not None:
            out.append((self._entity_tid, self.base.entities))
        return out

    def _allocation(self, sources: list[tuple[int, _Vocabulary]]) -> npt.NDArray[np.int64]:
        """Per table: whether and how many new values fit, and the free codes to hand
        out first (returned, flat; ``_vfree_off`` bounds each table's)."""
        free: list[npt.NDArray[np.int64]] = []
        off = np.zeros(len(self._vopen) + 1, dtype=np.int64)
        self._vopen[:] = False
        self._vroom[:] = 0
        for tid, vocab in sources:
            live = len(vocab.codes) - 1
            self._vopen[tid] = not vocab.frozen
            self._vmaxlen[tid] = -1 if vocab.max_length is None else vocab.max_length
            self._vroom[tid] = 0 if vocab.frozen else max(vocab.limit - live, 0)
            self._vlive[tid] = live
            rest = vocab.free[vocab.free_pos :]
            off[tid + 1] = len(rest)
            free.append(rest)
        np.cumsum(off, out=off)
        self._vfree_off = off
        return np.concatenate(free) if free else np.zeros(0, dtype=np.int64)

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
        if isinstance(payloads, PackedValues):  # already one buffer (direct fetch)
            first = int(payloads.starts[0])
            starts = payloads.starts - first if first else payloads.starts
            buf = payloads.data[first : int(payloads.starts[-1])]
            sizes = np.diff(starts)
            if payloads.null is not None:
                cause[payloads.null] = _PRE
        else:
            try:
                sizes = np.fromiter(map(len, payloads), dtype=np.int64, count=n)  # type: ignore[arg-type]
                joined = b"".join(payloads)  # type: ignore[arg-type]
            except TypeError:  # a None value (tombstone) somewhere in the batch
                present = [p if p is not None else b"" for p in payloads]
                sizes = np.fromiter(map(len, present), dtype=np.int64, count=n)
                cause[[i for i, p in enumerate(payloads) if p is None]] = _PRE
                joined = b"".join(present)
            starts = np.empty(n + 1, dtype=np.int64)
            starts[0] = 0
            np.cumsum(sizes, out=starts[1:])
            buf = np.frombuffer(joined, dtype=np.uint8)
        over = sizes > self.spec.max_event_bytes
        if over.any():
            cause[over] = _PRE
        sources = self._sources()
        self._vocab.refresh(sources)
        vfree = self._allocation(sources) if self._vocab_keys else _NO_CODES
        vused = np.zeros(len(self._vopen), dtype=np.int64)
        fout = np.empty((len(self._float_names), n), dtype=np.float64)
        iout = np.empty((len(self._code_names), n), dtype=np.int64)
        vout = np.empty((len(self._order), n), dtype=np.bool_)
        vout[self._always] = True
        entity = np.empty(n, dtype=np.int64)
        etime = np.empty(n, dtype=np.float64)
        cap = n * self._vocab_keys
        new_e = np.empty(cap, dtype=np.int64)
        new_t = np.empty(cap, dtype=np.int64)
        new_k = np.empty(cap, dtype=np.int8)
        state = np.zeros(2, dtype=np.int64)
        row = 0
        while True:
            strings, ints = self._vocab.strings, self._vocab.ints
            row = scan_batch(
                buf,
                starts,
                row,
                cause,
                self._kind,
                self._null_ok,
                self._required,
                self._plain,
                self._column,
                self._table,
                self._vrow,
                self._lo,
                self._hi,
                self._keys.buf,
                self._keys.off,
                self._keys.slots,
                self._keys.tid,
                strings.buf,
                strings.off,
                strings.tid,
                strings.val,
                strings.slots,
                strings.meta,
                ints.key,
                ints.val,
                ints.slots,
                ints.meta,
                self._vopen,
                self._vmaxlen,
                self._vroom,
                vfree,
                self._vfree_off,
                self._vlive,
                vused,
                new_e,
                new_t,
                new_k,
                state,
                self.spec.strict,
                self.spec.max_fields,
                _POW10,
                self._time_scale,
                fout,
                iout,
                vout,
                entity,
                etime,
            )
            if row >= n:
                break
            # A new value did not fit the tables: grow them, scan on from that row.
            size = int(starts[row + 1] - starts[row])
            strings.reserve(max(len(strings), 64), max(int(strings.meta[1]), size))
            ints.reserve(max(int(ints.meta[0]), 64))
        new_entities = self._commit(sources, int(state[0]), new_e, new_t, new_k)
        self.last_causes = cause
        ok = cause == 0
        all_ok = not bool(state[1]) and (n == 0 or bool(ok.all()))
        if not all_ok:
            fout, iout, vout = fout[:, ok], iout[:, ok], vout[:, ok]
            entity, etime = entity[ok], etime[ok]
        columns, valid = self._columns(fout, iout, vout)
        has_entity = self.spec.entity is not None
        has_time = self.spec.event_time is not None
        if all_ok:
            return Batch(
                stream=self.spec.name,
                n_input=n,
                rows=np.arange(n, dtype=np.int64),
                columns=columns,
                valid=valid,
                entity=entity if has_entity else None,
                event_time=etime if has_time else None,
                new_entities=new_entities,
            )
        rows = np.flatnonzero(ok).astype(np.int64)
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
            new_entities=new_entities + sub.new_entities,
            entity_overflow=sub.entity_overflow,
            violations=tuple(
                Violation(int(back[v.index]), v.field, v.reason, v.detail) for v in sub.violations
            ),
            limit_hits=sub.limit_hits,
            fallback_rows=len(back),
        )

    def _commit(
        self,
        sources: list[tuple[int, _Vocabulary]],
        count: int,
        new_e: npt.NDArray[np.int64],
        new_t: npt.NDArray[np.int64],
        new_k: npt.NDArray[np.int8],
    ) -> int:
        """Give the vocabularies the kernel's new values (in the order met); returns
        how many were entity ids."""
        if count == 0:
            return 0
        strings, ints = self._vocab.strings, self._vocab.ints
        entries = new_e[:count].tolist()
        tables = new_t[:count].tolist()
        textual = (new_k[:count] < 2).tolist()
        added = 0
        for tid, vocab in sources:
            values: list[Any] = []
            codes: list[int] = []
            for e, t, text in zip(entries, tables, textual, strict=True):
                if t != tid:
                    continue
                if text:
                    values.append(strings.key(e).decode("ascii"))
                    codes.append(int(strings.val[e]))
                else:
                    values.append(int(ints.key[e]))
                    codes.append(int(ints.val[e]))
            if values:
                vocab.commit(values, codes)
                if tid == self._entity_tid and self.spec.entity is not None:
                    added = len(values)
        return added

    def _columns(
        self,
        fout: npt.NDArray[np.float64],
        iout: npt.NDArray[np.int64],
        vout: npt.NDArray[np.bool_],
    ) -> tuple[dict[str, npt.NDArray[Any]], dict[str, npt.NDArray[np.bool_]]]:
        """The columns and masks in the msgspec decoder's layout (same key order)."""
        columns: dict[str, npt.NDArray[Any]] = {}
        valid: dict[str, npt.NDArray[np.bool_]] = {}
        for i, (name, numeric, col) in enumerate(self._order):
            columns[name] = fout[col] if numeric else iout[col]
            valid[name] = vout[i]
        return columns, valid


_NO_CODES = np.zeros(0, dtype=np.int64)
