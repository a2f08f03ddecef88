"""``driftwarden replay``: the streaming engine over a file, offline, with a report.

A CSV, JSONL or Parquet file is read in chunks and fed, in file order, to the very
pipeline the service runs (decode, schema checks, the stream's stages) as if it were
partition 0 of the stream's topic, with offsets = row numbers; findings go through
the same alert engine. Nothing talks to a broker. The engine's clock is the chunk's
latest event time when the stream has one (so cooldowns follow the data), else the
wall clock.

The pipeline is built with the service's stage factory, so a replay runs the stages
the service runs: drift, the model stage of a stream with ``model.labels`` (its
labels from ``labels=`` or the rows' own label field, see
``monitor.runtime.replay_sections``) and the fleet stage of a stream with a
``fleet`` section; the alert engine asks for retrains as the service's does.

The result is a typed ``ReplayReport``: per field the statistic at every verdict,
reference and current distributions, data-quality rates over time, the alerts on
a timeline and, where configured, the devices flagged per condition and the model's
quality (realized, estimated, joins, retrain requests). ``render_report_html`` turns
it into one self-contained HTML page (inline SVG charts); ``ReplayReport.to_dict``
is the same content as JSON.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry

from detectors.base import Finding
from detectors.baseline import CategoricalBaseline, NumericBaseline
from monitor.alerting.engine import AlertEngine
from monitor.charts import bars, line_chart
from monitor.config.alerts import AlertsConfig
from monitor.config.schema import Config, StreamSpec
from monitor.errors import ConfigError
from monitor.metrics import Metrics
from monitor.pipeline.baselines import read_file_payloads
from monitor.pipeline.drift import DriftStage
from monitor.pipeline.fleet import FleetStage
from monitor.pipeline.model import ModelStage
from monitor.pipeline.stream import build_pipelines
from monitor.runtime.faust import to_raw_batch
from monitor.runtime.replay_sections import (
    FileLabels,
    FleetCollector,
    FleetSection,
    InFileLabels,
    ModelCollector,
    ModelSection,
    render_fleet_html,
    render_model_html,
)
from monitor.status import finite_json

__all__ = [
    "AlertMark",
    "Distribution",
    "FieldSeries",
    "ReplayReport",
    "render_report_html",
    "replay",
]

_DISPLAY_BINS = 20


@dataclass(frozen=True, slots=True)
class FieldSeries:
    """One (subject, detector)'s verdicts: positions are events read so far."""

    subject: str
    detector: str
    positions: tuple[int, ...]
    statistics: tuple[float, ...]
    thresholds: tuple[float, ...]
    drift: tuple[bool, ...]

    @property
    def first_drift(self) -> int | None:
        return next((p for p, d in zip(self.positions, self.drift, strict=True) if d), None)


@dataclass(frozen=True, slots=True)
class Distribution:
    """Reference vs current shares of one field over display bins."""

    field: str
    labels: tuple[str, ...]
    reference: tuple[float, ...]
    current: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class AlertMark:
    """An alert state change at ``position`` (events read so far)."""

    position: int
    id: str
    status: str
    severity: str
    subject: str
    detector: str
    summary: str


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """Everything ``replay`` measured; ``to_dict`` is the JSON report."""

    file: str
    stream: str
    events: int
    accepted: int
    rejected: tuple[tuple[str, int], ...]
    baseline_id: str | None
    seconds: float
    series: tuple[FieldSeries, ...]
    distributions: tuple[Distribution, ...]
    alerts: tuple[AlertMark, ...]
    quality_positions: tuple[int, ...] = ()
    invalid_rate: tuple[float, ...] = ()
    null_rates: tuple[tuple[str, tuple[float, ...]], ...] = ()
    fleet: FleetSection | None = None
    model: ModelSection | None = None

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(dataclasses.replace(self, fleet=None, model=None))
        doc["fleet"] = self.fleet.to_dict() if self.fleet is not None else None
        doc["model"] = self.model.to_dict() if self.model is not None else None
        return finite_json(doc)  # type: ignore[no-any-return]

    def findings_at(self) -> dict[tuple[str, str], int | None]:
        """First drift position per (subject, detector)."""
        return {(s.subject, s.detector): s.first_drift for s in self.series}


