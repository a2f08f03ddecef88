"""The model stage in a pipeline: joins, quality equal to scikit-learn, restart, config."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from sklearn import metrics as skm

from connectors.kafka import RawBatch
from detectors.base import Finding
from monitor.config.schema import parse_config
from monitor.dev.model_synthetic import (
    MODEL_STREAM,
    ModelEvents,
    generate_model_events,
    reference_rows,
)
from monitor.errors import ConfigError
from monitor.metrics import Metrics
from monitor.pipeline.model import ModelStage
from monitor.pipeline.stage import registered_stages
from monitor.pipeline.stream import BatchResult, StreamPipeline

PARTS = 2


def _stream(tmp_path: Path, **quality: Any) -> dict[str, Any]:
    ref = tmp_path / "ref.jsonl"
    if not ref.exists():
        ref.write_bytes(b"\n".join(reference_rows(20_000, seed=5)) + b"\n")
    stream = copy.deepcopy(MODEL_STREAM)
    stream["model"]["reference"] = {"file": str(ref)}
    stream["model"]["quality"].update(quality)
    return stream


def _pipeline(stream: dict[str, Any], registry: CollectorRegistry | None = None) -> StreamPipeline:
    config = parse_config({"kafka": {"bootstrap.servers": "x:1"}, "streams": [stream]}, env={})
    pipeline = StreamPipeline(config.streams[0], Metrics(registry), "dlq")
    pipeline.stages.extend(registered_stages(pipeline))
    return pipeline


def _batches(n: int, seed: int, size: int = 700, drift_at: int | None = None) -> list[RawBatch]:
    return _batches_of(generate_model_events(n, seed=seed, drift_at=drift_at), size)


def _partition_sequences(ev: ModelEvents, parts: int, size: int) -> list[list[RawBatch]]:
    """Per (topic, partition), inference topic first: its batches of ``size`` in offset
    order (key hash = partition)."""
    out = []
    for topic, values, keys in (
        ("ml.loans.inference", ev.inference, ev.inference_keys),
        ("ml.loans.labels", ev.labels, ev.label_keys),
    ):
        part = np.array([int(k.rsplit(b"-", 1)[1]) % parts for k in keys], np.int32)
        for p in range(parts):
            idx = np.flatnonzero(part == p)
            out.append(
                [
                    RawBatch(
                        topic=topic,
                        values=[values[i] for i in c.tolist()],
                        partitions=np.full(c.size, p, np.int32),
                        offsets=np.arange(start, start + c.size, dtype=np.int64),
                        keys=[keys[i] for i in c.tolist()],
                        timestamps=[1_700_000_000_000] * c.size,
                    )
                    for start in range(0, idx.size, size)
                    for c in (idx[start : start + size],)
                ]
            )
    return out


def _batches_of(ev: ModelEvents, size: int = 700) -> list[RawBatch]:
    """Both topics cut into batches per partition (key hash = partition), interleaved."""
    out: list[RawBatch] = []
    streams = _partition_sequences(ev, PARTS, size)
    # predictions run ahead of labels by a few batches, as in production
    for i in range(max(len(s) for s in streams) + 3):
        for j, s in enumerate(streams):
            k = i - (3 if j >= PARTS else 0)
            if 0 <= k < len(s):
                out.append(s[k])
    return out


def _model(p: StreamPipeline) -> ModelStage:
    stage = p.stages[0]
    assert isinstance(stage, ModelStage)
    return stage


def test_joins_quality_and_metrics_equal_sklearn(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    stream = _stream(tmp_path, window={"events": 10_000, "step": 1000})
    pipeline = _pipeline(stream, registry)
    n = 9000
    results: list[BatchResult] = [pipeline.process(b) for b in _batches(n, seed=3)]
    stage = _model(pipeline)
    ev = generate_model_events(n, seed=3)
    counts = stage.join_counts()
    n_labels = len(ev.labels)
    assert counts["joined"] + counts["duplicate_labels"] == n_labels
    assert counts["joined"] == len(set(ev.label_keys))
    assert sum(r.rejected.get("invalid_json", 0) for r in results) == 0
    # the last realized accuracy verdict covers every joined event: equal to sklearn
    joined = sorted({int(k.rsplit(b"-", 1)[1]) for k in ev.label_keys})
    truth, score = ev.truth[joined], ev.score[joined]
    now = stage.evaluate()
    acc = [f for f in now if f.subject.endswith(":accuracy") and f.detector == "quality"]
    assert acc[-1].window.events == len(joined)
    # the window's event-time bounds are its predictions' (1.8e9 + index / 100 s)
    assert acc[-1].window.start_time == pytest.approx(1.8e9 + joined[0] / 100)
    assert acc[-1].window.end_time == pytest.approx(1.8e9 + joined[-1] / 100)
    details = dict(acc[-1].details)
    assert details["value"] == pytest.approx(skm.accuracy_score(truth, score >= 0.5), abs=1e-12)
    auc = [f for f in now if f.subject.endswith(":roc_auc")][-1]
    assert dict(auc.details)["value"] == pytest.approx(skm.roc_auc_score(truth, score), abs=1e-12)
    gauge = registry.get_sample_value(
        "driftwarden_model_quality",
        {"stream": "loans-model", "model": "loans", "version": "1", "metric": "log_loss",
         "source": "realized"},
    )  # fmt: skip
    assert gauge == pytest.approx(skm.log_loss(truth, score), abs=1e-9)
    got = registry.get_sample_value(
        "driftwarden_model_labels_total",
        {"stream": "loans-model", "model": "loans", "outcome": "joined"},
    )
    assert got == counts["joined"]
    assert not any(f.drift for f in stage.findings_log)  # stationary: no quality alert


def _run(pipeline: StreamPipeline, batches: list[RawBatch]) -> list[Finding]:
    out: list[Finding] = []
    for b in batches:
        out.extend(pipeline.process(b).findings)
    return out


def _key(f: Finding) -> tuple[Any, ...]:
    return (f.detector, f.subject, f.window.events, f.drift, round(f.statistic, 12))


def test_restart_with_pending_predictions_equals_uninterrupted_run(tmp_path: Path) -> None:
    stream = _stream(tmp_path)
    batches = _batches(8000, seed=4)
    whole = _pipeline(stream)
    want = _run(whole, batches)
    cut = len(batches) // 2
    first = _pipeline(stream)
    got = _run(first, batches[:cut])
    assert _model(first).join_counts()["joined"] < _model(whole).join_counts()["joined"]
    # checkpoint every (topic, partition) the first process saw, with its next offset
    saved = {}
    for b in batches[:cut]:
        saved[(b.topic, int(b.partitions[0]))] = int(b.offsets[-1]) + 1
    states = {k: first.partition_state(*k) for k in saved}
    assert sum(_model(first)._parts[p].join.pending for p in range(PARTS)) > 0
    second = _pipeline(stream)
    for (topic, p), st in states.items():
        second.drop_partition(topic, p)
        second.restore_partition(topic, p, st)
    # Kafka redelivers from the checkpointed offsets; one batch more is replayed here
    # to check that replays are skipped by offset (the drift stage has no such guard,
    # so only the model's findings are compared)
    got += _run(second, [batches[cut - 1], *batches[cut:]])
    assert _model(second).join_counts() == _model(whole).join_counts()

    def model_keys(findings: list[Finding]) -> list[tuple[Any, ...]]:
        # the feature ranking reads the drift stage's windows, which the extra replay changes
        return [_key(f) for f in findings if f.kind == "model" and f.detector != "feature_drift"]

    model_got = model_keys(got)
    assert model_got == model_keys(want)
    assert len(model_got) > 20


def test_older_label_checkpoint_is_replayed_without_double_counting(tmp_path: Path) -> None:
    stream = _stream(tmp_path)
    batches = _batches(6000, seed=6)
    whole = _pipeline(stream)
    _run(whole, batches)
    cut = len(batches) // 2
    first = _pipeline(stream)
    _run(first, batches[:cut])
    new_state = first.partition_state("ml.loans.inference", 0)
    # the label checkpoint of partition 0 is from an earlier call: restore both
    early = _pipeline(stream)
    _run(early, batches[: cut - 6])
    old_state = early.partition_state("ml.loans.labels", 0)
    second = _pipeline(stream)
    second.restore_partition("ml.loans.inference", 0, new_state)
    second.restore_partition("ml.loans.labels", 0, old_state)
    second.restore_partition(
        "ml.loans.inference", 1, first.partition_state("ml.loans.inference", 1)
    )
    second.restore_partition("ml.loans.labels", 1, first.partition_state("ml.loans.labels", 1))
    # Kafka replays partition 0's labels from the older checkpoint's offsets
    replay = [
        b for b in batches[cut - 6 : cut] if b.topic == "ml.loans.labels" and b.partitions[0] == 0
    ]
    _run(second, [*replay, *batches[cut:]])
    assert _model(second).join_counts() == _model(whole).join_counts()


def test_covariate_shift_estimated_then_realized_drop(tmp_path: Path) -> None:
    stream = _stream(tmp_path)
    pipeline = _pipeline(stream)
    findings = _run(pipeline, _batches(30_000, seed=8, drift_at=12_000, size=1000))
    first: dict[str, int] = {}
    for i, f in enumerate(findings):
        if f.drift:
            first.setdefault(f.detector if f.kind == "model" else "input", i)
    assert {"input", "cbpe", "quality"} <= set(first), first
    assert first["input"] < first["quality"] and first["cbpe"] < first["quality"]
    err = [
        dict(f.details)["estimate_error"] for f in findings if "estimate_error" in dict(f.details)
    ]
    assert max(abs(e) for e in err) < 0.03  # CBPE vs realized on the same window
    ranking = [f for f in findings if f.detector == "feature_drift"][-1]
    assert [name for name, _ in ranking.details][:2] in (["x1", "x2"], ["x2", "x1"])
    assert ranking.statistic == 2.0


def test_bad_labels_are_dead_lettered(tmp_path: Path) -> None:
    pipeline = _pipeline(_stream(tmp_path))
    raw = RawBatch(
        topic="ml.loans.labels",
        values=[
            b"{nope",
            b'{"request_id": "a", "ts": 1.0}',
            b'{"request_id":"b","ts":2,"defaulted":1}',
        ],
        partitions=np.zeros(3, np.int32),
        offsets=np.arange(3, dtype=np.int64),
        keys=(_keys := [b"k"] * 3),
        timestamps=[1_700_000_000_000] * len(_keys),
    )
    result = pipeline.process(raw)
    assert result.rejected == {"invalid_json": 1, "missing_field": 1}
    assert [m.topic for m in result.out] == ["dlq", "dlq"]
    assert _model(pipeline).join_counts()["joined"] == 0


def test_config_is_typed_and_validated(tmp_path: Path) -> None:
    stream = _stream(tmp_path)
    bad = copy.deepcopy(stream)
    bad["model"]["labels"]["colour"] = "red"
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config({"kafka": {"bootstrap.servers": "x:1"}, "streams": [bad]}, env={})
    bad = copy.deepcopy(stream)
    bad["model"]["quality"]["metrics"] = ["mae"]
    with pytest.raises(ConfigError, match="do not apply to classification"):
        parse_config({"kafka": {"bootstrap.servers": "x:1"}, "streams": [bad]}, env={})
    bad = copy.deepcopy(stream)
    del bad["event_time"]
    with pytest.raises(ConfigError, match="needs event_time"):
        parse_config({"kafka": {"bootstrap.servers": "x:1"}, "streams": [bad]}, env={})
    config = parse_config({"kafka": {"bootstrap.servers": "x:1"}, "streams": [stream]}, env={})
    spec = config.streams[0]
    assert spec.all_topics == ("ml.loans.inference", "ml.loans.labels")
    assert spec.model is not None and spec.model.labels is not None
    assert spec.model.labels.max_delay == 3600.0
    assert math.isclose(spec.model.quality.min_drop, 0.02)


def test_a_new_version_switches_baseline_and_reference_and_starts_fresh(tmp_path: Path) -> None:
    stream = _stream(tmp_path)
    ref2 = tmp_path / "ref-v2.jsonl"
    ref2.write_bytes(b"\n".join(reference_rows(20_000, seed=6, shifted=True, version="2")))
    stream["model"]["versions"] = [{"version": "2", "reference": {"file": str(ref2), "id": "v2"}}]
    # version 1 on its own inputs, then version 2 (trained on the shifted inputs) serving them
    v1 = generate_model_events(8000, seed=1)
    v2 = generate_model_events(8000, seed=2, drift_at=0, start=1.8e9 + 100, version="2")
    both = ModelEvents(
        v1.inference + v2.inference,
        v1.inference_keys + v2.inference_keys,
        v1.labels + v2.labels,
        v1.label_keys + v2.label_keys,
        np.concatenate([v1.label_time, v2.label_time]),
        np.concatenate([v1.truth, v2.truth]),
        np.concatenate([v1.score, v2.score]),
    )
    batches = _batches_of(both, 1000)
    pipeline = _pipeline(stream)
    stage = _model(pipeline)
    assert stage.drift is not None and stage.drift.baseline is not None
    first_id = stage.drift.baseline.id
    cut = len(batches) // 2 + 4
    findings = _run(pipeline, batches[:cut])
    assert stage.current == "2" and stage.drift.baseline.id == "v2" != first_id
    restarted = _pipeline(stream)
    for topic in ("ml.loans.inference", "ml.loans.labels"):
        for p in range(PARTS):
            restarted.restore_partition(topic, p, pipeline.partition_state(topic, p))
    again = _model(restarted)
    assert again.current == "2" and again.drift is not None and again.drift.baseline is not None
    assert again.drift.baseline.id == "v2"
    findings += _run(restarted, batches[cut:])
    v2_quality = [f for f in findings if f.subject.startswith("loans@2:")]
    assert v2_quality and {f.baseline_id for f in v2_quality} == {"v2"}
    assert {f.baseline_id for f in findings if f.subject.startswith("loans@1:")} == {first_id}
    # version 2's inputs match its own reference: no input drift after the switch
    late_input = [f for f in findings[len(findings) // 2 :] if f.kind == "field" and f.drift]
    assert not late_input
    assert not any(f.drift for f in v2_quality)


def test_deploy_event_switches_before_the_first_event_and_survives_restart(
    tmp_path: Path,
) -> None:
    from monitor.cli.model_deploy import deploy_event

    stream = _stream(tmp_path)
    ref2 = tmp_path / "ref-v2.jsonl"
    ref2.write_bytes(b"\n".join(reference_rows(5000, seed=6, shifted=True, version="2")))
    stream["model"]["versions"] = [{"version": "2", "reference": {"file": str(ref2), "id": "v2"}}]
    stream["model"]["deploy_topic"] = "ml.deploys"
    pipeline = _pipeline(stream)
    assert pipeline.spec.all_topics[-1] == "ml.deploys"
    _run(pipeline, _batches(3000, seed=1)[:6])
    stage = _model(pipeline)
    assert stage.drift is not None and stage.drift.baseline is not None
    assert stage.drift._partitions  # windows filling
    events = [deploy_event("other", "9", 0.0), b"not json", deploy_event("loans", "2", 1.0)]
    deploys = RawBatch(
        topic="ml.deploys",
        values=list(events),
        partitions=np.zeros(3, np.int32),
        offsets=np.arange(3, dtype=np.int64),
        keys=(_keys := [b"loans"] * 3),
        timestamps=[1_700_000_000_000] * len(_keys),
    )
    result = pipeline.process(deploys)
    assert result.rejected == {"invalid_json": 1}
    assert stage.current == "2" and stage.drift.baseline.id == "v2"
    assert not stage.drift._partitions  # fresh windows
    state = pipeline.partition_state("ml.deploys", 0)
    restarted = _pipeline(stream)
    restarted.restore_partition("ml.deploys", 0, state)
    again = _model(restarted)
    assert again.current == "2" and again.drift is not None and again.drift.baseline is not None
    assert again.drift.baseline.id == "v2"
    restarted.process(deploys)  # a replay of the same offsets changes nothing
    assert again.current == "2"
    # a deploy of a version without its own reference restarts the windows on the baseline
    _run(pipeline, _batches(3000, seed=1)[6:10])
    assert stage.drift._partitions
    redeploy = RawBatch(
        topic="ml.deploys",
        values=[deploy_event("loans", "3", 2.0)],
        partitions=np.zeros(1, np.int32),
        offsets=np.array([3], np.int64),
        keys=(_keys := [b"loans"]),
        timestamps=[1_700_000_000_000] * len(_keys),
    )
    pipeline.process(redeploy)
    assert stage.current == "3" and stage.drift.baseline.id == "v2" and not stage.drift._partitions


def _multiclass(n: int, seed: int) -> tuple[list[bytes], list[bytes], np.ndarray, np.ndarray]:
    import msgspec

    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, 3))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(3, p=p) for p in probs])
    names = np.array(["a", "b", "c"])
    enc = msgspec.json.encode
    inference = [
        enc(
            {
                "rid": f"r{seed}-{i}",
                "ts": float(i),
                "f": float(logits[i, 0]),
                "pa": float(probs[i, 0]),
                "pb": float(probs[i, 1]),
                "pc": float(probs[i, 2]),
                "y": str(names[y[i]]),
            }
        )
        for i in range(n)
    ]
    labels = [
        enc({"rid": f"r{seed}-{i}", "ts": float(i) + 5, "y": str(names[y[i]])}) for i in range(n)
    ]
    return inference, labels, probs, y


def test_per_class_probabilities_equal_sklearn(tmp_path: Path) -> None:
    ref_inf, _, _, _ = _multiclass(3000, seed=1)
    reference = tmp_path / "ref3.jsonl"
    reference.write_bytes(b"\n".join(ref_inf))
    stream = {
        "name": "clf",
        "topic": "inf3",
        "event_time": "ts",
        "fields": {"f": {"type": "float", "detectors": ["psi"]}},
        "window": {"events": 2000, "step": 500},
        "model": {
            "name": "m",
            "request_id": "rid",
            "prediction": {
                "probabilities": [
                    {"name": "a", "field": "pa"},
                    {"name": "b", "field": "pb"},
                    {"name": "c", "field": "pc"},
                ],
                "positive_class": "a",
            },
            "labels": {"topic": "lab3", "key": "rid", "value": "y", "time": "ts"},
            "quality": {
                "metrics": ["accuracy", "precision", "recall", "roc_auc", "log_loss"],
                "window": {"events": 10_000, "step": 1000},
            },
            "reference": {"file": str(reference)},
        },
    }
    pipeline = _pipeline(stream)
    inference, labels, probs, y = _multiclass(4000, seed=2)
    for topic, values in (("inf3", inference), ("lab3", labels)):
        pipeline.process(
            RawBatch(
                topic=topic,
                values=list(values),
                partitions=np.zeros(len(values), np.int32),
                offsets=np.arange(len(values), dtype=np.int64),
                keys=(_keys := [None] * len(values)),
                timestamps=[1_700_000_000_000] * len(_keys),
            )
        )
    stage = _model(pipeline)
    assert stage.join_counts()["joined"] == 4000
    got = {f.subject.rpartition(":")[2]: dict(f.details)["value"] for f in stage.evaluate()
           if f.detector == "quality"}  # fmt: skip
    pred = probs.argmax(axis=1)
    is_a = y == 0
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert got["precision"] == pytest.approx(skm.precision_score(is_a, pred == 0), abs=1e-12)
    assert got["recall"] == pytest.approx(skm.recall_score(is_a, pred == 0), abs=1e-12)
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(is_a, probs[:, 0]), abs=1e-12)
    # log loss is reported as a per-event mean: one-vs-rest on the positive class
    assert got["log_loss"] == pytest.approx(skm.log_loss(is_a, probs[:, 0]), abs=1e-9)
    # CBPE for a multiclass model: the calibrated confidence (top probability) is the
    # expected accuracy; these probabilities are calibrated (labels drawn from them)
    ref = stage.references["*"]
    assert ref.cbpe is not None
    est = next(f for f in stage.evaluate() if f.detector == "cbpe")
    direct = float(np.mean(probs.max(axis=1)))
    assert dict(est.details)["value"] == pytest.approx(direct, abs=0.02)
    assert abs(dict(est.details)["value"] - skm.accuracy_score(y, pred)) < 0.03
    assert abs(stage._latest[("unversioned", "accuracy", "error")]) < 0.03  # estimate error


def test_two_replicas_judge_like_one(tmp_path: Path) -> None:
    """Replica b owns partition 1 and reports nothing; replica a judges the stream with
    b's windows from its checkpoint: the same verdicts as one process owning both."""
    stream = _stream(tmp_path, window={"events": 10_000, "step": 1000})
    batches = _batches(6000, seed=9)
    one, a, b = _pipeline(stream), _pipeline(stream), _pipeline(stream)
    _run(one, batches)
    b.set_ownership({("ml.loans.inference", 1)})
    assert not _model(b).judge
    findings_b = _run(b, [x for x in batches if x.partitions[0] == 1])
    assert not [f for f in findings_b if f.kind == "model"]
    _run(a, [x for x in batches if x.partitions[0] == 0])
    a.set_remote(
        {(t, 1): b.partition_state(t, 1) for t in ("ml.loans.inference", "ml.loans.labels")}
    )

    def values(p: StreamPipeline) -> list[tuple[str, float]]:
        return sorted(
            (f.subject, round(dict(f.details)["value"], 12))
            for f in _model(p).evaluate()
            if f.detector == "quality"
        )

    assert values(a) == values(one)


