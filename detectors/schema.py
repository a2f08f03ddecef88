"""Vectorised value checks of a decoded batch against declared field rules.

Decoding already enforces presence, JSON types and nullability per row; what is
left is judged here on whole columns at once: finiteness and declared ranges of
numeric fields, declared categories of categorical fields.

>>> import numpy as np
>>> check = SchemaCheck([ColumnRule("t", numeric=True, low=-40.0, high=125.0)])
>>> reason, field = check.check({"t": np.array([20.0, 180.0, np.inf])},
...                             {"t": np.array([True, True, True])})
>>> [SCHEMA_REASONS[r] if r else "ok" for r in reason]
['ok', 'out_of_range', 'non_finite']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["SCHEMA_REASONS", "ColumnRule", "SchemaCheck"]

# Index 0 means "passes"; the others are reason codes in the order they are checked.
SCHEMA_REASONS = ("", "non_finite", "out_of_range", "unknown_category")
_NON_FINITE, _OUT_OF_RANGE, _UNKNOWN_CATEGORY = 1, 2, 3


@dataclass(frozen=True, slots=True)
class ColumnRule:
    """The value rules of one column.

    Numeric columns are float64; categorical columns are int64 codes where
    ``0..n_categories-1`` are the declared categories and anything else (the
    decoder uses -1) is a category outside the declared set.
    """

    name: str
    numeric: bool
    low: float | None = None
    high: float | None = None
    n_categories: int | None = None  # None: the category set is open


class SchemaCheck:
    """Checks whole columns; returns per row the first failing rule, if any."""

    def __init__(self, rules: Sequence[ColumnRule]) -> None:
        self.rules = tuple(rules)

    def check(
        self,
        columns: Mapping[str, npt.NDArray[np.float64] | npt.NDArray[np.int64]],
        valid: Mapping[str, npt.NDArray[np.bool_]],
    ) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.int16]]:
        """Per row: the reason index into ``SCHEMA_REASONS`` (0 = passes) and the
        index of the rule that failed (meaningful where the reason is not 0).

        A row failing several rules reports the first in rule order. Columns are
        1-D arrays of equal length ``n``; ``valid`` marks the non-null entries.
        """
        n = len(next(iter(valid.values()))) if valid else 0
        reason = np.zeros(n, dtype=np.int8)
        field = np.zeros(n, dtype=np.int16)
        for index, rule in enumerate(self.rules):
            col = columns[rule.name]
            ok = valid[rule.name]
            if rule.numeric:
                bad = ok & ~np.isfinite(col)
                self._mark(reason, field, bad, _NON_FINITE, index)
                if rule.low is not None or rule.high is not None:
                    with np.errstate(invalid="ignore"):
                        outside = np.zeros(n, dtype=np.bool_)
                        if rule.low is not None:
                            outside |= col < rule.low
                        if rule.high is not None:
                            outside |= col > rule.high
                    self._mark(reason, field, ok & outside & np.isfinite(col), _OUT_OF_RANGE, index)
            elif rule.n_categories is not None:
                unknown = ok & ((col < 0) | (col >= rule.n_categories))
                self._mark(reason, field, unknown, _UNKNOWN_CATEGORY, index)
        return reason, field

    def field_reasons(
        self,
        columns: Mapping[str, npt.NDArray[np.float64] | npt.NDArray[np.int64]],
        valid: Mapping[str, npt.NDArray[np.bool_]],
    ) -> dict[str, npt.NDArray[np.int8]]:
        """Per field with at least one failing value: per row the reason index into
        ``SCHEMA_REASONS`` (0 = passes). Every field is judged on its own, so a row
        can fail several fields; fields that pass everywhere are left out.

        >>> check = SchemaCheck([ColumnRule("t", numeric=True, high=1.0),
        ...                      ColumnRule("s", numeric=False, n_categories=2)])
        >>> out = check.field_reasons({"t": np.array([0.5, 2.0]), "s": np.array([1, -1])},
        ...                           {"t": np.array([True, True]), "s": np.array([True, True])})
        >>> {k: v.tolist() for k, v in out.items()}
        {'t': [0, 2], 's': [0, 3]}
        """
        out: dict[str, npt.NDArray[np.int8]] = {}
        for rule in self.rules:
            col = columns[rule.name]
            ok = valid[rule.name]
            reason = np.zeros(len(ok), dtype=np.int8)
            if rule.numeric:
                finite = np.isfinite(col)
                reason[ok & ~finite] = _NON_FINITE
                if rule.low is not None or rule.high is not None:
                    with np.errstate(invalid="ignore"):
                        outside = np.zeros(len(ok), dtype=np.bool_)
                        if rule.low is not None:
                            outside |= col < rule.low
                        if rule.high is not None:
                            outside |= col > rule.high
                    reason[ok & finite & outside] = _OUT_OF_RANGE
            elif rule.n_categories is not None:
                reason[ok & ((col < 0) | (col >= rule.n_categories))] = _UNKNOWN_CATEGORY
            if reason.any():
                out[rule.name] = reason
        return out

    @staticmethod
    def _mark(
        reason: npt.NDArray[np.int8],
        field: npt.NDArray[np.int16],
        bad: npt.NDArray[np.bool_],
        code: int,
        index: int,
    ) -> None:
        first = bad & (reason == 0)
        if first.any():
            reason[first] = code
            field[first] = index
