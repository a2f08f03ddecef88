"""The service configuration: pydantic v2 models loaded from YAML.

This is the one module that reads ``os.environ``. Two mechanisms bring the
environment in, both before validation:

* ``${VAR}`` and ``${VAR:-default}`` inside any YAML string are replaced by the
  variable's value (a missing variable without default is an error naming the key);
* a few well-known variables override endpoints and credentials:
  ``KAFKA_BOOTSTRAP_SERVERS`` (``kafka."bootstrap.servers"``),
  ``KAFKA_SECURITY_PROTOCOL`` (``kafka."security.protocol"``),
  ``KAFKA_SASL_MECHANISM`` (``kafka."sasl.mechanism"``),
  ``KAFKA_SASL_USERNAME`` / ``KAFKA_SASL_PASSWORD`` (``kafka."sasl.username"`` /
  ``kafka."sasl.password"``), ``KAFKA_SSL_CA_LOCATION`` (``kafka."ssl.ca.location"``),
  ``DRIFTWARDEN_GROUP`` (``group``), ``DRIFTWARDEN_METRICS_LISTEN``
  (``metrics.listen``) and ``DRIFTWARDEN_HTTP_TOKEN`` (``metrics.token``).

``load_config`` resolves relative paths (baseline files, librdkafka ``*.location``
files, webhook ``tls_ca_file``) against the configuration file's directory.
Secrets never show in ``repr``: Kafka options whose names hold ``password``,
``secret``, ``key`` or ``token`` are masked, the HTTP token is a ``SecretStr``.

Every model forbids unknown keys, so a typo is an error, not a silently ignored
setting. ``load_config`` raises ``ConfigError`` whose message lists every problem
with its key path, the bad value and what is allowed.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from connectors.fetch import direct_fetch_problem
from detectors.base import WindowParams
from detectors.registry import detector_class, names
from monitor.config.alerts import AlertsConfig, Duration, parse_duration
from monitor.config.base import StrictModel, error_lines, is_secret_key
from monitor.config.model import ModelSpec
from monitor.errors import ConfigError

__all__ = [
    "DETECTOR_TYPES",
    "KAFKA_ENV_OVERRIDES",
    "BaselineSpec",
    "Config",
    "FieldSpec",
    "FieldType",
    "FleetFieldSpec",
    "FleetSpec",
    "MetricsConfig",
    "ModelSpec",
    "SourceConfig",
    "StateConfig",
    "StreamSpec",
    "WindowSpec",
    "load_config",
    "parse_config",
    "parse_duration",
]

# librdkafka options driftwarden sets itself; a user value would break its guarantees.
_RESERVED_KAFKA_OPTIONS = frozenset(
    {"enable.auto.commit", "enable.auto.offset.store", "group.id", "on_commit"}
)
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = r"^[A-Za-z_][A-Za-z0-9_.\-]*$"


class _Model(StrictModel):
    """Frozen; unknown keys are errors (see monitor.config.base)."""


def _ordered_range(value: tuple[float, float]) -> tuple[float, float]:
    if not value[0] <= value[1]:
        raise ValueError(f"range must be [low, high] with low <= high, got {list(value)}")
    return value


def _names_to_mapping(value: object) -> object:
    if isinstance(value, list | tuple):
        return {str(name): {} for name in value}
    return value


# A [low, high] pair with low <= high.
Range = Annotated[tuple[float, float], AfterValidator(_ordered_range)]
# Detector name -> its parameters; a list of names means default parameters.
DetectorParams = Annotated[dict[str, dict[str, Any]], BeforeValidator(_names_to_mapping)]


class FieldType(StrEnum):
    """What a field holds. Numbers become float64 columns, categories int codes."""

    FLOAT = "float"
    INT = "int"
    BOOL = "bool"
    CATEGORY = "category"
    STRING = "string"


NUMERIC_TYPES = frozenset({FieldType.FLOAT, FieldType.INT})
# Which field types each detector can judge: KS and ADWIN need numbers (a numeric
# baseline, a running mean); chi-square needs categories; PSI works on both.
DETECTOR_TYPES: dict[str, frozenset[FieldType]] = {
    "ks": NUMERIC_TYPES,
    "adwin": NUMERIC_TYPES,
    "psi": NUMERIC_TYPES | {FieldType.CATEGORY, FieldType.BOOL},
    "chi2": frozenset({FieldType.CATEGORY, FieldType.BOOL}),
    # data_quality: null / unseen / out-of-range / invalid rates of any judged field
    "data_quality": NUMERIC_TYPES | {FieldType.CATEGORY, FieldType.BOOL},
}
# The detectors a field runs when its spec does not say.
DEFAULT_DETECTORS: dict[FieldType, tuple[str, ...]] = {
    FieldType.FLOAT: ("ks", "psi", "adwin", "data_quality"),
    FieldType.INT: ("ks", "psi", "adwin", "data_quality"),
    FieldType.BOOL: ("chi2", "data_quality"),
    FieldType.CATEGORY: ("chi2", "psi", "data_quality"),
    FieldType.STRING: (),
}


class FieldSpec(_Model):
    """One declared field of a stream's events."""

    type: FieldType
    required: bool = True
    nullable: bool = False
    range: Range | None = None
    categories: tuple[str, ...] | None = None
    # detector name -> its parameters; a list of names means default parameters.
    detectors: DetectorParams | None = None

    @field_validator("categories")
    @classmethod
    def _distinct_categories(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None:
            if not value:
                raise ValueError("categories must list at least one category")
            if len(set(value)) != len(value):
                raise ValueError("categories must be distinct")
        return value

    @model_validator(mode="after")
    def _fits_type(self) -> FieldSpec:
        if self.range is not None and self.type not in NUMERIC_TYPES:
            raise ValueError(f"range is allowed only for float and int fields, not {self.type}")
        if self.categories is not None and self.type is not FieldType.CATEGORY:
            raise ValueError(f"categories are allowed only for category fields, not {self.type}")
        if self.detectors is not None:
            known = names()
            for name, params in self.detectors.items():
                if name not in known:
                    raise ValueError(
                        f"unknown detector {name!r}; allowed: {', '.join(sorted(known))}"
                    )
                _check_detector_params(name, params)
                fits = DETECTOR_TYPES.get(name)
                if fits is not None and self.type not in fits:
                    raise ValueError(
                        f"detector {name!r} does not fit a {self.type} field; it runs on "
                        f"{', '.join(sorted(fits))} fields"
                    )
        return self

    def detector_specs(self) -> dict[str, dict[str, Any]]:
        """The detectors this field runs, with their parameters."""
        if self.detectors is not None:
            return dict(self.detectors)
        return {name: {} for name in DEFAULT_DETECTORS[self.type]}


def _check_detector_params(name: str, params: Mapping[str, Any]) -> None:
    cls = detector_class(name)
    accepted = {
        p.name
        for p in inspect.signature(cls).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.name not in {"baseline", "subject"}
    }
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ValueError(
            f"detector {name!r} has no parameter {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(sorted(accepted)) or 'none'}"
        )


class WindowSpec(_Model):
    """The sliding window drift is judged over: by event count or by event time."""

    events: int | None = Field(default=10_000, gt=0)
    step: int | None = Field(default=1_000, gt=0)
    seconds: Duration | None = None
    step_seconds: Duration | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> WindowSpec:
        if self.seconds is not None:
            if self.step_seconds is None or not 0 < self.step_seconds <= self.seconds:
                raise ValueError(
                    "a time window needs step_seconds with 0 < step_seconds <= seconds"
                )
        elif self.events is not None and self.step is not None and self.step > self.events:
            raise ValueError(f"step ({self.step}) must be <= events ({self.events})")
        return self

    def detector_params(self) -> WindowParams:
        """The window as detector constructor parameters."""
        if self.seconds is not None:
            return {"window_seconds": self.seconds, "step_seconds": self.step_seconds}
        return {"window_events": self.events, "step_events": self.step}


class BaselineSpec(_Model):
    """Where a stream's reference distribution comes from."""

    file: Path | None = None
    first_events: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _exactly_one(self) -> BaselineSpec:
        if (self.file is None) == (self.first_events is None):
            raise ValueError("a baseline is either {file: PATH} or {first_events: N}, exactly one")
        return self


class FleetFieldSpec(_Model):
    """One numeric field as the fleet stage tracks it per device."""

    # Plausible values for a healthy device (out_of_range counts values outside).
    range: Range | None = None
    # Smallest standard deviation a spike z-score divides by (the readings' resolution).
    min_sd: float = Field(default=0.0, ge=0)


class FleetSpec(_Model):
    """Per-device health of a stream with an ``entity`` (see monitor/pipeline/fleet.py)."""

    # numeric field -> how it is tracked; default: every numeric field of the stream.
    fields: dict[str, FleetFieldSpec] | None = None
    max_entities: int = Field(default=100_000, gt=0)
    allowed_lateness: Duration = 60.0
    # Events stamped further than this ahead of the wall clock are dropped (counted
    # late): one bad clock must not move a partition's watermark into the future.
    max_future: Duration = 86400.0
    evaluate_every: Duration = 60.0
    quiet_after: Duration = 300.0
    false_alerts_per_day: float = Field(default=1.0, gt=0)
    events_per_day: float = Field(default=1e8, gt=0)
    alpha: float = Field(default=0.02, gt=0, le=1)
    gap_alpha: float = Field(default=0.1, gt=0, le=1)
    oor_alpha: float = Field(default=0.05, gt=0, le=1)
    recent_alpha: float = Field(default=0.1, gt=0, le=1)
    warmup: int = Field(default=30, ge=1)
    top_k: int = Field(default=20, ge=1, le=1000)
    # entity detector name -> its parameters; a list of names means defaults; None: all.
    detectors: DetectorParams | None = None

    @field_validator("detectors")
    @classmethod
    def _known_detectors(
        cls, value: dict[str, dict[str, Any]] | None
    ) -> dict[str, dict[str, Any]] | None:
        from detectors import entity_registry

        for name, params in (value or {}).items():
            if name not in entity_registry.names():
                raise ValueError(
                    f"unknown entity detector {name!r}; "
                    f"allowed: {', '.join(entity_registry.names())}"
                )
            cls_ = entity_registry.detector_class(name)
            accepted = {
                p.name
                for p in inspect.signature(cls_).parameters.values()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "budget"
            }
            unknown = sorted(set(params) - accepted)
            if unknown:
                raise ValueError(
                    f"entity detector {name!r} has no parameter {', '.join(map(repr, unknown))}; "
                    f"allowed: {', '.join(sorted(accepted)) or 'none'}"
                )
        return value

    def detector_specs(self) -> dict[str, dict[str, Any]]:
        """The entity detectors to run, in status-bit order, with their parameters."""
        from detectors import entity_registry

        chosen = self.detectors if self.detectors is not None else {}
        every = self.detectors is None
        return {n: dict(chosen.get(n, {})) for n in entity_registry.names() if every or n in chosen}


class StreamSpec(_Model):
    """One monitored stream: a topic (or several) of JSON events with declared fields."""

    name: str = Field(pattern=_NAME)
    topic: str | None = None
    topics: tuple[str, ...] | None = None
    format: Literal["json"] = "json"
    entity: str | None = None
    event_time: str | None = None
    event_time_unit: Literal["s", "ms", "us", "ns"] = "s"
    strict: bool = False
    max_event_bytes: int = Field(default=1_048_576, gt=0)
    max_entities: int = Field(default=100_000, gt=0)
    # Hostile-input limits (README "Limits"); each hit is counted in driftwarden_limit_hits_total.
    max_depth: int = Field(
        default=64,
        gt=0,
        le=512,
        description="Deepest array/object nesting accepted; deeper events are `too_deep`.",
    )
    max_fields: int = Field(
        default=1_000,
        gt=0,
        description="Most object members (at any depth) in one event; more is `too_many_fields`.",
    )
    max_string_length: int = Field(
        default=1_024,
        gt=0,
        description="Longest entity id or new category value kept; longer is `string_too_long`.",
    )
    max_categories: int = Field(
        default=10_000,
        gt=0,
        description="Distinct values tracked per open category field; further ones get code -1.",
    )
    decoder: Literal["compiled", "msgspec"] = Field(
        default="compiled",
        description="`compiled`: a numba scanner decodes the batch and hands the rows it "
        "is not sure of to msgspec (identical results, counted in "
        "driftwarden_decode_fallback_total); `msgspec`: msgspec decodes every row.",
    )
    fields: dict[str, FieldSpec]
    baseline: BaselineSpec = BaselineSpec(first_events=10_000)
    window: WindowSpec = WindowSpec()
    model: ModelSpec | None = None
    fleet: FleetSpec | None = None

    @model_validator(mode="after")
    def _check(self) -> StreamSpec:
        if (self.topic is None) == (self.topics is None):
            raise ValueError("a stream reads either topic: NAME or topics: [NAMES], exactly one")
        if not self.fields:
            raise ValueError("a stream must declare at least one field")
        for key in ("entity", "event_time"):
            name = getattr(self, key)
            if name is not None and name in self.fields:
                raise ValueError(f"{key} field {name!r} must not also be declared under fields")
        if self.fleet is not None:
            _check_fleet(self)
        if self.model is not None and self.model.labels is not None:
            if self.topic is None:
                raise ValueError("a stream with model.labels reads one inference topic (topic:)")
            if self.model.labels.topic == self.topic:
                raise ValueError("model.labels.topic must differ from the inference topic")
            if self.model.deploy_topic in (self.topic, self.model.labels.topic):
                raise ValueError("model.deploy_topic must differ from the stream's other topics")
            if self.event_time is None:
                raise ValueError("a stream with model.labels needs event_time (expiry is by it)")
        return self

    @property
    def inference_topics(self) -> tuple[str, ...]:
        """The topics of the stream's own events (without a model's label topic)."""
        return (self.topic,) if self.topic is not None else tuple(self.topics or ())

    @property
    def all_topics(self) -> tuple[str, ...]:
        """Every topic the stream reads; a model's label topic (slots ``1 << 20 | p``) and
        deploy topic (``2 << 20 | p``) come after the one inference topic."""
        labels = self.model.labels if self.model is not None else None
        deploys = self.model.deploy_topic if self.model is not None else None
        return (
            self.inference_topics
            + ((labels.topic,) if labels is not None else ())
            + ((deploys,) if deploys is not None and labels is not None else ())
        )


def _check_fleet(stream: StreamSpec) -> None:
    if stream.entity is None or stream.event_time is None:
        raise ValueError("fleet needs the stream's entity and event_time")
    numeric = [n for n, f in stream.fields.items() if f.type in NUMERIC_TYPES]
    for name in (stream.fleet.fields or {}) if stream.fleet is not None else {}:
        if name not in numeric:
            raise ValueError(f"fleet.fields: {name!r} is not a numeric field of the stream")
    if not numeric:
        raise ValueError("fleet needs at least one numeric field")


class SourceConfig(_Model):
    """How the service pulls batches from Kafka."""

    max_batch_events: int = Field(default=10_000, gt=0, le=1_000_000)
    max_wait: Duration = 0.5
    # librdkafka idles a busy consumer for fetch.queue.backoff.ms once its queue is full.
    fetch_queue_backoff_ms: int = Field(default=10, ge=0)
    queued_min_messages: int = Field(default=200_000, gt=0)
    fetch: Literal["auto", "librdkafka", "direct"] = Field(
        default="auto",
        description="Who reads records. `direct`: the consumer group stays librdkafka's, "
        "but records are fetched by driftwarden's own Fetch requests and packed into "
        "columns with no object per record (about 4x less CPU than librdkafka's Python "
        "message per record); it speaks plaintext, TLS, SASL PLAIN and SCRAM, not GSSAPI "
        "or OAUTHBEARER. `librdkafka`: librdkafka reads the records too. `auto`: `direct` "
        "where the `kafka` options allow it, else `librdkafka`.",
    )

    def fetch_path(self, kafka: Mapping[str, Any]) -> str:
        """`direct` or `librdkafka`: what `fetch` means for these client options."""
        if self.fetch != "auto":
            return self.fetch
        return "librdkafka" if direct_fetch_problem(kafka) is not None else "direct"

    connect_timeout: Duration = Field(
        default=30.0,
        description="How long `run` waits at start for the cluster to answer before it "
        "stops with one line naming `bootstrap.servers` and librdkafka's reason.",
    )


class StateConfig(_Model):
    """Checkpoints of each partition's state, in a compacted Kafka topic."""

    enabled: bool = True
    topic: str = "driftwarden.state"
    every_events: int = Field(default=1_000_000, gt=0)
    every_seconds: Duration = 30.0


class MetricsConfig(_Model):
    """Where /metrics, /healthz, /readyz and /status.json are served.

    ``token``: when set, every path but /metrics, /healthz and /readyz needs
    ``Authorization: Bearer <token>``.
    """

    listen: str = "127.0.0.1:9108"
    enabled: bool = True
    token: SecretStr | None = Field(
        default=None,
        description="Bearer token required for every path but `/metrics`, `/healthz` and "
        "`/readyz` (e.g. `/status`, `/status.json`); also `DRIFTWARDEN_HTTP_TOKEN`.",
    )

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"listen must be HOST:PORT (port 0-65535), got {value!r}")
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


