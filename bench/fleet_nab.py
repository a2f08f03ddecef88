"""Real device signals: NAB series, each fed as one device, against NAB's anomaly windows.

Each series of ``tests/data/nab`` is one device of its own stream (the series are
different quantities in different years, so ``fleet_drift`` across them would be
meaningless and is off); events go through ``FleetStage`` in batches of one hour of
event time. For every labelled anomaly window: did a device detector fire inside
it, when (delay from the window's start) and which; and every detection outside
the windows. Thresholds come from the stated budget (``FALSE_ALERTS_PER_DAY`` for
the whole set of devices, their real event rate).

Usage: python bench/fleet_nab.py
"""

from __future__ import annotations

import csv
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "nab"
SERIES = (
    "machine_temperature_system_failure",
    "ambient_temperature_system_failure",
    "ec2_request_latency_system_failure",
    "rogue_agent_key_hold",
)
FALSE_ALERTS_PER_DAY = 0.1
DETECTORS = ("silent", "stuck", "spike")


@dataclass(frozen=True, slots=True)
class Detection:
    series: str
    detector: str
    at: float  # event time of the batch it came with
    score: float
    window: int | None  # the window it fell in, None outside every window


@dataclass(frozen=True, slots=True)
class WindowResult:
    series: str
    window: int
    start: float
    end: float
    first: Detection | None


def _epoch(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()


def _path(name: str) -> Path:
    # the machine-temperature series already ships with the package (monitor/dev/data)
    bundled = DATA.parents[2] / "monitor" / "dev" / "data" / f"nab_{name}.csv"
    return bundled if bundled.exists() else DATA / f"{name}.csv"


def _load(name: str) -> tuple[np.ndarray, np.ndarray]:
    with _path(name).open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return (
        np.array([_epoch(r["timestamp"]) for r in rows]),
        np.array([float(r["value"]) for r in rows]),
    )


def _windows() -> dict[str, list[tuple[int, float, float]]]:
    out: dict[str, list[tuple[int, float, float]]] = {}
    with (DATA / "anomaly_windows.csv").open(encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            name = r["file"].removesuffix(".csv")
            out.setdefault(name, []).append(
                (int(r["window_id"]), _epoch(r["window_start"]), _epoch(r["window_end"]))
            )
    return out


def _stage(name: str, events_per_day: float) -> object:
    from monitor.config.schema import parse_config
    from monitor.pipeline.decode import StreamDecoder
    from monitor.pipeline.fleet import FleetStage

    stream = {
        "name": name.replace("_", "-"),
        "topic": name,
        "entity": "device",
        "event_time": "ts",
        "fields": {"value": {"type": "float"}},
        "fleet": {
            "detectors": list(DETECTORS),
            "false_alerts_per_day": FALSE_ALERTS_PER_DAY,
            "events_per_day": events_per_day,
            "evaluate_every": "1h",
            "allowed_lateness": "1h",
        },
    }
    spec = parse_config({"kafka": {"bootstrap.servers": "x:1"}, "streams": [stream]}, env={})
    decoder = StreamDecoder(spec.streams[0])
    assert decoder.entities is not None
    decoder.entities.add([name])
    return FleetStage(spec.streams[0], decoder, clock=lambda: 4e9)


def nab_report() -> tuple[list[WindowResult], list[Detection]]:
    """Per window the first detection in it; and every detection (onsets)."""
    from monitor.pipeline.decode import Batch

    windows = _windows()
    loaded = {name: _load(name) for name in SERIES}
    # the budget is for the whole set of devices: their summed real event rate
    per_day = sum(len(t) / ((t[-1] - t[0]) / 86400.0) for t, _ in loaded.values())
    results: list[WindowResult] = []
    detections: list[Detection] = []
    for name in SERIES:
        times, values = loaded[name]
        stage = _stage(name, per_day)
        hours = np.floor((times - times[0]) / 3600.0).astype(np.int64)
        bounds = np.flatnonzero(np.diff(hours)) + 1
        for rows in np.split(np.arange(len(times)), bounds):
            n = len(rows)
            batch = Batch(
                stream=name,
                n_input=n,
                rows=np.arange(n, dtype=np.int64),
                columns={"value": values[rows]},
                valid={"value": np.ones(n, dtype=np.bool_)},
                entity=np.zeros(n, dtype=np.int64),
                event_time=times[rows],
            )
            at = float(times[rows[-1]])
            for f in stage.update(batch, np.zeros(n, dtype=np.int32)):  # type: ignore[attr-defined]
                if not f.drift:
                    continue
                inside = next((w for w, a, b in windows.get(name, []) if a <= at <= b), None)
                detections.append(Detection(name, f.detector, at, f.statistic, inside))
        for w, a, b in windows.get(name, []):
            first = next((d for d in detections if d.series == name and d.window == w), None)
            results.append(WindowResult(name, w, a, b, first))
    return results, detections


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M")


def main() -> None:
    results, detections = nab_report()
    print(
        f"NAB series as devices; detectors {', '.join(DETECTORS)}; budget "
        f"{FALSE_ALERTS_PER_DAY} false device-alerts/day over the set\n"
    )
    print(f"{'series':<36}{'win':>4}  {'window (UTC)':<38}{'fired':<7}first detection")
    for r in results:
        if r.first is None:
            hit = "no"
            first = "-"
        else:
            hit = "yes"
            delay = (r.first.at - r.start) / 3600.0
            first = f"{r.first.detector} +{delay:.1f} h ({_iso(r.first.at)})"
        span = f"{_iso(r.start)} .. {_iso(r.end)}"
        print(f"{r.series:<36}{r.window:>4}  {span:<38}{hit:<7}{first}")
    outside = [d for d in detections if d.window is None]
    print(f"\ndetections outside every window: {len(outside)}")
    for d in outside:
        print(f"  {d.series:<36}{d.detector:<8}{_iso(d.at)}  score {d.score:.3g}")


if __name__ == "__main__":
    main()
