"""From findings to alerts and retrain requests: episodes, dedup, cooldown, grouping.

Pure: no I/O and no clock reads; ``now`` (wall-clock seconds since the epoch) is
passed in. The runner calls, per processed batch::

    outcome = engine.observe(findings, now)           # Alerts + RetrainRequests
    for m in to_out_messages(outcome, config): sink.send(m)    # alerts/retrain topics
    dispatcher.submit_all(deliveries_for(outcome.alerts, config, now))  # webhooks
    checkpoint(engine.state(), dispatcher.state())    # with the batch's offsets

Lifecycle. An *episode* per ``(stream, subject, detector)`` starts on the first
drifting finding: an :class:`Alert` ``firing`` is emitted once and nothing more while
drift persists; after ``resolve_after`` consecutive clean findings the episode ends
with the same alert ``resolved``. A key that resolved is in cooldown for
``cooldown`` seconds: drift findings then start no episode (they are counted in
``AlertOutcome.suppressed``). Findings for the same key within one call are combined
(drift if any drifts; the first drifting finding is kept, else the last), so
per-partition findings may be passed as they come, though the merged (global)
verdict is what should be fed.

Entities (``kind="entity"``, devices judged by the fleet stage): the stage reports
a condition's onset and its end once each, so one clean finding resolves; a
grouped entity alert lists at most ``MAX_LISTED_ENTITIES`` devices in ``subjects``
(its summary gives the full count) and its top subjects carry per-device details.

Grouping. When ``grouping.min_subjects`` or more subjects of one stream and detector
start firing in the same call, they share one alert (subject ``"*"``) whose evidence
lists the top subjects by statistic. A subject of that stream and detector that
starts drifting while the group fires joins it and is announced: an *update* (the
same id, status ``firing``, ``revision`` one higher, ``added_subjects`` listing the
newcomers, ``subjects`` all members), so no subject is hidden behind the group.
Groups of devices (``kind="entity"``) follow the same rule: the devices of one
evaluation that join an open group make one update (its ``added_subjects`` bounded
by ``MAX_LISTED_ENTITIES``, its summary giving their count), never one per device.
The group resolves when its last member resolves.

Evidence locates the drift: the window of the strongest finding (per partition the
first and last offsets and event times), the reference id, statistic, threshold and
p-value, a ``statement`` true as written, for categorical tests the top categories
and the unseen rate, and named details (ADWIN: old and new mean, change offset).
``started_at`` is the event time at which the window first crossed (the latest
event time in the first drifting window) when the stream has event time, else the
wall-clock time of that verdict.

Alert ids are deterministic: sha256 over stream, subject, detector and the episode's
number for that key (``e1``, ``e2``, ...; with the member subjects for a grouped
alert). The numbers are part of ``state()``, which is checkpointed with the offsets:
after a crash the episodes replayed after the checkpoint get the numbers, hence the
ids, they had before it, so consumers dedup by id.

>>> from detectors.base import Finding, Verdicts, WindowBounds
>>> from monitor.config.alerts import AlertsConfig
>>> engine = AlertEngine(AlertsConfig(resolve_after=2))
>>> def f(drift, offset):
...     return Finding("ks", "temperature", 0.3 if drift else 0.01, 0.1, drift,
...                    stream="sensors", window=WindowBounds(1000, 0, offset, None, None, 0))
>>> [a.status for a in engine.observe([f(True, 999)], now=100.0).alerts]
['firing']
>>> engine.observe([f(True, 1999)], now=110.0).alerts
()
>>> engine.observe([f(False, 2999)], now=120.0).alerts
()
>>> [(a.status, a.ended_at) for a in engine.observe([f(False, 3999)], now=130.0).alerts]
[('resolved', 130.0)]
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from connectors.base import OutMessage
from detectors.base import Finding, Verdicts, WindowBounds
from monitor.config.alerts import AlertsConfig, Severity, severity_rank

__all__ = [
    "Alert",
    "AlertEngine",
    "AlertOutcome",
    "Evidence",
    "RetrainEvidence",
    "RetrainRequest",
    "SubjectScore",
    "alert_id_for",
    "canonical_json",
    "to_out_messages",
]

Status = Literal["firing", "resolved"]
SCHEMA_VERSION = 2  # alerts (2: evidence located, group updates)
RETRAIN_SCHEMA_VERSION = 1
_STATE_VERSION = 1
GROUP_SUBJECT = "*"
MAX_LISTED_ENTITIES = 100  # devices named in one grouped entity alert's ``subjects``


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def iso_time(seconds: float) -> str:
    """RFC 3339 UTC with milliseconds.

    >>> iso_time(0.0)
    '1970-01-01T00:00:00.000Z'
    """
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def window_to_dict(w: WindowBounds) -> dict[str, Any]:
    return {
        "events": w.events,
        "partition": w.partition,
        "first_offset": w.first_offset,
        "last_offset": w.last_offset,
        "start_time": _finite(w.start_time),
        "end_time": _finite(w.end_time),
    }


def window_from_dict(d: Mapping[str, Any]) -> WindowBounds:
    return WindowBounds(
        events=int(d["events"]),
        first_offset=d["first_offset"],
        last_offset=d["last_offset"],
        start_time=d["start_time"],
        end_time=d["end_time"],
        partition=d["partition"],
    )


def alert_id_for(stream: str, subject: str, detector: str, anchor: str) -> str:
    """32 hex characters of sha256 over the episode's identity.

    >>> a = alert_id_for("sensors", "temperature", "ks", "p0o999")
    >>> len(a), a == alert_id_for("sensors", "temperature", "ks", "p0o999")
    (32, True)
    """
    raw = "\x1f".join(("driftwarden.alert", stream, subject, detector, anchor))
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class SubjectScore:
    """One subject's latest statistic, for the evidence's top list."""

    subject: str
    statistic: float
    threshold: float
    p_value: float | None = None
    details: tuple[tuple[str, float], ...] = ()  # per-device evidence (entity alerts)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "subject": self.subject,
            "statistic": _finite(self.statistic),
            "threshold": _finite(self.threshold),
            "p_value": _finite(self.p_value),
        }
        if self.details:
            out["details"] = {k: _finite(v) for k, v in self.details}
        return out


@dataclass(frozen=True, slots=True)
class Evidence:
    """Why the alert fired: the strongest finding's numbers and the top subjects."""

    statistic: float
    threshold: float
    p_value: float | None
    window: WindowBounds
    baseline_id: str | None
    top_subjects: tuple[SubjectScore, ...] = ()
    partitions: tuple[WindowBounds, ...] = ()  # the window in each partition
    statement: str = ""  # one sentence, true as written
    top_categories: tuple[tuple[str, float], ...] = ()  # (category, share of statistic)
    unseen_rate: float | None = None
    details: tuple[tuple[str, float], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "statistic": _finite(self.statistic),
            "threshold": _finite(self.threshold),
            "p_value": _finite(self.p_value),
            "window": window_to_dict(self.window),
            "partitions": [window_to_dict(w) for w in self.partitions],
            "baseline_id": self.baseline_id,
            "top_subjects": [s.to_dict() for s in self.top_subjects],
            "statement": self.statement,
            "top_categories": [
                {"category": c, "share": _finite(x)} for c, x in self.top_categories
            ],
            "unseen_rate": _finite(self.unseen_rate),
            "details": {k: _finite(v) for k, v in self.details},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Evidence:
        def num(x: float | None) -> float:
            return math.nan if x is None else float(x)

        return cls(
            statistic=num(d["statistic"]),
            threshold=num(d["threshold"]),
            p_value=d["p_value"],
            window=window_from_dict(d["window"]),
            baseline_id=d["baseline_id"],
            top_subjects=tuple(
                SubjectScore(
                    s["subject"],
                    num(s["statistic"]),
                    num(s["threshold"]),
                    s["p_value"],
                    _details(s.get("details")),
                )
                for s in d["top_subjects"]
            ),
            partitions=tuple(window_from_dict(w) for w in d.get("partitions", ())),
            statement=str(d.get("statement", "")),
            top_categories=tuple(
                (str(c["category"]), num(c["share"])) for c in d.get("top_categories", ())
            ),
            unseen_rate=d.get("unseen_rate"),
            details=tuple((str(k), num(v)) for k, v in d.get("details", {}).items()),
        )


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert message; the same ``id`` is sent firing, then resolved.

    Times are wall-clock seconds since the epoch (RFC 3339 in JSON).
    """

    id: str
    status: Status
    severity: Severity
    stream: str
    subject: str  # a field, entity or model; "*" for a grouped alert
    detector: str
    kind: str
    summary: str
    evidence: Evidence
    started_at: float
    ended_at: float | None = None
    subjects: tuple[str, ...] = ()  # every member subject (one for a plain alert)
    links: tuple[tuple[str, str], ...] = ()
    revision: int = 0  # 0: the first notification; n: the n-th update of a firing group
    added_subjects: tuple[str, ...] = ()  # subjects that joined the group in this update

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "id": self.id,
            "status": self.status,
            "severity": self.severity,
            "stream": self.stream,
            "subject": self.subject,
            "subjects": list(self.subjects),
            "detector": self.detector,
            "kind": self.kind,
            "summary": self.summary,
            "evidence": self.evidence.to_dict(),
            "started_at": iso_time(self.started_at),
            "ended_at": None if self.ended_at is None else iso_time(self.ended_at),
            "links": dict(self.links),
            "revision": self.revision,
            "added_subjects": list(self.added_subjects),
        }

    def to_json(self) -> bytes:
        """Compact JSON, keys sorted (same alert, same bytes)."""
        return _dumps(self.to_dict())


@dataclass(frozen=True, slots=True)
class RetrainEvidence:
    """Why a model should be retrained: the triggering detector and metric (for a
    quality alert; ``estimate`` when it was CBPE's estimate, not realized quality),
    the model's input features ranked by drift, the window and the reference id."""

    detector: str
    metric: str | None
    estimate: bool
    features: tuple[SubjectScore, ...]
    window: WindowBounds
    reference_id: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "detector": self.detector,
            "metric": self.metric,
            "estimate": self.estimate,
            "features": [f.to_dict() for f in self.features],
            "window": window_to_dict(self.window),
            "reference_id": self.reference_id,
        }


@dataclass(frozen=True, slots=True)
class RetrainRequest:
    """Ask a training pipeline to retrain ``model`` (at ``version``) because of alerts."""

    trigger_id: str
    model: str
    version: str
    stream: str
    reason: str
    alert_ids: tuple[str, ...]
    window: WindowBounds
    baseline_id: str | None
    created_at: float
    evidence: RetrainEvidence | None = None

    def to_dict(self) -> dict[str, Any]:
        out = self._base_dict()
        if self.evidence is not None:
            out["evidence"] = self.evidence.to_dict()
        return out

    def _base_dict(self) -> dict[str, Any]:
        return {
            "schema_version": RETRAIN_SCHEMA_VERSION,
            "trigger_id": self.trigger_id,
            "model": self.model,
            "version": self.version,
            "stream": self.stream,
            "reason": self.reason,
            "alert_ids": list(self.alert_ids),
            "window": window_to_dict(self.window),
            "baseline_id": self.baseline_id,
            "created_at": iso_time(self.created_at),
        }

    def to_json(self) -> bytes:
        return _dumps(self.to_dict())


@dataclass(frozen=True, slots=True)
class AlertOutcome:
    """What one ``observe`` call produced; ``suppressed`` counts cooldown drops."""

    alerts: tuple[Alert, ...] = ()
    retrain_requests: tuple[RetrainRequest, ...] = ()
    suppressed: int = 0

    def __bool__(self) -> bool:
        return bool(self.alerts or self.retrain_requests)


def canonical_json(obj: Any) -> bytes:
    """Compact JSON with sorted keys (NaN refused): the bytes of every alert payload."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


_dumps = canonical_json


# -- engine state ------------------------------------------------------------------


@dataclass
class _Incident:
    """An open alert: one subject, or a group of subjects of one stream and detector."""

    id: str
    stream: str
    subject: str
    detector: str
    kind: str
    severity: Severity
    started_at: float
    evidence: Evidence  # at start
    members: dict[str, SubjectScore]  # every member's latest score
    open_members: set[str]
    revision: int = 0  # updates sent (subjects that joined the open group)

    def to_state(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "stream": self.stream,
            "subject": self.subject,
            "detector": self.detector,
            "kind": self.kind,
            "severity": self.severity,
            "started_at": self.started_at,
            "evidence": self.evidence.to_dict(),
            "members": [m.to_dict() for m in self.members.values()],
            "open_members": sorted(self.open_members),
            "revision": self.revision,
        }

    @classmethod
    def from_state(cls, s: Mapping[str, Any]) -> _Incident:
        def num(x: float | None) -> float:
            return math.nan if x is None else float(x)

        members = {
            m["subject"]: SubjectScore(
                m["subject"],
                num(m["statistic"]),
                num(m["threshold"]),
                m["p_value"],
                _details(m.get("details")),
            )
            for m in s["members"]
        }
        return cls(
            id=s["id"],
            stream=s["stream"],
            subject=s["subject"],
            detector=s["detector"],
            kind=s["kind"],
            severity=s["severity"],
            started_at=float(s["started_at"]),
            evidence=Evidence.from_dict(s["evidence"]),
            members=members,
            open_members=set(s["open_members"]),
            revision=int(s.get("revision", 0)),
        )


@dataclass
class _Episode:
    incident_id: str
    clean: int = 0  # consecutive clean findings


Key = tuple[str, str, str]  # stream, subject, detector


@dataclass
class AlertEngine:
    """Turns findings into alerts and retrain requests (see the module docstring).

    ``retrain_models`` maps a stream name to the ``(model name, model version)`` it
    feeds; firing alerts on such a stream ask for a retrain under ``config.retrain``.
    """

    config: AlertsConfig
    retrain_models: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    _incidents: dict[str, _Incident] = field(default_factory=dict, init=False, repr=False)
    _episodes: dict[Key, _Episode] = field(default_factory=dict, init=False, repr=False)
    _cooldown_until: dict[Key, float] = field(default_factory=dict, init=False, repr=False)
    _retrain_until: dict[tuple[str, str], float] = field(
        default_factory=dict, init=False, repr=False
    )
    _sequence: dict[Key, int] = field(default_factory=dict, init=False, repr=False)
    # Per stream: which alerts ask for a retrain ("drift": field alerts, "estimated":
    # CBPE, "realized": quality) and the least severity; streams not listed: any alert.
    retrain_on: Mapping[str, tuple[tuple[str, ...], Severity | None]] = field(default_factory=dict)
    # Per stream: the latest ranking of a model's input features by drift (from the
    # model stage's informational ``feature_drift`` findings), for retrain evidence.
    _features: dict[str, tuple[SubjectScore, ...]] = field(
        default_factory=dict, init=False, repr=False
    )

    def set_model(self, stream: str, model: str, version: str) -> None:
        """Point ``stream`` at a (new) model version, e.g. after a deployment."""
        self.retrain_models = {**self.retrain_models, stream: (model, version)}

    @property
    def firing(self) -> int:
        """Alerts currently firing."""
        return len(self._incidents)

    def firing_counts(self) -> dict[tuple[str, str], int]:
        """Alerts currently firing per (stream, severity)."""
        out: dict[tuple[str, str], int] = {}
        for inc in self._incidents.values():
            out[(inc.stream, inc.severity)] = out.get((inc.stream, inc.severity), 0) + 1
        return out

    def observe(
        self,
        findings: Iterable[Finding],
        now: float,
        verdicts: Sequence[tuple[int, Verdicts]] = (),
    ) -> AlertOutcome:
        """Fold one batch's findings in; return the alerts and retrain requests due.

        ``verdicts``: clean verdicts as rows, each block with the place in
        ``findings`` where its rows stand. A clean verdict changes nothing but an
        open episode (it counts toward resolving it, and the resolution reports it),
        so only the rows of subjects with one are built into findings.
        """
        findings = list(findings)
        if verdicts and self._episodes:
            for at, block in reversed(verdicts):  # from the end: earlier places hold
                wanted = [
                    block.finding(i)
                    for i, (subject, detector) in enumerate(
                        zip(block.subjects, block.detectors, strict=True)
                    )
                    if (block.stream, subject, detector) in self._episodes
                ]
                findings[at:at] = wanted
        for f in findings:
            if f.detector == "feature_drift":
                self._features[f.stream] = tuple(
                    SubjectScore(name, score, 1.0) for name, score in f.details
                )
        combined = _combine(findings)
        alerts: list[Alert] = []
        suppressed = 0
        starting: dict[tuple[str, str], list[Finding]] = {}

        for key, finding in combined.items():
            episode = self._episodes.get(key)
            if episode is not None:
                incident = self._incidents[episode.incident_id]
                incident.members[finding.subject] = _score(finding)
                if finding.drift:
                    episode.clean = 0
                    continue
                episode.clean += 1
                need = 1 if finding.kind == "entity" else self.config.resolve_after
                if episode.clean < need:
                    continue
                del self._episodes[key]
                self._cooldown_until[key] = now + self.config.cooldown
                incident.open_members.discard(finding.subject)
                if not incident.open_members:
                    del self._incidents[incident.id]
                    alerts.append(self._alert(incident, "resolved", now, finding))
                continue
            if not finding.drift:
                continue
            until = self._cooldown_until.get(key)
            if until is not None and now < until:
                suppressed += 1
                continue
            self._cooldown_until.pop(key, None)
            starting.setdefault((finding.stream, finding.detector), []).append(finding)

        for (stream, detector), group in starting.items():
            alerts.extend(self._open(stream, detector, group, now))

        self._expire_cooldowns(now)
        requests = self._retrain(alerts, now)
        return AlertOutcome(tuple(alerts), tuple(requests), suppressed)

    def _open(self, stream: str, detector: str, group: list[Finding], now: float) -> list[Alert]:
        cfg = self.config
        open_group = next(
            (
                i
                for i in self._incidents.values()
                if i.stream == stream and i.detector == detector and i.subject == GROUP_SUBJECT
            ),
            None,
        )
        if open_group is not None:  # join, and say so: an update of the group's alert
            added = sorted(f.subject for f in group if f.subject not in open_group.open_members)
            for f in group:
                self._join(open_group, f)
            if not added:
                return []
            open_group.revision += 1
            return [self._alert(open_group, "firing", now, None, tuple(added))]
        if len(group) < cfg.grouping.min_subjects:
            alerts = []
            for f in group:
                incident = self._new_incident(f.stream, f.subject, f.detector, [f], now)
                alerts.append(self._alert(incident, "firing", now, f))
            return alerts
        incident = self._new_incident(stream, GROUP_SUBJECT, detector, group, now)
        return [self._alert(incident, "firing", now, None)]

    def _new_incident(
        self, stream: str, subject: str, detector: str, group: list[Finding], now: float
    ) -> _Incident:
        group = sorted(group, key=lambda f: f.subject)
        first = group[0]
        # The n-th episode of a key gets the same id whenever it is replayed: the
        # counter is part of the checkpointed state, so after a crash the episodes
        # after the checkpoint are numbered as they were before it.
        key = (stream, subject, detector)
        seq = self._sequence.get(key, 0) + 1
        self._sequence[key] = seq
        anchor = f"e{seq}"
        if subject == GROUP_SUBJECT:
            anchor += "|" + ",".join(f.subject for f in group)
        strongest = max(group, key=lambda f: (_sort_stat(f.statistic), f.subject))
        crossed = [f.window.end_time for f in group if f.window.end_time is not None]
        severities = [
            self.config.severity_for(f.stream, f.subject, f.detector, f.kind) for f in group
        ]
        severity = max(severities, key=severity_rank)
        incident = _Incident(
            id=alert_id_for(stream, subject, detector, anchor),
            stream=stream,
            subject=subject,
            detector=detector,
            kind=first.kind,
            severity=severity,
            started_at=min(crossed) if crossed else now,
            evidence=_evidence(strongest),
            members={},
            open_members=set(),
        )
        for f in group:
            self._join(incident, f)
        self._incidents[incident.id] = incident
        return incident

    def _join(self, incident: _Incident, f: Finding) -> None:
        incident.members[f.subject] = _score(f)
        incident.open_members.add(f.subject)
        self._episodes[(f.stream, f.subject, f.detector)] = _Episode(incident.id)

    def _alert(
        self,
        incident: _Incident,
        status: Status,
        now: float,
        latest: Finding | None,
        added: tuple[str, ...] = (),
    ) -> Alert:
        top = sorted(
            incident.members.values(), key=lambda s: (-_sort_stat(s.statistic), s.subject)
        )[: self.config.grouping.top]
        if status == "firing" or latest is None:
            evidence = dataclasses.replace(incident.evidence, top_subjects=tuple(top))
        else:
            evidence = _evidence(latest, tuple(top))
        subjects = tuple(sorted(incident.members))
        summary = _summary(incident, status, subjects, evidence, added)
        if incident.kind == "entity":
            subjects = subjects[:MAX_LISTED_ENTITIES]
            added = added[:MAX_LISTED_ENTITIES]
        return Alert(
            id=incident.id,
            status=status,
            severity=incident.severity,
            stream=incident.stream,
            subject=incident.subject,
            detector=incident.detector,
            kind=incident.kind,
            summary=summary,
            evidence=evidence,
            started_at=incident.started_at,
            ended_at=now if status == "resolved" else None,
            subjects=subjects,
            links=self._links(incident),
            revision=incident.revision if status == "firing" else 0,
            added_subjects=added,
        )

    def _links(self, incident: _Incident) -> tuple[tuple[str, str], ...]:
        values = {
            "stream": incident.stream,
            "subject": incident.subject,
            "detector": incident.detector,
            "alert_id": incident.id,
            "severity": incident.severity,
        }
        return tuple(
            (name, template.format_map(values))
            for name, template in sorted(self.config.links.items())
        )

    def _expire_cooldowns(self, now: float) -> None:
        for key in [k for k, until in self._cooldown_until.items() if until <= now]:
            del self._cooldown_until[key]
        for mk in [k for k, until in self._retrain_until.items() if until <= now]:
            del self._retrain_until[mk]

    def _retrain(self, alerts: Sequence[Alert], now: float) -> list[RetrainRequest]:
        policy = self.config.retrain
        if not policy.enabled:
            return []
        by_model: dict[tuple[str, str], list[Alert]] = {}
        for a in alerts:
            model = self.retrain_models.get(a.stream)
            if model is not None and a.kind == "model" and "@" in a.subject:
                # a model alert names its version: "MODEL@VERSION:METRIC"
                model = (model[0], a.subject.partition("@")[2].rpartition(":")[0] or model[1])
            on, least = self.retrain_on.get(a.stream, ((), None))
            if (
                model is None
                or a.status != "firing"
                or severity_rank(a.severity) < severity_rank(least or policy.min_severity)
                or (policy.detectors and a.detector not in policy.detectors)
                or (on and _retrain_cause(a) not in on)
            ):
                continue
            by_model.setdefault(model, []).append(a)
        requests = []
        for (name, version), causes in sorted(by_model.items()):
            if self._retrain_until.get((name, version), -math.inf) > now:
                continue
            self._retrain_until[(name, version)] = now + policy.cooldown
            ids = tuple(sorted(a.id for a in causes))
            raw = "\x1f".join(("driftwarden.retrain", name, version, *ids))
            first = min(causes, key=lambda a: a.id)
            reason = "; ".join(a.summary for a in sorted(causes, key=lambda a: a.id))
            requests.append(
                RetrainRequest(
                    trigger_id=hashlib.sha256(raw.encode()).hexdigest()[:32],
                    model=name,
                    version=version,
                    stream=first.stream,
                    reason=reason,
                    alert_ids=ids,
                    window=first.evidence.window,
                    baseline_id=first.evidence.baseline_id,
                    created_at=now,
                    evidence=self._retrain_evidence(first, causes),
                )
            )
        return requests

    def _retrain_evidence(self, first: Alert, causes: Sequence[Alert]) -> RetrainEvidence:
        """The evidence of a retrain request: a quality alert's metric (preferred over a
        field alert as the trigger) and the stream's features ranked by drift."""
        model_alerts = [a for a in causes if a.kind == "model"]
        trigger = min(model_alerts, key=lambda a: a.id) if model_alerts else first
        metric = None
        if trigger.kind == "model" and ":" in trigger.subject:
            metric = trigger.subject.rpartition(":")[2]
        features = self._features.get(trigger.stream)
        if not features:  # no ranking yet: the causes' and open incidents' fields
            scores = [
                s
                for i in self._incidents.values()
                if i.stream == trigger.stream and i.kind == "field"
                for s in i.members.values()
            ]
            # Detectors' statistics have different scales: rank by statistic / threshold,
            # each subject once (at its strongest detector).
            ranked = sorted(scores, key=lambda s: (-_sort_stat(_ratio(s)), s.subject))
            strongest: dict[str, SubjectScore] = {}
            for s in ranked:
                strongest.setdefault(s.subject, s)
            features = tuple(strongest.values())
        return RetrainEvidence(
            detector=trigger.detector,
            metric=metric,
            estimate=trigger.detector == "cbpe",
            features=features[: self.config.grouping.top],
            window=trigger.evidence.window,
            reference_id=trigger.evidence.baseline_id,
        )

    # -- checkpointing --------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Episodes, open alerts and cooldowns as plain JSON-able values."""
        return {
            "version": _STATE_VERSION,
            "incidents": [i.to_state() for i in self._incidents.values()],
            "episodes": [
                [*key, e.incident_id, e.clean] for key, e in sorted(self._episodes.items())
            ],
            "cooldowns": [[*key, until] for key, until in sorted(self._cooldown_until.items())],
            "retrain_cooldowns": [
                [*mk, until] for mk, until in sorted(self._retrain_until.items())
            ],
            "sequence": [[*key, n] for key, n in sorted(self._sequence.items())],
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a ``state()`` (replaces everything this engine holds)."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"alert engine state version {state.get('version')!r} is not 1")
        self._incidents = {i.id: i for i in (_Incident.from_state(s) for s in state["incidents"])}
        self._episodes = {
            (s, sub, d): _Episode(iid, int(clean)) for s, sub, d, iid, clean in state["episodes"]
        }
        self._cooldown_until = {(s, sub, d): float(u) for s, sub, d, u in state["cooldowns"]}
        self._retrain_until = {(m, v): float(u) for m, v, u in state["retrain_cooldowns"]}
        self._sequence = {(s, sub, d): int(n) for s, sub, d, n in state.get("sequence", [])}


def _retrain_cause(a: Alert) -> str:
    """What kind of retrain cause an alert is: drift, estimated or realized (quality)."""
    if a.kind == "model":
        return {"cbpe": "estimated", "quality": "realized"}.get(a.detector, "other")
    return "drift" if a.kind == "field" else "other"


def _ratio(score: SubjectScore) -> float:
    """How far past its threshold a subject's statistic is (NaN when undefined)."""
    if not score.threshold or not math.isfinite(score.threshold):
        return math.nan
    return score.statistic / score.threshold


def _sort_stat(x: float) -> float:
    return x if math.isfinite(x) else (math.inf if x > 0 else -math.inf)


def _score(f: Finding) -> SubjectScore:
    details = f.details if f.kind == "entity" else ()
    return SubjectScore(f.subject, f.statistic, f.threshold, f.p_value, details)


def _details(raw: Mapping[str, float | None] | None) -> tuple[tuple[str, float], ...]:
    if not raw:
        return ()
    return tuple((k, math.nan if v is None else float(v)) for k, v in raw.items())


def _evidence(f: Finding, top: tuple[SubjectScore, ...] = ()) -> Evidence:
    details = dict(f.details)
    unseen = details.pop("unseen_rate", None)
    return Evidence(
        f.statistic,
        f.threshold,
        f.p_value,
        f.window,
        f.baseline_id,
        top,
        partitions=f.partitions,
        statement=f.summary or _statement(f),
        top_categories=f.top,
        unseen_rate=unseen,
        details=tuple(details.items()),
    )


def _statement(f: Finding) -> str:
    """``statistic >= threshold`` or ``<``, as the numbers are (true as written)."""
    above = _sort_stat(f.statistic) >= _sort_stat(f.threshold)
    text = f"{f.detector} statistic {_fmt(f.statistic)} {'>=' if above else '<'}"
    text += f" threshold {_fmt(f.threshold)}"
    if f.p_value is not None:
        text += f" (p={_fmt(f.p_value)})"
    return text


def _combine(findings: Iterable[Finding]) -> dict[Key, Finding]:
    """One finding per key: the first drifting one (where the window first crossed,
    which the evidence and ``started_at`` report), else the last clean one."""
    out: dict[Key, Finding] = {}
    for f in findings:
        key = (f.stream, f.subject, f.detector)
        seen = out.get(key)
        if seen is None or not seen.drift:
            out[key] = f
    return out


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.4g}"