@dataclass
class _Recent:
    """The last ``size`` valid values (numeric) or codes (categorical) of a field."""

    size: int
    values: list[npt.NDArray[Any]] = field(default_factory=list)
    held: int = 0

    def add(self, v: npt.NDArray[Any]) -> None:
        self.values.append(v)
        self.held += len(v)
        while self.values and self.held - len(self.values[0]) >= self.size:
            self.held -= len(self.values.pop(0))

    def array(self) -> npt.NDArray[Any]:
        if not self.values:
            return np.empty(0)
        return np.concatenate(self.values)[-self.size :]


def _stream(config: Config, name: str | None) -> StreamSpec:
    if name is None:
        if len(config.streams) != 1:
            names = ", ".join(s.name for s in config.streams)
            raise ConfigError(f"--stream: the config has several streams; choose one of {names}")
        return config.streams[0]
    for s in config.streams:
        if s.name == name:
            return s
    names = ", ".join(s.name for s in config.streams)
    raise ConfigError(f"--stream: no stream {name!r}; allowed: {names}")


def replay(
    config: Config,
    path: Path,
    *,
    stream: str | None = None,
    chunk: int | None = None,
    on_progress: Callable[[int, float], None] | None = None,
    labels: Path | None = None,
) -> ReplayReport:
    """Run ``config``'s stream over the file at ``path``; see the module docstring.

    ``chunk`` is the batch size; by default the window's step, so that a verdict is
    taken at every step as the file is read. ``labels``: a file of label events for
    a stream with ``model.labels`` (else the rows' own label field, when they have it).
    """
    spec = _stream(config, stream)
    label_spec = spec.model.labels if spec.model is not None else None
    if labels is not None and label_spec is None:
        raise ConfigError(f"--labels: stream {spec.name!r} has no model.labels section")
    if chunk is None:
        chunk = spec.window.step or 10_000
    started = time.perf_counter()
    metrics = Metrics(CollectorRegistry())
    topic = spec.all_topics[0]
    pipeline = build_pipelines(config, metrics)[topic]
    drift = next((s for s in pipeline.stages if isinstance(s, DriftStage)), None)
    engine = AlertEngine(config.alerts if config.alerts is not None else AlertsConfig())
    if spec.model is not None:  # as the service's alerting handler does
        engine.set_model(spec.name, spec.model.name, spec.model.version or "unversioned")
        engine.retrain_on = {spec.name: (tuple(spec.model.retrain_on), spec.model.retrain_severity)}
    fleets = [FleetCollector(s) for s in pipeline.stages if isinstance(s, FleetStage)]
    model_stage = next((s for s in pipeline.stages if isinstance(s, ModelStage)), None)
    model: ModelCollector | None = None
    from_file: FileLabels | None = None
    in_file: InFileLabels | None = None
    if model_stage is not None and label_spec is not None:
        if labels is not None:
            from_file = FileLabels(labels, spec)
            model = ModelCollector(model_stage, f"file {labels.name}, merged by event time")
        else:
            in_file = InFileLabels(spec)
            model = ModelCollector(model_stage, "none (no --labels, no label field in the rows)")
    label_offset = 0
    window = spec.window.events or 10_000
    recent = {name: _Recent(window) for name in (drift.fields if drift else [])}
    series: dict[tuple[str, str], list[tuple[int, float, float, bool]]] = {}
    marks: list[AlertMark] = []
    positions: list[int] = []
    invalid_rate: list[float] = []
    null_rates: dict[str, list[float]] = {n: [] for n in spec.fields}
    rejected: dict[str, int] = {}
    events = accepted = 0
    last_progress = 0.0
    now = time.time()

    def observe(findings: list[Finding]) -> None:
        for f in findings:
            if f.kind not in ("entity", "model"):  # devices and models: own sections
                series.setdefault((f.subject, f.detector), []).append(
                    (events, f.statistic, f.threshold, f.drift)
                )
        outcome = engine.observe(findings, now)
        for a in outcome.alerts:
            marks.append(
                AlertMark(events, a.id, a.status, a.severity, a.subject, a.detector, a.summary)
            )
        for fleet in fleets:
            fleet.observe(findings, events)
        if model is not None:
            model.observe(findings, outcome.retrain_requests, events)

    def feed_labels(values: list[bytes | None]) -> list[Finding]:
        nonlocal label_offset
        if not values or label_spec is None or model is None:
            return []
        rows = [(0, label_offset + i, None, p) for i, p in enumerate(values)]
        label_offset += len(values)
        model.labels_read += len(values)
        result = pipeline.process(to_raw_batch(label_spec.topic, rows))
        for reason, n in result.rejected.items():
            model.labels_rejected[reason] = model.labels_rejected.get(reason, 0) + n
        return result.every_finding()

    for payloads in read_file_payloads(path, spec, chunk=chunk):
        rows = [(0, events + i, None, p) for i, p in enumerate(payloads)]
        result = pipeline.process(to_raw_batch(topic, rows))
        findings = result.every_finding()
        latest = pipeline.last_batch
        if in_file is not None and model is not None and label_spec is not None:
            found = in_file.of(payloads, latest)
            if found and not model.labels_read:
                model.labels = f"the rows' own field {label_spec.value!r}, at their time"
            findings += feed_labels(found)
        elif from_file is not None and latest is not None and latest.event_time is not None:
            times = latest.event_time[np.isfinite(latest.event_time)]
            if times.size:
                findings += feed_labels(from_file.until(float(times.max())))
        events += result.events
        accepted += result.accepted
        for reason, n in result.rejected.items():
            rejected[reason] = rejected.get(reason, 0) + n
        batch = pipeline.last_batch
        if batch is not None:
            for name, keep in recent.items():
                keep.add(batch.columns[name][batch.valid[name]])
            positions.append(events)
            invalid_rate.append(sum(result.rejected.values()) / max(result.events, 1))
            for name in spec.fields:
                ok = batch.valid.get(name)
                null_rates[name].append(
                    1.0 - float(np.count_nonzero(ok)) / batch.n
                    if ok is not None and batch.n
                    else 0.0
                )
        now = time.time()
        if batch is not None and batch.event_time is not None and batch.n:
            stamped = batch.event_time[np.isfinite(batch.event_time)]
            now = float(stamped.max()) if stamped.size else now
        observe(findings)
        elapsed = time.perf_counter() - started
        if on_progress is not None and elapsed - last_progress >= 0.5:
            last_progress = elapsed
            on_progress(events, elapsed)
    if from_file is not None:
        observe(feed_labels(from_file.rest()))  # the labels after the last prediction
    dists = _distributions(drift, recent, pipeline) if drift is not None else ()
    return ReplayReport(
        file=str(path),
        stream=spec.name,
        events=events,
        accepted=accepted,
        rejected=tuple(sorted(rejected.items())),
        baseline_id=drift.baseline.id if drift is not None and drift.baseline else None,
        seconds=time.perf_counter() - started,
        series=tuple(
            FieldSeries(
                subject,
                det,
                tuple(p[0] for p in pts),
                tuple(p[1] for p in pts),
                tuple(p[2] for p in pts),
                tuple(p[3] for p in pts),
            )
            for (subject, det), pts in sorted(series.items())
        ),
        distributions=tuple(dists),
        alerts=tuple(marks),
        quality_positions=tuple(positions),
        invalid_rate=tuple(invalid_rate),
        null_rates=tuple((n, tuple(v)) for n, v in null_rates.items()),
        fleet=fleets[0].section() if fleets else None,
        model=model.section() if model is not None else None,
    )