KafkaValue = str | int | float | bool


class Config(_Model):
    """The whole service configuration."""

    kafka: dict[str, KafkaValue]
    group: str = "driftwarden"
    source: SourceConfig = SourceConfig()
    metrics: MetricsConfig = MetricsConfig()
    streams: tuple[StreamSpec, ...]
    dead_letter_topic: str = "driftwarden.dlq"
    dead_letter_max_bytes: int = Field(
        default=900_000,
        ge=1_024,
        le=100_000_000,
        description="Dead-letter values above this are cut to it; headers keep the original "
        "size and sha256. Also sizes the producer's message.max.bytes.",
    )
    state: StateConfig = StateConfig()
    alerts: AlertsConfig | None = None
    summary_interval: Duration = 5.0

    @field_validator("kafka")
    @classmethod
    def _kafka(cls, value: dict[str, KafkaValue]) -> dict[str, KafkaValue]:
        if "bootstrap.servers" not in value:
            raise ValueError("kafka must set 'bootstrap.servers' (or KAFKA_BOOTSTRAP_SERVERS)")
        reserved = sorted(_RESERVED_KAFKA_OPTIONS & set(value))
        if reserved:
            raise ValueError(
                f"{', '.join(reserved)} are set by driftwarden itself "
                "(offsets are committed only after a batch's outputs are durable); remove them"
            )
        return value

    @model_validator(mode="after")
    def _check(self) -> Config:
        if not self.streams:
            raise ValueError("streams must list at least one stream")
        names = [s.name for s in self.streams]
        if len(set(names)) != len(names):
            raise ValueError(f"stream names must be unique, got {names}")
        owner: dict[str, str] = {}
        for stream in self.streams:
            for topic in stream.all_topics:
                if topic in owner:
                    raise ValueError(
                        f"topic {topic!r} is read by both {owner[topic]!r} and {stream.name!r}"
                    )
                owner[topic] = stream.name
        if self.source.fetch == "direct":
            problem = direct_fetch_problem(self.kafka)
            if problem is not None:
                raise ValueError(problem)
        return self

    def stream_for_topic(self) -> dict[str, StreamSpec]:
        return {t: s for s in self.streams for t in s.all_topics}

    def redacted_kafka(self) -> dict[str, str]:
        """The Kafka options with secrets masked, for logs."""
        return {k: ("***" if is_secret_key(k) else str(v)) for k, v in self.kafka.items()}

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, (self.redacted_kafka() if name == "kafka" else value)


