"""The replay report's device and model sections, and the labels a model replay reads.

Both sections are collected while the file is replayed, from what the stages hand
out publicly: their findings, the fleet stage's ``last_status`` / ``status()``
(the worst-devices view the service serves) and the model stage's ``join_counts()``
and ``status_sections()`` (its /status tables). Nothing reads a stage's internals,
so the report follows whatever stages the service builds.

Devices (a stream with a ``fleet`` section): the devices unhealthy per condition
after every batch, onsets per condition, the first ``limit`` devices flagged per
condition with the evidence of their onset finding (and when they recovered), and
the worst devices at the end with their evidence. All bounded: the lists hold at
most ``limit`` devices per condition whatever the fleet's size, and series over
batches are thinned to at most ``MAX_POINTS`` points.

Model (a stream with ``model.labels``): realized quality per version and metric at
every verdict (from joined labels), the CBPE estimate at every verdict (before
labels) and its error against the realized accuracy, label joins over time, the
input features ranked by drift, and the retrain requests the alert engine made.

Labels: ``--labels FILE`` (JSONL, CSV or Parquet rows shaped like the label topic's
events) are fed as the label topic, merged by event time: after each batch of the
replayed file, the labels stamped at or before the batch's latest event time (the
rest at the end). Without ``--labels``, when the replayed rows carry the label
field (``model.labels.value``), each accepted row's label is fed right after its
batch, stamped with the row's ``model.labels.time`` field (else its event time).

>>> s = FleetSection("fleet", ("silent",), (10, 20), (("silent", (0, 2)),),
...                  (("silent", 2),), (("silent", 2),), (), 20, None)
>>> s.to_dict()["unhealthy"]
{'silent': [0, 2]}
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from connectors.files import read_file_payloads
from detectors.base import Finding
from monitor.alerting.engine import RetrainRequest
from monitor.charts import lines
from monitor.config.schema import StreamSpec
from monitor.pipeline.decode import Batch
from monitor.pipeline.fleet import FleetStage, FleetStatus
from monitor.pipeline.model import ModelStage
from monitor.status import StatusSection

__all__ = [
    "MAX_POINTS",
    "DeviceFlag",
    "FileLabels",
    "FleetCollector",
    "FleetSection",
    "InFileLabels",
    "ModelCollector",
    "ModelSection",
    "QualitySeries",
    "RetrainMark",
    "render_fleet_html",
    "render_model_html",
]

_TIME_SCALE = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
# Series over batches keep at most this many points: past it, every other point goes.
MAX_POINTS = 2_000


def _thin(*columns: list[Any]) -> None:
    """Halve aligned per-batch series in place once they exceed ``MAX_POINTS``, keeping
    the latest point.

    >>> xs = list(range(MAX_POINTS + 1)); ys = [2 * x for x in xs]
    >>> _thin(xs, ys); len(xs), xs[:2], xs[-1], ys[-1]
    (1001, [0, 2], 2000, 4000)
    """
    if len(columns[0]) <= MAX_POINTS:
        return
    for c in columns:
        c[:] = c[::-1][::2][::-1]


# -- devices -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceFlag:
    """A device flagged for ``condition`` after ``position`` events were read, with
    the onset finding's evidence; ``recovered_at`` when the condition ended."""

    entity: str
    condition: str
    position: int
    last_seen: float
    score: float
    threshold: float
    recovered_at: int | None
    evidence: tuple[tuple[str, float], ...]


@dataclass(frozen=True, slots=True)
class FleetSection:
    """The devices of a fleet stream over the replay (module docstring)."""

    stream: str
    conditions: tuple[str, ...]
    positions: tuple[int, ...]
    unhealthy: tuple[tuple[str, tuple[int, ...]], ...]  # condition -> count per position
    onsets: tuple[tuple[str, int], ...]  # condition -> onsets over the replay
    devices: tuple[tuple[str, int], ...]  # condition -> distinct devices flagged
    flagged: tuple[DeviceFlag, ...]  # at most ``limit`` per condition, first flagged first
    limit: int
    final: FleetStatus | None  # the worst devices at the end (``FleetStage.status``)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "conditions": list(self.conditions),
            "positions": list(self.positions),
            "unhealthy": {c: list(v) for c, v in self.unhealthy},
            "onsets": dict(self.onsets),
            "devices": dict(self.devices),
            "flagged": [
                dataclasses.asdict(f) | {"evidence": dict(f.evidence)} for f in self.flagged
            ],
            "limit": self.limit,
            "final": self.final.to_dict() if self.final is not None else None,
        }


