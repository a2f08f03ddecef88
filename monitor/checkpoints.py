"""The values the state store keeps, and its key schema.

Every record of the compacted state topic is one of these frozen values, keyed by a
``CheckpointKey``:

* ``GROUP/STREAM/TOPIC/PARTITION``: a ``PartitionCheckpoint``: the next offset to
  read and the ``PartitionState`` (event count, one state per stage) that covers
  exactly the events before it;
* ``GROUP/STREAM/baseline``: a ``BaselineCheckpoint``, a baseline built from the
  stream's first events;
* ``GROUP/STREAM/alerts``: a ``StreamCheckpoint``, the stream's alert episodes and
  pending webhook deliveries (``AlertState``), written by whoever judges the stream.

Values convert to and from plain msgpack-able mappings (``to_plain`` /
``from_plain``); the wire format is the one earlier versions wrote.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = [
    "AlertState",
    "BaselineCheckpoint",
    "CheckpointKey",
    "KeyKind",
    "PartitionCheckpoint",
    "PartitionState",
    "PlainStageState",
    "StageDecoder",
    "StageState",
    "StreamCheckpoint",
]

KeyKind = Literal["partition", "baseline", "alerts"]

_STREAM_RECORDS: tuple[KeyKind, ...] = ("baseline", "alerts")


@dataclass(frozen=True, slots=True, order=True)
class CheckpointKey:
    """Where a checkpoint lives in the state topic.

    >>> key = CheckpointKey.for_partition("g", "sensors", "iot.sensors", 3)
    >>> key.format()
    'g/sensors/iot.sensors/3'
    >>> CheckpointKey.parse("g", key.format()) == key
    True
    >>> CheckpointKey.parse("g", "g/sensors/alerts").kind
    'alerts'
    >>> CheckpointKey.parse("g", "other/sensors/alerts") is None
    True
    """

    group: str
    stream: str
    kind: KeyKind = "partition"
    topic: str = ""
    partition: int = -1

    @classmethod
    def for_partition(cls, group: str, stream: str, topic: str, partition: int) -> CheckpointKey:
        return cls(group, stream, "partition", topic, partition)

    @classmethod
    def for_baseline(cls, group: str, stream: str) -> CheckpointKey:
        return cls(group, stream, "baseline")

    @classmethod
    def for_alerts(cls, group: str, stream: str) -> CheckpointKey:
        return cls(group, stream, "alerts")

    @staticmethod
    def stream_prefix(group: str, stream: str) -> str:
        """The text every key of ``stream`` starts with."""
        return f"{group}/{stream}/"

    def format(self) -> str:
        prefix = self.stream_prefix(self.group, self.stream)
        if self.kind == "partition":
            return f"{prefix}{self.topic}/{self.partition}"
        return f"{prefix}{self.kind}"

    @classmethod
    def parse(cls, group: str, text: str) -> CheckpointKey | None:
        """The key ``text`` names in ``group`` (None for another group or an unknown shape)."""
        if not text.startswith(f"{group}/"):
            return None
        rest = text[len(group) + 1 :]
        head, _, last = rest.rpartition("/")
        if not head:
            return None
        if last in _STREAM_RECORDS:
            kind: KeyKind = "alerts" if last == "alerts" else "baseline"
            return cls(group, head, kind)
        stream, _, topic = head.rpartition("/")
        if not stream or not topic or not last.isdigit():
            return None
        return cls(group, stream, "partition", topic, int(last))

    @property
    def topic_partition(self) -> tuple[str, int]:
        return (self.topic, self.partition)


@runtime_checkable
class StageState(Protocol):
    """One stage's state of one partition: a frozen value that converts to plain data."""

    def to_plain(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True, slots=True)
class PlainStageState:
    """A stage state read without its stage (tools, tests): the plain mapping as stored."""

    data: Mapping[str, Any]

    def to_plain(self) -> Mapping[str, Any]:
        return self.data


StageDecoder = Callable[[Mapping[str, Any]], StageState]


