"""Alert state per stream: the judge of a stream checkpoints and continues its part."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from monitor.alerting.dispatch import AlertingHandler
from monitor.checkpoints import AlertState
from monitor.config.alerts import load_alerts_config
from monitor.metrics import Metrics

from .conftest import MakeFinding


@pytest.fixture
def handlers() -> Iterator[tuple[AlertingHandler, AlertingHandler]]:
    config = load_alerts_config({"resolve_after": 2, "topic": "alerts"})
    made = [AlertingHandler(config, Metrics(CollectorRegistry()), {}) for _ in range(2)]
    try:
        yield made[0], made[1]
    finally:
        for h in made:
            h.close()


def _alerts(out: list[object]) -> list[tuple[str, str, str]]:
    docs = [json.loads(m.value) for m in out]  # type: ignore[attr-defined]
    return [(d["stream"], d["status"], d["id"]) for d in docs]


def test_a_stream_continues_elsewhere_under_its_ids(
    handlers: tuple[AlertingHandler, AlertingHandler], finding: MakeFinding
) -> None:
    first, second = handlers
    fired = _alerts(first.handle([finding(True, stream="a"), finding(True, stream="b")], 1.7e9))
    assert sorted(s for s, status, _ in fired if status == "firing") == ["a", "b"]
    b_id = next(i for s, _, i in fired if s == "b")
    saved = first.state("b")
    assert [i["stream"] for i in saved.engine["incidents"]] == ["b"]
    # A checkpoint survives the state topic's encoding as plain values.
    second.restore("b", AlertState.from_plain(json.loads(json.dumps(saved.to_plain()))))
    first.release("b")
    assert [i["stream"] for i in first.state("a").engine["incidents"]] == ["a"]
    assert first.state("b").engine["incidents"] == []
    # The new judge resolves the episode under its id, and fires nothing new.
    out = []
    for t in (1.7e9 + 1, 1.7e9 + 2):
        out += _alerts(second.handle([finding(False, stream="b")], t))
    assert out == [("b", "resolved", b_id)]


def test_state_written_for_every_stream_at_once_is_read_per_stream(
    handlers: tuple[AlertingHandler, AlertingHandler], finding: MakeFinding
) -> None:
    first, second = handlers
    first.handle([finding(True, stream="a"), finding(True, stream="b")], 1.7e9)
    whole = AlertState(first.engine.state(), first.dispatcher.state())  # earlier versions
    second.restore("a", whole)
    assert [i["stream"] for i in second.state("a").engine["incidents"]] == ["a"]
    assert second.state("b").engine["incidents"] == []
