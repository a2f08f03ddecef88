"""The kernel's decimal conversion (Clinger's fast path, then Eisel-Lemire) is exact:
every number it converts equals Python's ``float(text)`` bit for bit, and whatever it
cannot decide is left to the msgspec fallback."""

from __future__ import annotations

import json
import math
import struct
from decimal import ROUND_DOWN, ROUND_UP, Decimal, localcontext
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.pipeline.jsonscan import (
    _E10_MAX,
    _E10_MIN,
    _P10_HI,
    _P10_LO,
    _POW10,
    _eisel_lemire,
    _mul64,
    _number,
    _number_call,
    _powers_of_ten,
)
from tests.test_jsonscan import _pair, assert_same

_SETTINGS: dict[str, Any] = {
    "deadline": None,
    "derandomize": True,
    "suppress_health_check": [HealthCheck.too_slow],
}
_U64 = 2**64 - 1
MIN_NORMAL = 2.2250738585072014e-308
MAX_FLOAT = 1.7976931348623157e308


def _bits(x: float) -> int:
    return int(struct.unpack("<q", struct.pack("<d", x))[0])


def _parse(text: str) -> list[tuple[int, float]]:
    """``(status, value)`` of the careful and of the common parser, each of which must
    read the whole text."""
    buf = np.frombuffer(text.encode(), dtype=np.uint8)
    out = []
    for parse in (_number, _number_call):
        p, status, value, _integral, _w = parse(buf, 0, len(buf), _POW10)
        assert status == 2 or p == len(buf), (text, parse)
        out.append((int(status), float(value)))
    return out


def assert_exact(text: str) -> list[int]:
    """Both parsers either convert ``text`` to ``float(text)`` exactly or leave it to
    the fallback (status 1); the statuses."""
    want = _bits(float(text))
    statuses = []
    for status, value in _parse(text):
        assert status in (0, 1), text
        if status == 0:
            assert _bits(value) == want, (text, value, float(text))
        statuses.append(status)
    return statuses


def _decimal_text(d: Decimal) -> str:
    """``d`` as digits and an exponent (never an integer literal)."""
    sign, digits, exponent = d.as_tuple()
    assert isinstance(exponent, int)
    return ("-" if sign else "") + "".join(map(str, digits)) + f"e{exponent}"


def _midpoint(x: float) -> Fraction:
    """The exact value halfway between ``x`` and the next double up."""
    return Fraction(x) + Fraction(math.ulp(x)) / 2


def _rounded(value: Fraction, digits: int, rounding: str) -> Decimal:
    with localcontext() as ctx:
        ctx.prec = digits
        ctx.rounding = rounding
        return Decimal(value.numerator) / Decimal(value.denominator)


# ---------------------------------------------------------------- the pieces


def test_powers_of_ten_are_the_rounded_down_128_bit_mantissas() -> None:
    # rows of Go's strconv detailedPowersOfTen (the same table: hi, lo halves)
    pinned = {
        -342: (0xEEF453D6923BD65A, 0x113FAA2906A13B3F),
        -1: (0xCCCCCCCCCCCCCCCC, 0xCCCCCCCCCCCCCCCC),
        0: (0x8000000000000000, 0x0),
        43: (0xE596B7B0C643C719, 0x6D9CCD05D0000000),
        308: (0x8E679C2F5E44FF8F, 0x570F09EAA7EA7648),
    }
    for e, (hi, lo) in pinned.items():
        assert (int(_P10_HI[e - _E10_MIN]), int(_P10_LO[e - _E10_MIN])) == (hi, lo)
    assert len(_P10_HI) == len(_P10_LO) == _E10_MAX - _E10_MIN + 1
    for e in range(_E10_MIN, _E10_MAX + 1):
        m = (int(_P10_HI[e - _E10_MIN]) << 64) | int(_P10_LO[e - _E10_MIN])
        # 2**b <= 10**e < 2**(b + 1), and m = floor(10**e * 2**(127 - b))
        b = (10**e).bit_length() - 1 if e >= 0 else -((10**-e).bit_length())
        assert m == math.floor(Fraction(10) ** e * Fraction(2) ** (127 - b)), e
        assert m >> 127 == 1
    top, low = _powers_of_ten(-1, 0)
    assert top.dtype == low.dtype == np.uint64


@settings(max_examples=300, **_SETTINGS)
@given(st.integers(0, _U64), st.integers(0, _U64))
def test_mul64_is_the_128_bit_product(a: int, b: int) -> None:
    hi, lo = _mul64(np.uint64(a), np.uint64(b))
    assert (int(hi) << 64) | int(lo) == a * b


def test_mul64_extremes() -> None:
    for a, b in [(_U64, _U64), (_U64, 1), (2**63, 2**63), (2**32 - 1, 2**32 + 1), (0, _U64)]:
        hi, lo = _mul64(np.uint64(a), np.uint64(b))
        assert (int(hi) << 64) | int(lo) == a * b


