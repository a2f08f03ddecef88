"""Hostile input through the fleet and model stages, in process (no broker).

Anybody upstream can send anything on the stream's topic, the label topic and the
deploy topic. Whatever arrives, ``StreamPipeline.process`` does not raise; every
event is accepted or dead-lettered with a reason code and counted
(``events = accepted + rejected`` per topic, in the result and in the metrics); no
event reaches the last-resort ``stage_error`` isolation (a check must catch it with
a proper reason first); and every partition's state still round-trips through a
checkpoint record.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from connectors.kafka import RawBatch
from detectors.label_join import _fnv, hash_ids
from monitor.checkpoints import PartitionCheckpoint
from monitor.config.schema import parse_config
from monitor.dev.fleet_demo import FLEET_FIELDS, fleet_stream
from monitor.dev.model_synthetic import MODEL_STREAM
from monitor.metrics import Metrics
from monitor.pipeline.decode import REASONS
from monitor.pipeline.fleet import FleetStage
from monitor.pipeline.stage import registered_stages
from monitor.pipeline.stream import BatchResult, StreamPipeline
from monitor.runtime.state import decode_state, encode_state

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
NOW = 1_700_000_000.0


# -- a pipeline that checks itself ---------------------------------------------------------


class Harness:
    """A stream's pipeline with its registered stages, fed batch by batch; every
    result's accounting is checked as it comes."""

    def __init__(self, stream: dict[str, Any]) -> None:
        config = parse_config({"kafka": {"bootstrap.servers": "x:1"}, "streams": [stream]}, env={})
        self.spec = config.streams[0]
        self.registry = CollectorRegistry()
        self.pipeline = StreamPipeline(self.spec, Metrics(self.registry), "dlq")
        self.pipeline.stages.extend(registered_stages(self.pipeline))
        self.offsets: dict[tuple[str, int], int] = {}
        self.accepted: dict[str, int] = {}
        self.rejected: dict[str, int] = {}
        self.dead: dict[str, int] = {}  # dead-lettered events by reason (incl. field level)

    def feed(self, topic: str, payloads: Sequence[bytes | None], partition: int = 0) -> BatchResult:
        values = list(payloads)
        n = len(values)
        start = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = start + n
        raw = RawBatch(
            topic,
            values,
            np.full(n, partition, np.int32),
            np.arange(start, start + n, dtype=np.int64),
            [None] * n,
            [-1] * n,
        )
        result = self.pipeline.process(raw)  # never raises
        assert result.events == n == result.accepted + sum(result.rejected.values())
        reasons = [dict(m.headers)["driftwarden.reason"].decode() for m in result.out]
        assert "stage_error" not in reasons, _details(result)
        assert result.stage_errors == 0
        assert set(reasons) <= set(REASONS)
        assert len(result.out) == result.dead_letters  # each once
        event_level = [m for m in result.out if dict(m.headers).get("driftwarden.level") is None]
        assert len(event_level) == sum(result.rejected.values())
        self.accepted[topic] = self.accepted.get(topic, 0) + result.accepted
        self.rejected[topic] = self.rejected.get(topic, 0) + sum(result.rejected.values())
        for r in reasons:
            self.dead[r] = self.dead.get(r, 0) + 1
        return result

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def check_metrics(self) -> None:
        """``driftwarden_events_total`` per topic = accepted + rejected; the invalid
        events counter by reason = what was dead-lettered."""
        name = self.spec.name
        for topic in set(self.accepted) | set(self.rejected):
            events = self.metric("driftwarden_events_total", stream=name, topic=topic)
            assert events == self.accepted[topic] + self.rejected[topic]
        for reason in REASONS:
            counted = self.metric("driftwarden_invalid_events_total", stream=name, reason=reason)
            assert counted == self.dead.get(reason, 0), reason
        assert self.metric("driftwarden_stage_errors_total", stream=name, stage="fleet") == 0
        assert self.metric("driftwarden_stage_errors_total", stream=name, stage="model") == 0

    def check_state(self) -> None:
        """Every partition's state round-trips through a checkpoint record (typed by the
        stages' decoders, it encodes to the same bytes), and a fresh pipeline restored
        from it gives back the same fleet and model states."""
        fresh = StreamPipeline(self.spec, Metrics(CollectorRegistry()), "dlq")
        fresh.stages.extend(registered_stages(fresh))
        for mine, theirs in zip(self.pipeline.stages, fresh.stages, strict=True):
            baseline = mine.baseline_checkpoint()  # restored before partitions, as the runner does
            if baseline is not None:
                theirs.restore_baseline(baseline)
        names = [s.name for s in self.pipeline.stages]
        for topic, partition in sorted(self.pipeline.partition_events):
            state = self.pipeline.partition_state(topic, partition)
            blob = encode_state(PartitionCheckpoint(7, state, at=1.0).to_plain())
            back = PartitionCheckpoint.from_plain(decode_state(blob), fresh.state_decoders)
            assert back.offset == 7 and back.state.events == state.events
            assert encode_state(back.to_plain()) == blob
            fresh.restore_partition(topic, partition, back.state)
            again = fresh.partition_state(topic, partition)
            for i, name in enumerate(names):  # the drift stage's windows need its baseline
                saved, restored = state.stages[i], again.stages[i]
                if name in ("fleet", "model") and saved is not None:
                    assert restored is not None
                    before = encode_state(_by_id(dict(saved.to_plain())))
                    after = encode_state(_by_id(dict(restored.to_plain())))
                    assert before == after, name


