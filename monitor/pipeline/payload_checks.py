"""Cheap checks on raw payloads before the JSON parser sees them, and the lenient
per-row parse that tells a bad row's problems apart.

Pre-checks run over a whole batch with one join and a few C scans
(``bytes.isascii``, ``in``, a numpy count); only rows that could fail one are looked
at one by one:

* ``invalid_utf8``: the bytes are not UTF-8;
* ``too_deep``: arrays/objects nested deeper than ``max_depth``;
* ``too_many_fields``: more than ``max_fields`` object members, counted at every
  depth (duplicates included).

Depth and members are counted on the payload with its strings blanked out, so
brackets and colons inside strings do not count.

>>> structure(b'{"a": [1, {"b": "[[[:"}], "c": {}}')
(3, 3)
>>> for failed in precheck([b'{"a": 1}', b'\\xff', b'[[[[1]]]]'], max_depth=3, max_fields=10):
...     print(failed)
(1, 'invalid_utf8', 'the payload is not UTF-8 (byte 0)')
(2, 'too_deep', 'nesting depth 4 > max_depth 3')
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["NonFinite", "TooLarge", "lenient_parse", "precheck", "structure"]

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_OPEN = np.zeros(256, dtype=np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1
_BRACE = ord("{")
_CHUNK_BYTES = 65_536
# More digits than this cannot be a float64 (whose largest value has 309 digits).
_MAX_INT_DIGITS = 400


def structure(payload: bytes) -> tuple[int, int]:
    """(nesting depth, object members at every depth) of a JSON payload.

    Exact for valid JSON; for invalid JSON an upper-bound-like estimate that is
    still a deterministic function of the bytes.
    """
    blank = _STRING.sub(b'""', payload)
    buf = np.frombuffer(blank, dtype=np.uint8)
    steps = _OPEN[buf]
    depth = int(np.cumsum(steps, dtype=np.int64).max()) if len(steps) else 0
    members = blank.count(b":")
    return max(depth, 0), members


def precheck(
    payloads: Sequence[bytes],
    *,
    max_depth: int,
    max_fields: int,
    sizes: npt.NDArray[np.int64] | None = None,
) -> list[tuple[int, str, str]]:
    """``(position, reason, detail)`` for each payload failing a pre-check, in order.

    ``sizes`` (the payloads' lengths) saves recounting them when the caller has them.
    """
    n = len(payloads)
    if n == 0:
        return []
    if sizes is None:
        sizes = np.fromiter(map(len, payloads), dtype=np.int64, count=n)
    failed: dict[int, tuple[str, str]] = {}
    # Scan in chunks of about 64 KiB: small enough to be reused heap memory (a fresh
    # multi-megabyte buffer per batch costs more in page faults than the scan itself).
    step = max(1, int(_CHUNK_BYTES * n // max(int(sizes.sum()), 1)))
    nested = np.zeros(n, dtype=np.bool_)
    for start in range(0, n, step):
        chunk = payloads[start : start + step]
        joined = b"".join(chunk)
        if not joined.isascii():
            for pos in range(start, start + len(chunk)):
                if payloads[pos].isascii():
                    continue
                try:
                    payloads[pos].decode("utf-8")
                except UnicodeDecodeError as exc:
                    failed[pos] = ("invalid_utf8", f"the payload is not UTF-8 (byte {exc.start})")
        # Flat objects have no '[' and one '{' each: only other chunks need a closer look.
        if b"[" in joined or (
            int(np.count_nonzero(np.frombuffer(joined, dtype=np.uint8) == _BRACE)) > len(chunk)
        ):
            nested[start : start + len(chunk)] = True
    suspects = np.zeros(n, dtype=np.bool_)
    # Depth d needs d opening brackets (2d bytes); count them only where that is possible.
    deep_enough = nested & (sizes >= 2 * (max_depth + 1))
    if deep_enough.any():
        pos_deep = np.flatnonzero(deep_enough)
        cands = [payloads[i] for i in pos_deep.tolist()]
        opens = np.fromiter(map(bytes.count, cands, repeat(b"[")), np.int64, len(cands))
        opens += np.fromiter(map(bytes.count, cands, repeat(b"{")), np.int64, len(cands))
        suspects[pos_deep[opens > max_depth]] = True
    # A member takes at least 5 bytes ('"":0,'), so small payloads cannot have too many.
    check_members = (sizes - 1) // 5 > max_fields
    if check_members.any():
        pos_big = np.flatnonzero(check_members)
        cands = [payloads[i] for i in pos_big.tolist()]
        colons = np.fromiter(map(bytes.count, cands, repeat(b":")), np.int64, len(cands))
        suspects[pos_big[colons > max_fields]] = True
    for pos in np.flatnonzero(suspects).tolist():
        if pos in failed:
            continue
        depth, members = structure(payloads[pos])
        if depth > max_depth:
            failed[pos] = ("too_deep", f"nesting depth {depth} > max_depth {max_depth}")
        elif members > max_fields:
            failed[pos] = ("too_many_fields", f"{members} object members > max_fields {max_fields}")
    return [(pos, *failed[pos]) for pos in sorted(failed)]


@dataclass(frozen=True, slots=True)
class TooLarge:
    """An integer literal of more than 400 digits (far beyond any float64)."""

    text: str


@dataclass(frozen=True, slots=True)
class NonFinite:
    """A ``NaN``, ``Infinity`` or ``-Infinity`` literal (not JSON, but common)."""

    text: str


def _parse_int(text: str) -> int | TooLarge:
    if len(text) - text.startswith("-") > _MAX_INT_DIGITS:
        return TooLarge(text[:20] + "...")
    return int(text)


def lenient_parse(payload: bytes) -> tuple[Any, bool]:
    """Python's JSON parser, with integers of more than 400 digits and NaN/Infinity
    literals kept as markers; returns the value and whether any NaN/Infinity literal
    was seen. A float literal too large for a float64 parses as ``inf`` (a NaN/Infinity
    literal never does: it is a ``NonFinite``), so an ``inf`` means too large.

    Raises ``UnicodeDecodeError``, ``ValueError`` (not JSON) or ``RecursionError``.
    """
    seen: list[bool] = []

    def constant(text: str) -> NonFinite:
        seen.append(True)
        return NonFinite(text)

    # Decode as UTF-8 first: given bytes, json.loads guesses UTF-16/32 from NUL bytes.
    text = payload.decode("utf-8")
    value = json.loads(text, parse_int=_parse_int, parse_constant=constant)
    return value, bool(seen)
