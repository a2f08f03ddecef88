"""Event times of a whole batch as float64 epoch seconds, from numbers or ISO-8601 text.

Numbers are epoch values in the stream's ``event_time_unit`` (s, ms, us, ns).
Strings are ISO-8601 date-times parsed by numpy's ``datetime64`` over the whole
batch at once: ``YYYY-MM-DD``, ``YYYY-MM-DDTHH:MM[:SS[.fraction]]`` (``T`` or a
space between date and time), optionally followed by ``Z`` or an offset
``+HH:MM`` / ``-HH:MM``. Text without a zone is UTC. Anything else (other
types, unparsable text, ``NaT``, non-finite numbers) is marked unparsable; the
decoder rejects those events with ``invalid_time``.

>>> import numpy as np
>>> seconds, bad = parse_event_times(
...     [1.5, "1970-01-01T00:00:02Z", "1970-01-01T01:00:03+01:00", "soon", 4000], scale=1.0
... )
>>> seconds[:3].tolist(), bad.tolist()
([1.5, 2.0, 3.0], [False, False, False, True, False])
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from itertools import compress, repeat
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["parse_event_times", "valid_time_value"]

_NUMBER_TYPES = frozenset({int, float})


def valid_time_value(value: Any) -> bool:
    """Whether ``value`` has a type an event time may have (a finite number or text)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int | str)


