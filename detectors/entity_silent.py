"""Silent devices: no event for much longer than the device's own typical gap.

A device is silent when the time since its last event (against the partition's
event-time watermark, or wall-clock-advanced watermark while the whole partition
is quiet) exceeds its silence limit::

    limit = max(gap * (1 + min_rel), gap + factor * gap_dev, min_seconds)

``gap`` and ``gap_dev`` are the device's EWMA inter-arrival gap and its EWMA
absolute deviation (kept by the entity table). Periodic devices (small
``gap_dev``) are caught after a little more than one missed interval; bursty
devices get a proportionally longer limit.

Threshold from the budget: with ``factor=None`` it is chosen so that even devices
with memoryless (exponential, Poisson-process) gaps give at most this detector's
share of ``false_alerts_per_day``. For exponential gaps of mean ``m`` the mean
absolute deviation is ``2m/e`` and ``P(gap > m + k 2m/e) = exp(-(1 + 2k/e))``; with
one check per event, ``k = (ln(1/p) - 1) e / 2`` where ``p`` is the per-event
false-alarm probability.

>>> import numpy as np
>>> from detectors.entity_base import AlarmBudget, FleetContext
>>> from detectors.entity_table import EntityTable
>>> t = EntityTable(("x",))
>>> s = t.assign(np.array([0] * 50 + [1] * 50))
>>> rng = np.random.default_rng(0)  # device 0 reports every 60 s, device 1 at random
>>> times = np.r_[np.arange(50) * 60.0, np.cumsum(rng.exponential(60.0, 50))]
>>> _ = t.update(s, times, np.zeros((100, 1)))
>>> det = Silent(AlarmBudget(events_per_day=1e6, detectors=1))
>>> round(det.factor, 1), det.limit(t).round().tolist()
(17.4, [90.0, 609.0])
>>> det.judge(t, FleetContext(2940.0 + 89.0, np.zeros(1), np.ones(1))).active.tolist()
[False, False]
>>> det.judge(t, FleetContext(2940.0 + 91.0, np.zeros(1), np.ones(1))).active.tolist()
[True, False]
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from detectors.base import DetectorError
from detectors.entity_base import AlarmBudget, EntityVerdict, FleetContext
from detectors.entity_table import EntityTable

__all__ = ["Silent"]


class Silent:
    """No event for longer than the device's silence limit (module docstring)."""

    name: ClassVar[str] = "silent"

    def __init__(
        self,
        budget: AlarmBudget,
        factor: float | None = None,
        min_rel: float = 0.5,
        min_seconds: float = 0.0,
        min_events: int = 5,
    ) -> None:
        if factor is not None and not factor > 0:
            raise DetectorError(f"factor must be > 0, got {factor}")
        if not min_rel >= 0 or not min_seconds >= 0 or min_events < 2:
            raise DetectorError("min_rel and min_seconds must be >= 0, min_events >= 2")
        self.budget = budget
        if factor is None:
            p = budget.per_check(budget.events_per_day)
            factor = max((math.log(1.0 / p) - 1.0) * math.e / 2.0, 1.0)
        self.factor = factor
        self.min_rel = min_rel
        self.min_seconds = min_seconds
        self.min_events = min_events

    def limit(self, table: EntityTable) -> npt.NDArray[np.float64]:
        """Each slot's silence limit in seconds."""
        h = table.high_water
        gap, dev = table.gap[:h], table.gap_dev[:h]
        return np.maximum(
            np.maximum(gap * (1.0 + self.min_rel), gap + self.factor * dev), self.min_seconds
        )

    def judge(self, table: EntityTable, context: FleetContext) -> EntityVerdict:
        h = table.high_water
        age = context.now - table.last_time[:h]
        limit = self.limit(table)
        with np.errstate(divide="ignore", invalid="ignore"):
            score = np.where(limit > 0, age / limit, 0.0)
        score = np.nan_to_num(score, nan=0.0)
        qualified = (table.count[:h] >= self.min_events) & (table.code[:h] >= 0)
        return EntityVerdict(qualified & (score > 1.0), score, 1.0)