def _by_id(plain: dict[str, Any]) -> dict[str, Any]:
    """A fleet state's devices in id order (a restore may give them other slots)."""
    table = plain.get("table")
    if not isinstance(table, dict) or "ids" not in table:
        return plain
    order = sorted(range(len(table["ids"])), key=lambda k: repr(table["ids"][k]))
    arrays = {
        k: v[order] if isinstance(v, np.ndarray) and v.shape[:1] == (len(order),) else v
        for k, v in table["arrays"].items()
    }
    ids = [table["ids"][k] for k in order]
    return plain | {"table": table | {"ids": ids, "arrays": arrays}}


def _details(result: BatchResult) -> list[str]:
    return [dict(m.headers)["driftwarden.detail"].decode()[:300] for m in result.out]


def _payload(doc: Any) -> bytes:
    """JSON as a hostile producer writes it: NaN/Infinity literals allowed."""
    return json.dumps(doc, allow_nan=True).encode()


# -- hostile values ------------------------------------------------------------------------

HUGE_INT = 10**30
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-HUGE_INT, max_value=HUGE_INT),
    st.sampled_from([0, -1, 2**63, -(2**63) - 1, 2**64, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 5e-324, -0.0, 1e-300]),
    st.text(max_size=12),
    st.sampled_from(["", "\u0000", "\ud7ff\U0010ffff", "é" * 3, "x" * 5000]),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(max_size=4), scalars, max_size=2),
)
times = st.one_of(
    st.floats(min_value=NOW - 1e5, max_value=NOW + 1e5),  # mostly plausible
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-HUGE_INT, max_value=HUGE_INT),
    st.sampled_from(
        [
            0,
            -1.0,
            1e18,
            1e300,
            -1e308,
            253402300800.0,
            "2024-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "0001-01-01T00:00:00Z",
            "2024-13-45T99:99:99Z",
            "garbage",
            "",
            None,
            True,
        ]
    ),
)
junk = st.one_of(
    st.binary(max_size=40),
    st.sampled_from(
        [None, b"", b"null", b"[]", b"{}", b"{" * 5000, b'{"a":' + b"[" * 100_000, b"\xff\xfe{}"]
    ),
)


def _maybe(strategy: st.SearchStrategy[Any], good: Any) -> st.SearchStrategy[Any]:
    """Mostly good values (so the stages get past their checks), sometimes hostile."""
    return st.one_of(st.just(good), st.just(good), strategy)


# -- the fleet stage ------------------------------------------------------------------------

entities = st.one_of(
    st.sampled_from([f"dev-{i}" for i in range(12)]),
    st.text(max_size=30),
    st.sampled_from(["", "x" * 2000, "\u0000", "\U0001f600" * 300]),
    scalars,
)


@st.composite
def fleet_events(draw: Callable[..., Any]) -> list[bytes | None]:
    out: list[bytes | None] = []
    for i in range(draw(st.integers(min_value=1, max_value=25))):
        if draw(st.integers(0, 9)) == 0:
            out.append(draw(junk))
            continue
        doc: dict[str, Any] = {
            "device_id": draw(_maybe(entities, f"dev-{i % 7}")),
            "ts": draw(_maybe(times, NOW + i)),
        }
        for f in FLEET_FIELDS:
            doc[f] = draw(_maybe(values, float(i % 5)))
        out.append(_payload(doc))
    return out