@dataclass(frozen=True, slots=True)
class PartitionState:
    """Everything that continues one partition of a stream exactly: the event count
    and one state per stage, named by the stage (``names``, in the same order) so a
    stream that gains or loses a stage still restores the others' states.

    >>> s = PartitionState(7, (None, PlainStageState({"n": 1})), ("model", "drift"))
    >>> PartitionState.from_plain(s.to_plain()) == s
    True
    >>> s.by_name()["drift"]
    PlainStageState(data={'n': 1})
    """

    events: int
    stages: tuple[StageState | None, ...] = ()
    names: tuple[str, ...] = ()  # empty: a checkpoint written before stages were named

    def to_plain(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "events": self.events,
            "stages": [None if s is None else s.to_plain() for s in self.stages],
        }
        if self.names:
            out["names"] = list(self.names)
        return out

    def by_name(self) -> dict[str, StageState | None]:
        """The stage states by stage name (empty for an unnamed, older checkpoint)."""
        return dict(zip(self.names, self.stages, strict=False)) if self.names else {}

    def aligned(self, names: Sequence[str]) -> list[StageState | None]:
        """The states for stages called ``names``, in that order: by name, or by
        position for a checkpoint written before stages were named."""
        if not self.names:
            return [self.stages[i] if i < len(self.stages) else None for i in range(len(names))]
        found = self.by_name()
        return [found.get(name) for name in names]

    @classmethod
    def from_plain(
        cls,
        plain: Mapping[str, Any],
        decoders: Mapping[str, StageDecoder] | tuple[StageDecoder, ...] | None = None,
    ) -> PartitionState:
        """Decode; ``decoders`` (by stage name, or one per stage in order) type each
        stage's state, else (or for a stage not known) it stays plain."""
        raw = list(plain.get("stages", []))
        names = tuple(str(n) for n in plain.get("names", []))
        if names and len(names) != len(raw):
            names = ()  # not a layout this version wrote: read by position
        order: list[StageDecoder | None]
        if decoders is None:
            order = [None] * len(raw)
        elif isinstance(decoders, Mapping):
            if names:
                order = [decoders.get(n) for n in names]
            else:
                listed = list(decoders.values())
                order = [listed[i] if i < len(listed) else None for i in range(len(raw))]
        else:
            order = [decoders[i] if i < len(decoders) else None for i in range(len(raw))]
        stages: list[StageState | None] = []
        for st, decode in zip(raw, order, strict=True):
            if st is None:
                stages.append(None)
            elif decode is None:
                stages.append(PlainStageState(st))
            else:
                stages.append(decode(st))
        return cls(int(plain.get("events", 0)), tuple(stages), names)


@dataclass(frozen=True, slots=True)
class PartitionCheckpoint:
    """A partition's state and the next offset to read after it (``at``: wall time, s)."""

    offset: int
    state: PartitionState
    at: float = field(default_factory=time.time)

    def to_plain(self) -> dict[str, Any]:
        return {"offset": self.offset, "pipeline": self.state.to_plain(), "at": self.at}

    @classmethod
    def from_plain(
        cls,
        plain: Mapping[str, Any],
        decoders: Mapping[str, StageDecoder] | tuple[StageDecoder, ...] | None = None,
    ) -> PartitionCheckpoint:
        return cls(
            int(plain["offset"]),
            PartitionState.from_plain(plain["pipeline"], decoders),
            float(plain.get("at", 0.0)),
        )


@dataclass(frozen=True, slots=True)
class BaselineCheckpoint:
    """A baseline built from a stream's first events, as its JSON artifact."""

    json: str

    def to_plain(self) -> dict[str, Any]:
        return {"json": self.json}

    @classmethod
    def from_plain(cls, plain: Mapping[str, Any]) -> BaselineCheckpoint:
        return cls(str(plain["json"]))


@dataclass(frozen=True, slots=True)
class AlertState:
    """A stream's alert episodes (the engine's JSON) and its pending webhook queue."""

    engine: Mapping[str, Any]
    webhooks: Mapping[str, Any]

    def to_plain(self) -> dict[str, Any]:
        return {"engine": dict(self.engine), "webhooks": dict(self.webhooks)}

    @classmethod
    def from_plain(cls, plain: Mapping[str, Any]) -> AlertState:
        return cls(plain["engine"], plain["webhooks"])


@dataclass(frozen=True, slots=True)
class StreamCheckpoint:
    """What the judge of a stream keeps for the whole stream: its alert state."""

    alerts: AlertState
    at: float = field(default_factory=time.time)

    def to_plain(self) -> dict[str, Any]:
        return {"alerts": self.alerts.to_plain(), "at": self.at}

    @classmethod
    def from_plain(cls, plain: Mapping[str, Any]) -> StreamCheckpoint:
        return cls(AlertState.from_plain(plain["alerts"]), float(plain.get("at", 0.0)))
