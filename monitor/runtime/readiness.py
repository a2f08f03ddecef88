"""Readiness: is the service consuming, with a broker that answers?

Ready means partitions are assigned, the broker is reachable, and no write to it
(a flush of outgoing messages or checkpoints) has waited for an acknowledgement
longer than the probe interval. An idle consumer cannot tell a quiet topic from a
frozen broker, so while no batch arrives the broker is probed every interval.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

__all__ = ["BROKER_DOWN", "Readiness"]

log = logging.getLogger("driftwarden.runner")

BROKER_DOWN = frozenset({"_ALL_BROKERS_DOWN", "_TRANSPORT", "_RESOLVE", "_TIMED_OUT"})


class _Gauge(Protocol):
    def set(self, value: float) -> None: ...


class Readiness:
    """Tracks the broker's health and sets the ready gauge.

    >>> class G:
    ...     value = -1.0
    ...     def set(self, v: float) -> None:
    ...         self.value = v
    >>> r = Readiness(lambda: True, lambda t: True, G())
    >>> r.refresh(); r.gauge.value
    1
    >>> r.on_kafka_error("_TRANSPORT"); r.ready()
    False
    """

    def __init__(
        self,
        assigned: Callable[[], bool],
        probe: Callable[[float], bool],
        gauge: _Gauge,
        probe_interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.assigned = assigned
        self.probe = probe
        self.gauge = gauge
        self.probe_interval = probe_interval
        self.clock = clock
        self.broker_ok = True
        self.waiting_since: float | None = None  # since when a write waits for the broker
        self.last_probe = clock()
        self.last_broker_error = 0.0
        gauge.set(0)

    def ready(self) -> bool:
        blocked = self.waiting_since is not None and (
            self.clock() - self.waiting_since > self.probe_interval
        )
        return self.assigned() and self.broker_ok and not blocked

    def refresh(self) -> None:
        self.gauge.set(1 if self.ready() else 0)

    def not_ready(self) -> None:
        self.gauge.set(0)

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """Around a blocking write to the broker."""
        self.waiting_since = self.clock()
        try:
            yield
        finally:
            self.waiting_since = None

    def on_batch(self) -> None:
        """A batch arrived: the broker answers."""
        self.broker_ok = True
        self.last_probe = self.clock()

    def on_idle(self) -> None:
        """No batch arrived: probe the broker when the interval has passed."""
        now = self.clock()
        if now - self.last_probe < self.probe_interval:
            return
        self.last_probe = now
        self.broker_ok = self.probe(self.probe_interval)
        if not self.broker_ok:
            self.last_broker_error = now
            log.warning("the broker did not answer within %.0fs", self.probe_interval)

    def on_kafka_error(self, name: str) -> None:
        if name in BROKER_DOWN:
            self.broker_ok = False
            self.last_broker_error = self.clock()