def _fleet_stream(**fleet: Any) -> dict[str, Any]:
    stream = fleet_stream(max_entities=40, **fleet)
    stream["max_entities"] = 60  # the decoder's vocabulary overflows too
    stream["baseline"] = {"first_events": 100}
    return stream


@SETTINGS
@given(st.lists(fleet_events(), min_size=1, max_size=4), st.integers(0, 2))
def test_hostile_fleet_events_are_accounted_and_checkpointable(
    batches: list[list[bytes | None]], partitions: int
) -> None:
    h = Harness(_fleet_stream())
    for i, batch in enumerate(batches):
        h.feed("iot.fleet", batch, partition=i % (partitions + 1))
    fleet = next(s for s in h.pipeline.stages if isinstance(s, FleetStage))
    fleet.tick(NOW + 10**7)  # whole partitions gone quiet
    fleet.status()
    h.check_metrics()
    h.check_state()


def _good_fleet(n: int, device: str, t0: float, step: float = 1.0) -> list[bytes | None]:
    return [
        _payload({"device_id": device, "ts": t0 + i * step} | dict.fromkeys(FLEET_FIELDS, 1.0))
        for i in range(n)
    ]


def test_one_device_sending_a_flood_stays_one_device() -> None:
    h = Harness(_fleet_stream())
    for k in range(10):  # 100,000 events of one device
        h.feed("iot.fleet", _good_fleet(10_000, "loud", NOW + k * 10_000.0, step=1.0))
    fleet = next(s for s in h.pipeline.stages if isinstance(s, FleetStage))
    assert fleet.tracked == 1 and fleet.late == 0
    assert h.accepted["iot.fleet"] == 100_000
    h.check_metrics()
    h.check_state()


def test_all_late_and_far_future_events_are_counted_late_not_folded_in() -> None:
    h = Harness(_fleet_stream(allowed_lateness="1m", max_future="1d"))
    h.feed("iot.fleet", _good_fleet(50, "a", NOW))
    fleet = next(s for s in h.pipeline.stages if isinstance(s, FleetStage))
    watermark = fleet.tables[0].watermark
    h.feed("iot.fleet", _good_fleet(200, "b", NOW - 10**6))  # all late
    assert fleet.late == 200
    far = [
        _payload({"device_id": "c", "ts": t} | dict.fromkeys(FLEET_FIELDS, 1.0))
        for t in (NOW + 1e9, 1e300, 1.7e308)
    ]
    result = h.feed("iot.fleet", far)
    # stamped beyond the wall clock + max_future: late, or rejected as an invalid time
    assert fleet.late + result.rejected.get("invalid_time", 0) == 203
    assert fleet.tables[0].watermark == watermark  # a wrong clock moves nothing
    h.check_metrics()
    h.check_state()


# -- the model stage ------------------------------------------------------------------------

BINARY = copy.deepcopy(MODEL_STREAM)
BINARY["window"] = {"events": 200, "step": 50}
BINARY["baseline"] = {"first_events": 100}
BINARY["model"]["deploy_topic"] = "ml.loans.deploys"
BINARY["model"]["quality"]["window"] = {"events": 100, "step": 20}


def _model_stream(prediction: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "m",
        "topic": "inf",
        "event_time": "ts",
        "fields": fields,
        "window": {"events": 200, "step": 50},
        "baseline": {"first_events": 100},
        "max_string_length": 64,
        "max_event_bytes": 50_000,
        "model": {
            "name": "mm",
            "version_field": "v",
            "request_id": "rid",
            "deploy_topic": "dep",
            "labels": {
                "topic": "lab",
                "key": "rid",
                "value": "y",
                "time": "ts",
                "max_delay": "1h",
                "max_pending": 500,
            },
            "prediction": prediction,
            "quality": {
                "metrics": (
                    ["mae", "rmse", "bias"]
                    if prediction.get("task") == "regression"
                    else ["accuracy", "roc_auc", "log_loss", "f1", "ece", "precision", "recall"]
                ),
                "window": {"events": 60, "step": 20},
            },
        },
    }


