"""Fixtures for the alert tests: findings, a fake transport and clock, a real receiver."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import pytest

from detectors.base import Finding, WindowBounds
from tests.alerts_utils import Receiver
from tests.alerts_utils import receiver as receive

MakeFinding = Callable[..., Finding]


@pytest.fixture
def finding() -> MakeFinding:
    """``finding(drift, offset, subject=..., stream=..., detector=..., statistic=...)``."""

    def make(
        drift: bool,
        offset: int = 999,
        subject: str = "temperature",
        stream: str = "sensors",
        detector: str = "ks",
        statistic: float | None = None,
        partition: int | None = 0,
        kind: str = "field",
    ) -> Finding:
        stat = statistic if statistic is not None else (0.3 if drift else 0.01)
        window = WindowBounds(
            events=1000,
            first_offset=offset - 999,
            last_offset=offset,
            start_time=1.7e9 + offset - 999,
            end_time=1.7e9 + offset,
            partition=partition,
        )
        return Finding(
            detector=detector,
            subject=subject,
            statistic=stat,
            threshold=0.1,
            drift=drift,
            p_value=0.001 if drift else 0.5,
            kind=kind,
            stream=stream,
            window=window,
            baseline_id="sensors-v1",
        )

    return make


@dataclass
class FakeClock:
    t: float = 1000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class FakeTransport:
    """Records posts; ``up`` False raises a connection error, ``status`` overrides."""

    clock: FakeClock
    up: bool = True
    status: int = 200
    latency: float = 0.01
    posts: list[tuple[str, bytes, dict[str, str], float]] = field(default_factory=list)
    attempts: list[float] = field(default_factory=list)

    def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
        self.attempts.append(self.clock.t)
        self.clock.t += self.latency
        if not self.up:
            raise ConnectionRefusedError("down")
        if 200 <= self.status < 300:
            self.posts.append((url, body, dict(headers), timeout))
        return self.status


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def transport(clock: FakeClock) -> FakeTransport:
    return FakeTransport(clock)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A real HTTP server on 127.0.0.1 recording every POST (tests.alerts_utils)."""
    with receive() as r:
        yield r