@settings(max_examples=400, **_SETTINGS)
@given(st.integers(1, _U64), st.integers(_E10_MIN - 10, _E10_MAX + 10))
def test_eisel_lemire_is_correctly_rounded_or_undecided(w: int, e10: int) -> None:
    ok, value = _eisel_lemire(np.uint64(w), e10)
    want = float(f"{w}e{e10}")
    if ok:
        assert _bits(value) == _bits(want)
    elif _E10_MIN <= e10 <= _E10_MAX and MIN_NORMAL <= want <= MAX_FLOAT:
        # undecided only next to a tie or a double: within 2**-8 of a half ulp
        half = Fraction(math.ulp(want)) / 2
        r = Fraction(w) * Fraction(10) ** e10 / half
        assert abs(r - round(r)) < Fraction(1, 2**8), (w, e10)


def test_eisel_lemire_decides_almost_every_shortest_double() -> None:
    rng = np.random.default_rng(14)
    bits = rng.integers(0x0010_0000_0000_0000, 0x7FEF_FFFF_FFFF_FFFF, 20_000, dtype=np.int64)
    undecided = 0
    for x in bits.view(np.float64).tolist():
        digits, _, exp = f"{x:.16e}".partition("e")
        w, e10 = int(digits.replace(".", "")), int(exp) - 16
        ok, value = _eisel_lemire(np.uint64(w), e10)
        want = float(f"{w}e{e10}")
        if ok:
            assert _bits(value) == _bits(want), (w, e10)
        else:
            undecided += 1
    assert undecided <= 4  # 0.02%: 0 here


# ---------------------------------------------------------------- the parsers


EDGES = [
    "-0.0", "-0.000", "-0e5", "0.0", "0e0", "0e400", "0.0e-400", "-0.0e-400",
    "1e22", "1e23", "-1e23", "1.0e23", "9007199254740993.0", "9007199254740993e0",
    "9007199254740995e0", "0.30000000000000004", "1.2345678901234567e-05", "5e-324",
    "4.9406564584124654e-324", "2.2250738585072009e-308", "2.2250738585072011e-308",
    "2.2250738585072014e-308", "2.2250738585072019e-308", "1.7976931348623157e308",
    "1.7976931348623158e308", "1.7976931348623159e308", "-1.7976931348623157E+308", "1e308",
    "1e309", "1e-342", "1e-343", "9999999999999999999e-343", "1e-400", "1.5e-400", "1e400",
    "9999999999999999999", "9999999999999999999.0", "18446744073709551615.0",
    "18446744073709551616.0", "12345678901234567890.5", "0.12345678901234567890123",
    "1.0000000000000000000000001", "1.00000000000000011102230246251565404236316680908203125",
    "1.00000000000000011102230246251565404236316680908203124",
    "1.00000000000000011102230246251565404236316680908203126", "123456789012345678e-10",
    "7.2057594037927933e16", "3.0517578125e-05", "8.98846567431158e307", "0.1e-21",
    "100000000000000000000000.0", "0." + "0" * 30 + "1", "1" + "0" * 40 + ".0e-40",
]  # fmt: skip


@pytest.mark.parametrize("text", EDGES)
def test_edge_numbers(text: str) -> None:
    assert_exact(text)


def test_what_is_decided() -> None:
    decided = ["0.30000000000000004", "1.2345678901234567e-05", "9999999999999999999.0"]
    decided += ["1.7976931348623157e308", "2.2250738585072014e-308", "12345678901234567890.5"]
    # exact values the rounded-down powers leave undecided, found another way
    decided += ["6812229848299539.0", "617655779845522.25", "9182368114234214.0"]
    decided += ["9007199254740993.0"]  # an integer: rounded once, to 2**53
    for text in decided:
        assert assert_exact(text) == [0, 0], text
    # ties (1e23 lies halfway between two doubles), subnormals, infinities, -0.0
    for text in ["1e23", "5e-324", "1e309", "1.5e-400", "-0.0"]:
        assert assert_exact(text) == [1, 1], text


@settings(max_examples=600, **_SETTINGS)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_repr_of_any_double(x: float) -> None:
    assert_exact(repr(x))
    assert_exact(json.dumps(x))
    if x != 0:
        assert_exact(f"{x:.18e}")  # 19 digits, not the shortest
        assert_exact(f"{x:.19e}")  # 20


@settings(max_examples=300, **_SETTINGS)
@given(st.integers(2**53, 2**64 + 2**12))
def test_integers_written_as_decimals(i: int) -> None:
    assert_exact(f"{i}.0")
    assert_exact(f"{i}e0")
    assert_exact(repr(float(i)))
    if i < 2**64:
        assert assert_exact(f"{i}.0") == [0, 0]


@settings(max_examples=600, **_SETTINGS)
@given(
    st.booleans(),
    st.integers(0, 10**21),
    st.text("0123456789", min_size=0, max_size=24),
    st.one_of(st.none(), st.integers(-420, 420)),
)
def test_digit_strings_and_exponents(neg: bool, whole: int, frac: str, exp: int | None) -> None:
    text = ("-" if neg else "") + str(whole)
    if frac:
        text += "." + frac
    if exp is not None:
        text += f"e{exp}"
    if not frac and exp is None:
        text += ".0"
    assert_exact(text)