MULTICLASS = _model_stream(
    {
        "probabilities": [
            {"name": "a", "field": "pa"},
            {"name": "b", "field": "pb"},
            {"name": "c", "field": "pc"},
        ],
        "class_field": "k",
        "positive_class": "a",
    },
    {f: {"type": "float"} for f in ("pa", "pb", "pc")} | {"k": {"type": "category"}},
)
REGRESSION = _model_stream({"task": "regression", "value": "yhat"}, {"yhat": {"type": "float"}})
# kind -> (stream, inference topic, label topic, deploy topic)
MODELS = {
    "binary": (BINARY, "ml.loans.inference", "ml.loans.labels", "ml.loans.deploys"),
    "multiclass": (MULTICLASS, "inf", "lab", "dep"),
    "regression": (REGRESSION, "inf", "lab", "dep"),
}
request_ids = st.one_of(
    st.sampled_from([f"r{i}" for i in range(30)]),  # duplicates on both sides
    st.sampled_from([None, "", 0, -5, 2**64, 10**30, "x" * 100, "\u0000", "é\U0001f600"]),
    scalars,
)


def _inference(kind: str, draw: Callable[..., Any], i: int) -> dict[str, Any]:
    rid = draw(_maybe(request_ids, f"r{i}"))
    if kind == "binary":
        doc = {"request_id": rid, "ts": draw(_maybe(times, NOW + i))}
        doc |= {"x1": draw(_maybe(values, 0.5)), "x2": draw(_maybe(values, -0.5))}
        doc |= {"p_default": draw(_maybe(values, 0.3)), "model_version": draw(_maybe(values, "v1"))}
        return doc
    doc = {"rid": rid, "ts": draw(_maybe(times, NOW + i)), "v": draw(_maybe(values, "v1"))}
    if kind == "multiclass":
        for f, good in (("pa", 0.2), ("pb", 0.5), ("pc", 0.3)):  # maps with missing classes,
            if draw(st.integers(0, 6)):  # sums off 1, outside [0, 1], NaN
                doc[f] = draw(_maybe(values, good))
        doc["k"] = draw(_maybe(values, "b"))
    else:
        doc["yhat"] = draw(_maybe(values, 1.5))
    return doc


def _label(kind: str, draw: Callable[..., Any], i: int) -> dict[str, Any]:
    key, value, time = ("request_id", "defaulted", "ts") if kind == "binary" else ("rid", "y", "ts")
    good = {"binary": 1, "multiclass": "a", "regression": 2.0}[kind]
    doc: dict[str, Any] = {}
    for name, strategy, default in (
        (key, request_ids, f"r{i}"),
        (value, st.one_of(values, st.sampled_from(["a", "b", "zz", 0, 1, 1.0, True, "1"])), good),
        (time, times, NOW + i + 10),
    ):
        if draw(st.integers(0, 12)):  # sometimes missing
            doc[name] = draw(_maybe(strategy, default))
    return doc


@st.composite
def model_batches(draw: Callable[..., Any], kind: str) -> list[tuple[str, list[bytes | None]]]:
    _, inference, labels, deploys = MODELS[kind]
    out: list[tuple[str, list[bytes | None]]] = []
    for b in range(draw(st.integers(min_value=1, max_value=6))):
        which = draw(st.sampled_from(["inference", "labels", "labels", "deploys"]))
        batch: list[bytes | None] = []
        for j in range(draw(st.integers(min_value=1, max_value=20))):
            i = b * 20 + j
            if draw(st.integers(0, 9)) == 0:
                batch.append(draw(junk))
            elif which == "inference":
                batch.append(_payload(_inference(kind, draw, i)))
            elif which == "labels":
                batch.append(_payload(_label(kind, draw, i)))
            else:
                name = "loans" if kind == "binary" else "mm"
                doc = {"model": draw(_maybe(values, name)), "version": draw(_maybe(values, "v2"))}
                batch.append(_payload(doc))
        topic = {"inference": inference, "labels": labels, "deploys": deploys}[which]
        out.append((topic, batch))
    return out


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_hostile_model_events_are_accounted_and_checkpointable(kind: str) -> None:
    @SETTINGS
    @given(model_batches(kind), st.integers(0, 1))
    def run(batches: list[tuple[str, list[bytes | None]]], partitions: int) -> None:
        h = Harness(MODELS[kind][0])
        for i, (topic, batch) in enumerate(batches):
            h.feed(topic, batch, partition=i % (partitions + 1))
        h.check_metrics()
        h.check_state()

    run()


