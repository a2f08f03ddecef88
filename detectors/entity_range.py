"""Out of range: the share of a device's recent events with a value outside its
field's plausible range exceeds ``rate``.

The entity table keeps an EWMA of the out-of-range indicator (any tracked field
outside ``[low, high]``), so "recent" means about ``1/oor_alpha`` events. A device
qualifies after ``min_events`` events. The score is that rate.

Threshold from the budget: a device that is never out of range never fires; the
rate is a rule on plausible ranges, so its false alarms are the share of healthy
devices that really send implausible values (set the ranges accordingly).

>>> import numpy as np
>>> from detectors.entity_base import AlarmBudget, FleetContext
>>> from detectors.entity_table import EntityTable, TableParams
>>> t = EntityTable(("x",), TableParams(oor_alpha=0.1), low=np.array([0.0]),
...                 high=np.array([10.0]))
>>> s = t.assign(np.repeat([0, 1], 20))
>>> vals = np.r_[np.full(20, 50.0), np.full(20, 5.0)][:, None]
>>> _ = t.update(s, np.r_[np.arange(20.0), np.arange(20.0)], vals)
>>> v = OutOfRange(AlarmBudget()).judge(t, FleetContext(20.0, np.zeros(1), np.ones(1)))
>>> v.active.tolist(), [round(float(x), 2) for x in v.score]
([True, False], [0.88, 0.0])
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from detectors.base import DetectorError
from detectors.entity_base import AlarmBudget, EntityVerdict, FleetContext
from detectors.entity_table import EntityTable

__all__ = ["OutOfRange"]


class OutOfRange:
    """Too many recent out-of-range values (module docstring)."""

    name: ClassVar[str] = "out_of_range"

    def __init__(self, budget: AlarmBudget, rate: float = 0.2, min_events: int = 10) -> None:
        if not 0.0 < rate < 1.0 or min_events < 1:
            raise DetectorError(f"rate must be in (0, 1) and min_events >= 1, got {rate}")
        self.budget = budget
        self.rate = rate
        self.min_events = min_events

    def judge(self, table: EntityTable, context: FleetContext) -> EntityVerdict:
        h = table.high_water
        score = table.oor_rate[:h].astype(np.float64)
        qualified = (table.count[:h] >= self.min_events) & (table.code[:h] >= 0)
        return EntityVerdict(qualified & (score > self.rate), score, self.rate)
