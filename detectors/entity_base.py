"""The entity-detector contract: judge every entity of a table at once.

An entity detector reads the dense arrays of an :class:`~detectors.entity_table.EntityTable`
(one partition's devices) and returns, for every slot, whether the condition holds
and a score. It is pure: the table and a :class:`FleetContext` in, an
:class:`EntityVerdict` out; no per-entity Python.

False-alarm control is operational: an :class:`AlarmBudget` states how many false
device-alerts per day the whole fleet may raise (``false_alerts_per_day``) and the
scale of the fleet (events per day, devices, evaluations per day); each detector
turns its share of the budget into a threshold, documented in its module. The
budget is split evenly over the enabled detectors.

>>> b = AlarmBudget(false_alerts_per_day=1.0, events_per_day=1e8, detectors=5)
>>> b.per_check(1e8)
2e-09
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from detectors.base import DetectorError

if TYPE_CHECKING:
    from detectors.entity_table import EntityTable

__all__ = ["AlarmBudget", "EntityDetector", "EntityVerdict", "FleetContext"]

F8 = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class AlarmBudget:
    """How many false device-alerts per day the fleet may raise, and its scale.

    ``events_per_day``: events the whole fleet sends per day (an order of
    magnitude is enough: thresholds move with its logarithm); ``devices``: how many
    devices are watched; ``evaluations_per_day``: how often the fleet is judged;
    ``fields``: numeric fields per event; ``detectors``: how many detectors share
    the budget; ``alpha``: the EWMA weight of the tables (spike and fleet z-scores
    use it); ``warmup``: values before an entity's z-scores count.
    """

    false_alerts_per_day: float = 1.0
    events_per_day: float = 1e8
    devices: int = 100_000
    evaluations_per_day: float = 1440.0
    fields: int = 1
    detectors: int = 1
    alpha: float = 0.02
    warmup: int = 30

    def __post_init__(self) -> None:
        if not self.false_alerts_per_day > 0:
            raise DetectorError(
                f"false_alerts_per_day must be > 0, got {self.false_alerts_per_day}"
            )
        if not self.events_per_day > 0 or self.devices < 1 or self.evaluations_per_day <= 0:
            raise DetectorError("events_per_day, devices and evaluations_per_day must be > 0")

    def per_check(self, checks_per_day: float) -> float:
        """The false-alarm probability one check may have: this detector's share of
        the daily budget over ``checks_per_day`` independent checks."""
        share = self.false_alerts_per_day / max(self.detectors, 1)
        return min(share / checks_per_day, 0.5)


@dataclass(frozen=True, slots=True)
class FleetContext:
    """What a detector needs beyond the table.

    ``now``: the partition's event-time watermark (advanced by wall-clock time
    while the partition is quiet); ``center`` / ``scale``: per field, the fleet's
    robust center (median of the devices' EWMA means) and scale (1.4826 x MAD) at
    the time of the evaluation (NaN when unknown).
    """

    now: float
    center: F8
    scale: F8


@dataclass(frozen=True, slots=True)
class EntityVerdict:
    """Per slot (the table's first ``high_water`` slots): condition and score.

    ``score`` is on the scale of ``threshold``: the condition holds where
    ``score >= threshold`` and the entity qualifies (enough history).
    """

    active: Mask
    score: F8
    threshold: float


@runtime_checkable
class EntityDetector(Protocol):
    """What the fleet stage needs of an entity detector."""

    name: ClassVar[str]

    def judge(self, table: EntityTable, context: FleetContext) -> EntityVerdict:
        """The condition for every slot of ``table``."""
        ...