def test_status_tables_mark_the_estimate(tmp_path: Path) -> None:
    from monitor.status import StatusBoard, render_html

    pipeline = _pipeline(_stream(tmp_path))
    _run(pipeline, _batches(6000, seed=3))
    stage = _model(pipeline)
    quality, join = stage.status_sections()
    assert "estimated (CBPE)" in quality.columns and "before labels" in quality.note
    row = next(r for r in quality.rows if r[:2] == ("1", "accuracy"))
    assert all(cell != "-" for cell in row[2:])  # realized, estimated, reference, error
    counts = {row[0]: row[1] for row in join.rows}
    assert counts["joined"] == f"{stage.join_counts()['joined']:,}"
    board = StatusBoard()
    board.add_section(stage.status_sections)
    assert b"estimated (CBPE)" in render_html(board.snapshot())


def test_status_says_when_a_model_gets_no_estimate() -> None:
    stream = copy.deepcopy(MODEL_STREAM)
    stream["model"]["prediction"] = {"task": "regression", "value": "p_default"}
    stream["model"]["quality"]["metrics"] = ["mae", "bias"]
    config = parse_config({"kafka": {"bootstrap.servers": "x:1"}, "streams": [stream]}, env={})
    quality, _ = ModelStage(config.streams[0]).status_sections()
    assert "no estimate for this model" in quality.note