def _summary(
    incident: _Incident,
    status: Status,
    subjects: tuple[str, ...],
    ev: Evidence,
    added: tuple[str, ...] = (),
) -> str:
    if incident.kind == "entity":
        return _entity_summary(incident, status, subjects, ev, added)
    what = (
        f"{len(subjects)} subjects of {incident.stream}"
        if incident.subject == GROUP_SUBJECT
        else f"{incident.stream}/{incident.subject}"
    )
    if status == "resolved":
        return f"{incident.detector} drift on {what} resolved"
    head = f"{incident.detector} drift on {what}: "
    if added:
        head += f"now also on {', '.join(added)}; first: "
    if ev.statement:
        head += ev.statement
    else:
        above = _sort_stat(ev.statistic) >= _sort_stat(ev.threshold)
        head += f"statistic {_fmt(ev.statistic)} {'>=' if above else '<'}"
        head += f" threshold {_fmt(ev.threshold)}"
        if ev.p_value is not None:
            head += f" (p={_fmt(ev.p_value)})"
    if incident.subject == GROUP_SUBJECT:
        head += "; top: " + ", ".join(s.subject for s in ev.top_subjects)
    return head


def _entity_summary(
    incident: _Incident,
    status: Status,
    subjects: tuple[str, ...],
    ev: Evidence,
    added: tuple[str, ...] = (),
) -> str:
    """``silent on 500 devices of sensors (first 100 listed): ...; worst: ...``; an
    update names how many devices joined (``40 joined: dev-1, dev-2, ...``)."""
    if incident.subject == GROUP_SUBJECT:
        what = f"{len(subjects)} devices of {incident.stream}"
        if len(subjects) > MAX_LISTED_ENTITIES:
            what += f" (first {MAX_LISTED_ENTITIES} listed)"
    else:
        what = f"device {incident.subject} of {incident.stream}"
    if status == "resolved":
        return f"{incident.detector} on {what} resolved"
    head = f"{incident.detector} on {what}: "
    if added:
        shown = ", ".join(added[:10]) + (", ..." if len(added) > 10 else "")
        head += f"{len(added)} joined: {shown}; first: "
    head += f"score {_fmt(ev.statistic)} (threshold {_fmt(ev.threshold)})"
    if incident.subject == GROUP_SUBJECT:
        head += "; worst: " + ", ".join(s.subject for s in ev.top_subjects)
    return head


def to_out_messages(outcome: AlertOutcome, config: AlertsConfig) -> list[OutMessage]:
    """Kafka messages: alerts to ``config.topic`` (key alert id), retrain requests to
    ``config.retrain_topic`` (key model name; none when no retrain topic is set)."""
    out = [
        OutMessage(
            topic=config.topic,
            value=a.to_json(),
            key=a.id.encode(),
            headers=(
                ("driftwarden-type", b"alert"),
                ("driftwarden-status", a.status.encode()),
                ("driftwarden-severity", a.severity.encode()),
            ),
        )
        for a in outcome.alerts
    ]
    if config.retrain_topic is not None:
        out.extend(
            OutMessage(
                topic=config.retrain_topic,
                value=r.to_json(),
                key=r.model.encode(),
                headers=(
                    ("driftwarden-type", b"retrain-request"),
                    ("driftwarden-trigger-id", r.trigger_id.encode()),
                ),
            )
            for r in outcome.retrain_requests
        )
    return out