class FleetCollector:
    """Follows one fleet stage through a replay."""

    def __init__(self, stage: FleetStage, limit: int | None = None) -> None:
        self.stage = stage
        stage.publish_status = True  # as the service does: ``last_status`` per evaluation
        self.limit = stage.config.top_k if limit is None else limit
        self.conditions = tuple(d.name for d in stage.detectors)
        self.positions: list[int] = []
        self.counts: dict[str, list[int]] = {c: [] for c in self.conditions}
        self.onsets = dict.fromkeys(self.conditions, 0)
        self.seen: dict[str, set[str]] = {c: set() for c in self.conditions}
        self.flagged: dict[str, list[DeviceFlag]] = {c: [] for c in self.conditions}
        self._open: dict[tuple[str, str], int] = {}  # (condition, device) -> index in flagged

    def observe(self, findings: Sequence[Finding], position: int) -> None:
        for f in findings:
            if f.kind != "entity" or f.stream != self.stage.spec.name:
                continue
            key = (f.detector, f.subject)
            if f.drift:
                self.onsets[f.detector] = self.onsets.get(f.detector, 0) + 1
                self.seen.setdefault(f.detector, set()).add(f.subject)
                kept = self.flagged.setdefault(f.detector, [])
                if len(kept) < self.limit:
                    self._open[key] = len(kept)
                    kept.append(
                        DeviceFlag(
                            f.subject,
                            f.detector,
                            position,
                            f.window.end_time if f.window.end_time is not None else math.nan,
                            f.statistic,
                            f.threshold,
                            None,
                            f.details,
                        )
                    )
            elif key in self._open:
                i = self._open.pop(key)
                kept = self.flagged[f.detector]
                kept[i] = dataclasses.replace(kept[i], recovered_at=position)
        status = self.stage.last_status
        self.positions.append(position)
        unhealthy = dict(status.unhealthy) if status is not None else {}
        for c in self.conditions:
            self.counts[c].append(int(unhealthy.get(c, 0)))
        _thin(self.positions, *self.counts.values())

    def section(self) -> FleetSection:
        return FleetSection(
            stream=self.stage.spec.name,
            conditions=self.conditions,
            positions=tuple(self.positions),
            unhealthy=tuple((c, tuple(v)) for c, v in self.counts.items()),
            onsets=tuple(self.onsets.items()),
            devices=tuple((c, len(s)) for c, s in self.seen.items()),
            flagged=tuple(f for c in self.conditions for f in self.flagged.get(c, [])),
            limit=self.limit,
            final=self.stage.status() if self.stage.last_status is not None else None,
        )


# -- model -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QualitySeries:
    """One model version's metric at every verdict: ``realized`` (joined labels),
    ``estimated`` (CBPE, before labels) or ``estimate_error`` (CBPE on the joined
    window minus its realized accuracy)."""

    version: str
    metric: str
    source: str
    positions: tuple[int, ...]
    values: tuple[float, ...]
    references: tuple[float, ...]
    drift: tuple[bool, ...]
    window_events: tuple[int, ...]

    @property
    def first_drop(self) -> int | None:
        return next((p for p, d in zip(self.positions, self.drift, strict=True) if d), None)


@dataclass(frozen=True, slots=True)
class RetrainMark:
    """A retrain request the alert engine made after ``position`` events."""

    position: int
    trigger_id: str
    model: str
    version: str
    reason: str
    alert_ids: tuple[str, ...]
    cause: str  # the triggering detector (and metric), "estimate" marked
    features: tuple[tuple[str, float], ...]  # input features: statistic / threshold