def _interpolate(node: Any, env: Mapping[str, str], path: str, problems: list[str]) -> Any:
    if isinstance(node, dict):
        return {
            k: _interpolate(v, env, f"{path}.{k}" if path else str(k), problems)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_interpolate(v, env, f"{path}[{i}]", problems) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:

        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append(
                f"{path}: environment variable {name} is not set "
                f"(write ${{{name}:-default}} for a default)"
            )
            return ""

        return _ENV_REF.sub(repl, node)
    return node


# environment variable -> librdkafka option it overrides
KAFKA_ENV_OVERRIDES: dict[str, str] = {
    "KAFKA_BOOTSTRAP_SERVERS": "bootstrap.servers",
    "KAFKA_SECURITY_PROTOCOL": "security.protocol",
    "KAFKA_SASL_MECHANISM": "sasl.mechanism",
    "KAFKA_SASL_USERNAME": "sasl.username",
    "KAFKA_SASL_PASSWORD": "sasl.password",
    "KAFKA_SSL_CA_LOCATION": "ssl.ca.location",
}


def _apply_overrides(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    for var, option in KAFKA_ENV_OVERRIDES.items():
        if value := env.get(var):
            kafka = raw.setdefault("kafka", {})
            if isinstance(kafka, dict):
                kafka[option] = value
    if group := env.get("DRIFTWARDEN_GROUP"):
        raw["group"] = group
    if listen := env.get("DRIFTWARDEN_METRICS_LISTEN"):
        metrics = raw.setdefault("metrics", {})
        if isinstance(metrics, dict):
            metrics["listen"] = listen
    if token := env.get("DRIFTWARDEN_HTTP_TOKEN"):
        metrics = raw.setdefault("metrics", {})
        if isinstance(metrics, dict):
            metrics["token"] = token


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Make relative file paths absolute against ``base`` (the config's directory)."""

    def resolve(value: object) -> object:
        if isinstance(value, str) and value and not Path(value).is_absolute():
            return str(base / value)
        return value

    kafka = raw.get("kafka")
    if isinstance(kafka, dict):
        for k, v in kafka.items():
            if isinstance(k, str) and (k.endswith(".location") or k.endswith(".keytab")):
                kafka[k] = resolve(v)
    streams = raw.get("streams")
    for stream in streams if isinstance(streams, list) else ():
        baseline = stream.get("baseline") if isinstance(stream, dict) else None
        if isinstance(baseline, dict) and "file" in baseline:
            baseline["file"] = resolve(baseline["file"])
    alerts = raw.get("alerts")
    sinks = alerts.get("sinks") if isinstance(alerts, dict) else None
    for sink in sinks if isinstance(sinks, list) else ():
        if isinstance(sink, dict) and "tls_ca_file" in sink:
            sink["tls_ca_file"] = resolve(sink["tls_ca_file"])


def parse_config(
    raw: object, env: Mapping[str, str] | None = None, base_dir: Path | None = None
) -> Config:
    """Validate an already-parsed YAML document (``env`` defaults to ``os.environ``);
    relative paths resolve against ``base_dir`` when given."""
    env = os.environ if env is None else env
    if not isinstance(raw, dict):
        raise ConfigError("the configuration must be a YAML mapping at the top level")
    problems: list[str] = []
    doc: dict[str, Any] = _interpolate(raw, env, "", problems)
    _apply_overrides(doc, env)
    if base_dir is not None:
        _resolve_paths(doc, base_dir)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    try:
        return Config.model_validate(doc)
    except ValidationError as err:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(error_lines(err))) from None


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, interpolate and validate a YAML configuration file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}") from None
    return parse_config(raw, env, base_dir=Path(path).resolve().parent)