# -- regressions: each input once, with the reason it must get ------------------------------


def _one(h: Harness, topic: str, payload: bytes) -> str | None:
    result = h.feed(topic, [payload])
    assert len(result.out) <= 1
    return dict(result.out[0].headers)["driftwarden.reason"].decode() if result.out else None


def test_a_regression_label_that_is_not_a_number_is_rejected_wrong_type() -> None:
    h = Harness(REGRESSION)
    for value in ("abc", "1.5", True):
        reason = _one(h, "lab", _payload({"rid": "r1", "ts": NOW, "y": value}))
        assert reason == "wrong_type"
    huge = b'{"rid":"r1","ts":1,"y":1' + b"0" * 400 + b"}"
    assert _one(h, "lab", huge) == "number_too_large"
    assert _one(h, "lab", _payload({"rid": "r1", "ts": NOW, "y": 2})) is None
    h.check_metrics()


def test_deeply_nested_label_and_deploy_events_are_rejected_too_deep() -> None:
    h = Harness(MULTICLASS | {"max_event_bytes": 1_000_000})
    deep = b'{"rid":"r","ts":1,"y":"a","extra":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert _one(h, "lab", deep) == "too_deep"
    deploy = b'{"model":"mm","version":"v","x":' + b'{"a":' * 100_000 + b"1" + b"}" * 100_001
    assert _one(h, "dep", deploy) == "too_deep"
    h.check_metrics()


def test_oversized_label_and_deploy_events_are_rejected_too_large() -> None:
    h = Harness(MULTICLASS)  # max_event_bytes 50,000
    padding = "p" * 60_000
    assert _one(h, "lab", _payload({"rid": "r", "ts": 1, "y": "a", "pad": padding})) == "too_large"
    assert _one(h, "dep", _payload({"model": "mm", "version": "v", "pad": padding})) == "too_large"
    h.check_metrics()


def test_overlong_ids_classes_and_versions_are_rejected_string_too_long() -> None:
    h = Harness(MULTICLASS)  # max_string_length 64
    long = "L" * 65
    assert _one(h, "lab", _payload({"rid": long, "ts": 1, "y": "a"})) == "string_too_long"
    assert _one(h, "lab", _payload({"rid": "r", "ts": 1, "y": long})) == "string_too_long"
    assert _one(h, "dep", _payload({"model": "mm", "version": long})) == "string_too_long"
    assert _one(h, "lab", _payload({"rid": "L" * 64, "ts": 1, "y": "a"})) is None
    model = h.pipeline.stages[0]
    assert long not in model.classes.codes and long not in model.versions.codes  # type: ignore[attr-defined]
    h.check_metrics()