def _distributions(
    drift: DriftStage, recent: dict[str, _Recent], pipeline: Any
) -> list[Distribution]:
    out: list[Distribution] = []
    if drift.baseline is None:
        return out
    for name, keep in recent.items():
        fb = drift.baseline.fields.get(name)
        current = keep.array()
        if isinstance(fb, NumericBaseline):
            out.append(_numeric_distribution(name, fb, current.astype(np.float64)))
        elif isinstance(fb, CategoricalBaseline):
            vocab = pipeline.decoder.vocabularies.get(name)
            names = [str(v) for v in vocab.names()] if vocab is not None else []
            out.append(_categorical_distribution(name, fb, current.astype(np.int64), names))
    return out


def _numeric_distribution(
    name: str, fb: NumericBaseline, current: npt.NDArray[np.float64]
) -> Distribution:
    # Display bins: equal width between the reference's 1st and 99th percentiles,
    # plus one open bin on each side.
    cdf = np.cumsum(fb.counts) / max(fb.n, 1)
    inner = fb.inner_edges
    lo, hi = fb.min, fb.max
    if len(inner):
        last = len(inner) - 1
        lo = float(inner[min(int(np.searchsorted(cdf, 0.01)), last)])
        hi = float(inner[min(int(np.searchsorted(cdf, 0.99)), last)])
    if not hi > lo:
        lo, hi = fb.min - 0.5, fb.max + 0.5
    edges = np.linspace(lo, hi, _DISPLAY_BINS + 1)
    # Reference mass per display bin: each fine bin's mass at its lower edge.
    starts = np.concatenate([[fb.min], inner])
    ref_bin = np.searchsorted(edges, starts, side="right")
    ref = np.bincount(ref_bin, weights=fb.counts, minlength=_DISPLAY_BINS + 2)
    cur = np.bincount(
        np.searchsorted(edges, current, side="right"), minlength=_DISPLAY_BINS + 2
    ).astype(np.float64)
    labels = [f"<{lo:.3g}"] + [f"{x:.3g}" for x in edges[:-1]] + [f">={hi:.3g}"]
    return Distribution(
        name,
        tuple(labels),
        tuple((ref / max(ref.sum(), 1)).tolist()),
        tuple((cur / max(cur.sum(), 1)).tolist()),
    )


