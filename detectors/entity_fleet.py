"""Drift from the fleet: a device's recent mean far from the fleet's at the same time.

For every field the fleet's robust center and scale are the median and
1.4826 x MAD of the devices' recent EWMA means (devices past warm-up), computed by
:func:`fleet_center` over every table of the stream at evaluation time: the tables
this process holds and, with several replicas, the means of the devices of other
replicas' partitions (:func:`state_means` of their checkpointed tables), so every
replica judges against the same fleet. A device
drifts from the fleet when, for any field, ``|mean - center| / scale > z`` (only
while it is current: seen within ``stale`` typical gaps, so a silent device's
frozen mean neither counts nor pages). A change of the whole fleet's environment
moves the center with the devices and pages nobody; one miscalibrated sensor
moves alone and is caught. The score is the largest ``|z|`` over fields.

Threshold from the budget: each evaluation checks every device and field, so
``p = share / (devices * fields * evaluations_per_day)`` and ``z = norm.isf(p/2)``
(consecutive evaluations are strongly correlated, so this is conservative).

>>> import numpy as np
>>> from detectors.entity_base import AlarmBudget, FleetContext
>>> from detectors.entity_table import EntityTable, TableParams
>>> t = EntityTable(("x",), TableParams(recent_alpha=0.1, warmup=5))
>>> rng = np.random.default_rng(3)
>>> codes = np.tile(np.arange(50), 40)
>>> x = rng.normal(20.0, 1.0, (2000, 1)) + (codes == 7)[:, None] * 5.0
>>> _ = t.update(t.assign(codes), np.repeat(np.arange(40.0), 50), x)
>>> center, scale = fleet_center([t])
>>> det = FleetDrift(AlarmBudget(devices=50, fields=1, alpha=0.1, warmup=5))
>>> v = det.judge(t, FleetContext(40.0, center, scale))
>>> np.flatnonzero(v.active).tolist(), round(det.z, 2)
([7], 4.35)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import numpy.typing as npt
from scipy import stats

from detectors.base import DetectorError
from detectors.entity_base import AlarmBudget, EntityVerdict, FleetContext
from detectors.entity_table import EntityTable, EntityTableState

__all__ = ["FieldMeans", "FleetDrift", "fleet_center", "fresh", "state_means"]

# Per field, the recent means that enter the fleet's statistic.
FieldMeans = tuple[npt.NDArray[np.float64], ...]

F8 = npt.NDArray[np.float64]


def fresh(table: EntityTable, now: float, stale: float = 3.0) -> npt.NDArray[np.bool_]:
    """Devices seen within ``stale`` typical gaps of ``now`` (their means are current)."""
    h = table.high_water
    age = now - table.last_time[:h]
    return (table.code[:h] >= 0) & (age <= stale * table.gap[:h])


def state_means(state: EntityTableState, warmup: int, stale: float = 3.0) -> FieldMeans:
    """Per field, the recent means of a checkpointed table's devices that enter the
    fleet's statistic (warmed up, seen within ``stale`` typical gaps of its watermark):
    what :func:`fleet_center` takes of a table at its watermark.

    >>> st = EntityTableState(("x",), ("a", "b"), {"recent": np.array([[1.0], [2.0]]),
    ...     "nval": np.array([[9], [1]]), "last_time": np.array([10.0, 10.0]),
    ...     "gap": np.array([1.0, 1.0])}, 10.0, 0, 0)
    >>> [m.tolist() for m in state_means(st, warmup=5)]
    [[1.0]]
    """
    a = state.arrays
    if not len(state.ids):
        return tuple(np.empty(0) for _ in state.fields)
    age = state.watermark - np.asarray(a["last_time"], np.float64)
    current = age <= stale * np.asarray(a["gap"], np.float64)
    recent = np.asarray(a["recent"], np.float64)
    nval = np.asarray(a["nval"])
    return tuple(
        recent[:, f][(nval[:, f] >= warmup) & current].copy() for f in range(len(state.fields))
    )


def fleet_center(
    tables: Sequence[EntityTable],
    nows: Sequence[float] | None = None,
    stale: float = 3.0,
    remote: Sequence[FieldMeans] = (),
) -> tuple[F8, F8]:
    """Per field: median and 1.4826 x MAD of the warmed-up devices' recent means.

    With ``nows`` (each table's current time) only devices seen within ``stale``
    typical gaps count: a silent device's frozen mean is not the fleet's present.
    ``remote``: the qualifying means of tables other processes hold (``state_means``).
    NaN where fewer than 3 devices qualify.
    """
    if not tables and not remote:
        return np.empty(0), np.empty(0)
    n_fields = len(tables[0].fields) if tables else len(remote[0])
    center = np.full(n_fields, np.nan)
    scale = np.full(n_fields, np.nan)
    current = [
        fresh(t, now, stale) if nows is not None else t.code[: t.high_water] >= 0
        for t, now in zip(tables, nows if nows is not None else [0.0] * len(tables), strict=True)
    ]
    for f in range(n_fields):
        parts = []
        for t, cur in zip(tables, current, strict=True):
            h = t.high_water
            ok = (t.nval[:h, f] >= t.params.warmup) & cur
            parts.append(t.recent[:h, f][ok])
        parts.extend(r[f] for r in remote)
        means = np.concatenate(parts)
        if len(means) >= 3:
            c = float(np.median(means))
            center[f] = c
            scale[f] = 1.4826 * float(np.median(np.abs(means - c)))
    return center, scale


class FleetDrift:
    """A device's EWMA mean far from the fleet's median (module docstring)."""

    name: ClassVar[str] = "fleet_drift"

    def __init__(
        self,
        budget: AlarmBudget,
        z: float | None = None,
        min_scale: float = 0.0,
        stale: float = 3.0,
    ) -> None:
        if z is not None and not z > 0:
            raise DetectorError(f"z must be > 0, got {z}")
        if not min_scale >= 0:
            raise DetectorError(f"min_scale must be >= 0, got {min_scale}")
        self.budget = budget
        if z is None:
            checks = budget.devices * max(budget.fields, 1) * budget.evaluations_per_day
            z = float(stats.norm.isf(budget.per_check(checks) / 2.0))
        self.z = z
        self.min_scale = min_scale
        if not stale > 0:
            raise DetectorError(f"stale must be > 0, got {stale}")
        self.stale = stale

    def judge(self, table: EntityTable, context: FleetContext) -> EntityVerdict:
        h = table.high_water
        scale = np.maximum(context.scale, self.min_scale)
        with np.errstate(divide="ignore", invalid="ignore"):
            dev = np.abs(table.recent[:h] - context.center) / scale
        warm = (table.nval[:h] >= self.budget.warmup) & fresh(table, context.now, self.stale)[
            :, None
        ]
        dev = np.where(warm & np.isfinite(dev), dev, 0.0)
        score = dev.max(axis=1) if dev.shape[1] else np.zeros(h)
        return EntityVerdict((score > self.z) & (table.code[:h] >= 0), score, self.z)
