"""A synthetic IoT fleet: good events, a known mix of bad ones, and injected drift.

Used by ``make demo``, ``driftwarden dev produce``, the integration tests and the
benchmarks. Deterministic for a seed. ``temperature`` is drawn from a real machine
temperature series (NAB, bundled in ``monitor/dev/data``; its normal-operation part),
converted to °C, with a per-device offset; ``humidity``, ``vibration`` and ``status`` are drawn.

After ``drift_at`` events, ``vibration``'s mean moves up by ``drift_shift``
standard deviations and ``status`` leans towards ``warn``: the drift the monitor
should flag.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from monitor.pipeline.decode import REASONS

__all__ = [
    "BAD_KINDS",
    "DEMO_STREAM",
    "FIELD_KINDS",
    "FleetEvents",
    "generate_fleet",
    "generate_wide",
    "nab_temperature",
]

# The demo stream (strict, with ranges and categories) can show every reason a payload
# can cause (``undecodable`` is for failures no check foresaw: no payload is built for it).
BAD_KINDS = tuple(r for r in REASONS if r != "undecodable")
# The kinds this generator builds as a problem of one declared field's value: such
# events are accepted with that value excluded (the others exclude the event).
FIELD_KINDS = frozenset(
    {
        "wrong_type",
        "null_not_allowed",
        "non_finite",
        "out_of_range",
        "unknown_category",
        "number_too_large",
    }
)

# The stream these events are declared by (YAML-shaped), shared by demo and tests.
DEMO_STREAM: dict[str, Any] = {
    "name": "sensors",
    "topic": "iot.sensors",
    "entity": "device_id",
    "event_time": "ts",
    "strict": True,
    "max_event_bytes": 4096,
    "max_fields": 100,
    "fields": {
        "temperature": {"type": "float", "range": [-40, 125]},
        "humidity": {"type": "float", "range": [0, 100], "nullable": True},
        "vibration": {"type": "float", "range": [0, 50]},
        "status": {"type": "category", "categories": ["ok", "warn", "fail"]},
    },
}

_STATUS = ("ok", "warn", "fail")
# machine_temperature_system_failure.csv: 5-minute readings from 2013-12-02 21:15; NAB's
# first anomaly window opens 2013-12-10 06:25, about 2,120 readings in.
_NAB_NORMAL_POINTS = 2_000


def nab_temperature() -> npt.NDArray[np.float64]:
    """The bundled NAB machine-temperature series, in °C."""
    path = resources.files("monitor.dev").joinpath(
        "data", "nab_machine_temperature_system_failure.csv"
    )
    with path.open("r", encoding="utf-8") as fh:
        values = [float(row["value"]) for row in csv.DictReader(fh)]
    return (np.asarray(values, dtype=np.float64) - 32.0) * 5.0 / 9.0


@dataclass(frozen=True, slots=True)
class FleetEvents:
    """Payloads and keys in production order, and what each bad one should be rejected for."""

    values: list[bytes]
    keys: list[bytes]
    # None: a good event; else the reason code of its dead letter. Events of the
    # FIELD_KINDS are still accepted, with that value excluded.
    expected: list[str | None]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for reason in self.expected:
            key = reason or "good"
            out[key] = out.get(key, 0) + 1
        return out

    def accepted(self) -> int:
        """Events the decoder accepts: the good ones and those with field-level problems."""
        return sum(r is None or r in FIELD_KINDS for r in self.expected)


def _bad_payload(kind: str, good: dict[str, Any], rng: np.random.Generator) -> bytes:
    if kind == "invalid_json":
        return msgspec.json.encode(good)[:-3]
    if kind == "not_an_object":
        return msgspec.json.encode([good["device_id"], good["temperature"]])
    if kind == "missing_field":
        return msgspec.json.encode({k: v for k, v in good.items() if k != "vibration"})
    if kind == "wrong_type":
        return msgspec.json.encode({**good, "temperature": str(good["temperature"])})
    if kind == "null_not_allowed":
        return msgspec.json.encode({**good, "vibration": None})
    if kind == "non_finite":
        return msgspec.json.encode({**good, "temperature": 0.0}).replace(
            b'"temperature":0.0', b'"temperature":NaN'
        )
    if kind == "out_of_range":
        return msgspec.json.encode({**good, "temperature": 400.0 + float(rng.random())})
    if kind == "unknown_category":
        return msgspec.json.encode({**good, "status": "exploded"})
    if kind == "too_large":
        return msgspec.json.encode({**good, "note": "x" * 5000})
    if kind == "unknown_field":
        return msgspec.json.encode({**good, "firmware": "1.2.3"})
    if kind == "too_deep":
        return msgspec.json.encode({**good, "temperature": 0.0}).replace(
            b'"temperature":0.0', b'"temperature":' + b"[" * 80 + b"]" * 80
        )
    if kind == "too_many_fields":
        return msgspec.json.encode({**good, "temperature": {f"k{i}": i for i in range(150)}})
    if kind == "number_too_large":
        return msgspec.json.encode({**good, "temperature": 0.0}).replace(
            b'"temperature":0.0', b'"temperature":1' + b"0" * 330
        )
    if kind == "string_too_long":
        return msgspec.json.encode({**good, "device_id": "d" * 2000})
    if kind == "invalid_utf8":
        return msgspec.json.encode({**good, "status": "ok"}).replace(b'"ok"', b'"o\xffk"')
    if kind == "invalid_time":
        return msgspec.json.encode({**good, "ts": "yesterday"})
    raise ValueError(f"unknown bad kind {kind!r}; allowed: {', '.join(BAD_KINDS)}")


def generate_fleet(
    n: int,
    *,
    seed: int = 7,
    devices: int = 100,
    bad_rate: float = 0.03,
    drift_at: int | None = None,
    drift_until: int | None = None,
    drift_shift: float = 1.0,
    start_index: int = 0,
    start_time: float = 1_790_000_000.0,
    interval: float = 0.01,
) -> FleetEvents:
    """``n`` events of a ``devices``-strong fleet; about ``bad_rate`` of them bad.

    Bad events cycle through ``BAD_KINDS`` so every reason appears. Event ``i``
    (counting from ``start_index``) has drift when ``drift_at <= i < drift_until``.
    """
    rng = np.random.default_rng(seed + start_index)
    index = np.arange(start_index, start_index + n)
    temp_series = nab_temperature()
    device = rng.integers(0, devices, size=n)
    offset = np.linspace(-2.0, 2.0, devices)[device]
    # Readings drawn from the series' normal-operation part (before NAB's first labelled
    # anomaly window), so the undrifted stream is stationary but shaped like real data.
    normal = temp_series[:_NAB_NORMAL_POINTS]
    temperature = np.round(
        normal[rng.integers(0, len(normal), size=n)] + offset + rng.normal(0, 0.3, n), 3
    )
    humidity = np.round(np.clip(rng.normal(45.0, 8.0, n), 0, 100), 2)
    humidity_null = rng.random(n) < 0.02
    vibration = rng.gamma(4.0, 0.5, n)  # mean 2, sd 1
    status_p = np.array([0.9, 0.08, 0.02])
    status = rng.choice(3, size=n, p=status_p)
    if drift_at is not None:
        drifted = index >= drift_at
        if drift_until is not None:
            drifted &= index < drift_until
        vibration = np.where(drifted, vibration + drift_shift, vibration)
        status = np.where(drifted, rng.choice(3, size=n, p=[0.6, 0.3, 0.1]), status)
    vibration = np.round(vibration, 4)
    ts = np.round(start_time + index * interval, 3)
    bad = rng.random(n) < bad_rate
    kinds = np.cumsum(bad) - 1 + int(start_index * bad_rate)
    values: list[bytes] = []
    keys: list[bytes] = []
    expected: list[str | None] = []
    encode = msgspec.json.encode
    for i in range(n):  # the producer side, not the monitor's hot path
        dev = f"dev-{int(device[i]):03d}"
        good = {
            "device_id": dev,
            "ts": float(ts[i]),
            "temperature": float(temperature[i]),
            "humidity": None if humidity_null[i] else float(humidity[i]),
            "vibration": float(vibration[i]),
            "status": _STATUS[int(status[i])],
        }
        keys.append(dev.encode())
        if bad[i]:
            kind = BAD_KINDS[int(kinds[i]) % len(BAD_KINDS)]
            values.append(_bad_payload(kind, good, rng))
            expected.append(kind)
        else:
            values.append(encode(good))
            expected.append(None)
    return FleetEvents(values, keys, expected)


def generate_wide(n: int, *, fields: int = 20, seed: int = 11) -> list[bytes]:
    """``n`` all-good events with ``fields`` float fields ``f00..``, for benchmarks."""
    rng = np.random.default_rng(seed)
    data = np.round(rng.normal(50.0, 10.0, size=(n, fields)), 4)
    names = [f"f{i:02d}" for i in range(fields)]
    encode = msgspec.json.encode
    return [encode(dict(zip(names, row, strict=True))) for row in data.tolist()]


def wide_stream(fields: int = 20, topic: str = "bench.wide") -> dict[str, Any]:
    """The stream declaration matching ``generate_wide``."""
    return {
        "name": "wide",
        "topic": topic,
        "fields": {f"f{i:02d}": {"type": "float", "range": [-1000, 1000]} for i in range(fields)},
    }