def _categorical_distribution(
    name: str, fb: CategoricalBaseline, codes: npt.NDArray[np.int64], names: Sequence[str]
) -> Distribution:
    index = {c: i for i, c in enumerate(fb.categories)}
    k = len(fb.categories)
    lut = np.array([index.get(n, k) for n in names] or [k], dtype=np.int64)
    bins = np.where(codes >= 0, lut[np.clip(codes, 0, len(lut) - 1)], k)
    cur = np.bincount(bins, minlength=k + 1).astype(np.float64)
    ref = np.append(fb.counts.astype(np.float64), 0.0)
    return Distribution(
        name,
        (*fb.categories, "(unseen)"),
        tuple((ref / max(ref.sum(), 1)).tolist()),
        tuple((cur / max(cur.sum(), 1)).tolist()),
    )


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#1d2330}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #e3e6ec}
table{border-collapse:collapse;margin:.4em 0}td,th{padding:.2em .6em;border-bottom:1px solid #eee;
text-align:left}.drift{color:#b3261e;font-weight:600}.muted{color:#6b7280}
.legend span{display:inline-block;width:.8em;height:.8em;margin:0 .3em 0 1em}
section.field{margin:1em 0 1.6em}h3{font-size:1.05em;margin:1.2em 0 .3em}
"""


def _ratios(s: FieldSeries) -> tuple[float, ...]:
    """Statistic / threshold at each verdict (1 = at the threshold)."""
    return tuple(
        v / t if t > 0 and math.isfinite(t) else math.nan
        for v, t in zip(s.statistics, s.thresholds, strict=True)
    )


def render_report_html(report: ReplayReport) -> bytes:
    """The replay report as one self-contained HTML page (inline SVG, no scripts)."""
    e = html.escape
    out = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>driftwarden replay: {e(report.stream)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Replay of {e(Path(report.file).name)} as stream {e(report.stream)}</h1>",
        f"<p class=muted>{report.events:,} events, {report.accepted:,} accepted, "
        f"{sum(n for _, n in report.rejected):,} rejected, baseline "
        f"{e(report.baseline_id or 'none')}, {report.seconds:.1f} s.</p>",
    ]
    out.append("<h2>Alerts</h2>")
    if report.alerts:
        rows = "".join(
            f"<tr><td>{a.position:,}</td><td class={'drift' if a.status == 'firing' else ''}>"
            f"{e(a.status)}</td><td>{e(a.severity)}</td><td>{e(a.subject)}</td>"
            f"<td>{e(a.detector)}</td><td>{e(a.summary)}</td></tr>"
            for a in report.alerts
        )
        out.append(
            "<table><tr><th>at event</th><th>status</th><th>severity</th><th>subject</th>"
            f"<th>detector</th><th>summary</th></tr>{rows}</table>"
        )
    else:
        out.append("<p class=muted>No alert fired.</p>")

    if report.fleet is not None:
        fired = [
            a.position
            for a in report.alerts
            if a.status == "firing" and a.detector in report.fleet.conditions
        ]
        out.append(render_fleet_html(report.fleet, fired))
    if report.model is not None:
        named = set(report.model.prediction_fields)
        prediction = [
            (f"{s.subject} {s.detector}", s.positions, _ratios(s))
            for s in report.series
            if s.subject in named
        ]
        out.append(render_model_html(report.model, prediction))

    if report.series or not (report.fleet or report.model):
        out.append("<h2>Fields</h2>")
        out.append(
            '<p class="legend muted"><span style="background:#2f5bd3"></span>statistic'
            '<span style="background:#e08a00"></span>threshold'
            '<span style="background:#b3261e"></span>alert fired'
            '<span style="background:#1b6e35"></span>resolved'
            '<span style="background:#9aa3b2"></span>reference share</p>'
        )
    dists = {d.field: d for d in report.distributions}
    by_subject: dict[str, list[FieldSeries]] = {}
    for s in report.series:
        by_subject.setdefault(s.subject, []).append(s)
    ranked = sorted(
        by_subject.items(),
        key=lambda kv: min((s.first_drift or math.inf) for s in kv[1]),
    )
    for subject, group in ranked:
        out.append(f"<section class=field><h3>{e(subject)}</h3>")
        for s in group:
            fired = [
                a.position
                for a in report.alerts
                if a.status == "firing"
                and s.subject in [*a.subject.split(","), "*"]
                and a.detector == s.detector
            ]
            resolved = [
                a.position
                for a in report.alerts
                if a.status == "resolved" and a.subject == s.subject and a.detector == s.detector
            ]
            first = s.first_drift
            verdict = (
                f"<span class=drift>drift from event {first:,}</span>"
                if first is not None
                else "no drift"
            )
            out.append(f"<div>{e(s.detector)}: {verdict}</div>")
            out.append(
                line_chart(
                    s.positions,
                    s.statistics,
                    threshold=s.thresholds[-1] if s.thresholds else None,
                    markers=fired,
                    resolves=resolved,
                    label=f"{subject} {s.detector} statistic",
                )
            )
        d = dists.get(subject)
        if d is not None:
            out.append("<div class=muted>reference (grey) vs the last window (blue)</div>")
            out.append(bars(d.labels, d.reference, d.current, label=f"{subject} distribution"))
        out.append("</section>")

    out.append("<h2>Data quality</h2>")
    if any(r > 0 for r in report.invalid_rate):
        out.append(
            line_chart(
                report.quality_positions, report.invalid_rate, label="invalid rate per chunk"
            )
        )
        out.append("<div class=muted>share of events rejected per chunk</div>")
    else:
        out.append("<p class=muted>No event was rejected.</p>")
    for name, rates in report.null_rates:
        if any(r > 0 for r in rates):
            out.append(f"<div>null rate of {e(name)}</div>")
            out.append(line_chart(report.quality_positions, rates, label=f"null rate {name}"))
    if report.rejected:
        rows = "".join(f"<tr><td>{e(r)}</td><td>{n:,}</td></tr>" for r, n in report.rejected)
        out.append(f"<table><tr><th>reason</th><th>events</th></tr>{rows}</table>")
    out.append("</body></html>")
    return "".join(out).encode()


def write_report(report: ReplayReport, html_path: Path | None, json_path: Path | None) -> None:
    """Write the HTML and/or JSON forms (to a temporary name, then renamed)."""
    if html_path is not None:
        _write_atomic(html_path, render_report_html(report))
    if json_path is not None:
        _write_atomic(json_path, json.dumps(report.to_dict(), indent=1).encode())


def _write_atomic(target: Path, data: bytes) -> None:
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(target)