@dataclass(frozen=True, slots=True)
class ModelSection:
    """A model stream over the replay (module docstring)."""

    stream: str
    model: str
    labels: str  # where labels came from
    labels_read: int
    labels_rejected: tuple[tuple[str, int], ...]  # undecodable label events, by reason
    prediction_fields: tuple[str, ...]
    quality: tuple[QualitySeries, ...]
    join_positions: tuple[int, ...]
    joined: tuple[int, ...]
    join_counts: tuple[tuple[str, int], ...]
    features: tuple[tuple[str, float], ...]
    retrain: tuple[RetrainMark, ...]
    tables: tuple[StatusSection, ...]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["join_counts"] = dict(self.join_counts)
        out["labels_rejected"] = dict(self.labels_rejected)
        out["features"] = [{"field": f, "score": s} for f, s in self.features]
        out["retrain"] = [
            dataclasses.asdict(r) | {"features": [{"field": f, "score": s} for f, s in r.features]}
            for r in self.retrain
        ]
        return out


class ModelCollector:
    """Follows one model stage (and the retrain requests) through a replay."""

    def __init__(self, stage: ModelStage, labels: str) -> None:
        self.stage = stage
        self.labels = labels
        self.labels_read = 0
        self.labels_rejected: dict[str, int] = {}
        self.points: dict[tuple[str, str, str], list[tuple[int, float, float, bool, int]]] = {}
        self.join_positions: list[int] = []
        self.joined: list[int] = []
        self.features: tuple[tuple[str, float], ...] = ()
        self.retrain: list[RetrainMark] = []

    def observe(
        self, findings: Sequence[Finding], requests: Sequence[RetrainRequest], position: int
    ) -> None:
        name = self.stage.model.name
        for f in findings:
            if f.kind != "model" or not f.subject.startswith(f"{name}@"):
                continue
            version, _, metric = f.subject[len(name) + 1 :].rpartition(":")
            details = dict(f.details)
            if f.detector == "feature_drift":
                self.features = f.details
                continue
            source = "estimated" if f.detector == "cbpe" else "realized"
            n = f.window.events or 0
            self._add(version, metric, source, position, details, f.drift, n)
            if "estimate_error" in details:
                err = {"value": details["estimate_error"], "reference": 0.0}
                self._add(version, metric, "estimate_error", position, err, False, n)
        for r in requests:
            if r.model != name:
                continue
            ev = r.evidence
            cause = "" if ev is None else ev.detector + (f" {ev.metric}" if ev.metric else "")
            if ev is not None and ev.estimate:
                cause += " (estimate)"
            features = (
                ()
                if ev is None
                else tuple((s.subject, _ratio(s.statistic, s.threshold)) for s in ev.features)
            )
            self.retrain.append(
                RetrainMark(
                    position, r.trigger_id, r.model, r.version, r.reason, r.alert_ids, cause,
                    features,
                )
            )  # fmt: skip
        self.join_positions.append(position)
        self.joined.append(self.stage.join_counts().get("joined", 0))
        _thin(self.join_positions, self.joined)

    def _add(
        self,
        version: str,
        metric: str,
        source: str,
        position: int,
        details: dict[str, float],
        drift: bool,
        n: int,
    ) -> None:
        point = (
            position,
            details.get("value", math.nan),
            details.get("reference", math.nan),
            drift,
            n,
        )
        self.points.setdefault((version, metric, source), []).append(point)

    def section(self) -> ModelSection:
        series = tuple(
            QualitySeries(
                version,
                metric,
                source,
                tuple(p[0] for p in pts),
                tuple(p[1] for p in pts),
                tuple(p[2] for p in pts),
                tuple(p[3] for p in pts),
                tuple(p[4] for p in pts),
            )
            for (version, metric, source), pts in sorted(self.points.items())
        )
        return ModelSection(
            stream=self.stage.spec.name,
            model=self.stage.model.name,
            labels=self.labels,
            labels_read=self.labels_read,
            labels_rejected=tuple(sorted(self.labels_rejected.items())),
            prediction_fields=tuple(self.stage.prediction.fields),
            quality=series,
            join_positions=tuple(self.join_positions),
            joined=tuple(self.joined),
            join_counts=tuple(self.stage.join_counts().items()),
            features=self.features,
            retrain=tuple(self.retrain),
            tables=tuple(self.stage.status_sections()),
        )


