"""The console summary line ``driftwarden run`` prints every ``summary_interval``."""

from __future__ import annotations

from monitor.runtime.transaction import RunStats

__all__ = ["summary_line"]


def summary_line(stats: RunStats, rate: float, lag: int, ready: bool) -> str:
    """Rate, invalid events, lag, readiness and what drifts, on one line.

    >>> summary_line(RunStats(events=10, drifting={("s", "x", "ks")}), 5.0, 0, True)
    'events=10 rate=5/s invalid=0 lag=0 ready=yes drifting=s.x/ks'
    """
    drifting = ", ".join(f"{st}.{fld}/{det}" for st, fld, det in sorted(stats.drifting)) or "none"
    return (
        f"events={stats.events} rate={rate:,.0f}/s invalid={stats.invalid} "
        f"lag={lag} ready={'yes' if ready else 'no'} drifting={drifting}"
    )
