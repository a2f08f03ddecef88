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
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["parse_event_times", "valid_time_value"]


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
    try:  # the common case: every value a number
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
    is_text = np.fromiter((isinstance(v, str) for v in values), dtype=np.bool_, count=n)
    out = np.full(n, np.nan, dtype=np.float64)
    numbers = [v for v, t in zip(values, is_text.tolist(), strict=True) if not t]
    if numbers:
        num = np.full(len(numbers), np.nan, dtype=np.float64)
        for i, v in enumerate(numbers):  # only batches mixing text and numbers get here
            if valid_time_value(v):
                with contextlib.suppress(OverflowError):
                    num[i] = float(v)
        out[~is_text] = num * scale
    if is_text.any():
        out[is_text] = _iso_seconds([v for v, t in zip(values, is_text.tolist(), strict=True) if t])
    return out, ~np.isfinite(out)


def _iso_seconds(texts: list[str]) -> npt.NDArray[np.float64]:
    """ISO-8601 texts to epoch seconds (NaN where unparsable), vectorised."""
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
