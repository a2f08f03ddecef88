"""Alert bodies for the four webhook formats, and the glue to the dispatcher.

* generic: the alert's own JSON (``Alert.to_json``), signed with the sink's
  ``secret`` (a sink without one must say ``unsigned: true``):
  ``X-Driftwarden-Timestamp: <unix seconds>`` (the time of the POST attempt) and
  ``X-Driftwarden-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>." + body>``.
  The timestamp is inside the signed bytes, so a receiver that rejects timestamps
  older than a few minutes cannot be fed a replayed delivery (see SECURITY.md).
* slack: an incoming-webhook message ``{"text", "blocks"}``.
* pagerduty: Events API v2 ``{"event_action": trigger|resolve, "dedup_key": id,
  "routing_key", "payload": {summary, severity, source, ...}}``.
* alertmanager: ``POST /api/v2/alerts`` with ``[{labels, annotations, startsAt,
  endsAt, generatorURL}]``.

Secrets are added at send time by the endpoint's ``finalize`` hook (signature,
routing key), so the dispatcher's queue state never holds them.

The runner builds the dispatcher once with :func:`endpoints_from_config` and, per
batch, submits ``deliveries_for(outcome.alerts, config, now)``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from typing import Any

from connectors.webhook import Delivery, Endpoint, Finalize, UrllibTransport
from monitor.alerting.engine import GROUP_SUBJECT, Alert, iso_time
from monitor.alerting.engine import canonical_json as _dumps
from monitor.config.alerts import (
    AlertmanagerSink,
    AlertsConfig,
    PagerDutySink,
    SinkConfig,
    SlackSink,
    WebhookSink,
    severity_rank,
)

__all__ = [
    "SIGNATURE_HEADER",
    "SIGNATURE_TOLERANCE",
    "TIMESTAMP_HEADER",
    "deliveries_for",
    "endpoints_from_config",
    "hmac_signer",
    "pagerduty_key_injector",
    "render_alertmanager",
    "render_for_sink",
    "render_generic",
    "render_pagerduty",
    "render_slack",
    "verify_signature",
]

SIGNATURE_HEADER = "X-Driftwarden-Signature"
TIMESTAMP_HEADER = "X-Driftwarden-Timestamp"
_JSON = (("Content-Type", "application/json"),)
_PD_SEVERITY = {"info": "info", "warning": "warning", "critical": "critical"}
_SLACK_EMOJI = {
    "info": ":information_source:",
    "warning": ":warning:",
    "critical": ":rotating_light:",
}


def render_generic(alert: Alert) -> bytes:
    """The alert document itself (see ``deploy/schemas/alert.schema.json``)."""
    return alert.to_json()


def render_slack(alert: Alert) -> bytes:
    """A Slack incoming-webhook message: a fallback ``text`` and Block Kit ``blocks``."""
    ev = alert.evidence
    state = "RESOLVED" if alert.status == "resolved" else alert.severity.upper()
    icon = ":white_check_mark:" if alert.status == "resolved" else _SLACK_EMOJI[alert.severity]
    text = f"{icon} [{state}] {alert.summary}"
    fields = [
        {"type": "mrkdwn", "text": f"*Stream*\n{alert.stream}"},
        {"type": "mrkdwn", "text": f"*Subject*\n{alert.subject}"},
        {"type": "mrkdwn", "text": f"*Detector*\n{alert.detector}"},
        {"type": "mrkdwn", "text": f"*Severity*\n{alert.severity}"},
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {"type": "section", "fields": fields},
    ]
    if ev.top_subjects and alert.subject == GROUP_SUBJECT:
        top = "\n".join(f"• {s.subject}: {s.statistic:.4g}" for s in ev.top_subjects)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"*Top*\n{top}"}})
    context = f"alert `{alert.id}` · started {iso_time(alert.started_at)}"
    if alert.ended_at is not None:
        context += f" · ended {iso_time(alert.ended_at)}"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    if alert.links:
        links = " · ".join(f"<{url}|{name}>" for name, url in alert.links)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": links}})
    return _dumps({"text": text, "blocks": blocks})


def render_pagerduty(alert: Alert, source: str = "driftwarden") -> bytes:
    """A PagerDuty Events v2 event without its ``routing_key`` (added at send time)."""
    event: dict[str, Any] = {
        "event_action": "resolve" if alert.status == "resolved" else "trigger",
        "dedup_key": alert.id,
    }
    if alert.status == "firing":
        event["payload"] = {
            "summary": alert.summary[:1024],
            "severity": _PD_SEVERITY[alert.severity],
            "source": source,
            "component": alert.stream,
            "group": alert.subject,
            "class": alert.detector,
            "timestamp": iso_time(alert.started_at),
            "custom_details": alert.to_dict(),
        }
        event["client"] = "driftwarden"
        if alert.links:
            event["links"] = [{"href": url, "text": name} for name, url in alert.links]
    return _dumps(event)


def render_alertmanager(
    alert: Alert, now: float, hold: float = 86400.0, generator_url: str = ""
) -> bytes:
    """An Alertmanager v2 alert list of one. Firing: ``endsAt = now + hold`` (else
    Alertmanager resolves it by itself after ``resolve_timeout``); resolved: the end."""
    labels = {
        "alertname": "DriftwardenDrift",
        "stream": alert.stream,
        "subject": alert.subject,
        "detector": alert.detector,
        "severity": alert.severity,
        "alert_id": alert.id,
    }
    ends = alert.ended_at if alert.ended_at is not None else max(now, alert.started_at) + hold
    annotations = {"summary": alert.summary}
    for name, url in alert.links:
        annotations[f"link_{name}"] = url
    item = {
        "labels": labels,
        "annotations": annotations,
        "startsAt": iso_time(alert.started_at),
        "endsAt": iso_time(ends),
        "generatorURL": generator_url or dict(alert.links).get("dashboard", ""),
    }
    return _dumps([item])


SIGNATURE_TOLERANCE = 300.0  # seconds a receiver should accept a timestamp either way


def _signature(secret: bytes, timestamp: str, body: bytes) -> str:
    signed = timestamp.encode("ascii") + b"." + body
    return "sha256=" + hmac.new(secret, signed, hashlib.sha256).hexdigest()


def hmac_signer(secret: bytes) -> Finalize:
    """A ``finalize`` hook adding the timestamp and signature headers at send time.

    The signature is HMAC-SHA256 over ``"<timestamp>." + body``; every retry is
    signed afresh with the time of that attempt.
    """

    def finalize(
        body: bytes, headers: Mapping[str, str], wall_time: float
    ) -> tuple[bytes, Mapping[str, str]]:
        timestamp = str(int(wall_time))
        return body, {
            **headers,
            SIGNATURE_HEADER: _signature(secret, timestamp, body),
            TIMESTAMP_HEADER: timestamp,
        }

    return finalize


def verify_signature(
    secret: bytes,
    body: bytes,
    signature: str,
    timestamp: str,
    *,
    now: float,
    tolerance: float = SIGNATURE_TOLERANCE,
) -> bool:
    """What a receiver does: the timestamp is within ``tolerance`` seconds of ``now``
    and ``signature`` matches ``"<timestamp>." + body`` (constant-time compare).

    >>> sign = hmac_signer(b"s3cret")
    >>> _, h = sign(b'{"a":1}', {}, 1000.0)
    >>> sig, ts = h[SIGNATURE_HEADER], h[TIMESTAMP_HEADER]
    >>> verify_signature(b"s3cret", b'{"a":1}', sig, ts, now=1010.0)
    True
    >>> verify_signature(b"s3cret", b'{"a":2}', sig, ts, now=1010.0)  # body changed
    False
    >>> verify_signature(b"s3cret", b'{"a":1}', sig, ts, now=2000.0)  # a replay, too late
    False
    """
    if not timestamp.isdigit() or abs(now - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(_signature(secret, timestamp, body), signature)


def pagerduty_key_injector(routing_key: str) -> Finalize:
    """A ``finalize`` hook putting the routing key into a PagerDuty event."""

    def finalize(
        body: bytes, headers: Mapping[str, str], wall_time: float
    ) -> tuple[bytes, Mapping[str, str]]:
        event = json.loads(body)
        event["routing_key"] = routing_key
        return _dumps(event), headers

    return finalize


def endpoints_from_config(config: AlertsConfig) -> list[Endpoint]:
    """One dispatcher endpoint per configured sink (URLs and secrets unwrapped here)."""
    endpoints = []
    for sink in config.sinks:
        url = sink.url.get_secret_value()
        finalize: Finalize | None = None
        if isinstance(sink, WebhookSink) and sink.secret is not None:
            finalize = hmac_signer(sink.secret.get_secret_value().encode())
        elif isinstance(sink, PagerDutySink):
            finalize = pagerduty_key_injector(sink.routing_key.get_secret_value())
        elif isinstance(sink, AlertmanagerSink):
            url = url.rstrip("/") + "/api/v2/alerts"
        endpoints.append(
            Endpoint(
                name=sink.name,
                url=url,
                min_severity=sink.min_severity,
                timeout=sink.timeout,
                max_queue=config.delivery.queue_size,
                finalize=finalize,
                transport=UrllibTransport(ca_file=sink.tls_ca_file) if sink.tls_ca_file else None,
            )
        )
    return endpoints


def render_for_sink(alert: Alert, sink: SinkConfig, now: float) -> bytes:
    """The body ``sink`` gets for ``alert``."""
    if isinstance(sink, SlackSink):
        return render_slack(alert)
    if isinstance(sink, PagerDutySink):
        return render_pagerduty(alert, sink.source)
    if isinstance(sink, AlertmanagerSink):
        return render_alertmanager(alert, now, sink.hold, sink.generator_url)
    return render_generic(alert)


def deliveries_for(alerts: Iterable[Alert], config: AlertsConfig, now: float) -> list[Delivery]:
    """Every (alert, sink) delivery, severity-filtered by each sink's ``min_severity``.

    A resolved alert goes wherever its firing went (same severity, same filter). The
    dedup key is ``"<alert id>:<status>"`` (``":<revision>"`` appended for an update
    of a grouped alert, so it is delivered too).
    """
    out = []
    for alert in alerts:
        for sink in config.sinks:
            if severity_rank(alert.severity) < severity_rank(sink.min_severity):
                continue
            out.append(
                Delivery(
                    sink=sink.name,
                    alert_id=alert.id,
                    key=f"{alert.id}:{alert.status}"
                    + (f":{alert.revision}" if alert.revision else ""),
                    severity=alert.severity,
                    body=render_for_sink(alert, sink, now),
                    headers=_JSON,
                )
            )
    return out