def test_request_ids_hash_as_before_and_one_huge_id_costs_its_own_length() -> None:
    def padded(ids: list[Any]) -> Any:  # the fixed-width hashing hash_ids replaced
        arr = np.asarray([str(i) for i in ids], dtype=np.str_)
        width = max(arr.dtype.itemsize // 4, 1)
        return _fnv(np.ascontiguousarray(arr).view(np.uint32).reshape(arr.size, width))

    rng = np.random.default_rng(3)
    for ids in (
        ["a", "b", "", "a\u0000b", "\U0001f600x", "é"],
        [f"req-{int(i)}" for i in rng.integers(0, 10**9, 500)],
        [5, "5", -3, 2**64, ""],
    ):
        assert hash_ids(ids).tolist() == padded(ids).tolist()
    # 10,000 ids and one of 4 M characters: the padded array would be 160 GB
    ids = [f"req-{i}" for i in range(10_000)] + ["x" * 4_000_000]
    out = hash_ids(ids)
    assert out.shape == (10_001,) and out[0] == hash_ids(["req-0"])[0]


def test_a_huge_version_in_a_batch_of_predictions_does_not_widen_every_row() -> None:
    h = Harness(MULTICLASS | {"max_event_bytes": 2_000_000})
    rows = [
        _payload(
            {"rid": f"r{i}", "ts": NOW + i, "v": "v1", "pa": 0.2, "pb": 0.5, "pc": 0.3, "k": "a"}
        )
        for i in range(2000)
    ]
    big = {"rid": "big", "ts": NOW, "v": "V" * 1_000_000, "pa": 0.2, "pb": 0.5, "pc": 0.3, "k": "a"}
    rows.append(_payload(big))
    result = h.feed("inf", rows)  # a fixed-width array would be 8 GB
    assert result.accepted == 2001
    h.check_metrics()


def test_probabilities_outside_the_simplex_and_nan_scores_keep_quality_finite_or_nan() -> None:
    h = Harness(MULTICLASS)
    probs = [(0.2, 0.5, 0.3), (5.0, -1.0, 0.0), (None, None, None), (1e308, 1e308, 1e308)]
    rows: list[bytes | None] = []
    for i in range(120):
        pa, pb, pc = probs[i % len(probs)]
        doc = {"rid": f"r{i}", "ts": NOW + i, "v": "v1", "pa": pa, "pb": pb, "pc": pc, "k": "a"}
        rows.append(_payload(doc))
    h.feed("inf", rows)
    labels = [_payload({"rid": f"r{i}", "ts": NOW + i + 1, "y": "abc"[i % 3]}) for i in range(120)]
    h.feed("lab", labels)
    assert h.pipeline.stages[0].join_counts()["joined"] == 120  # type: ignore[attr-defined]
    h.check_metrics()
    h.check_state()


def test_label_times_far_in_the_past_or_future_do_not_fail_the_join() -> None:
    h = Harness(REGRESSION)
    h.feed("inf", [_payload({"rid": f"r{i}", "ts": NOW + i, "yhat": 1.0}) for i in range(50)])
    stamps = [-1e308, 1e308, 0, -1, 2**63, NOW]
    h.feed("lab", [_payload({"rid": f"r{i}", "ts": t, "y": 1.0}) for i, t in enumerate(stamps)])
    counts = h.pipeline.stages[0].join_counts()  # type: ignore[attr-defined]
    assert all(math.isfinite(v) for v in counts.values())
    h.check_metrics()
    h.check_state()


def test_an_entity_integer_outside_int64_is_rejected_and_the_state_stays_checkpointable() -> None:
    h = Harness(_fleet_stream())
    doc = dict.fromkeys(FLEET_FIELDS, 1.0) | {"ts": NOW}
    for device in (-(2**63) - 1, 2**63, 2**64, 10**30):
        assert _one(h, "iot.fleet", _payload(doc | {"device_id": device})) == "number_too_large"
    for device in (-(2**63), 2**63 - 1, 7):  # int64 ids are devices
        assert _one(h, "iot.fleet", _payload(doc | {"device_id": device})) is None
    fleet = next(s for s in h.pipeline.stages if isinstance(s, FleetStage))
    assert fleet.tracked == 3
    h.check_metrics()
    h.check_state()


def test_a_baseline_of_values_near_the_float_max_has_a_finite_mean_and_sd() -> None:
    from detectors.baseline import build_numeric

    x = np.array([1e308, 1.5e308, -1e308, 1.7e308, 0.0])
    base = build_numeric(x)
    scaled = x / 1e308
    assert base.mean == pytest.approx(scaled.mean() * 1e308, rel=1e-12)
    assert base.std == pytest.approx(scaled.std() * 1e308, rel=1e-12)
    small = np.array([1.0, 2.0, 4.0])  # the usual path is unchanged
    assert build_numeric(small).mean == small.mean() and build_numeric(small).std == small.std()


def test_a_new_version_per_event_is_capped_at_max_versions() -> None:
    stream = copy.deepcopy(BINARY)
    stream["model"]["max_versions"] = 5
    stream["model"]["versions"] = []
    h = Harness(stream)
    rows = [
        _payload(
            {"request_id": f"r{i}", "ts": NOW + i, "x1": 0.1, "x2": 0.2, "p_default": 0.3}
            | {"model_version": 10**12 + i}  # every event a new version
        )
        for i in range(2000)
    ]
    for k in range(0, 2000, 500):
        h.feed("ml.loans.inference", rows[k : k + 500])
    h.feed("ml.loans.deploys", [_payload({"model": "loans", "version": "v-new"})])
    model = h.pipeline.stages[0]
    names = model.versions.names  # type: ignore[attr-defined]
    assert len(names) == 6 and names[-1] == "other"
    assert "v-new" not in names
    hits = h.metric("driftwarden_limit_hits_total", stream="loans-model", limit="max_versions")
    assert hits == 2000 - 5 + 1
    rings = model.partition_state(0).predicted  # type: ignore[union-attr]
    assert sorted(rings) == sorted(names)
    h.check_metrics()
    h.check_state()


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_empty_batches_on_every_topic(kind: str) -> None:
    stream, *topics = MODELS[kind]
    h = Harness(stream)
    for topic in topics:
        assert h.feed(topic, []).events == 0
    f = Harness(_fleet_stream())
    assert f.feed("iot.fleet", []).events == 0
    h.check_metrics()
    h.check_state()


def test_one_far_future_label_or_prediction_does_not_expire_every_pending_join() -> None:
    h = Harness(REGRESSION)
    h.feed("inf", [_payload({"rid": f"r{i}", "ts": NOW + i, "yhat": 1.0}) for i in range(50)])
    assert _one(h, "lab", _payload({"rid": "zzz", "ts": 1e300, "y": 1.0})) == "invalid_time"
    h.feed("inf", [_payload({"rid": "yyy", "ts": 1e300, "yhat": 1.0})])  # accepted, not joined
    h.feed("lab", [_payload({"rid": f"r{i}", "ts": NOW + i + 5, "y": 1.0}) for i in range(50)])
    counts = h.pipeline.stages[0].join_counts()  # type: ignore[attr-defined]
    assert counts["joined"] == 50 and counts["expired"] == counts["late"] == 0
    hits = h.metric("driftwarden_limit_hits_total", stream="m", limit="max_future")
    assert hits == 1
    h.check_metrics()
    h.check_state()


def test_labels_and_predicted_classes_of_ever_new_names_do_not_grow_the_classes() -> None:
    h = Harness(MULTICLASS | {"max_categories": 10})
    rows = [
        _payload(
            {"rid": f"r{i}", "ts": NOW + i, "v": "v1", "pa": 0.2, "pb": 0.5, "pc": 0.3}
            | {"k": f"class-{i}"}  # every prediction a new class
        )
        for i in range(300)
    ]
    h.feed("inf", rows)
    h.feed(
        "lab", [_payload({"rid": f"r{i}", "ts": NOW + i + 1, "y": f"y-{i}"}) for i in range(300)]
    )
    model = h.pipeline.stages[0]
    assert len(model.classes.names) == 10  # type: ignore[attr-defined]
    assert model.join_counts()["joined"] == 300  # type: ignore[attr-defined]
    binary = Harness(BINARY)  # positive or not: labels need no vocabulary at all
    labels = [
        _payload({"request_id": f"r{i}", "ts": NOW + i, "defaulted": f"label-{i}"})
        for i in range(300)
    ]
    binary.feed("ml.loans.labels", labels)
    assert len(binary.pipeline.stages[0].classes.names) == 1  # type: ignore[attr-defined]
    h.check_metrics()
    h.check_state()
    binary.check_state()


def test_inference_events_the_join_cannot_read_are_counted() -> None:
    """Accepted by the stream (drift counts them), but without a readable request id the
    join cannot use them: counted as ``unusable_predictions`` and dead-lettered once,
    with the field and the reason (field level: the event still counts), never
    silently skipped."""
    h = Harness(REGRESSION)
    good = {"rid": "r1", "ts": NOW, "v": "1", "yhat": 0.5}
    missing = {"ts": NOW, "v": "1", "yhat": 0.5}
    wrong = missing | {"rid": None}
    result = h.feed("inf", [_payload(good), _payload(missing), _payload(wrong)])
    assert result.accepted == 3
    outcome = {"stream": "m", "model": "mm", "outcome": "unusable_predictions"}
    assert h.registry.get_sample_value("driftwarden_model_labels_total", outcome) == 2.0
    letters = [dict(m.headers) for m in result.out]
    assert [int(d["driftwarden.offset"]) for d in letters] == [1, 2]
    assert [d["driftwarden.violations"] for d in letters] == [
        b"rid:missing_field",
        b"rid:wrong_type",
    ]
    assert all(d["driftwarden.level"] == b"field" for d in letters)
    assert result.violations == {"missing_field": 1, "wrong_type": 1}
    for reason in ("missing_field", "wrong_type"):
        labels = {"stream": "m", "field": "rid", "reason": reason}
        assert h.metric("driftwarden_field_violations_total", **labels) == 1.0
    h.check_metrics()