def parse_event_times(
    values: Sequence[Any], scale: float
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Epoch seconds for ``values`` and a mask of those that could not be parsed.

    ``scale`` turns an epoch number into seconds (1e-3 for milliseconds). Shapes:
    both arrays have ``len(values)`` entries; unparsable entries hold NaN.
    """
    n = len(values)
    # The common case: every value a number. Text (even "20250") and bools take the
    # general path whatever the rest of the batch holds, so a value's verdict never
    # depends on its neighbours.
    if not set(map(type, values)) <= _NUMBER_TYPES:
        return _mixed(values, scale)
    try:
        out = np.fromiter(values, dtype=np.float64, count=n)
    except (TypeError, ValueError, OverflowError):
        return _mixed(values, scale)
    if scale != 1.0:
        out *= scale
    bad = ~np.isfinite(out)
    return out, bad


def _mixed(
    values: Sequence[Any], scale: float
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    n = len(values)
    is_text = np.fromiter(map(isinstance, values, repeat(str)), dtype=np.bool_, count=n)
    out = np.full(n, np.nan, dtype=np.float64)
    numbers = list(compress(values, (~is_text).tolist()))
    if numbers:
        num = np.full(len(numbers), np.nan, dtype=np.float64)
        for i, v in enumerate(numbers):  # only batches mixing text and numbers get here
            if valid_time_value(v):
                with contextlib.suppress(OverflowError):
                    num[i] = float(v)
        out[~is_text] = num * scale
    if is_text.any():
        out[is_text] = _iso_seconds(list(compress(values, is_text.tolist())))
    return out, ~np.isfinite(out)


def _iso_seconds(texts: list[str]) -> npt.NDArray[np.float64]:
    """ISO-8601 texts to epoch seconds (NaN where unparsable), vectorised."""
    fast = _fixed_width_seconds(texts)
    if fast is not None:
        return fast
    return _general_seconds(texts)


_SEP = {4: ord("-"), 7: ord("-"), 13: ord(":"), 16: ord(":")}
_DIGITS = (0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18)
_CUMULATIVE_DAYS = np.array([0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334], np.int64)
_MONTH_DAYS = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], np.int64)


def _fixed_width_seconds(texts: list[str]) -> npt.NDArray[np.float64] | None:
    """The common case in one pass of integer arithmetic: every text
    ``YYYY-MM-DDTHH:MM:SS`` (``T`` or space), the same length, optionally with a
    ``.`` and 1-6 fraction digits, then ``Z``, ``+HH:MM``/``-HH:MM`` or nothing.
    Gives exactly what the general path gives; None when the batch is not like that."""
    try:
        raw = np.array(texts, dtype=np.bytes_)
    except UnicodeEncodeError:
        return None
    n, width = len(texts), raw.dtype.itemsize
    if width < 19 or width > 32:
        return None
    m = np.frombuffer(raw.tobytes(), dtype=np.uint8).reshape(n, width)
    if not m[:, width - 1].all():  # shorter texts are NUL-padded: lengths differ
        return None
    tail = bytes(m[0, 19:].astype(np.uint8))
    zone = 0
    if tail.endswith(b"Z"):
        zone = 1
    elif len(tail) >= 6 and tail[-6:-5] in (b"+", b"-") and tail[-3:-2] == b":":
        zone = 6
    frac = width - 19 - zone
    if frac == 1 or frac > 7:
        return None
    ok = np.ones(n, dtype=np.bool_)
    for col, char in _SEP.items():
        ok &= m[:, col] == char
    ok &= (m[:, 10] == ord("T")) | (m[:, 10] == ord(" "))
    digit_cols = list(_DIGITS) + list(range(20, 19 + frac))
    if zone == 6:
        digit_cols += [width - 5, width - 4, width - 2, width - 1]
        ok &= ((m[:, width - 6] == ord("+")) | (m[:, width - 6] == ord("-"))) & (
            m[:, width - 3] == ord(":")
        )
    elif zone == 1:
        ok &= m[:, width - 1] == ord("Z")
    if frac:
        ok &= m[:, 19] == ord(".")
    digits = m[:, digit_cols]
    ok &= ((digits >= ord("0")) & (digits <= ord("9"))).all(axis=1)
    if not ok.all():
        return None

    class _Columns:  # one int64 column of digit values at a time
        def __getitem__(self, key: tuple[slice, int]) -> npt.NDArray[np.int64]:
            return m[key].astype(np.int64) - ord("0")

    d = _Columns()
    year = d[:, 0] * 1000 + d[:, 1] * 100 + d[:, 2] * 10 + d[:, 3]
    month = d[:, 5] * 10 + d[:, 6]
    day = d[:, 8] * 10 + d[:, 9]
    hour, minute = d[:, 11] * 10 + d[:, 12], d[:, 14] * 10 + d[:, 15]
    second = d[:, 17] * 10 + d[:, 18]
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_ok = (month >= 1) & (month <= 12)
    m0 = np.clip(month - 1, 0, 11)
    days_in = _MONTH_DAYS[m0] + (leap & (m0 == 1))
    valid = month_ok & (day >= 1) & (day <= days_in) & (hour < 24) & (minute < 60) & (second < 60)
    if not valid.all():
        return None  # the general path marks exactly which ones
    # Days since 1970-01-01 (proleptic Gregorian), whole arrays at once.
    y = year - 1
    days = (
        365 * (year - 1970)
        + (y // 4 - y // 100 + y // 400)
        - (1969 // 4 - 1969 // 100 + 1969 // 400)
        + _CUMULATIVE_DAYS[m0]
        + (leap & (m0 >= 2))
        + day
        - 1
    )
    micros = ((days * 24 + hour) * 60 + minute) * 60 + second
    micros *= 1_000_000
    if frac:
        scale = 10 ** (6 - (frac - 1))
        fraction = np.zeros(n, dtype=np.int64)
        for col in range(20, 19 + frac):
            fraction = fraction * 10 + d[:, col]
        micros += fraction * scale
    seconds: npt.NDArray[np.float64] = micros.astype(np.float64) / 1e6
    if zone == 6:
        minutes = (d[:, width - 5] * 10 + d[:, width - 4]) * 60.0 + (
            d[:, width - 2] * 10 + d[:, width - 1]
        )
        offset: npt.NDArray[np.float64] = np.where(m[:, width - 6] == ord("-"), -minutes, minutes)
        # The general path subtracts an offset (0.0 without one): the same rounding here.
        return seconds - offset * 60.0
    return seconds - np.zeros(n, dtype=np.float64)


def _general_seconds(texts: list[str]) -> npt.NDArray[np.float64]:
    arr = np.array(texts, dtype=np.str_)
    if arr.size == 0:
        return np.empty(0, dtype=np.float64)
    offset = np.zeros(arr.size, dtype=np.float64)
    zulu = np.strings.endswith(arr, "Z")
    if zulu.any():
        arr = np.where(zulu, np.strings.slice(arr, 0, -1), arr)
    lengths = np.strings.str_len(arr)
    tail = np.strings.slice(arr, -6, None)
    sign = np.strings.slice(tail, 0, 1)
    has_offset = (lengths > 10) & np.isin(sign, ["+", "-"]) & (np.strings.slice(tail, 3, 4) == ":")
    if has_offset.any():
        hh = np.strings.slice(tail, 1, 3)
        mm = np.strings.slice(tail, 4, 6)
        digits = np.strings.isdigit(hh) & np.strings.isdigit(mm) & has_offset
        minutes = np.zeros(arr.size, dtype=np.float64)
        minutes[digits] = hh[digits].astype(np.float64) * 60.0 + mm[digits].astype(np.float64)
        minutes[has_offset & ~digits] = np.nan
        offset = np.where(sign == "-", -minutes, minutes) * 60.0
        arr = np.where(has_offset, np.strings.slice(arr, 0, -6), arr)
    # numpy also reads words such as "now" and "today": only dates pass.
    dated = np.strings.isdigit(np.strings.slice(arr, 0, 4)) & (np.strings.slice(arr, 4, 5) == "-")
    arr = np.where(dated, arr, "NaT")
    try:
        stamps = arr.astype("datetime64[us]")
    except (ValueError, OverflowError):  # some entry is not a date: find which, one by one
        stamps = np.array([_one(t) for t in arr.tolist()], dtype="datetime64[us]")
    seconds = stamps.astype(np.int64).astype(np.float64) / 1e6
    seconds[np.isnat(stamps)] = np.nan
    return seconds - offset


def _one(text: str) -> np.datetime64:
    try:
        return np.datetime64(text, "us")
    except (ValueError, OverflowError):
        return np.datetime64("NaT", "us")
