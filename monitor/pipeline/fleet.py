"""The fleet stage: per-device health of a stream with an ``entity`` (issue #11).

Per partition, an :class:`~detectors.entity_table.EntityTable` keeps every device's
statistics in dense arrays; the stream decoder's entity codes map to
partition-local slots. Each batch is folded in with one compiled loop per
partition. The stream is *evaluated* whenever its event-time watermark crosses a
multiple of ``fleet.evaluate_every``: every registered entity detector
(``detectors/entity_registry.py``) judges every table at once, each device's
condition bits are compared with the previous evaluation, and onsets
(``drift=True``) and recoveries (``drift=False``) become findings of
``kind="entity"`` (subject: the device id; detector: the condition). Since all
onsets of one evaluation arrive in one call, the alert engine groups many devices
going silent together into one alert.

Cardinality: at most ``fleet.max_entities`` devices over this process's tables; a
new device beyond that evicts the longest-silent device (one not in the current
batch); when none can be evicted its events are rejected (counted). A device
evicted while unhealthy gets a recovery finding with ``evicted = 1`` in its details.

Late and out-of-order events: each partition's watermark is the largest event time
it has seen. An event more than ``fleet.allowed_lateness`` behind it is late:
counted (``driftwarden_fleet_late_events_total``) and not folded into its device
(the rest of the pipeline still sees it). Other out-of-order events are folded in
arrival order (last-seen time only moves forward; backward steps are not gaps).
Events stamped more than ``fleet.max_future`` ahead of the wall clock are dropped
and counted late too, so one device with a wrong clock cannot move its partition's
watermark (and silence every other device).

Silence by wall clock: a partition from which no event arrived for
``fleet.quiet_after`` seconds of wall-clock time is judged at ``watermark +``
the quiet time, so a whole partition going dark is reported too (by
:meth:`FleetStage.tick`, or on the next batch of another partition).

State: each partition's table (device ids and arrays) is its checkpoint, so a
device's state follows its partition on a rebalance and survives restarts.
With several replicas each judges the devices of the partitions it owns and sends
its own findings (devices are keyed to partitions, so none is judged twice);
grouping then happens per replica. The fleet's center (for ``fleet_drift``) is the
whole fleet's: this process's tables and, from the latest checkpoints of the
partitions other replicas own (``set_remote``, on every replica), the recent means
of their devices (``detectors.entity_fleet.state_means``), as of their last
checkpoint. Condition bits are part of the checkpoint, so a
restart does not page again for a device that was already unhealthy.

>>> from monitor.config.schema import StreamSpec
>>> spec = StreamSpec.model_validate({"name": "s", "topic": "t", "entity": "id",
...     "event_time": "ts", "fields": {"x": {"type": "float"}}, "fleet": {}})
>>> from monitor.pipeline.decode import StreamDecoder
>>> stage = FleetStage(spec, StreamDecoder(spec))
>>> [d.name for d in stage.detectors]
['silent', 'stuck', 'out_of_range', 'spike', 'fleet_drift']
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from detectors.base import DetectorError, Finding, WindowBounds
from detectors.entity_base import AlarmBudget, EntityDetector, FleetContext
from detectors.entity_fleet import FieldMeans, fleet_center, state_means
from detectors.entity_registry import create
from detectors.entity_table import EntityTable, EntityTableState, TableParams
from monitor.checkpoints import BaselineCheckpoint, PlainStageState, StageState
from monitor.config.schema import NUMERIC_TYPES, FleetSpec, StreamSpec
from monitor.metrics import Metrics
from monitor.pipeline.decode import Batch, StreamDecoder

if TYPE_CHECKING:
    from monitor.pipeline.stage import Coordinates, StageContext

__all__ = ["DeviceEvidence", "FleetStage", "FleetState", "FleetStatus"]

_STATE_VERSION = 1

log = logging.getLogger("driftwarden.fleet")

# What reading a checkpointed state of another version or shape can raise.
_UNUSABLE = (DetectorError, KeyError, TypeError, ValueError, IndexError)


@dataclass(frozen=True, slots=True)
class FleetState:
    """One partition's devices: their ids and dense arrays (``EntityTableState``).

    >>> import numpy as np
    >>> table = EntityTableState(("x",), ("d1",), {"count": np.array([3])}, 5.0, 0, 0)
    >>> back = FleetState.from_plain(FleetState(table).to_plain())
    >>> back.table.ids, back.table.arrays["count"].tolist(), back.table.watermark
    (('d1',), [3], 5.0)
    """

    table: EntityTableState

    def to_plain(self) -> dict[str, Any]:
        return {"version": _STATE_VERSION, "table": self.table.to_dict()}

    @classmethod
    def from_plain(cls, plain: Mapping[str, Any]) -> FleetState:
        if plain.get("version") != _STATE_VERSION:
            raise DetectorError(f"fleet state version {plain.get('version')!r} is not 1")
        return cls(EntityTableState.from_dict(dict(plain["table"])))


def _fleet_state(state: StageState) -> FleetState:
    """A fleet state, also from a plain one read without the stage."""
    return state if isinstance(state, FleetState) else FleetState.from_plain(state.to_plain())


@dataclass(frozen=True, slots=True)
class DeviceEvidence:
    """One device in the worst-devices view: why it is there."""

    entity: str
    partition: int
    condition: str
    score: float
    threshold: float
    last_seen: float
    events: int
    run_length: int
    z: float
    values: tuple[tuple[str, float], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "entity": self.entity,
            "partition": self.partition,
            "condition": self.condition,
            "score": _finite(self.score),
            "threshold": _finite(self.threshold),
            "last_seen": _finite(self.last_seen),
            "events": self.events,
            "run_length": self.run_length,
            "z": _finite(self.z),
            "values": {k: _finite(v) for k, v in self.values},
        }


@dataclass(frozen=True, slots=True)
class FleetStatus:
    """The bounded worst-devices view of one stream (served as /status.json)."""

    stream: str
    tracked: int
    healthy: int
    unhealthy: tuple[tuple[str, int], ...]  # condition -> devices
    worst: tuple[tuple[str, tuple[DeviceEvidence, ...]], ...]  # condition -> top k
    evicted: int
    rejected: int
    late: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "tracked": self.tracked,
            "healthy": self.healthy,
            "unhealthy": dict(self.unhealthy),
            "worst": {c: [d.to_dict() for d in ds] for c, ds in self.worst},
            "evicted": self.evicted,
            "rejected": self.rejected,
            "late": self.late,
        }


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


class FleetStage:
    """Per-device health of one stream (module docstring); a ``Stage``.

    Every replica judges the devices of the partitions it owns (``judge`` does not
    limit it): a device's findings come from its partition's owner only.
    """

    name = "fleet"

    @classmethod
    def for_stream(
        cls, spec: StreamSpec, decoder: StreamDecoder, context: StageContext | None = None
    ) -> FleetStage | None:
        """The stream's fleet stage, or None when the stream has no ``fleet`` section."""
        if spec.fleet is None:
            return None
        return cls(spec, decoder, metrics=None if context is None else context.metrics)

    def __init__(
        self,
        spec: StreamSpec,
        decoder: StreamDecoder,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if spec.fleet is None or spec.entity is None or spec.event_time is None:
            raise DetectorError(f"stream {spec.name!r} has no fleet section")
        cfg: FleetSpec = spec.fleet
        self.spec = spec
        self.config = cfg
        self.decoder = decoder
        self.clock = clock
        numeric = [n for n, f in spec.fields.items() if f.type in NUMERIC_TYPES]
        self.fields = tuple(cfg.fields) if cfg.fields is not None else tuple(numeric)
        field_specs = cfg.fields or {}
        low = np.array([_range(field_specs, f)[0] for f in self.fields], dtype=np.float64)
        high = np.array([_range(field_specs, f)[1] for f in self.fields], dtype=np.float64)
        self._min_sd = np.array(
            [field_specs[f].min_sd if f in field_specs else 0.0 for f in self.fields]
        )
        self._low, self._high = low, high
        specs = cfg.detector_specs()
        budget = AlarmBudget(
            false_alerts_per_day=cfg.false_alerts_per_day,
            events_per_day=cfg.events_per_day,
            devices=cfg.max_entities,
            evaluations_per_day=86400.0 / cfg.evaluate_every,
            fields=len(self.fields),
            detectors=max(len(specs), 1),
            alpha=cfg.alpha,
            warmup=cfg.warmup,
        )
        self.detectors: list[EntityDetector] = [
            create(name, budget, **params) for name, params in specs.items()
        ]
        spike = next((d for d in self.detectors if d.name == "spike"), None)
        self.params = TableParams(
            alpha=cfg.alpha,
            gap_alpha=cfg.gap_alpha,
            oor_alpha=cfg.oor_alpha,
            spike_z=float(getattr(spike, "z", 1e300)),
            warmup=cfg.warmup,
            lateness=cfg.allowed_lateness,
            recent_alpha=cfg.recent_alpha,
        )
        self.tables: dict[int, EntityTable] = {}
        # Per slot other replicas own: its devices' means in the fleet's statistic.
        self._remote_means: dict[int, FieldMeans] = {}
        self._wall: dict[int, float] = {}  # wall-clock time of each partition's last event
        self._next_eval = -math.inf
        self._last_tick = -math.inf
        self._names: list[Any] = []
        self._evicted_codes: list[npt.NDArray[np.int64]] = []  # released after the batch
        self._pending: list[Finding] = []
        # The worst-devices view as of the last evaluation (read by the HTTP thread),
        # kept when ``publish_status`` is set (the service sets it).
        self.last_status: FleetStatus | None = None
        self.publish_status = False
        self.rejected = 0
        self._metrics = metrics
        name = spec.name
        if metrics is not None:
            self._m_unhealthy = {
                d.name: metrics.fleet_unhealthy.labels(name, d.name) for d in self.detectors
            }
            self._m_detections = {
                d.name: metrics.fleet_detections.labels(name, d.name) for d in self.detectors
            }
            for child in self._m_detections.values():
                child.inc(0)
            self._m_healthy = metrics.fleet_healthy.labels(name)
            self._m_tracked = metrics.fleet_tracked.labels(name)
            self._m_evicted = metrics.fleet_evicted.labels(name)
            self._m_rejected = metrics.fleet_rejected.labels(name)
            self._m_late = metrics.fleet_late.labels(name)
            for c in (self._m_evicted, self._m_rejected, self._m_late):
                c.inc(0)

    @property
    def judge(self) -> bool:
        """Always: every replica judges the devices of the partitions it owns."""
        return True

    @judge.setter
    def judge(self, value: bool) -> None:
        return

    # -- tables ------------------------------------------------------------------------
    def _table(self, partition: int) -> EntityTable:
        table = self.tables.get(partition)
        if table is None:
            table = self.tables[partition] = EntityTable(
                self.fields,
                self.params,
                self._low,
                self._high,
                capacity_limit=self.config.max_entities,
                min_sd=self._min_sd,
            )
        return table

    @property
    def tracked(self) -> int:
        return sum(t.tracked for t in self.tables.values())

    @property
    def evicted(self) -> int:
        return sum(t.evicted for t in self.tables.values())

    @property
    def late(self) -> int:
        return sum(t.late for t in self.tables.values())

    def names(self) -> list[Any]:
        """Entity ids by vocabulary code (the decoder's list, kept up to date by it)."""
        vocab = self.decoder.entities
        return vocab.by_code() if vocab is not None else self._names

    def _release(self, codes: npt.NDArray[np.int64]) -> None:
        """Give the decoder back the ``codes`` that no table holds (evicted, rejected
        or dropped devices), so that new devices can have them."""
        if not len(codes):
            return
        held = np.zeros(len(codes), dtype=np.bool_)
        for t in self.tables.values():
            inside = codes < len(t.code_to_slot)
            held[inside] |= t.code_to_slot[codes[inside]] >= 0
        self.decoder.release_entities(codes[~held])

    # -- processing --------------------------------------------------------------------
    def update(
        self,
        batch: Batch,
        partitions: npt.NDArray[np.int32],
        *,
        coordinates: Coordinates | None = None,
    ) -> list[Finding]:
        """Fold a batch in (per partition, in order); evaluate when a tick is due."""
        findings, self._pending = self._pending, []
        if batch.n == 0 or batch.entity is None or batch.event_time is None:
            return findings
        values = np.empty((batch.n, len(self.fields)), dtype=np.float64)
        valid = np.empty((batch.n, len(self.fields)), dtype=np.bool_)
        for j, name in enumerate(self.fields):
            values[:, j] = batch.columns[name]
            valid[:, j] = batch.valid[name]
        first = int(partitions[0])
        if (partitions == first).all():
            split: list[tuple[int, npt.NDArray[np.bool_] | None]] = [(first, None)]
        else:
            split = [(int(p), partitions == p) for p in np.unique(partitions)]
        wall = self.clock()
        late = rejected = 0
        for partition, rows in split:
            codes = batch.entity if rows is None else batch.entity[rows]
            times = batch.event_time if rows is None else batch.event_time[rows]
            vals = values if rows is None else values[rows]
            ok = valid if rows is None else valid[rows]
            future = times > wall + self.config.max_future
            if future.any():  # NaN times are counted late and not folded in
                times = np.where(future, np.nan, times)
            table = self._table(partition)
            slots = self._assign(partition, table, codes)
            rejected += int(np.count_nonzero(slots < 0))
            self._evicted_codes.append(codes[(slots < 0) & (codes >= 0)])  # rejected ids
            late += table.update(slots, times, vals, ok)
            self._wall[partition] = wall
        self.rejected += rejected
        # Ids of evicted and rejected devices go back to the decoder once the whole
        # batch is in (a device evicted for one partition may be back in another).
        self._release(np.concatenate(self._evicted_codes))
        self._evicted_codes = []
        if self._metrics is not None:
            if late:
                self._m_late.inc(late)
            if rejected:
                self._m_rejected.inc(rejected)
        watermark = max(t.watermark for t in self.tables.values())
        if math.isfinite(watermark) and watermark >= self._next_eval:  # -inf: all late
            findings.extend(self.evaluate(wall))
            every = self.config.evaluate_every
            self._next_eval = (math.floor(watermark / every) + 1) * every
        return findings

    def tick(self, wall: float | None = None) -> list[Finding]:
        """Judge quiet partitions by wall clock (the runner calls it when idle); at
        most once per ``evaluate_every`` of wall-clock time."""
        wall = self.clock() if wall is None else wall
        quiet = any(wall - w >= self.config.quiet_after for w in self._wall.values())
        if not quiet or wall - self._last_tick < self.config.evaluate_every:
            findings, self._pending = self._pending, []
            return findings
        self._last_tick = wall
        findings, self._pending = self._pending, []
        return findings + self.evaluate(wall)

    def _assign(self, partition: int, table: EntityTable, codes: npt.NDArray[np.int64]) -> Any:
        room = self.config.max_entities - self.tracked
        slots = table.assign(codes, room=max(room, 0))
        missing = (slots < 0) & (codes >= 0)
        if not missing.any():
            return slots
        want = len(np.unique(codes[missing]))
        self._evict(want, partition, slots[slots >= 0])
        room = self.config.max_entities - self.tracked
        return table.assign(codes, room=max(room, 0))

    def _evict(self, want: int, partition: int, keep: npt.NDArray[np.int64]) -> None:
        """Evict up to ``want`` longest-silent devices, never one in ``keep`` of
        ``partition`` (the current batch's devices)."""
        parts, slots, last = [], [], []
        for p, t in sorted(self.tables.items()):
            occupied = np.flatnonzero(t.occupied)
            if p == partition and len(keep):
                occupied = np.setdiff1d(occupied, keep, assume_unique=False)
            parts.append(np.full(len(occupied), p, dtype=np.int64))
            slots.append(occupied)
            last.append(t.last_time[occupied])
        if not parts:
            return
        all_parts, all_slots = np.concatenate(parts), np.concatenate(slots)
        all_last = np.nan_to_num(np.concatenate(last), nan=-np.inf)
        if not len(all_slots):
            return
        order = np.lexsort((all_slots, all_parts, all_last))[:want]
        for p in np.unique(all_parts[order]).tolist():
            chosen = all_slots[order][all_parts[order] == p]
            table = self.tables[p]
            self._pending.extend(self._recoveries(p, table, chosen, evicted=True))
            self._evicted_codes.append(table.code[chosen].copy())
            table.evict(chosen)
        if self._metrics is not None:
            self._m_evicted.inc(len(order))

    # -- evaluation ---------------------------------------------------------------------
    def _contexts(self, wall: float) -> dict[int, FleetContext]:
        nows = {}
        for p, t in self.tables.items():
            now = t.watermark
            quiet = wall - self._wall.get(p, wall)
            if quiet >= self.config.quiet_after:
                now += quiet
            nows[p] = now
        remote = [m for slot, m in sorted(self._remote_means.items()) if slot not in self.tables]
        center, scale = fleet_center(list(self.tables.values()), list(nows.values()), remote=remote)
        return {p: FleetContext(now, center, scale) for p, now in nows.items()}

    def evaluate(self, wall: float | None = None) -> list[Finding]:
        """Judge every device now; findings for the conditions that changed."""
        wall = self.clock() if wall is None else wall
        contexts = self._contexts(wall)
        findings: list[Finding] = []
        unhealthy = dict.fromkeys((d.name for d in self.detectors), 0)
        healthy = 0
        for p, table in sorted(self.tables.items()):
            h = table.high_water
            if h == 0:
                continue
            old = table.status[:h].copy()
            new = np.zeros(h, dtype=np.uint8)
            verdicts = []
            for bit, det in enumerate(self.detectors):
                v = det.judge(table, contexts[p])
                verdicts.append(v)
                new |= v.active.astype(np.uint8) << np.uint8(bit)
                unhealthy[det.name] += int(np.count_nonzero(v.active))
            occupied = table.code[:h] >= 0
            healthy += int(np.count_nonzero(occupied & (new == 0)))
            table.status[:h] = new
            changed = np.flatnonzero(old != new)
            if not len(changed):
                continue
            names = self.names()
            for bit, (det, v) in enumerate(zip(self.detectors, verdicts, strict=True)):
                mask = np.uint8(1 << bit)
                was = (old[changed] & mask) != 0
                now = (new[changed] & mask) != 0
                onsets = changed[now & ~was]
                ends = changed[was & ~now]
                if self._metrics is not None and len(onsets):
                    self._m_detections[det.name].inc(len(onsets))
                for slot in onsets.tolist():
                    findings.append(self._finding(p, table, slot, det.name, v, True, names))
                for slot in ends.tolist():
                    findings.append(self._finding(p, table, slot, det.name, v, False, names))
        if self._metrics is not None:
            for name, n in unhealthy.items():
                self._m_unhealthy[name].set(n)
            self._m_healthy.set(healthy)
            self._m_tracked.set(self.tracked)
        if self.publish_status:
            self.last_status = self.status(wall=wall)
        return findings

    def _finding(
        self,
        partition: int,
        table: EntityTable,
        slot: int,
        condition: str,
        verdict: Any,
        drift: bool,
        names: list[Any],
        evicted: bool = False,
    ) -> Finding:
        details = _details(table, slot, self.fields)
        if evicted:
            details += (("evicted", 1.0),)
        return Finding(
            detector=condition,
            subject=str(names[int(table.code[slot])]),
            statistic=float(verdict.score[slot]) if verdict is not None else 0.0,
            threshold=float(verdict.threshold) if verdict is not None else math.nan,
            drift=drift,
            kind="entity",
            stream=self.spec.name,
            window=WindowBounds(
                events=int(table.count[slot]),
                start_time=float(table.first_time[slot]),
                end_time=float(table.last_time[slot]),
                partition=partition,
            ),
            details=details,
        )

    def _recoveries(
        self, partition: int, table: EntityTable, slots: npt.NDArray[np.int64], evicted: bool
    ) -> list[Finding]:
        out = []
        names = self.names()
        for slot in slots[table.status[slots] != 0].tolist():
            status = int(table.status[slot])
            for bit, det in enumerate(self.detectors):
                if status & (1 << bit):
                    out.append(
                        self._finding(partition, table, slot, det.name, None, False, names, evicted)
                    )
        return out

    # -- the worst-devices view ---------------------------------------------------------
    def status(self, k: int | None = None, wall: float | None = None) -> FleetStatus:
        """Per condition the ``k`` (default ``fleet.top_k``) worst devices with evidence,
        among the devices unhealthy at the last evaluation (scores recomputed now).

        Not thread-safe (it reads the tables); other threads read ``last_status``,
        which every evaluation refreshes.
        """
        k = self.config.top_k if k is None else k
        contexts = self._contexts(self.clock() if wall is None else wall)
        names = self.names()
        worst: list[tuple[str, tuple[DeviceEvidence, ...]]] = []
        unhealthy: list[tuple[str, int]] = []
        for bit, det in enumerate(self.detectors):
            parts, slots, scores = [], [], []
            threshold = math.nan
            for p, table in sorted(self.tables.items()):
                h = table.high_water
                active = np.flatnonzero((table.status[:h] >> bit) & 1)
                if not len(active):
                    continue
                v = det.judge(table, contexts[p])
                threshold = v.threshold
                parts.append(np.full(len(active), p, dtype=np.int64))
                slots.append(active)
                scores.append(v.score[active])
            count = sum(len(s) for s in slots)
            unhealthy.append((det.name, count))
            if not count:
                worst.append((det.name, ()))
                continue
            all_p, all_s = np.concatenate(parts), np.concatenate(slots)
            all_score = np.nan_to_num(np.concatenate(scores), nan=0.0, posinf=1e300)
            top = np.argsort(-all_score, kind="stable")[:k]
            items = []
            for i in top.tolist():
                p, s = int(all_p[i]), int(all_s[i])
                t = self.tables[p]
                run = int(t.run[s].max()) if len(self.fields) else 0
                z = t.last_z[s].astype(np.float64)
                items.append(
                    DeviceEvidence(
                        entity=str(names[int(t.code[s])]),
                        partition=p,
                        condition=det.name,
                        score=float(all_score[i]),
                        threshold=threshold,
                        last_seen=float(t.last_time[s]),
                        events=int(t.count[s]),
                        run_length=run,
                        z=float(z[np.argmax(np.abs(z))]) if len(z) else 0.0,
                        values=tuple((f, float(t.last[s, j])) for j, f in enumerate(self.fields)),
                    )
                )
            worst.append((det.name, tuple(items)))
        tracked = self.tracked
        healthy = sum(
            int(np.count_nonzero((t.code[: t.high_water] >= 0) & (t.status[: t.high_water] == 0)))
            for t in self.tables.values()
        )
        return FleetStatus(
            stream=self.spec.name,
            tracked=tracked,
            healthy=healthy,
            unhealthy=tuple(unhealthy),
            worst=tuple(worst),
            evicted=self.evicted,
            rejected=self.rejected,
            late=self.late,
        )

    # -- state ---------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return True  # devices are judged against their own history: no baseline

    def set_partition_count(self, count: int) -> None:
        """Devices live in their partition's table: the count does not matter."""
        return

    def baseline_checkpoint(self) -> BaselineCheckpoint | None:
        return None

    def restore_baseline(self, checkpoint: BaselineCheckpoint) -> None:
        return None

    def partition_state(self, partition: int) -> FleetState | None:
        """The partition's devices (ids and arrays): continues them exactly."""
        table = self.tables.get(partition)
        if table is None:
            return None
        return FleetState(table.state(self.names()))

    def decode_state(self, plain: Mapping[str, Any]) -> StageState:
        """The typed state (kept plain when it does not decode; restoring it then
        starts the partition's devices afresh)."""
        try:
            return FleetState.from_plain(plain)
        except _UNUSABLE:
            return PlainStageState(plain)

    def restore_partition(self, partition: int, state: StageState) -> None:
        try:
            saved = _fleet_state(state).table
        except _UNUSABLE as exc:
            log.warning(
                "stream %s: checkpointed fleet state of slot %d is unusable (%s): its "
                "devices start afresh",
                self.spec.name,
                partition,
                exc,
            )
            return
        vocab = self.decoder.entities
        if vocab is None:
            return
        vocab.add(list(saved.ids))
        codes = np.array([vocab.codes.get(i, -1) for i in saved.ids], dtype=np.int64)
        old = self.tables.pop(partition, None)
        self._table(partition).restore(saved, codes)
        self._wall[partition] = self.clock()
        stale = old.code[np.flatnonzero(old.occupied)] if old is not None else codes[:0]
        self._release(np.concatenate([stale, codes[codes >= 0]]))  # those not kept

    def drop_partition(self, partition: int) -> None:
        old = self.tables.pop(partition, None)
        self._wall.pop(partition, None)
        if old is not None:
            self._release(old.code[np.flatnonzero(old.occupied)])

    def set_remote(self, states: Mapping[int, StageState]) -> None:
        """Other replicas' partitions: their devices are judged there, but their means
        enter the fleet's statistic here (so every replica judges against one fleet)."""
        remote: dict[int, FieldMeans] = {}
        for slot, state in states.items():
            if slot in self.tables or state is None:
                continue
            try:
                table = _fleet_state(state).table
                if table.fields == self.fields:
                    remote[slot] = state_means(table, self.config.warmup)
            except _UNUSABLE as exc:
                log.warning(
                    "stream %s: remote fleet state of slot %d unusable: %s",
                    self.spec.name,
                    slot,
                    exc,
                )
        self._remote_means = remote


def _range(specs: dict[str, Any], name: str) -> tuple[float, float]:
    spec = specs.get(name)
    if spec is None or spec.range is None:
        return (-math.inf, math.inf)
    return (float(spec.range[0]), float(spec.range[1]))


def _details(
    table: EntityTable, slot: int, fields: tuple[str, ...]
) -> tuple[tuple[str, float], ...]:
    out: list[tuple[str, float]] = [
        ("last_seen", float(table.last_time[slot])),
        ("events", float(table.count[slot])),
        ("interval", float(table.gap[slot])),
        ("out_of_range_rate", float(table.oor_rate[slot])),
    ]
    if int(table.spike_at[slot]) >= 0:
        out.append(("spike_z", float(table.spike_z[slot])))
    for j, f in enumerate(fields):
        out.append((f"value.{f}", float(table.last[slot, j])))
        out.append((f"run_length.{f}", float(table.run[slot, j])))
        out.append((f"z.{f}", float(table.last_z[slot, j])))
        out.append((f"mean.{f}", float(table.recent[slot, j])))
    return tuple(out)
