"""What the service is seeing now: a bounded status board, as JSON and as an HTML page.

The loop feeds the board once per batch (counts, findings, alerts); the HTTP thread
takes a ``snapshot()`` under a lock and renders it. Everything is bounded whatever
the stream: a fixed history per (stream, subject, detector), at most
``max_subjects`` subjects per stream, ``max_alerts`` open alerts and ``max_rows``
rows per extra section (fleet's worst devices, models' quality), so the page stays
small for 10^5 devices.

The page is self-contained: inline CSS and inline SVG charts, no JavaScript, no
external resources; it refreshes itself every ``refresh`` seconds.

>>> from detectors.base import Finding
>>> board = StatusBoard(history=3)
>>> board.record_batch("s", events=10, accepted=9, rejected={"invalid_json": 1}, now=100.0)
>>> board.record_findings([Finding("ks", "x", 0.2, 0.1, True, stream="s")], now=100.0)
>>> snap = board.snapshot(now=101.0)
>>> snap.streams[0].fields[0].subject, snap.streams[0].fields[0].drift
('x', True)
>>> b"<svg" in render_html(snap)
True
"""

from __future__ import annotations

import html
import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from detectors.base import Finding, Verdicts
from monitor.charts import sparkline

__all__ = [
    "AlertRow",
    "FieldStatus",
    "StatusBoard",
    "StatusSection",
    "StatusSnapshot",
    "StatusSource",
    "StreamStatus",
    "finite_json",
    "render_html",
    "render_json",
]


@dataclass(frozen=True, slots=True)
class FieldStatus:
    """One (subject, detector)'s latest verdict and its recent history (oldest first)."""

    subject: str
    detector: str
    kind: str
    statistic: float
    threshold: float
    p_value: float | None
    drift: bool
    history: tuple[float, ...]
    thresholds: tuple[float, ...]
    verdicts: tuple[bool, ...]

    @property
    def score(self) -> float:
        """statistic / threshold: >= 1 means drift; the ranking key."""
        if (
            not math.isfinite(self.statistic)
            or not self.threshold
            or not math.isfinite(self.threshold)
        ):
            return 1.0 if self.drift else 0.0
        return self.statistic / self.threshold


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """One stream: totals, the recent event rate, rejects by reason, ranked fields."""

    name: str
    events: int
    accepted: int
    rejected: tuple[tuple[str, int], ...]
    rate: float
    null_ratio: tuple[tuple[str, float], ...]
    fields: tuple[FieldStatus, ...]

    @property
    def invalid_ratio(self) -> float:
        return sum(c for _, c in self.rejected) / self.events if self.events else 0.0


@dataclass(frozen=True, slots=True)
class AlertRow:
    """A firing alert as the page shows it."""

    id: str
    severity: str
    stream: str
    subject: str
    detector: str
    summary: str
    started_at: float


