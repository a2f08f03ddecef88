"""Throughput of the Faust adapter (``monitor/runtime/faust.py``) against the embedded broker.

Produces N events of the 20-field wide stream once (``generate_wide``, 4
partitions), then consumes them from the start with a fresh Faust app per mode,
each in its own process:

* noop-stream:    the trivial Faust agent, ``async for value in stream: pass``
* noop-take:      ``async for events in stream.take_events(B, within)``, nothing else
* adapter:        ``monitor.runtime.faust.attach``: take_events + FaustMonitor.process
                  (decode, schema checks, dead letters, metrics), no drift detectors
* adapter+drift:  the same with the default drift detectors on every field

Timing starts at the first event/batch (the group join is excluded) and stops at
the last. Faust settings: the ones the embedded broker needs (session timeout 6 s,
heartbeat 1 s), memory store, no web server; everything else default.

Usage: python bench/faust_throughput.py [--events 200000] [--batch 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import cpu_model, produce_wide

MODES = ("noop-stream", "noop-take", "adapter", "adapter+drift")


def _child(args: argparse.Namespace) -> None:
    import faust
    from prometheus_client import CollectorRegistry

    from monitor.config.schema import parse_config
    from monitor.dev.synthetic import wide_stream

    mode, topic, total = args.mode, args.topic, args.events
    app = faust.App(
        f"bench-faust-{time.monotonic_ns()}",
        broker=f"kafka://{args.bootstrap}",
        broker_session_timeout=6,
        broker_heartbeat_interval=1,
        datadir=tempfile.mkdtemp(prefix="bench-faust-"),
        store="memory://",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
    )
    marks: dict[str, float] = {}
    seen = [0]
    monitor: Any = None

    def mark(n: int) -> None:
        if "start" not in marks:
            marks["start"] = time.perf_counter()
            marks["first"] = n
        seen[0] += n
        marks["last"] = time.perf_counter()

    if mode.startswith("noop"):
        source = app.topic(topic, value_type=bytes, value_serializer="raw")
        if mode == "noop-stream":

            @app.agent(source)
            async def noop(stream: Any) -> None:
                async for _value in stream:
                    mark(1)

        else:

            @app.agent(source)
            async def noop_take(stream: Any) -> None:
                async for events in stream.take_events(args.batch, args.within):
                    mark(len(events))

    else:
        from monitor.runtime.faust import attach

        stream = wide_stream(args.fields, topic)
        if mode == "adapter":
            for spec in stream["fields"].values():
                spec["detectors"] = []
        config = parse_config(
            {
                "kafka": {"bootstrap.servers": args.bootstrap},
                "metrics": {"enabled": False},
                "dead_letter_topic": f"{topic}.dlq",
                "streams": [{**stream, "baseline": {"first_events": 10_000}}],
            },
            env={},
        )
        monitor = attach(app, config, topic, args.batch, args.within, registry=CollectorRegistry())
        process = monitor.process

        async def timed(topic_name: str, events: Any) -> Any:
            result = await process(topic_name, events)
            mark(len(events))
            return result

        monitor.process = timed

    async def run() -> None:
        await app.start()
        try:
            deadline = time.monotonic() + args.timeout
            while seen[0] < total and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            await app.stop()

    asyncio.run(run())
    result: dict[str, Any] = {
        "mode": mode,
        "events": seen[0] - int(marks.get("first", 0)),
        "total": seen[0],
        "seconds": marks.get("last", 0.0) - marks.get("start", 0.0),
    }
    if monitor is not None:
        registry = monitor.metrics.registry
        result["stages"] = {
            s: registry.get_sample_value("driftwarden_stage_seconds_total", {"stage": s}) or 0.0
            for s in ("decode", "checks", "detectors")
        }
        result["accepted"] = monitor.stats.accepted
        monitor.close()
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--fields", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--within", type=float, default=1.0)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=240.0, help="per mode, seconds")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--topic", default="bench.faust.wide", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        _child(args)
        return

    import faust

    from connectors.embedded import EmbeddedBroker

    print(
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}, nproc={os.cpu_count()}, "
        f'CPU "{cpu_model()}", Python {platform.python_version()}, '
        f"faust-streaming {faust.__version__}",
        flush=True,
    )
    with EmbeddedBroker() as broker:
        produce_s = produce_wide(
            broker.bootstrap, args.topic, args.events, args.fields, args.partitions, keyed=True
        )
        print(
            f"produced {args.events:,} events of {args.fields} fields to {args.partitions} "
            f"partitions in {produce_s:.1f}s; batches of {args.batch} within {args.within}s",
            flush=True,
        )
        rows = []
        for mode in args.modes.split(","):
            cmd = [sys.executable, __file__, "--mode", mode, "--bootstrap", broker.bootstrap]
            for name in ("topic", "events", "fields", "batch", "within", "timeout"):
                cmd += [f"--{name}", str(getattr(args, name))]
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=args.timeout + 60, check=False
            )
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if proc.returncode != 0 or not lines:
                print(f"{mode}: failed (rc={proc.returncode})\n{proc.stderr[-2000:]}")
                continue
            rows.append(json.loads(lines[-1]))
            print(f"  {mode}: done", flush=True)

    print(
        f"\n{'mode':<16}{'events':>9}{'events/s':>11}{'us/event':>10}"
        f"{'decode':>8}{'checks':>8}{'detect':>8}{'peak RSS':>10}"
    )
    for r in rows:
        rate = r["events"] / r["seconds"] if r["seconds"] > 0 else 0.0
        stages = r.get("stages", {})
        cols = "".join(
            f"{stages[s] / max(r['total'], 1) * 1e6:>8.2f}" if s in stages else f"{'-':>8}"
            for s in ("decode", "checks", "detectors")
        )
        complete = "" if r["total"] >= args.events else f"  (only {r['total']:,} seen)"
        print(
            f"{r['mode']:<16}{r['events']:>9,}{rate:>11,.0f}{1e6 / max(rate, 1e-9):>10.1f}"
            f"{cols}{r['peak_rss_mb']:>8.0f}MB{complete}"
        )


if __name__ == "__main__":
    main()
