"""A synthetic device fleet with failures at known times, for tests, benchmarks and the demo.

Each of ``devices`` devices reports every ``period`` seconds (with +-5% jitter and
its own phase) five numeric fields ``f0..f4``: a fleet-wide level per field, a
per-device offset (``offset_sd``) and Gaussian noise (``noise_sd``). The fleet's
environment changes for everyone: ``f4`` ramps up by ``fleet_shift`` noise
standard deviations over six hours from ``fleet_shift_at`` (no device should be
paged for it).

Failures (``Failure``: a condition, devices and a start time):

* ``silent``: the device sends nothing from ``at`` on;
* ``stuck``: ``f0`` repeats one constant value from ``at`` on;
* ``out_of_range``: every other event carries ``f1 = 1e4`` from ``at`` on;
* ``spike``: one event just after ``at`` carries ``f2 + 30`` noise sds;
* ``fleet_drift``: ``f3`` ramps to ``+drift_shift`` noise sds over ten events
  from ``at`` (a miscalibrated sensor).

Events come in time order, in chunks of ``chunk_seconds``; deterministic per seed
and the same whatever the chunking.

>>> s = FleetScenario(devices=4, period=10.0, seed=1)
>>> chunk = next(s.chunks(0.0, 60.0))
>>> chunk.codes.shape == chunk.times.shape, chunk.values.shape[1]
(True, 5)
>>> bool((np.diff(chunk.times) >= 0).all())
True
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import msgspec
import numpy as np
import numpy.typing as npt

__all__ = [
    "FLEET_FIELDS",
    "Failure",
    "FleetChunk",
    "FleetScenario",
    "demo_failures",
    "demo_fleet_stream",
    "fleet_stream",
    "produce_demo_fleet",
]

FLEET_FIELDS = ("f0", "f1", "f2", "f3", "f4")
CONDITIONS = ("silent", "stuck", "out_of_range", "spike", "fleet_drift")
_LEVELS = np.array([20.0, 50.0, 100.0, 5.0, 10.0])


@dataclass(frozen=True, slots=True)
class Failure:
    """Devices that fail in one way from event time ``at`` on."""

    condition: str
    devices: tuple[int, ...]
    at: float

    def __post_init__(self) -> None:
        if self.condition not in CONDITIONS:
            raise ValueError(f"unknown condition {self.condition!r}; allowed: {CONDITIONS}")


@dataclass(frozen=True, slots=True)
class FleetChunk:
    """Events of one time chunk, in time order: device codes, times, values (n x 5)."""

    codes: npt.NDArray[np.int64]
    times: npt.NDArray[np.float64]
    values: npt.NDArray[np.float64]

    def payloads(self, prefix: str = "dev-") -> list[bytes]:
        """The events as JSON (``device_id``, ``ts``, ``f0..f4``)."""
        encode = msgspec.json.encode
        rows = np.round(self.values, 4).tolist()
        return [
            encode(
                {
                    "device_id": f"{prefix}{c:05d}",
                    "ts": t,
                    **dict(zip(FLEET_FIELDS, r, strict=True)),
                }
            )
            for c, t, r in zip(self.codes.tolist(), self.times.tolist(), rows, strict=True)
        ]


@dataclass(frozen=True)
class FleetScenario:
    """The fleet and its failures (module docstring)."""

    devices: int = 10_000
    period: float = 600.0
    start: float = 1_790_000_000.0
    noise_sd: float = 1.0
    offset_sd: float = 0.5
    fleet_shift: float = 5.0
    fleet_shift_at: float | None = None
    drift_shift: float = 5.0
    failures: tuple[Failure, ...] = ()
    seed: int = 7
    block_seconds: float = 3600.0
    _phase: npt.NDArray[np.float64] = field(init=False, repr=False)
    _offset: npt.NDArray[np.float64] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        object.__setattr__(self, "_phase", rng.uniform(0, self.period, self.devices))
        object.__setattr__(
            self, "_offset", rng.normal(0.0, self.offset_sd, (self.devices, len(FLEET_FIELDS)))
        )

    def failing(self, condition: str) -> set[int]:
        return {d for f in self.failures if f.condition == condition for d in f.devices}

    def chunks(self, t0: float, t1: float, chunk_seconds: float = 3600.0) -> Iterator[FleetChunk]:
        """Events with ``start + t0 <= time < start + t1`` (seconds after ``start``).

        Events are generated in fixed blocks of ``block_seconds`` and cut into
        chunks, so the events do not depend on ``chunk_seconds``.
        """
        cache: dict[int, FleetChunk] = {}
        a = t0
        while a < t1:
            b = min(a + chunk_seconds, t1)
            pieces = []
            for blk in range(math.floor(a / self.block_seconds), math.ceil(b / self.block_seconds)):
                if blk not in cache:
                    cache.clear()
                    lo = self.start + blk * self.block_seconds
                    cache[blk] = self._chunk(lo, lo + self.block_seconds, blk)
                data = cache[blk]
                i, j = np.searchsorted(data.times, [self.start + a, self.start + b])
                pieces.append((data.codes[i:j], data.times[i:j], data.values[i:j]))
            yield FleetChunk(
                np.concatenate([p[0] for p in pieces]),
                np.concatenate([p[1] for p in pieces]),
                np.concatenate([p[2] for p in pieces]),
            )
            a = b

    def _chunk(self, a: float, b: float, index: int) -> FleetChunk:
        P = self.period
        k0 = math.floor((a - self.start) / P) - 1
        k1 = math.ceil((b - self.start) / P) + 1
        ks = np.arange(max(k0, 0), k1)
        dev = np.repeat(np.arange(self.devices), len(ks))
        k = np.tile(ks, self.devices)
        jitter = _jitter(self.seed, dev, k) * 0.05 * P
        times = self.start + self._phase[dev] + k * P + jitter
        keep = (times >= a) & (times < b)
        dev, k, times = dev[keep], k[keep], times[keep]
        order = np.lexsort((dev, times))
        dev, k, times = dev[order], k[order], times[order]
        n = len(dev)
        rng = np.random.default_rng((self.seed, index))
        values = _LEVELS + self._offset[dev] + rng.normal(0.0, self.noise_sd, (n, 5))
        if self.fleet_shift_at is not None:
            ramp = np.clip((times - self.start - self.fleet_shift_at) / 21600.0, 0.0, 1.0)
            values[:, 4] += ramp * self.fleet_shift * self.noise_sd
        keep = np.ones(n, dtype=np.bool_)
        for f in self.failures:
            # each device's first event number whose time is surely >= ``at``
            first_k = np.ceil((f.at - self._phase + 0.05 * P) / P)
            hit = np.isin(dev, np.asarray(f.devices)) & (times >= self.start + f.at)
            if not hit.any():
                continue
            if f.condition == "silent":
                keep &= ~hit
            elif f.condition == "stuck":
                frozen = _LEVELS[0] + self._offset[dev[hit], 0] + 0.123
                values[hit, 0] = np.round(frozen, 3)
            elif f.condition == "out_of_range":
                values[hit & (k % 2 == 0), 1] = 1e4
            elif f.condition == "spike":
                values[hit & (k == first_k[dev]), 2] += 30.0 * self.noise_sd
            elif f.condition == "fleet_drift":
                ramp = np.clip((k - first_k[dev] + 1) / 10.0, 0.0, 1.0)
                values[:, 3] += np.where(hit, ramp * self.drift_shift * self.noise_sd, 0.0)
        return FleetChunk(dev[keep].astype(np.int64), times[keep], values[keep])


def _jitter(
    seed: int, dev: npt.NDArray[np.int64], k: npt.NDArray[np.int64]
) -> npt.NDArray[np.float64]:
    """Deterministic uniform(-1, 1) per (device, event number): chunking does not matter."""
    x = (dev.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ (
        k.astype(np.uint64) * np.uint64(0xBF58476D1CE4E5B9) + np.uint64(seed)
    )
    x ^= x >> np.uint64(31)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(29)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53) * 2.0 - 1.0


def fleet_stream(topic: str = "iot.fleet", **fleet: object) -> dict[str, object]:
    """The stream declaration (YAML-shaped) for ``FleetChunk.payloads``."""
    return {
        "name": "fleet",
        "topic": topic,
        "entity": "device_id",
        "event_time": "ts",
        "fields": {f: {"type": "float"} for f in FLEET_FIELDS},
        "baseline": {"first_events": 20_000},
        "fleet": {
            "fields": {f: {"range": [0.0, 1000.0]} if f == "f1" else {} for f in FLEET_FIELDS},
            **fleet,
        },
    }


# -- make demo ------------------------------------------------------------------------

DEMO_DEVICES = 200
DEMO_PERIOD = 2.0


def demo_failures(seconds: float) -> tuple[Failure, ...]:
    """Devices failing in each way at known times (seconds after the demo starts)."""
    at = max(seconds * 0.5, 25.0)
    return (
        Failure("silent", tuple(range(0, 30)), at),  # a whole site goes dark together
        Failure("stuck", (50,), at),
        Failure("out_of_range", (60,), at + 3.0),
        Failure("spike", (70,), at + 5.0),
        Failure("fleet_drift", (80,), at + 2.0),
    )


def demo_fleet_stream(topic: str = "iot.fleet") -> dict[str, object]:
    """The demo's fleet stream: 200 devices every 2 s, thresholds for a one-minute run."""
    stream = fleet_stream(
        topic,
        warmup=8,
        oor_alpha=0.3,
        recent_alpha=0.3,
        evaluate_every="2s",
        allowed_lateness="5s",
        quiet_after="10s",
        events_per_day=DEMO_DEVICES * 86400.0 / DEMO_PERIOD,
        detectors={
            "silent": {},
            "stuck": {"events": 6},
            "out_of_range": {},
            "spike": {},
            "fleet_drift": {},
        },
    )
    stream["baseline"] = {"first_events": 1000}
    stream["fields"] = {f: {"type": "float", "detectors": {}} for f in FLEET_FIELDS}
    return stream


def produce_demo_fleet(
    bootstrap: str,
    topic: str,
    seconds: float,
    stop: threading.Event,
    partitions: int = 3,
) -> int:
    """Produce the demo fleet in real time (event time = wall clock), failures included."""
    from confluent_kafka import Producer

    from monitor.dev.producing import produce_waiting

    start = time.time()
    scenario = FleetScenario(
        devices=DEMO_DEVICES,
        period=DEMO_PERIOD,
        start=start,
        failures=demo_failures(seconds),
        drift_shift=12.0,
        seed=3,
    )
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 10})
    produced = 0
    try:
        for chunk in scenario.chunks(0.0, seconds, 1.0):
            if stop.is_set():
                break
            for code, value in zip(chunk.codes.tolist(), chunk.payloads(), strict=True):
                produce_waiting(producer, topic, value=value, key=f"dev-{code:05d}".encode())
            producer.poll(0)
            produced += len(chunk.codes)
            if len(chunk.times):
                stop.wait(max(0.0, float(chunk.times.max()) - time.time()))
    finally:
        producer.flush(30)
    return produced