@dataclass(frozen=True, slots=True)
class StatusSection:
    """A table contributed by a stage (worst devices, model quality): bounded rows."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    note: str = ""


@runtime_checkable
class StatusSource(Protocol):
    """A stage that adds its own tables to /status (models' quality, for example)."""

    def status_sections(self) -> Sequence[StatusSection]: ...


@dataclass(frozen=True, slots=True)
class StatusSnapshot:
    """Everything /status shows, at ``generated_at`` (seconds since the epoch)."""

    generated_at: float
    streams: tuple[StreamStatus, ...]
    alerts: tuple[AlertRow, ...]
    sections: tuple[StatusSection, ...] = ()
    alerts_total: int = 0
    # Stage-specific detail for machines (e.g. "fleet": the worst devices), raw JSON.
    details: tuple[tuple[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["details"] = dict(self.details)
        for stream, s in zip(out["streams"], self.streams, strict=True):
            stream["invalid_ratio"] = s.invalid_ratio
            for f, fs in zip(stream["fields"], s.fields, strict=True):
                f["score"] = fs.score
        return finite_json(out)  # type: ignore[no-any-return]


@dataclass
class _Series:
    kind: str
    points: deque[tuple[float, float, bool]]
    p_value: float | None = None


@dataclass
class _StreamCounts:
    events: int = 0
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    null_ratio: dict[str, float] = field(default_factory=dict)
    recent: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=120))


class StatusBoard:
    """Bounded, thread-safe record of what the loop saw; see the module docstring."""

    def __init__(
        self,
        *,
        history: int = 60,
        max_subjects: int = 500,
        max_alerts: int = 100,
        max_rows: int = 50,
        rate_window: float = 60.0,
    ) -> None:
        self.history = history
        self.max_subjects = max_subjects
        self.max_alerts = max_alerts
        self.max_rows = max_rows
        self.rate_window = rate_window
        self._lock = threading.Lock()
        self._streams: dict[str, _StreamCounts] = {}
        self._series: dict[str, dict[tuple[str, str], _Series]] = {}
        self._alerts: dict[str, AlertRow] = {}
        self._sections: list[Callable[[], Sequence[StatusSection]]] = []
        self._details: list[tuple[str, Callable[[], Any]]] = []

    def record_batch(
        self,
        stream: str,
        *,
        events: int,
        accepted: int,
        rejected: Mapping[str, int],
        now: float,
        null_ratio: Mapping[str, float] | None = None,
    ) -> None:
        """Count one processed batch of ``stream``."""
        with self._lock:
            s = self._streams.setdefault(stream, _StreamCounts())
            s.events += events
            s.accepted += accepted
            for reason, n in rejected.items():
                s.rejected[reason] = s.rejected.get(reason, 0) + n
            if null_ratio:
                s.null_ratio.update(null_ratio)
            s.recent.append((now, s.events))

    def record_findings(self, findings: Iterable[Finding], now: float) -> None:
        """Add each finding's statistic to its (stream, subject, detector) history."""
        with self._lock:
            for f in findings:
                self._add_point(
                    self._series.setdefault(f.stream, {}),
                    (f.subject, f.detector),
                    f.kind,
                    (f.statistic, f.threshold, f.drift),
                    f.p_value,
                )

    def record_verdicts(self, verdicts: Verdicts, now: float) -> None:
        """``record_findings`` of clean verdicts handed over as rows."""
        with self._lock:
            series = self._series.setdefault(verdicts.stream, {})
            for subject, detector, statistic, threshold, p_value in verdicts.rows():
                self._add_point(
                    series,
                    (subject, detector),
                    verdicts.kind,
                    (statistic, threshold, False),
                    p_value,
                )

    def _add_point(
        self,
        series: dict[tuple[str, str], _Series],
        key: tuple[str, str],
        kind: str,
        point: tuple[float, float, bool],
        p_value: float | None,
    ) -> None:
        """Append one verdict to ``key``'s history (under the lock; a subject past
        ``max_subjects`` is not kept)."""
        s = series.get(key)
        if s is None:
            if len(series) >= self.max_subjects:
                return
            s = series[key] = _Series(kind, deque(maxlen=self.history))
        s.points.append(point)
        s.p_value = p_value

    def record_alerts(self, alerts: Iterable[Any]) -> None:
        """Track firing alerts (objects with the fields of ``monitor.alerting.engine.Alert``)."""
        with self._lock:
            for a in alerts:
                if a.status == "resolved":
                    self._alerts.pop(a.id, None)
                    continue
                self._alerts[a.id] = AlertRow(
                    a.id, a.severity, a.stream, a.subject, a.detector, a.summary, a.started_at
                )

    def add_section(self, provider: Callable[[], Sequence[StatusSection]]) -> None:
        """Register a stage's tables (called at snapshot time, on the HTTP thread)."""
        self._sections.append(provider)

    def add_detail(self, name: str, provider: Callable[[], Any]) -> None:
        """Register a stage's machine-readable detail, served under ``details.<name>``."""
        self._details.append((name, provider))

    def snapshot(self, now: float | None = None) -> StatusSnapshot:
        """A consistent copy of the board, bounded as described above."""
        now = time.time() if now is None else now
        with self._lock:
            streams = tuple(
                self._stream_status(name, counts) for name, counts in self._streams.items()
            )
            named = {s.name for s in streams}
            streams += tuple(
                self._stream_status(name, _StreamCounts())
                for name in self._series
                if name not in named
            )
            ordered = sorted(
                self._alerts.values(), key=lambda a: (-_rank(a.severity), a.started_at)
            )
            alerts = tuple(ordered[: self.max_alerts])
            alerts_total = len(self._alerts)
        sections: list[StatusSection] = []
        for provider in self._sections:
            for sec in provider():
                sections.append(
                    StatusSection(sec.title, sec.columns, sec.rows[: self.max_rows], sec.note)
                )
        details = tuple((name, provider()) for name, provider in self._details)
        return StatusSnapshot(now, streams, alerts, tuple(sections), alerts_total, details)

    def _stream_status(self, name: str, counts: _StreamCounts) -> StreamStatus:
        fields = []
        for (subject, detector), s in self._series.get(name, {}).items():
            if not s.points:
                continue
            stat, thr, drift = s.points[-1]
            fields.append(
                FieldStatus(
                    subject,
                    detector,
                    s.kind,
                    stat,
                    thr,
                    s.p_value,
                    drift,
                    tuple(p[0] for p in s.points),
                    tuple(p[1] for p in s.points),
                    tuple(p[2] for p in s.points),
                )
            )
        fields.sort(key=lambda f: (not f.drift, -f.score, f.subject, f.detector))
        return StreamStatus(
            name,
            counts.events,
            counts.accepted,
            tuple(sorted(counts.rejected.items())),
            _rate(counts.recent, self.rate_window),
            tuple(sorted(counts.null_ratio.items())),
            tuple(fields),
        )


def _rate(recent: deque[tuple[float, int]], window: float) -> float:
    if len(recent) < 2:
        return 0.0
    t1, n1 = recent[-1]
    t0, n0 = recent[0]
    for t, n in recent:
        if t >= t1 - window:
            t0, n0 = t, n
            break
    return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


_SEVERITY = {"info": 0, "warning": 1, "critical": 2}


def _rank(severity: str) -> int:
    return _SEVERITY.get(severity, 0)


def finite_json(obj: Any) -> Any:
    """``obj`` with non-finite floats as None (JSON has no NaN or infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_json(v) for v in obj]
    return obj


def render_json(snapshot: StatusSnapshot) -> bytes:
    """The machine form of /status (``/status.json``): finite numbers, null otherwise."""
    return json.dumps(snapshot.to_dict(), separators=(",", ":"), sort_keys=True).encode()


# -- HTML -------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d2330;background:#f7f8fa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.4em 0 .4em}
table{border-collapse:collapse;background:#fff;margin:.3em 0 1em;min-width:40em}
th,td{padding:.25em .6em;border-bottom:1px solid #e3e6ec;text-align:left;vertical-align:middle}
th{background:#eef1f5;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
.drift{color:#b3261e;font-weight:600}.ok{color:#1b6e35}.muted{color:#6b7280}
.card{display:inline-block;background:#fff;border:1px solid #e3e6ec;border-radius:6px;
padding:.5em .9em;margin:0 .6em .6em 0}.card b{display:block;font-size:1.3em}
.sev-critical{color:#b3261e;font-weight:600}.sev-warning{color:#a15c00}
svg.spark{display:block}
"""


def _fmt(x: float | None, digits: int = 4) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.{digits}g}"