# -- labels ----------------------------------------------------------------------------


class FileLabels:
    """Label events from a file, handed out in event-time order (module docstring)."""

    def __init__(self, path: Path, spec: StreamSpec, chunk: int = 10_000) -> None:
        labels = spec.model.labels if spec.model is not None else None
        if labels is None:
            raise ValueError(f"stream {spec.name!r} has no model.labels")
        self.path = path
        self._chunks: Iterator[list[bytes | None]] = read_file_payloads(
            path, {}, event_time=labels.time, chunk=chunk
        )
        self._time = msgspec.json.Decoder(
            msgspec.defstruct(
                "LabelTime", [("time", float | None, None)], rename={"time": labels.time}
            )
        )
        self._scale = _TIME_SCALE[labels.time_unit]
        self._payloads: list[bytes | None] = []
        self._times: npt.NDArray[np.float64] = np.empty(0)
        self._done = False

    def _read(self) -> bool:
        batch = next(self._chunks, None)
        if batch is None:
            self._done = True
            return False
        times = np.empty(len(batch))
        for i, payload in enumerate(batch):
            try:
                t = self._time.decode(payload) if payload is not None else None
                stamp = getattr(t, "time", None)
                times[i] = -math.inf if stamp is None else float(stamp) * self._scale
            except (msgspec.DecodeError, TypeError, RecursionError):
                times[i] = -math.inf  # handed out at once: the stage rejects it
        self._payloads.extend(batch)
        self._times = np.concatenate([self._times, times])
        return True

    def until(self, upto: float) -> list[bytes | None]:
        """The labels stamped at or before ``upto`` (reading on while the file's latest
        label so far is not later)."""
        while not self._done and (not self._times.size or self._times.max() <= upto):
            self._read()
        take = self._times <= upto
        if not take.any():
            return []
        out = [self._payloads[i] for i in np.flatnonzero(take).tolist()]
        keep = np.flatnonzero(~take).tolist()
        self._payloads = [self._payloads[i] for i in keep]
        self._times = self._times[~take]
        return out

    def rest(self) -> list[bytes | None]:
        """Every label not handed out yet."""
        while self._read():
            pass
        out, self._payloads, self._times = self._payloads, [], np.empty(0)
        return out


class InFileLabels:
    """Label events built from the replayed rows' own label field (module docstring)."""

    def __init__(self, spec: StreamSpec) -> None:
        model = spec.model
        labels = model.labels if model is not None else None
        if model is None or labels is None:
            raise ValueError(f"stream {spec.name!r} has no model.labels")
        self.labels = labels
        fields: list[tuple[str, Any, Any]] = [
            ("rid", str | int | None, None),
            ("value", str | int | float | bool | None, None),
            ("time", float | str | None, None),
        ]
        rename = {"rid": model.request_id or "request_id", "value": labels.value}
        rename["time"] = labels.time
        self._decoder = msgspec.json.Decoder(
            msgspec.defstruct("InFileLabel", fields, rename=rename)
        )

    def _rows(self, payloads: Sequence[bytes | None]) -> list[Any]:
        rows = []
        for p in payloads:
            try:
                rows.append(self._decoder.decode(p) if p is not None else None)
            except (msgspec.DecodeError, TypeError):
                rows.append(None)
        return rows

    def of(self, payloads: Sequence[bytes | None], batch: Batch | None) -> list[bytes | None]:
        """The label events of the accepted rows of ``batch`` (decoded from ``payloads``)."""
        if batch is None or batch.n == 0:
            return []
        accepted = [payloads[i] for i in batch.rows.tolist()]
        times = batch.event_time
        out: list[bytes | None] = []
        lb = self.labels
        encode = msgspec.json.encode
        for j, row in enumerate(self._rows(accepted)):
            if row is None or row.value is None or row.rid is None:
                continue
            t = row.time
            if not isinstance(t, float | int) or isinstance(t, bool):
                t = float(times[j]) / _TIME_SCALE[lb.time_unit] if times is not None else None
            if t is None or not math.isfinite(t):
                continue
            out.append(encode({lb.key: row.rid, lb.value: row.value, lb.time: t}))
        return out