@settings(max_examples=300, **_SETTINGS)
@given(st.floats(min_value=MIN_NORMAL, max_value=MAX_FLOAT), st.sampled_from([17, 18, 19, 20]))
def test_halfway_and_near_halfway(x: float, digits: int) -> None:
    mid = _midpoint(x)
    assert_exact(_decimal_text(Decimal(mid.numerator) / Decimal(mid.denominator)))  # 28 digits
    for rounding in (ROUND_DOWN, ROUND_UP):
        assert_exact(_decimal_text(_rounded(mid, digits, rounding)))
    if mid.denominator < 2**80:  # a short exact decimal: the tie itself
        d = _rounded(mid, 400, ROUND_DOWN)
        if Fraction(d) == mid:
            assert_exact(_decimal_text(d))


def test_exact_ties() -> None:
    """An exact tie is never decided by the truncated product: by an exact route (an
    integer below 2**64, a binary fraction) or else by the fallback."""
    for x in (1.0, 9007199254740992.0, 1e22, 0.5, 3.0517578125e-05):
        mid = _midpoint(x)
        d = _rounded(mid, 400, ROUND_DOWN)
        assert Fraction(d) == mid
        text = _decimal_text(d.normalize())
        assert float(text) in (x, math.nextafter(x, math.inf))
        assert_exact(text)


# ---------------------------------------------------------------- through the decoder


def _repr_rows(n: int, seed: int) -> list[bytes | None]:
    rng = np.random.default_rng(seed)
    out: list[bytes | None] = []
    scale = 10.0 ** rng.integers(-12, 12, size=n)
    for i, (a, b, c) in enumerate((rng.random((n, 3)) * 1000).tolist()):
        out.append(
            json.dumps(
                {"x": a, "y": b * scale[i], "n": int(c) if i % 3 else c, "ts": 1.79e9 + c}
            ).encode()
        )
    return out


def test_shortest_floats_take_the_compiled_path_and_match_msgspec() -> None:
    stream = {
        "name": "s",
        "topic": "t",
        "event_time": "ts",
        "fields": {"x": {"type": "float"}, "y": {"type": "float"}, "n": {"type": "int"}},
    }
    compiled, reference = _pair(stream)
    payloads = _repr_rows(3_000, 1)
    got = compiled.decode(payloads)
    assert_same(got, reference.decode_msgspec(payloads))
    # the rows with a non-integral "n" are rejected by msgspec (the fallback) alike
    assert got.fallback_rows <= 1_000 + 30
    xs = np.array([json.loads(p)["x"] for p in payloads if p is not None])
    assert got.columns["x"].tobytes() == xs[got.rows].tobytes()


def test_numbers_through_every_numeric_field_kind() -> None:
    stream = {
        "name": "s",
        "topic": "t",
        "entity": "id",
        "event_time": "ts",
        "fields": {"x": {"type": "float", "range": [-1e300, 1e300]}, "n": {"type": "int"}},
    }
    texts = [t for t in EDGES if not t.startswith("-0")] + ["0.1", "7", "-3", "1.5"]
    payloads: list[bytes | None] = []
    for i, t in enumerate(texts):
        payloads.append(b'{"id": 1, "ts": 5, "n": 1, "x": %s}' % t.encode())
        payloads.append(b'{"id": 1, "ts": 5, "x": 1, "n": %s}' % t.encode())
        payloads.append(b'{"id": 1, "x": 1, "n": 1, "ts": %s}' % t.encode())
        payloads.append(b'{"x": 1, "n": 1, "ts": 5, "id": %s}' % t.encode())
        payloads.append(b'{"x": %s, "n": %d, "ts": 5, "id": %d}' % (t.encode(), i, i))
    compiled, reference = _pair(stream)
    assert_same(compiled.decode(payloads), reference.decode_msgspec(payloads))


@pytest.mark.slow
def test_many_doubles_and_digit_strings_against_float() -> None:
    """Bulk, seeded: random bit patterns' shortest repr and 17-20 digit forms, and
    random 15-21 digit mantissas with exponents across the table, through both
    parsers; every conversion exact, and shortest reprs (almost) all decided."""
    rng = np.random.default_rng(2026)
    doubles = rng.integers(1, 0x7FF0_0000_0000_0000, 100_000, dtype=np.int64).view(np.float64)
    undecided = 0
    for x in doubles.tolist():
        if MIN_NORMAL <= x <= MAX_FLOAT:
            undecided += assert_exact(repr(x))[1]
        else:
            assert_exact(repr(x))
        assert_exact(f"{x:.{int(rng.integers(16, 20))}e}")
    assert undecided <= 2  # of 100,000: 0 here
    digits = rng.integers(15, 22, 100_000)
    exponents = rng.integers(-360, 330, 100_000)
    for n, e in zip(digits.tolist(), exponents.tolist(), strict=True):
        mantissa = "".join(map(str, rng.integers(0, 10, n).tolist())).lstrip("0") or "0"
        assert_exact(f"{mantissa}e{e}")
        assert_exact(f"0.{mantissa}e{e}")
