"""The service configuration: pydantic v2 models loaded from YAML.

This is the one module that reads ``os.environ``. Two mechanisms bring the
environment in, both before validation:

* ``${VAR}`` and ``${VAR:-default}`` inside any YAML string are replaced by the
  variable's value (a missing variable without default is an error naming the key);
* a few well-known variables override endpoints: ``KAFKA_BOOTSTRAP_SERVERS``
  (``kafka."bootstrap.servers"``), ``DRIFTWARDEN_GROUP`` (``group``) and
  ``DRIFTWARDEN_METRICS_LISTEN`` (``metrics.listen``).

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
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from detectors.registry import detector_class, names
from monitor.config_alerts import AlertsConfig, Duration, parse_duration
from monitor.errors import ConfigError

__all__ = [
    "BaselineSpec",
    "Config",
    "FieldSpec",
    "FieldType",
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


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldType(StrEnum):
    """What a field holds. Numbers become float64 columns, categories int codes."""

    FLOAT = "float"
    INT = "int"
    BOOL = "bool"
    CATEGORY = "category"
    STRING = "string"


NUMERIC_TYPES = frozenset({FieldType.FLOAT, FieldType.INT})
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
    range: tuple[float, float] | None = None
    categories: tuple[str, ...] | None = None
    # detector name -> its parameters; a list of names means default parameters.
    detectors: dict[str, dict[str, Any]] | None = None

    @field_validator("detectors", mode="before")
    @classmethod
    def _names_to_mapping(cls, value: object) -> object:
        if isinstance(value, list | tuple):
            return {str(name): {} for name in value}
        return value

    @field_validator("range")
    @classmethod
    def _ordered_range(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not value[0] <= value[1]:
            raise ValueError(f"range must be [low, high] with low <= high, got {list(value)}")
        return value

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

    def detector_params(self) -> dict[str, Any]:
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


class ModelSpec(_Model):
    """An ML model whose inference events a stream carries (quality: later work)."""

    name: str = Field(pattern=_NAME)
    version: str | None = None
    version_field: str | None = None
    prediction: str | None = None
    labels: dict[str, Any] | None = None


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
    fields: dict[str, FieldSpec]
    baseline: BaselineSpec = BaselineSpec(first_events=10_000)
    window: WindowSpec = WindowSpec()
    model: ModelSpec | None = None

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
        return self

    @property
    def all_topics(self) -> tuple[str, ...]:
        return (self.topic,) if self.topic is not None else tuple(self.topics or ())


class SourceConfig(_Model):
    """How the service pulls batches from Kafka."""

    max_batch_events: int = Field(default=10_000, gt=0, le=1_000_000)
    max_wait: Duration = 0.5
    # librdkafka idles a busy consumer for fetch.queue.backoff.ms once its queue is full.
    fetch_queue_backoff_ms: int = Field(default=10, ge=0)
    queued_min_messages: int = Field(default=200_000, gt=0)
    commit_every_batch: bool = True


class StateConfig(_Model):
    """Checkpoints of each partition's state, in a compacted Kafka topic."""

    enabled: bool = True
    topic: str = "driftwarden.state"
    every_events: int = Field(default=100_000, gt=0)
    every_seconds: Duration = 30.0


class MetricsConfig(_Model):
    """Where /metrics, /healthz and /readyz are served."""

    listen: str = "127.0.0.1:9108"
    enabled: bool = True

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
        return self

    def stream_for_topic(self) -> dict[str, StreamSpec]:
        return {t: s for s in self.streams for t in s.all_topics}

    def redacted_kafka(self) -> dict[str, str]:
        """The Kafka options with secrets masked, for logs."""
        return {
            k: ("***" if any(w in k for w in ("password", "secret", "key", "token")) else str(v))
            for k, v in self.kafka.items()
        }


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


def _apply_overrides(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    if bootstrap := env.get("KAFKA_BOOTSTRAP_SERVERS"):
        kafka = raw.setdefault("kafka", {})
        if isinstance(kafka, dict):
            kafka["bootstrap.servers"] = bootstrap
    if group := env.get("DRIFTWARDEN_GROUP"):
        raw["group"] = group
    if listen := env.get("DRIFTWARDEN_METRICS_LISTEN"):
        metrics = raw.setdefault("metrics", {})
        if isinstance(metrics, dict):
            metrics["listen"] = listen


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "." in part or not part.isidentifier():
            out += f'."{part}"' if out else f'"{part}"'
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


def _format_errors(err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors(include_url=False):
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not allowed here; check the spelling)"
        value = e.get("input")
        shown = "" if isinstance(value, dict) or e["type"] == "missing" else f" (got {value!r})"
        if isinstance(value, str) and any(
            w in _loc(loc).lower() for w in ("password", "secret", "key", "token")
        ):
            shown = ""
        lines.append(f"{_loc(loc)}: {msg}{shown}")
    return lines


def parse_config(raw: object, env: Mapping[str, str] | None = None) -> Config:
    """Validate an already-parsed YAML document (``env`` defaults to ``os.environ``)."""
    env = os.environ if env is None else env
    if not isinstance(raw, dict):
        raise ConfigError("the configuration must be a YAML mapping at the top level")
    problems: list[str] = []
    doc: dict[str, Any] = _interpolate(raw, env, "", problems)
    _apply_overrides(doc, env)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    try:
        return Config.model_validate(doc)
    except ValidationError as err:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(_format_errors(err))) from None


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, interpolate and validate a YAML configuration file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return parse_config(raw, env)
