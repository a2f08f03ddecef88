"""``driftwarden replay FILE --config CONFIG``: the command around ``monitor.runtime.replay``."""

from __future__ import annotations

import argparse
import sys

from monitor.runtime.replay import replay, write_report

__all__ = ["replay_command"]


def replay_command(args: argparse.Namespace) -> int:
    """``driftwarden replay FILE --config CONFIG [--report out.html] [--json out.json]``."""
    from monitor.cli.console import StatusLine
    from monitor.config.schema import load_config

    config = load_config(args.config)
    line = StatusLine(sys.stderr, every=10.0)

    def progress(events: int, seconds: float) -> None:
        line.update(f"replayed {events:,} events ({events / max(seconds, 1e-9):,.0f}/s)")

    report = replay(
        config,
        args.file,
        stream=args.stream,
        chunk=args.chunk,
        on_progress=progress,
        labels=args.labels,
    )
    line.close(f"replayed {report.events:,} events in {report.seconds:.1f} s")
    write_report(report, args.report, args.json)
    fired = [a for a in report.alerts if a.status == "firing"]
    print(
        f"replayed {report.events:,} events of {args.file} as stream {report.stream}: "
        f"{report.accepted:,} accepted, {sum(n for _, n in report.rejected):,} rejected, "
        f"{len(fired)} alert(s) fired in {report.seconds:.1f} s"
    )
    for a in fired:
        print(f"  at event {a.position:,}: [{a.severity}] {a.summary}")
    if report.fleet is not None:
        flagged = ", ".join(f"{c} {n:,}" for c, n in report.fleet.devices if n) or "none"
        print(f"  devices flagged per condition: {flagged}")
    if report.model is not None:
        m = report.model
        joined = dict(m.join_counts).get("joined", 0)
        print(
            f"  model {m.model}: {m.labels_read:,} labels read, {joined:,} joined, "
            f"{len(m.retrain)} retrain request(s)"
        )
        for q in m.quality:
            if q.source != "estimate_error" and q.first_drop is not None:
                print(
                    f"  {q.source} {q.metric} of version {q.version} dropped at event "
                    f"{q.first_drop:,}"
                )
    for target in (args.report, args.json):
        if target is not None:
            print(f"wrote {target}")
    return 0
