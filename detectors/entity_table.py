"""Per-entity (device) state of one partition, in dense arrays indexed by slot.

An :class:`EntityTable` holds, for every tracked entity, the sufficient statistics
the entity detectors (``detectors/entity_*.py``) judge from. Nothing is a Python
object per entity: each quantity is one numpy array over slots (and fields).

Per entity: event count, first and last event time, an EWMA of the inter-arrival
gap and of its absolute deviation, invalid-event count (an event with a null
tracked field), out-of-range count and an EWMA of the out-of-range indicator, and
the latest spike (event number, z-score, field and value). Per entity and numeric
field: last value, run length of that value and the event time the run started,
EWMA mean and variance, a shorter-memory *recent* EWMA mean, in-range value count
and the z-score of the last value.

``update`` folds a whole batch of one partition in with one compiled loop, event by
event in arrival order (so per-entity order is the partition's order):

* event time: the partition's watermark is the largest event time seen. An event
  older than ``watermark - lateness`` is *late*: it is counted and not folded into
  any entity (policy ``drop``). Other out-of-order events are folded in arrival
  order; ``last_time`` only moves forward and only forward steps count as gaps.
* a value outside the field's ``[low, high]`` counts as out of range and does not
  move the EWMA mean/variance (nor can it be a spike); it does count for runs.
* spikes: before an in-range value is folded, its z-score against the entity's own
  EWMA mean and standard deviation is computed; beyond ``spike_z`` (after
  ``warmup`` values) it is recorded as the entity's latest spike. The value then
  enters the EWMA clipped to ``+-spike_z`` standard deviations (a Huber-type update),
  so one wild value does not blow the variance up.
* EWMA: the weight of the ``k``-th value is ``max(alpha, 1/k)``, i.e. the exact
  running mean and population variance until ``k = 1/alpha``, then an EWMA.

Memory: ``bytes_per_entity()`` reports what one slot costs (about 300 bytes for 5
fields: 83 + 52 per field); the code-to-slot index adds 4 bytes per entity of the stream vocabulary.

>>> import numpy as np
>>> t = EntityTable(fields=("temp",), params=TableParams(alpha=0.5, warmup=2, spike_z=5.0))
>>> slots = t.assign(np.array([7, 7, 7, 7, 9], dtype=np.int64))
>>> slots.tolist()
[0, 0, 0, 0, 1]
>>> times = np.array([0.0, 10.0, 20.0, 30.0, 5.0])
>>> t.update(slots, times, np.array([[1.0], [1.0], [1.0], [100.0], [2.0]]))  # late events
0
>>> t.count[:2].tolist(), t.last_time[:2].tolist(), t.gap[:2].tolist()
([4, 1], [30.0, 5.0], [10.0, 0.0])
>>> int(t.run[0, 0]), int(t.spike_at[0]), round(float(t.spike_value[0]), 1)
(1, 4, 100.0)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit

from detectors.base import DetectorError

__all__ = ["EntityTable", "EntityTableState", "TableParams"]

F8 = npt.NDArray[np.float64]
I8 = npt.NDArray[np.int64]

_INITIAL_CAPACITY = 1024
_STATE_VERSION = 1
# Per-entity arrays (name, dtype) and per-entity-and-field arrays.
_ENTITY_ARRAYS: tuple[tuple[str, str], ...] = (
    ("code", "i8"),
    ("count", "i8"),
    ("first_time", "f8"),
    ("last_time", "f8"),
    ("gap", "f8"),
    ("gap_dev", "f8"),
    ("invalid", "i4"),
    ("oor", "i4"),
    ("oor_rate", "f4"),
    ("spike_at", "i8"),
    ("spike_z", "f4"),
    ("spike_field", "i2"),
    ("spike_value", "f8"),
    ("status", "u1"),
)
_FIELD_ARRAYS: tuple[tuple[str, str], ...] = (
    ("last", "f8"),
    ("run", "i4"),
    ("run_start", "f8"),
    ("mean", "f8"),
    ("var", "f8"),
    ("recent", "f8"),
    ("nval", "i4"),
    ("last_z", "f4"),
)


@dataclass(frozen=True, slots=True)
class TableParams:
    """How the per-entity statistics are kept.

        ``alpha``: EWMA weight of a new value for mean and variance (about ``2/alpha``
        values of memory); ``gap_alpha``: EWMA weight of a new inter-arrival gap;
        ``oor_alpha``: EWMA weight of the out-of-range indicator (the "recent events"
        the out-of-range rate is over, about ``1/oor_alpha`` events); ``spike_z``: the
        z-score at which a value is a spike; ``warmup``: in-range values an entity needs
        before its z-scores count; ``lateness``: seconds of event time an event may lag
        its partition's watermark and still be folded in; ``recent_alpha``: EWMA weight
    of the *recent* mean (the one compared with the fleet's, a shorter memory than
    ``alpha``'s).

        >>> TableParams(alpha=2.0)
        Traceback (most recent call last):
        ...
        detectors.base.DetectorError: alpha must be in (0, 1], got 2.0
    """

    alpha: float = 0.02
    gap_alpha: float = 0.1
    oor_alpha: float = 0.05
    spike_z: float = 8.0
    warmup: int = 30
    lateness: float = 60.0
    recent_alpha: float = 0.1

    def __post_init__(self) -> None:
        for name in ("alpha", "gap_alpha", "oor_alpha", "recent_alpha"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise DetectorError(f"{name} must be in (0, 1], got {value}")
        if not self.spike_z > 0:
            raise DetectorError(f"spike_z must be > 0, got {self.spike_z}")
        if self.warmup < 1:
            raise DetectorError(f"warmup must be >= 1, got {self.warmup}")
        if not self.lateness >= 0:
            raise DetectorError(f"lateness must be >= 0, got {self.lateness}")


@dataclass(frozen=True, slots=True)
class EntityTableState:
    """A table's checkpoint: its entities' ids (in slot order) and their arrays.

    Only occupied slots are kept (compacted), so a restored table may number its
    slots differently; ``ids`` are the stream's entity ids, which stay meaningful
    across processes and restarts (vocabulary codes do not).
    """

    fields: tuple[str, ...]
    ids: tuple[str | int, ...]  # as they appear in events (JSON strings or integers)
    arrays: dict[str, npt.NDArray[Any]]
    watermark: float
    late: int
    evicted: int

    def to_dict(self) -> dict[str, Any]:
        """Plain values and numpy arrays (what ``monitor.runtime.state.encode_state`` stores)."""
        return {
            "version": _STATE_VERSION,
            "fields": list(self.fields),
            "ids": list(self.ids),
            "arrays": dict(self.arrays),
            "watermark": self.watermark,
            "late": self.late,
            "evicted": self.evicted,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EntityTableState:
        if d.get("version") != _STATE_VERSION:
            raise DetectorError(f"entity table state version {d.get('version')!r} is not 1")
        return cls(
            fields=tuple(d["fields"]),
            ids=tuple(i if isinstance(i, int) else str(i) for i in d["ids"]),
            arrays={k: np.asarray(v) for k, v in d["arrays"].items()},
            watermark=float(d["watermark"]),
            late=int(d["late"]),
            evicted=int(d["evicted"]),
        )


class EntityTable:
    """One partition's entities: vocabulary code -> slot, and the arrays per slot.

    ``assign`` maps a batch's entity codes to slots (new entities get free slots,
    up to ``capacity_limit``; ``-1`` when there is no room). ``update`` folds the
    batch in. ``evict`` frees slots. See the module docstring for the semantics.
    """

    def __init__(
        self,
        fields: tuple[str, ...],
        params: TableParams | None = None,
        low: F8 | None = None,
        high: F8 | None = None,
        capacity_limit: int = 100_000,
        min_sd: F8 | None = None,
    ) -> None:
        self.fields = tuple(fields)
        self.params = params if params is not None else TableParams()
        n_fields = len(self.fields)
        self.low = np.full(n_fields, -np.inf) if low is None else np.asarray(low, np.float64)
        self.high = np.full(n_fields, np.inf) if high is None else np.asarray(high, np.float64)
        self.min_sd = np.zeros(n_fields) if min_sd is None else np.asarray(min_sd, np.float64)
        self.capacity_limit = capacity_limit
        self._clear()

    def _clear(self) -> None:
        for name, _ in _ENTITY_ARRAYS + _FIELD_ARRAYS:
            if hasattr(self, name):
                delattr(self, name)
        self.watermark = -math.inf
        self.late = 0
        self.evicted = 0
        self.code_to_slot = np.full(0, -1, dtype=np.int32)
        self._free: list[npt.NDArray[np.int64]] = []
        self.high_water = 0  # slots below this have been handed out at least once
        self.tracked = 0
        self._allocate(min(_INITIAL_CAPACITY, max(self.capacity_limit, 1)))

    # -- arrays ------------------------------------------------------------------------
    code: I8
    count: I8
    first_time: F8
    last_time: F8
    gap: F8
    gap_dev: F8
    invalid: npt.NDArray[np.int32]
    oor: npt.NDArray[np.int32]
    oor_rate: npt.NDArray[np.float32]
    spike_at: I8
    spike_z: npt.NDArray[np.float32]
    spike_field: npt.NDArray[np.int16]
    spike_value: F8
    status: npt.NDArray[np.uint8]
    last: F8
    run: npt.NDArray[np.int32]
    run_start: F8
    mean: F8
    var: F8
    recent: F8
    nval: npt.NDArray[np.int32]
    last_z: npt.NDArray[np.float32]

    def _allocate(self, capacity: int) -> None:
        n_fields = len(self.fields)
        for name, dtype in _ENTITY_ARRAYS:
            new = _blank(name, dtype, (capacity,))
            if hasattr(self, name):
                old = getattr(self, name)
                new[: len(old)] = old
            setattr(self, name, new)
        for name, dtype in _FIELD_ARRAYS:
            new = _blank(name, dtype, (capacity, n_fields))
            if hasattr(self, name):
                old = getattr(self, name)
                new[: len(old)] = old
            setattr(self, name, new)
        self.capacity = capacity

    @classmethod
    def bytes_per_entity(cls, n_fields: int) -> tuple[int, int]:
        """(bytes per entity independent of fields, bytes per entity and field).

        >>> EntityTable.bytes_per_entity(5)
        (83, 52)
        """
        base = sum(np.dtype(d).itemsize for _, d in _ENTITY_ARRAYS)
        per_field = sum(np.dtype(d).itemsize for _, d in _FIELD_ARRAYS)
        return base, per_field

    def nbytes(self) -> int:
        """Bytes held by the arrays (allocated capacity, and the code index)."""
        names = [n for n, _ in _ENTITY_ARRAYS + _FIELD_ARRAYS]
        return sum(int(getattr(self, n).nbytes) for n in names) + int(self.code_to_slot.nbytes)

    @property
    def occupied(self) -> npt.NDArray[np.bool_]:
        """Which slots below ``high_water`` hold an entity."""
        return self.code[: self.high_water] >= 0

    # -- slots -------------------------------------------------------------------------
    def assign(self, codes: I8, room: int | None = None) -> I8:
        """Slots for a batch's entity codes; new codes get slots while room lasts.

        ``room`` caps how many new entities may be added (default: up to
        ``capacity_limit``); codes < 0 (no vocabulary entry) and codes without room
        get slot -1.
        """
        codes = np.asarray(codes, dtype=np.int64)
        top = int(codes.max()) if len(codes) else -1
        if top >= len(self.code_to_slot):
            grown = np.full(max(top + 1, 2 * len(self.code_to_slot)), -1, dtype=np.int32)
            grown[: len(self.code_to_slot)] = self.code_to_slot
            self.code_to_slot = grown
        safe = np.maximum(codes, 0)
        slots = np.where(codes >= 0, self.code_to_slot[safe], -1).astype(np.int64)
        missing = (slots < 0) & (codes >= 0)
        if missing.any():
            new = np.unique(codes[missing])  # ascending codes: deterministic slot order
            limit = self.capacity_limit - self.tracked
            if room is not None:
                limit = min(limit, room)
            new = new[: max(limit, 0)]
            if len(new):
                self.code_to_slot[new] = self._take(len(new)).astype(np.int32)
                self.code[self.code_to_slot[new]] = new
                self.tracked += len(new)
                slots = np.where(codes >= 0, self.code_to_slot[safe], -1).astype(np.int64)
        return slots

    def _take(self, k: int) -> I8:
        free = np.concatenate(self._free) if self._free else np.empty(0, np.int64)
        free.sort()
        taken = free[:k]
        self._free = [free[k:]] if len(free) > k else []
        need = k - len(taken)
        if need:
            start = self.high_water
            if start + need > self.capacity:
                self._allocate(max(2 * self.capacity, start + need))
            taken = np.concatenate([taken, np.arange(start, start + need, dtype=np.int64)])
            self.high_water = start + need
        self._reset(taken)
        return taken

    def _reset(self, slots: I8) -> None:
        for name, dtype in _ENTITY_ARRAYS + _FIELD_ARRAYS:
            getattr(self, name)[slots] = _blank(name, dtype, (1,))[0]

    def evict(self, slots: I8) -> None:
        """Forget the entities in ``slots`` (their slots become free)."""
        slots = np.unique(np.asarray(slots, dtype=np.int64))
        slots = slots[self.code[slots] >= 0]
        if not len(slots):
            return
        self.code_to_slot[self.code[slots]] = -1
        self._reset(slots)
        self._free.append(slots)
        self.tracked -= len(slots)
        self.evicted += len(slots)

    # -- updates -----------------------------------------------------------------------
    def update(
        self,
        slots: I8,
        times: F8,
        values: F8,
        valid: npt.NDArray[np.bool_] | None = None,
    ) -> int:
        """Fold a batch in (``values``: events x fields); returns the late events."""
        n = len(slots)
        if n == 0:
            return 0
        if valid is None:
            valid = np.ones(values.shape, dtype=np.bool_)
        p = self.params
        scalars = np.array(
            [
                p.alpha,
                p.gap_alpha,
                p.oor_alpha,
                p.spike_z,
                float(p.warmup),
                p.lateness,
                p.recent_alpha,
            ]
        )
        wm = np.array([self.watermark, 0.0])
        _fold(
            np.ascontiguousarray(slots, dtype=np.int64),
            np.ascontiguousarray(times, dtype=np.float64),
            np.ascontiguousarray(values, dtype=np.float64),
            np.ascontiguousarray(valid, dtype=np.bool_),
            self.low,
            self.high,
            self.min_sd,
            scalars,
            wm,
            self.count,
            self.first_time,
            self.last_time,
            self.gap,
            self.gap_dev,
            self.invalid,
            self.oor,
            self.oor_rate,
            self.spike_at,
            self.spike_z,
            self.spike_field,
            self.spike_value,
            self.last,
            self.run,
            self.run_start,
            self.mean,
            self.var,
            self.recent,
            self.nval,
            self.last_z,
        )
        self.watermark = float(wm[0])
        late = int(wm[1])
        self.late += late
        return late

    # -- state -------------------------------------------------------------------------
    def state(self, names: list[Any]) -> EntityTableState:
        """The checkpoint; ``names[code]`` is the entity id of vocabulary ``code``."""
        slots = np.flatnonzero(self.occupied)
        codes = self.code[slots]
        arrays = {
            name: getattr(self, name)[slots].copy()
            for name, _ in _ENTITY_ARRAYS + _FIELD_ARRAYS
            if name != "code"
        }
        return EntityTableState(
            fields=self.fields,
            ids=tuple(names[c] for c in codes.tolist()),
            arrays=arrays,
            watermark=self.watermark,
            late=self.late,
            evicted=self.evicted,
        )

    def restore(self, state: EntityTableState, codes: I8) -> int:
        """Continue from ``state``; ``codes[i]`` is this process's vocabulary code of
        ``state.ids[i]`` (-1: no room, that entity is dropped). Returns entities kept."""
        if tuple(state.fields) != self.fields:
            raise DetectorError(
                f"checkpointed fields {list(state.fields)} "
                f"are not the configured {list(self.fields)}"
            )
        codes = np.asarray(codes, dtype=np.int64)
        keep = np.flatnonzero(codes >= 0)[: self.capacity_limit]
        self._clear()
        slots = self.assign(codes[keep])
        for name, _ in _ENTITY_ARRAYS + _FIELD_ARRAYS:
            if name != "code":
                getattr(self, name)[slots] = state.arrays[name][keep]
        self.watermark = state.watermark
        self.late = state.late
        self.evicted = state.evicted
        return len(keep)

    def merge(self, other: EntityTable) -> None:
        """Take in ``other``'s entities (same fields and vocabulary), e.g. when two
        partitions' devices are judged as one table.

        An entity known to both keeps the later-seen table's values, EWMAs and runs
        (the newest view of the device) and adds the counts; first time is the
        earliest, watermark and late counts combine.
        """
        if other.fields != self.fields:
            raise DetectorError("cannot merge entity tables of different fields")
        theirs = np.flatnonzero(other.occupied)
        codes = other.code[theirs]
        known = np.zeros(len(codes), dtype=np.bool_)
        inside = codes < len(self.code_to_slot)
        known[inside] = self.code_to_slot[codes[inside]] >= 0
        ours = self.assign(codes, room=len(codes))
        ok = ours >= 0
        mine, src, both = ours[ok], theirs[ok], known[ok]
        newer = ~both | (other.last_time[src] > self.last_time[mine])
        counts = ("count", "invalid", "oor")
        for name, _ in _ENTITY_ARRAYS + _FIELD_ARRAYS:
            if name in ("code", *counts, "first_time"):
                continue
            ours_arr, theirs_arr = getattr(self, name), getattr(other, name)
            ours_arr[mine[newer]] = theirs_arr[src[newer]]
        for name in counts:
            arr = getattr(self, name)
            arr[mine] = np.where(both, arr[mine], 0) + getattr(other, name)[src]
        self.first_time[mine] = np.where(
            both, np.minimum(self.first_time[mine], other.first_time[src]), other.first_time[src]
        )
        self.watermark = max(self.watermark, other.watermark)
        self.late += other.late
        self.evicted += other.evicted


def _blank(name: str, dtype: str, shape: tuple[int, ...]) -> npt.NDArray[Any]:
    """A fresh array of ``name``: -1 codes and spike positions, NaN times, else 0."""
    if name in ("code", "spike_at"):
        return np.full(shape, -1, dtype=dtype)
    if name in ("first_time", "last_time", "run_start", "last"):
        return np.full(shape, np.nan, dtype=dtype)
    return np.zeros(shape, dtype=dtype)


@njit(cache=True, nogil=True)
def _fold(
    slots: Any,
    times: Any,
    values: Any,
    valid: Any,
    low: Any,
    high: Any,
    min_sd: Any,
    scalars: Any,
    wm: Any,
    count: Any,
    first_time: Any,
    last_time: Any,
    gap: Any,
    gap_dev: Any,
    invalid: Any,
    oor: Any,
    oor_rate: Any,
    spike_at: Any,
    spike_z: Any,
    spike_field: Any,
    spike_value: Any,
    last: Any,
    run: Any,
    run_start: Any,
    mean: Any,
    var: Any,
    recent: Any,
    nval: Any,
    last_z: Any,
) -> None:
    alpha, gap_alpha, oor_alpha = scalars[0], scalars[1], scalars[2]
    zmax, warmup, lateness = scalars[3], scalars[4], scalars[5]
    recent_alpha = scalars[6]
    watermark = wm[0]
    late = 0
    n_fields = values.shape[1]
    for i in range(len(slots)):
        s = slots[i]
        t = times[i]
        if not t > watermark - lateness:  # NaN times are dropped too
            late += 1
            continue
        if s < 0:
            if t > watermark:
                watermark = t
            continue
        if t > watermark:
            watermark = t
        c = count[s]
        if c == 0:
            first_time[s] = t
            last_time[s] = t
        elif t > last_time[s]:
            g = t - last_time[s]
            if c == 1:
                gap[s] = g
                gap_dev[s] = g * 0.7357588823428847  # 2/e: an exponential prior
            else:
                gap_dev[s] += gap_alpha * (abs(g - gap[s]) - gap_dev[s])
                gap[s] += gap_alpha * (g - gap[s])
            last_time[s] = t
        c += 1
        count[s] = c
        any_oor = False
        any_invalid = False
        for f in range(n_fields):
            if not valid[i, f]:
                any_invalid = True
                continue
            x = values[i, f]
            if nval[s, f] > 0 or run[s, f] > 0:
                if x == last[s, f]:
                    run[s, f] += 1
                else:
                    run[s, f] = 1
                    run_start[s, f] = t
            else:
                run[s, f] = 1
                run_start[s, f] = t
            last[s, f] = x
            if x < low[f] or x > high[f]:
                any_oor = True
                continue
            k = nval[s, f]
            if k == 0:
                mean[s, f] = x
                recent[s, f] = x
                var[s, f] = 0.0
                last_z[s, f] = 0.0
            else:
                d = x - mean[s, f]
                sd = max(math.sqrt(var[s, f]), min_sd[f])
                if sd > 0.0:
                    z = d / sd
                elif d == 0.0:
                    z = 0.0
                else:
                    z = math.copysign(math.inf, d)
                last_z[s, f] = z
                dr = x - recent[s, f]
                if k >= warmup and abs(z) > zmax:
                    lim = zmax * sd
                    dr = min(max(dr, -lim), lim)
                    spike_at[s] = c
                    spike_z[s] = z
                    spike_field[s] = f
                    spike_value[s] = x
                    d = math.copysign(zmax * sd, d)  # clipped: one wild value stays small
                # 1/(k+1) until it reaches alpha: the exact running mean and
                # (population) variance first, so young devices' z-scores are not
                # inflated by an EWMA still warming up from zero.
                a = max(alpha, 1.0 / (k + 1.0))
                mean[s, f] += a * d
                var[s, f] = (1.0 - a) * (var[s, f] + a * d * d)
                recent[s, f] += max(recent_alpha, 1.0 / (k + 1.0)) * dr
            nval[s, f] = k + 1
        if any_invalid:
            invalid[s] += 1
        if any_oor:
            oor[s] += 1
            oor_rate[s] += oor_alpha * (1.0 - oor_rate[s])
        else:
            oor_rate[s] -= oor_alpha * oor_rate[s]
    wm[0] = watermark
    wm[1] = late


def replace_params(table: EntityTable, **changes: Any) -> None:
    """Change a table's parameters in place (for tests and configuration reloads)."""
    table.params = dataclasses.replace(table.params, **changes)
