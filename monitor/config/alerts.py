"""The ``alerts:`` section of the service configuration.

The main config module (``monitor.config.schema``) embeds :class:`AlertsConfig` as its
``alerts`` field; ``${VAR}`` interpolation happens there, before validation, so
nothing here reads the environment. Every model is frozen and rejects unknown keys
naming the keys that are allowed. Secrets (webhook URLs, HMAC secrets, PagerDuty
routing keys) are :class:`pydantic.SecretStr`: they never show in ``repr``, logs or
metric labels (sinks are labelled by ``name``).

>>> cfg = AlertsConfig.model_validate({
...     "cooldown": "30m",
...     "sinks": [{"type": "slack", "url": "https://hooks.slack.test/T/B/x"}],
... })
>>> cfg.cooldown, cfg.sinks[0].name, cfg.sinks[0].min_severity
(1800.0, 'slack-0', 'info')
>>> "hooks.slack" in repr(cfg)
False
>>> parse_duration("2h"), parse_duration(90), parse_duration("1.5s")
(7200.0, 90.0, 1.5)
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Annotated, Any, Literal, cast

from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from connectors.webhook import SEVERITY_ORDER
from monitor.config.base import StrictModel, error_lines
from monitor.errors import ConfigError

__all__ = [
    "SEVERITIES",
    "AlertmanagerSink",
    "AlertsConfig",
    "DeliveryConfig",
    "Duration",
    "GroupingConfig",
    "PagerDutySink",
    "RetrainPolicy",
    "Route",
    "Severity",
    "SinkConfig",
    "SlackSink",
    "WebhookSink",
    "load_alerts_config",
    "parse_duration",
    "severity_rank",
]

Severity = Literal["info", "warning", "critical"]
SEVERITIES = cast(tuple[Severity, ...], SEVERITY_ORDER)  # one order, the webhook sinks'

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_LINK_FIELDS = frozenset({"stream", "subject", "detector", "alert_id", "severity"})


def severity_rank(severity: str) -> int:
    """0 for info, 1 for warning, 2 for critical.

    >>> severity_rank("critical") > severity_rank("info")
    True
    """
    return SEVERITIES.index(severity)  # ValueError on an unknown name


def parse_duration(value: object) -> float:
    """Seconds from ``"250ms"``, ``"30s"``, ``"5m"``, ``"2h"``, ``"7d"``, ``"1w"`` or a number.

    A bare number (or numeric string) is seconds. Raises ``ValueError`` naming the
    accepted forms.
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration like '30s', '5m', '2h', '7d' or seconds, got a bool")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    else:
        raise ValueError(
            f"expected a duration like '30s', '5m', '2h', '7d' or a number of seconds, "
            f"got {value!r}"
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a duration must be finite and >= 0 seconds, got {value!r}")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Strict(StrictModel):
    """Frozen, unknown keys rejected with the list of allowed keys."""

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            allowed = set(cls.model_fields)
            unknown = sorted(str(k) for k in data if k not in allowed)
            if unknown:
                raise ValueError(
                    f"unknown key(s) {', '.join(repr(k) for k in unknown)}; "
                    f"allowed: {', '.join(sorted(allowed))}"
                )
        return data


class _SinkBase(_Strict):
    name: str = ""  # metric label and state key; defaults to "<type>-<index>"
    min_severity: Severity = "info"
    timeout: Duration = 5.0
    tls_ca_file: str | None = Field(
        default=None,
        description="PEM bundle of the CAs that sign the receiver's certificate (default: "
        "the system store); relative to the configuration file's directory.",
    )

    @field_validator("timeout")
    @classmethod
    def _positive_timeout(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("timeout must be > 0 seconds")
        return v

    @field_validator("name")
    @classmethod
    def _label_safe_name(cls, v: str) -> str:
        if v and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", v):
            raise ValueError("name must be 1-64 characters of A-Z a-z 0-9 _ . -")
        return v


class WebhookSink(_SinkBase):
    """Generic JSON (the alert document itself), signed with HMAC-SHA256 over
    ``"<timestamp>." + body``. A sink without ``secret`` must say ``unsigned: true``.

    >>> load_alerts_config({"sinks": [{"type": "webhook", "url": "https://h.test/x"}]})
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    connectors.errors.ConfigError: alerts.sinks[0].webhook: a webhook sink needs a secret ...
    """

    type: Literal["webhook"]
    url: SecretStr
    secret: SecretStr | None = None
    unsigned: bool = Field(
        default=False,
        description="Send without a signature; required when the sink has no `secret`.",
    )

    @model_validator(mode="after")
    def _signed_unless_told(self) -> WebhookSink:
        if self.secret is None and not self.unsigned:
            raise ValueError(
                "a webhook sink needs a secret (deliveries are signed with HMAC-SHA256); "
                "set unsigned: true to send unsigned deliveries"
            )
        if self.secret is not None and self.unsigned:
            raise ValueError("a webhook sink with a secret cannot also be unsigned: true")
        return self


class SlackSink(_SinkBase):
    """A Slack incoming webhook (``{"text", "blocks"}``)."""

    type: Literal["slack"]
    url: SecretStr


class PagerDutySink(_SinkBase):
    """PagerDuty Events API v2; pages only on critical unless told otherwise."""

    type: Literal["pagerduty"]
    routing_key: SecretStr
    url: SecretStr = SecretStr("https://events.pagerduty.com/v2/enqueue")
    min_severity: Severity = "critical"
    source: str = "driftwarden"


class AlertmanagerSink(_SinkBase):
    """Alertmanager ``POST {url}/api/v2/alerts``.

    Alertmanager resolves an alert by itself once ``endsAt`` passes, so a firing alert
    is sent with ``endsAt = now + hold``; the resolved message sets the real end.
    """

    type: Literal["alertmanager"]
    url: SecretStr
    hold: Duration = 86400.0
    generator_url: str = ""


SinkConfig = Annotated[
    WebhookSink | SlackSink | PagerDutySink | AlertmanagerSink, Field(discriminator="type")
]


class Route(_Strict):
    """A severity override: the first route whose globs all match wins.

    Globs are ``fnmatch`` patterns (case-sensitive); an omitted one matches anything.
    """

    stream: str = "*"
    subject: str = "*"
    detector: str = "*"
    severity: Severity

    def matches(self, stream: str, subject: str, detector: str) -> bool:
        return (
            fnmatchcase(stream, self.stream)
            and fnmatchcase(subject, self.subject)
            and fnmatchcase(detector, self.detector)
        )


class GroupingConfig(_Strict):
    """When ``min_subjects`` or more subjects of one stream and detector start firing
    in one ``observe`` call, they make one grouped alert listing the ``top`` subjects."""

    min_subjects: int = Field(default=3, ge=2)
    top: int = Field(default=5, ge=1, le=100)


class RetrainPolicy(_Strict):
    """When a firing alert on a stream that feeds a model asks for a retrain."""

    enabled: bool = True
    min_severity: Severity = "warning"
    detectors: tuple[str, ...] = ()  # empty: any detector
    cooldown: Duration = 21600.0  # per (model, version)


class DeliveryConfig(_Strict):
    """Webhook queueing and retry (exponential backoff with full jitter)."""

    queue_size: int = Field(default=10000, ge=1)
    backoff_initial: Duration = 1.0
    backoff_max: Duration = 300.0
    max_attempts: int = Field(default=0, ge=0)  # 0: retry until delivered


class AlertsConfig(_Strict):
    """Everything about alerts: topics, lifecycle, severities, routes, sinks."""

    topic: str = "driftwarden.alerts"
    retrain_topic: str | None = None
    cooldown: Duration = 1800.0
    resolve_after: int = Field(default=3, ge=1)
    default_severity: Severity = "warning"
    # by detector name ("ks", "psi", "adwin", "schema") or finding kind ("field",
    # "entity", "model"); the detector name wins over the kind
    severities: dict[str, Severity] = Field(default_factory=dict)
    routes: tuple[Route, ...] = ()
    grouping: GroupingConfig = GroupingConfig()
    retrain: RetrainPolicy = RetrainPolicy()
    delivery: DeliveryConfig = DeliveryConfig()
    # link name -> template with {stream} {subject} {detector} {alert_id} {severity}
    links: dict[str, str] = Field(default_factory=dict)
    sinks: tuple[SinkConfig, ...] = ()

    @field_validator("links")
    @classmethod
    def _known_placeholders(cls, v: dict[str, str]) -> dict[str, str]:
        for name, template in v.items():
            try:
                fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
            except ValueError as e:
                raise ValueError(f"links.{name}: bad template: {e}") from None
            unknown = fields - _LINK_FIELDS
            if unknown:
                raise ValueError(
                    f"links.{name}: unknown placeholder(s) {sorted(unknown)}; "
                    f"allowed: {sorted(_LINK_FIELDS)}"
                )
        return v

    @model_validator(mode="after")
    def _name_sinks(self) -> AlertsConfig:
        named = tuple(
            s if s.name else s.model_copy(update={"name": f"{s.type}-{i}"})
            for i, s in enumerate(self.sinks)
        )
        names = [s.name for s in named]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"sinks: duplicate name(s) {dupes}; each sink needs its own name")
        object.__setattr__(self, "sinks", named)  # frozen model: set once, at validation
        return self

    def severity_for(self, stream: str, subject: str, detector: str, kind: str) -> Severity:
        """Routes first (first match), then ``severities[detector]``, ``[kind]``, default."""
        for route in self.routes:
            if route.matches(stream, subject, detector):
                return route.severity
        return self.severities.get(detector) or self.severities.get(kind) or self.default_severity


def load_alerts_config(data: Mapping[str, Any], where: str = "alerts") -> AlertsConfig:
    """Validate a plain mapping; raise ``ConfigError`` naming each bad key.

    >>> load_alerts_config({"resolve_after": 0})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    connectors.errors.ConfigError: alerts.resolve_after: Input should be greater than or equal...
    """
    try:
        return AlertsConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, where)) from None


def format_validation_error(error: ValidationError, where: str) -> str:
    """One line per problem: ``alerts.sinks[0].min_severity: Input should be ...``."""
    return "\n".join(error_lines(error, where))