# -- HTML --------------------------------------------------------------------------------


def _ratio(statistic: float, threshold: float) -> float:
    return statistic / threshold if threshold > 0 and math.isfinite(threshold) else statistic


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _evidence(evidence: Sequence[tuple[str, float]]) -> str:
    """The telling part of a device's evidence: its interval, out-of-range rate, spike
    z-score, runs of one value (3 or more) and large z-scores (the JSON has it all)."""
    out = []
    for k, v in evidence:
        if not math.isfinite(v):
            continue
        if (
            (k in ("interval", "out_of_range_rate", "spike_z") and v)
            or (k.startswith("run_length.") and v >= 3)
            or (k.startswith("z.") and abs(v) >= 3)
        ):
            out.append(f"{k}={v:.4g}")
    return ", ".join(out)


def _when(t: float) -> str:
    """An event time as UTC text (``-`` when unknown)."""
    if not math.isfinite(t):
        return "-"
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _num(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else "-"


def render_fleet_html(s: FleetSection, alert_positions: Sequence[int] = ()) -> str:
    """The devices section of the report."""
    e = html.escape
    out = [f"<section class=devices><h2>Devices of stream {e(s.stream)}</h2>"]
    onsets = dict(s.onsets)
    devices = dict(s.devices)
    summary = ", ".join(
        f"{c}: {devices.get(c, 0):,} device(s), {onsets.get(c, 0):,} onset(s)" for c in s.conditions
    )
    out.append(f"<p>Flagged over the replay: {e(summary)}.</p>")
    if s.final is not None:
        f = s.final
        out.append(
            f"<p class=muted>At the end: {f.tracked:,} devices tracked, {f.healthy:,} healthy; "
            f"evicted {f.evicted:,}, rejected {f.rejected:,}, late events {f.late:,}.</p>"
        )
    out.append("<div class=muted>devices unhealthy per condition after each batch</div>")
    out.append(
        lines(
            [(c, s.positions, counts) for c, counts in s.unhealthy],
            markers=alert_positions,
            label="unhealthy devices per condition",
            steps=True,
        )
    )
    if s.flagged:
        out.append(
            f"<h3>Flagged devices</h3><p class=muted>the first {s.limit} per condition, "
            "with the evidence at onset</p>"
        )
        rows = [
            (
                d.condition,
                d.entity,
                f"{d.position:,}",
                "-" if d.recovered_at is None else f"{d.recovered_at:,}",
                _num(d.score),
                _num(d.threshold),
                _when(d.last_seen),
                _evidence(d.evidence),
            )
            for d in s.flagged
        ]
        columns = ("condition", "device", "at event", "recovered at", "score", "threshold")
        out.append(_table((*columns, "last event", "evidence"), rows))
    if s.final is not None and any(ds for _, ds in s.final.worst):
        out.append("<h3>Worst devices at the end</h3>")
        worst = [
            (
                c,
                d.entity,
                str(d.partition),
                _num(d.score),
                _num(d.threshold),
                f"{d.run_length:,}",
                _num(d.z),
                ", ".join(f"{k}={v:.4g}" for k, v in d.values),
            )
            for c, ds in s.final.worst
            for d in ds
        ]
        out.append(
            _table(
                ("condition", "device", "partition", "score", "threshold", "run", "z", "values"),
                worst,
            )
        )
    out.append("</section>")
    return "".join(out)


def render_model_html(
    s: ModelSection,
    prediction: Sequence[tuple[str, Sequence[int], Sequence[float]]] = (),
) -> str:
    """The model section of the report; ``prediction``: the prediction fields' drift
    series as ``(name, positions, statistic / threshold)``."""
    e = html.escape
    out = [f"<section class=model><h2>Model {e(s.model)} (stream {e(s.stream)})</h2>"]
    bad = sum(n for _, n in s.labels_rejected)
    out.append(
        f"<p class=muted>labels: {e(s.labels)}; {s.labels_read:,} label events read"
        + (f", {bad:,} rejected" if bad else "")
        + "</p>"
    )
    if prediction:
        out.append("<h3>Prediction drift</h3>")
        out.append(
            lines(
                list(prediction),
                threshold=1.0,
                label="prediction drift: statistic / threshold",
            )
        )
        out.append(
            "<div class=muted>each detector's statistic over its threshold on the prediction "
            "fields (drift at 1 and above; details under Fields)</div>"
        )
    out.append("<h3>Label join</h3>")
    counts = ", ".join(f"{k} {v:,}" for k, v in s.join_counts if v)
    out.append(f"<p>Outcomes: {e(counts or 'nothing joined')}.</p>")
    if s.joined and any(s.joined):
        out.append(
            lines([("joined", s.join_positions, s.joined)], label="joined predictions", steps=True)
        )
    by_metric: dict[tuple[str, str], dict[str, QualitySeries]] = {}
    for q in s.quality:
        by_metric.setdefault((q.version, q.metric), {})[q.source] = q
    if not by_metric:
        out.append("<p class=muted>No quality verdict (no reference, or too few events).</p>")
    for (version, metric), sources in by_metric.items():
        realized, estimated = sources.get("realized"), sources.get("estimated")
        shown = [q for q in (realized, estimated) if q is not None]
        if not shown:
            continue
        ref = next((r for q in shown for r in q.references if math.isfinite(r)), None)
        drops = [
            f"{q.source} drop from event {q.first_drop:,}"
            for q in shown
            if q.first_drop is not None
        ]
        verdict = f"<span class=drift>{e('; '.join(drops))}</span>" if drops else "no quality drop"
        out.append(f"<h3>{e(metric)} of version {e(version)}</h3><div>{verdict}</div>")
        out.append(
            lines(
                [(f"{q.source}", q.positions, q.values) for q in shown],
                threshold=ref,
                markers=[p for q in shown for p, d in zip(q.positions, q.drift, strict=True) if d],
                label=f"{metric} of {version}: realized vs estimated",
            )
        )
        caption = " and ".join(
            "realized (joined labels)"
            if q.source == "realized"
            else "CBPE estimate (before labels)"
            for q in shown
        )
        if ref is not None:
            caption += f"; dashed: the reference's {ref:.4g}; red: a drop flagged"
        out.append(f"<div class=muted>{e(caption)}</div>")
        error = sources.get("estimate_error")
        if error is not None and error.values:
            mean_abs = float(np.mean(np.abs(np.asarray(error.values))))
            out.append(
                f"<div class=muted>CBPE estimate minus realized {e(metric)} on the joined "
                f"windows: mean |error| {mean_abs:.3g} over {len(error.values)} verdicts</div>"
            )
    if s.features:
        ranked = [(f, f"{v:.3g}") for f, v in s.features[:10]]
        out.append("<h3>Input features ranked by drift</h3>")
        out.append(_table(("feature", "statistic / threshold"), ranked))
    out.append("<h3>Retrain requests</h3>")
    if s.retrain:
        rows = [
            (f"{r.position:,}", r.version, r.cause, r.trigger_id[:12], r.reason[:160])
            for r in s.retrain
        ]
        out.append(_table(("at event", "version", "cause", "trigger", "reason"), rows))
    else:
        out.append("<p class=muted>No retrain request.</p>")
    for t in s.tables:
        out.append(f"<h3>{e(t.title)}</h3>")
        out.append(_table(t.columns, t.rows))
        if t.note:
            out.append(f"<div class=muted>{e(t.note)}</div>")
    out.append("</section>")
    return "".join(out)
