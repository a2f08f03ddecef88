"""Shared connector types: what flows in from Kafka and out to topics.

Connectors know nothing of statistics; these are plain records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = ["MemorySink", "MessageSink", "OutMessage"]


@dataclass(frozen=True, slots=True)
class OutMessage:
    """A message to produce: topic, key, value and headers (name, bytes)."""

    topic: str
    value: bytes
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


@runtime_checkable
class MessageSink(Protocol):
    """Where outgoing messages go (dead letters, alerts, retrain requests).

    ``send`` queues; ``flush`` blocks until every queued message is acknowledged
    by the broker or ``timeout`` seconds pass, and returns how many are still
    unacknowledged (0 means all are durable). A delivery failure raises
    ``SinkError`` from the next ``send`` or ``flush``.
    """

    def send(self, message: OutMessage) -> None: ...

    def flush(self, timeout: float) -> int: ...


@dataclass
class MemorySink:
    """An in-memory ``MessageSink`` for unit tests."""

    messages: list[OutMessage] = field(default_factory=list)

    def send(self, message: OutMessage) -> None:
        self.messages.append(message)

    def flush(self, timeout: float) -> int:
        return 0

    def on(self, topic: str) -> list[OutMessage]:
        """The messages sent to ``topic``, in order."""
        return [m for m in self.messages if m.topic == topic]
