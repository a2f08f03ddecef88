"""The webhook dispatcher on a fake transport and a fake clock (no sleeping)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

import pytest

from connectors.webhook import Delivery, Endpoint, RetryPolicy, WebhookDispatcher, WebhookObserver

from .conftest import FakeClock, FakeTransport


@dataclass
class RecordingObserver(WebhookObserver):
    events: list[tuple[str, str, float]] = field(default_factory=list)

    def on_sent(self, sink: str, latency_s: float) -> None:
        self.events.append(("sent", sink, latency_s))

    def on_failed(self, sink: str, reason: str) -> None:
        self.events.append(("failed:" + reason, sink, 0.0))

    def on_queued(self, sink: str, depth: int) -> None:
        self.events.append(("queued", sink, float(depth)))

    def on_dropped(self, sink: str) -> None:
        self.events.append(("dropped", sink, 0.0))

    def count(self, kind: str) -> int:
        return sum(1 for e in self.events if e[0].startswith(kind))


def delivery(
    i: int, status: str = "firing", sink: str = "hook", severity: str = "warning"
) -> Delivery:
    body = json.dumps({"id": f"a{i}", "status": status}).encode()
    return Delivery(sink, f"a{i}", f"a{i}:{status}", severity, body)


def make(
    clock: FakeClock,
    transport: FakeTransport,
    observer: WebhookObserver | None = None,
    max_queue: int = 100,
    retry: RetryPolicy | None = None,
    seed: int = 7,
) -> WebhookDispatcher:
    eps = [
        Endpoint("hook", "http://127.0.0.1:9/hook?token=SECRET", max_queue=max_queue),
        Endpoint("pager", "http://127.0.0.1:9/pd", min_severity="critical"),
    ]
    return WebhookDispatcher(
        eps,
        transport=transport,
        observer=observer,
        retry=retry or RetryPolicy(backoff_initial=1.0, backoff_max=8.0),
        rng=random.Random(seed),
        clock=clock,
        wall_clock=lambda: 1.7e9,
    )


def test_retries_follow_full_jitter_backoff(clock: FakeClock, transport: FakeTransport) -> None:
    transport.status = 503
    transport.latency = 0.0
    obs = RecordingObserver()
    d = make(clock, transport, obs)
    d.submit(delivery(1))
    for _ in range(2000):  # 20 s in 10 ms steps
        d.pump()
        clock.t += 0.01
    gaps = [b - a for a, b in zip(transport.attempts, transport.attempts[1:], strict=False)]
    rng = random.Random(7)
    caps = [min(8.0, 2.0 ** min(n, 62)) for n in range(len(gaps))]
    expected = [rng.uniform(0, cap) for cap in caps]
    assert len(gaps) >= 5
    for gap, want in zip(gaps, expected, strict=True):
        assert want <= gap < want + 0.011  # the pump's 10 ms resolution
    assert obs.count("failed:http 503") == len(transport.attempts)
    assert d.pending("hook") == 1


def test_dead_webhook_for_60s_then_everything_arrives_once(
    clock: FakeClock, transport: FakeTransport
) -> None:
    obs = RecordingObserver()
    d = make(clock, transport, obs)
    transport.up = False
    start = clock.t
    sent: list[Delivery] = []
    i = 0
    while clock.t < start + 60.0:  # alerts keep coming while the webhook is dead
        if i < 20:
            for status in ("firing", "resolved"):
                sent.append(delivery(i, status))
                assert d.submit(sent[-1])
            i += 1
        d.pump()
        clock.t += 0.25
    assert transport.posts == []
    assert d.pending("hook") == 40
    assert obs.count("failed:connection") == len(transport.attempts) >= 5
    # a crash-and-replay re-submits some of them: ignored while queued
    assert not d.submit(delivery(3, "firing"))
    transport.up = True
    for _ in range(400):  # at most the 8 s backoff cap plus some
        d.pump()
        clock.t += 0.05
    got = [json.loads(b) for _, b, _, _ in transport.posts]
    assert [(g["id"], g["status"]) for g in got] == [
        (s.alert_id, json.loads(s.body)["status"]) for s in sent
    ]  # each once, in order: a resolved never overtakes its firing
    assert d.pending() == 0
    assert obs.count("sent") == 40
    assert not d.submit(delivery(3, "firing"))  # recently delivered: not again


def test_queue_bounded_oldest_kept_overflow_reported(
    clock: FakeClock, transport: FakeTransport
) -> None:
    obs = RecordingObserver()
    d = make(clock, transport, obs, max_queue=3)
    results = [d.submit(delivery(i)) for i in range(5)]
    assert results == [True, True, True, False, False]
    assert d.dropped("hook") == 2
    assert obs.count("dropped") == 2
    assert [e[2] for e in obs.events if e[0] == "queued"] == [1.0, 2.0, 3.0]
    d.pump()
    assert [json.loads(b)["id"] for _, b, _, _ in transport.posts] == ["a0", "a1", "a2"]


def test_min_severity_filters(clock: FakeClock, transport: FakeTransport) -> None:
    d = make(clock, transport)
    assert not d.submit(delivery(1, sink="pager", severity="warning"))
    assert d.submit(delivery(2, sink="pager", severity="critical"))
    with pytest.raises(KeyError, match="unknown sink"):
        d.submit(delivery(3, sink="nope"))


def test_permanent_failure_dropped_and_reported(clock: FakeClock, transport: FakeTransport) -> None:
    obs = RecordingObserver()
    d = make(clock, transport, obs)
    transport.status = 400
    d.submit(delivery(1))
    d.submit(delivery(2))
    assert d.pump() == 0
    assert d.pending() == 0
    assert obs.count("dropped") == 2
    assert obs.count("failed:http 400 (gave up)") == 2


def test_max_attempts_gives_up(clock: FakeClock, transport: FakeTransport) -> None:
    obs = RecordingObserver()
    d = make(clock, transport, obs, retry=RetryPolicy(0.1, 0.1, max_attempts=3))
    transport.status = 500
    d.submit(delivery(1))
    for _ in range(100):
        d.pump()
        clock.t += 0.05
    assert len(transport.attempts) == 3
    assert d.pending() == 0
    assert obs.count("dropped") == 1


def test_state_round_trip_survives_restart(clock: FakeClock, transport: FakeTransport) -> None:
    d = make(clock, transport)
    transport.up = False
    for i in range(3):
        d.submit(delivery(i))
    d.pump()
    d.submit(delivery(9, "resolved"))
    state = json.loads(json.dumps(d.state()))
    assert "SECRET" not in json.dumps(state)  # URLs are configuration, not state
    transport.up = True
    fresh = make(clock, transport)
    fresh.restore(state)
    assert fresh.pending("hook") == 4
    assert fresh.pump() == 4
    assert [json.loads(b)["id"] for _, b, _, _ in transport.posts] == ["a0", "a1", "a2", "a9"]
    again = make(clock, transport)
    again.restore(fresh.state())
    assert not again.submit(delivery(1))  # delivered keys are remembered
    with pytest.raises(ValueError, match="version"):
        again.restore({"version": 99})


def test_finalize_runs_at_send_time(clock: FakeClock, transport: FakeTransport) -> None:
    calls: list[float] = []

    def finalize(body: bytes, headers: object, wall: float) -> tuple[bytes, dict[str, str]]:
        calls.append(wall)
        return body + b" ", {"X-Secret-Sig": "sig"}

    d = WebhookDispatcher(
        [Endpoint("hook", "http://127.0.0.1:9/", finalize=finalize)],
        transport=transport,
        clock=clock,
        wall_clock=lambda: 42.0,
    )
    d.submit(delivery(1))
    assert "X-Secret-Sig" not in json.dumps(d.state())
    d.pump()
    assert calls == [42.0]
    assert transport.posts[0][2] == {"X-Secret-Sig": "sig"}
    assert transport.posts[0][1].endswith(b" ")
