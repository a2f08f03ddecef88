"""``driftwarden replay`` cost: CPU time per event of the replay and of its report,
for a drift-only stream, a fleet stream (device section) and a model stream with a
label file (model section).

    python -m bench.replay [--devices 10000] [--model-events 200000]

Prints one row per case: events, wall seconds, CPU seconds per event of the replay
(``time.process_time``, this process only) and of rendering the HTML report, and
the report's size. Files are generated into a temporary directory first.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import cpu_model
from monitor.config.schema import parse_config
from monitor.dev.fleet_demo import CONDITIONS, Failure, FleetScenario, fleet_stream
from monitor.dev.model_synthetic import MODEL_STREAM, generate_model_events, reference_rows
from monitor.dev.synthetic import DEMO_STREAM, generate_fleet
from monitor.runtime.replay import render_report_html, replay

KAFKA = {"bootstrap.servers": "127.0.0.1:9"}


def _case(
    name: str, config: dict[str, Any], path: Path, labels: Path | None = None
) -> tuple[str, int, float, float, float, int, str]:
    parsed = parse_config(config, env={})
    wall, cpu = time.perf_counter(), time.process_time()
    report = replay(parsed, path, labels=labels)
    cpu_replay = time.process_time() - cpu
    wall = time.perf_counter() - wall
    cpu = time.process_time()
    page = render_report_html(report)
    cpu_render = time.process_time() - cpu
    note = f"{sum(a.status == 'firing' for a in report.alerts)} alerts"
    if report.fleet is not None:
        note += ", flagged " + " ".join(f"{c}={n}" for c, n in report.fleet.devices)
    if report.model is not None:
        joined = dict(report.model.join_counts)["joined"]
        note += f", {joined:,} joined, {len(report.model.retrain)} retrain requests"
    return name, report.events, wall, cpu_replay, cpu_render, len(page), note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--fleet-seconds", type=float, default=3600.0)
    parser.add_argument("--drift-events", type=int, default=200_000)
    parser.add_argument("--model-events", type=int, default=200_000)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="dw-bench-replay-") as tmp:
        d = Path(tmp)
        # drift only: the demo sensors stream
        sensors = d / "sensors.jsonl"
        events = generate_fleet(args.drift_events, seed=1, drift_at=args.drift_events // 2)
        sensors.write_bytes(b"\n".join(events.values) + b"\n")
        stream = copy.deepcopy(DEMO_STREAM) | {
            "baseline": {"first_events": 20_000},
            "window": {"events": 10_000, "step": 2_000},
        }
        rows.append(_case("drift (sensors)", {"kafka": KAFKA, "streams": [stream]}, sensors))
        # fleet: every device every 60 s, failures at half time
        half = args.fleet_seconds / 2
        failures = (
            Failure("silent", tuple(range(0, 100)), half),
            Failure("stuck", (200, 201), half),
            Failure("out_of_range", (300,), half),
            Failure("spike", (400,), half),
            Failure("fleet_drift", (500,), half),
        )
        scenario = FleetScenario(
            devices=args.devices, period=60.0, start=1.79e9, failures=failures, seed=2
        )
        fleet = d / "fleet.jsonl"
        with fleet.open("wb") as fh:
            for chunk in scenario.chunks(0.0, args.fleet_seconds, 600.0):
                fh.write(b"\n".join(chunk.payloads()) + b"\n")
        fs = fleet_stream(
            "iot.fleet",
            evaluate_every="60s",
            detectors={c: {"events": 10} if c == "stuck" else {} for c in CONDITIONS},
            events_per_day=args.devices * 1440.0,
            max_entities=args.devices,
        )
        fs["fields"] = {f: {"type": "float", "detectors": {}} for f in fs["fields"]}  # type: ignore[attr-defined]
        fs["window"] = {"events": 10_000, "step": 5_000}
        rows.append(_case("fleet", {"kafka": KAFKA, "streams": [fs]}, fleet))
        # model with a label file
        reference = d / "reference.jsonl"
        reference.write_bytes(b"\n".join(reference_rows(20_000, seed=5)) + b"\n")
        ev = generate_model_events(
            args.model_events, seed=11, drift_at=args.model_events // 2, start=1.79e9
        )
        inference, labels = d / "inference.jsonl", d / "labels.jsonl"
        inference.write_bytes(b"\n".join(ev.inference) + b"\n")
        labels.write_bytes(b"\n".join(ev.labels) + b"\n")
        ms = copy.deepcopy(MODEL_STREAM)
        ms["model"]["reference"] = {"file": str(reference), "id": "ref"}
        rows.append(_case("model + labels", {"kafka": KAFKA, "streams": [ms]}, inference, labels))
    load = os.getloadavg()[0]
    print(f"# replay cost on {cpu_model()}, {os.cpu_count()} cores, load {load:.1f}")
    print(
        f"{'case':<16} {'events':>9} {'wall s':>7} {'us/event':>9} {'report ms':>10} "
        f"{'KB':>6}  findings"
    )
    for name, n, wall, cpu, render, size, note in rows:
        print(
            f"{name:<16} {n:>9,} {wall:>7.1f} {cpu / max(n, 1) * 1e6:>9.1f} "
            f"{render * 1e3:>10.1f} {size / 1024:>6.0f}  {note}"
        )


if __name__ == "__main__":
    main()