def _table(columns: Sequence[str], rows: Iterable[Sequence[str]], raw: bool = False) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = "".join(f"<td>{c if raw else html.escape(c)}</td>" for c in row)
        body.append(f"<tr>{cells}</tr>")
    if not body:
        body.append(f'<tr><td colspan="{len(columns)}" class="muted">none</td></tr>')
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def render_html(
    snapshot: StatusSnapshot, *, title: str = "driftwarden", refresh: int = 10
) -> bytes:
    """The /status page: self-contained HTML (inline CSS and SVG, no scripts)."""
    e = html.escape
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(snapshot.generated_at))
    out = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f'<meta http-equiv="refresh" content="{int(refresh)}">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{e(title)} status</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)} status</h1><div class=muted>as of {when}</div>",
    ]
    drifting = sum(1 for s in snapshot.streams for f in s.fields if f.drift)
    cards = [
        ("streams", str(len(snapshot.streams))),
        ("events/s", f"{sum(s.rate for s in snapshot.streams):,.0f}"),
        ("firing alerts", str(snapshot.alerts_total)),
        ("drifting tests", str(drifting)),
    ]
    out.append("<div>" + "".join(f"<div class=card>{e(k)}<b>{v}</b></div>" for k, v in cards))
    out.append("</div>")

    out.append("<h2>Open alerts</h2>")
    rows = []
    for a in snapshot.alerts:
        started = time.strftime("%H:%M:%S", time.gmtime(a.started_at))
        rows.append(
            (
                f'<span class="sev-{e(a.severity)}">{e(a.severity)}</span>',
                e(a.stream),
                e(a.subject),
                e(a.detector),
                e(a.summary),
                started,
            )
        )
    out.append(
        _table(("severity", "stream", "subject", "detector", "summary", "since"), rows, True)
    )
    if snapshot.alerts_total > len(snapshot.alerts):
        out.append(
            f"<div class=muted>and {snapshot.alerts_total - len(snapshot.alerts)} more</div>"
        )

    for s in snapshot.streams:
        out.append(f"<h2>Stream {e(s.name)}</h2>")
        rejected = sum(c for _, c in s.rejected)
        stream_cards = [
            ("events", f"{s.events:,}"),
            ("events/s", f"{s.rate:,.0f}"),
            ("accepted", f"{s.accepted:,}"),
            ("invalid", f"{rejected:,} ({s.invalid_ratio:.2%})"),
        ]
        out.append(
            "<div>" + "".join(f"<div class=card>{e(k)}<b>{v}</b></div>" for k, v in stream_cards)
        )
        out.append("</div>")
        field_rows = []
        for f in s.fields:
            verdict = "<span class=drift>drift</span>" if f.drift else "<span class=ok>ok</span>"
            field_rows.append(
                (
                    e(f.subject),
                    e(f.detector),
                    verdict,
                    f"<span class=n>{_fmt(f.statistic)}</span>",
                    f"<span class=n>{_fmt(f.threshold)}</span>",
                    f"<span class=n>{_fmt(f.p_value, 3)}</span>",
                    sparkline(f.history, f.thresholds, f.verdicts),
                )
            )
        out.append("<h3>Fields ranked by drift</h3>")
        out.append(
            _table(
                ("subject", "detector", "verdict", "statistic", "threshold", "p", "recent"),
                field_rows,
                True,
            )
        )
        quality_rows = [
            (f"rejected: {reason}", f"{n:,} ({n / max(s.events, 1):.2%})")
            for reason, n in s.rejected
            if n
        ]
        quality_rows += [(f"null ratio: {name}", f"{r:.2%}") for name, r in s.null_ratio]
        out.append("<h3>Data quality</h3>")
        out.append(_table(("measure", "value"), quality_rows))

    for sec in snapshot.sections:
        out.append(f"<h2>{e(sec.title)}</h2>")
        if sec.note:
            out.append(f"<div class=muted>{e(sec.note)}</div>")
        out.append(_table(sec.columns, sec.rows))
    out.append("</body></html>")
    return "".join(out).encode()
