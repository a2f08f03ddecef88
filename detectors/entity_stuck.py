"""Stuck (flatline) devices: the same value for N events or T seconds, or a
variance below a floor.

A field of a device is stuck when its current run of one identical value is at
least ``events`` long *and* has lasted at least ``seconds`` of event time, or
(``var_floor > 0``) when its EWMA variance has fallen below ``var_floor`` after
warm-up. A device is stuck when any tracked field is. The score is the longest
current run (events).

Threshold from the budget: a healthy continuous sensor repeats a value only by
quantisation. Set ``events`` above the longest run the readings' resolution makes
plausible (for a value with ``q`` equally likely readings the chance of a run of
``events`` is ``q**-(events-1)``); the default 50 events covers anything
coarser than a few readings.

>>> import numpy as np
>>> from detectors.entity_base import AlarmBudget, FleetContext
>>> from detectors.entity_table import EntityTable
>>> t = EntityTable(("x", "y"))
>>> s = t.assign(np.array([0] * 6 + [1] * 6))
>>> vals = np.c_[np.r_[np.ones(6), np.arange(6.0)], np.arange(12.0)]
>>> _ = t.update(s, np.r_[np.arange(6.0), np.arange(6.0)], vals)
>>> v = Stuck(AlarmBudget(), events=5).judge(t, FleetContext(6.0, np.zeros(2), np.ones(2)))
>>> v.active.tolist(), v.score.tolist()
([True, False], [6.0, 1.0])
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from detectors.base import DetectorError
from detectors.entity_base import AlarmBudget, EntityVerdict, FleetContext
from detectors.entity_table import EntityTable

__all__ = ["Stuck"]


class Stuck:
    """One value repeated too long, or too little variance (module docstring)."""

    name: ClassVar[str] = "stuck"

    def __init__(
        self,
        budget: AlarmBudget,
        events: int = 50,
        seconds: float = 0.0,
        var_floor: float = 0.0,
    ) -> None:
        if events < 2 or not seconds >= 0 or not var_floor >= 0:
            raise DetectorError("events must be >= 2, seconds and var_floor >= 0")
        self.budget = budget
        self.events = events
        self.seconds = seconds
        self.var_floor = var_floor

    def judge(self, table: EntityTable, context: FleetContext) -> EntityVerdict:
        h = table.high_water
        run = table.run[:h]
        lasted = table.last_time[:h, None] - table.run_start[:h]
        stuck = (run >= self.events) & (np.nan_to_num(lasted, nan=0.0) >= self.seconds)
        if self.var_floor > 0:
            warm = table.nval[:h] >= self.budget.warmup
            stuck |= warm & (table.var[:h] < self.var_floor)
        score = run.max(axis=1).astype(np.float64) if run.shape[1] else np.zeros(h)
        active = stuck.any(axis=1) & (table.code[:h] >= 0)
        return EntityVerdict(active, score, float(self.events))
