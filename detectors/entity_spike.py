"""Spikes: a value far from the device's own recent history (EWMA z-score).

The entity table computes, before folding each in-range value in, its z-score
against the device's EWMA mean and standard deviation (``alpha`` ~ ``2/alpha``
values of memory) and records the latest value beyond ``z`` as the device's
spike; the value then enters the EWMA clipped to ``z`` standard deviations, so a
spike does not mask the next one. A device is *spiking* while its latest spike is
among its last ``hold_events`` events. The score is the spike's ``|z|``.

Threshold from the budget: every in-range value of every field is one check, so
``p = share / (events_per_day * fields)``. The EWMA standard deviation is itself
an estimate from about ``1/alpha`` effective values, so ``z`` is taken from
Student's t with ``1/alpha`` degrees of freedom (half the EWMA's nominal
``(2-alpha)/alpha``, for the autocorrelation of consecutive estimates):
``z = t.isf(p/2, 1/alpha)``. With the defaults (1 false alert per day, 1e8 events,
5 fields, 5 detectors, alpha 0.02) that is z ~ 7.75.

>>> import numpy as np
>>> from detectors.entity_base import AlarmBudget, FleetContext
>>> from detectors.entity_table import EntityTable, TableParams
>>> det = Spike(AlarmBudget(fields=5, detectors=5))
>>> round(det.z, 2)
7.75
>>> t = EntityTable(("x",), TableParams(spike_z=det.z, warmup=30))
>>> rng = np.random.default_rng(1)
>>> x = rng.normal(0, 1, (200, 1)); x[150] = 25.0
>>> _ = t.update(t.assign(np.zeros(200, dtype=np.int64)), np.arange(200.0), x)
>>> int(t.spike_at[0]), round(float(t.spike_z[0]), 1)
(151, 28.5)
>>> det.judge(t, FleetContext(200.0, np.zeros(1), np.ones(1))).active.tolist()
[False]
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from scipy import stats

from detectors.base import DetectorError
from detectors.entity_base import AlarmBudget, EntityVerdict, FleetContext
from detectors.entity_table import EntityTable

__all__ = ["Spike"]


class Spike:
    """A recent value beyond ``z`` EWMA standard deviations (module docstring)."""

    name: ClassVar[str] = "spike"

    def __init__(self, budget: AlarmBudget, z: float | None = None, hold_events: int = 20) -> None:
        if z is not None and not z > 0:
            raise DetectorError(f"z must be > 0, got {z}")
        if hold_events < 1:
            raise DetectorError(f"hold_events must be >= 1, got {hold_events}")
        self.budget = budget
        if z is None:
            p = budget.per_check(budget.events_per_day * max(budget.fields, 1))
            z = float(stats.t.isf(p / 2.0, 1.0 / budget.alpha))
        self.z = z
        self.hold_events = hold_events

    def judge(self, table: EntityTable, context: FleetContext) -> EntityVerdict:
        h = table.high_water
        at = table.spike_at[:h]
        recent = (at >= 0) & (table.count[:h] - at < self.hold_events)
        score = np.where(recent, np.abs(table.spike_z[:h].astype(np.float64)), 0.0)
        return EntityVerdict(recent & (table.code[:h] >= 0), score, self.z)
