"""The model stage on the broker: a crash with pending predictions, then a restart from
the checkpoints, ends with the same joins and quality windows as an uninterrupted run."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from connectors.kafka import RawBatch
from monitor.config.schema import parse_config
from monitor.dev.model_synthetic import MODEL_STREAM, generate_model_events, reference_rows
from monitor.metrics import Metrics
from monitor.pipeline.model import ModelStage
from monitor.pipeline.stage import registered_stages
from monitor.pipeline.stream import StreamPipeline
from monitor.runtime.service import Service
from tests.kafka_utils import create_topics, produce, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N = 8_000
N_KILL = 4_000


def _config(bootstrap: str, unique: str, group: str, reference: Path) -> Any:
    stream = copy.deepcopy(MODEL_STREAM)
    stream["topic"] = f"inf.{unique}"
    stream["model"]["labels"]["topic"] = f"lab.{unique}"
    stream["model"]["reference"] = {"file": str(reference)}
    # one window holds every joined event: its content does not depend on the order
    # in which the two topics' batches interleave
    stream["model"]["quality"]["window"] = {"events": 20_000, "step": 1000}
    return parse_config(
        {
            "kafka": {"bootstrap.servers": bootstrap, "session.timeout.ms": 6000},
            "group": group,
            "metrics": {"enabled": False},
            "dead_letter_topic": f"dlq.{unique}",
            "source": {"max_batch_events": 1500, "max_wait": "100ms"},
            "state": {"topic": f"state.{group}", "every_events": 3000, "every_seconds": "1h"},
            "streams": [stream],
        },
        env={},
    )


def _stage(service: Service) -> ModelStage:
    (pipeline,) = set(service.runner.pipelines.values())
    stage = pipeline.stages[0]
    assert isinstance(stage, ModelStage)
    return stage


def _done(service: Service) -> int:
    (pipeline,) = set(service.runner.pipelines.values())
    return sum(pipeline.partition_events.values())


def _snapshot(service: Service) -> dict[str, Any]:
    return _snapshot_stage(_stage(service))


def _snapshot_stage(stage: ModelStage) -> dict[str, Any]:
    # the windows' rows, with the joins still held (released at the next frontier)
    rings = [
        rows
        for p in stage._parts.values()
        for r in p.joined.values()
        for rows in (r.rows(), r.held_rows())
    ]
    pairs = np.concatenate([np.stack([c[0], c[2]], axis=1) for c in rings])
    values = {
        (f.detector, f.subject): round(dict(f.details)["value"], 12)
        for f in stage.evaluate()
        if "value" in dict(f.details)
    }
    return {
        "counts": stage.join_counts(),
        "pending": sum(p.join.pending for p in stage._parts.values()),
        "window": sorted(map(tuple, pairs.round(12).tolist())),
        "values": values,
    }


def _run_until(service: Service, events: int) -> dict[str, Any]:
    taken: dict[str, Any] = {}

    def until(stats: Any) -> bool:
        if _done(service) >= events:
            taken.update(_snapshot(service))  # before close() drops the partitions
            return True
        return False

    service.run(max_seconds=120, until=until)
    return taken


def test_crash_with_pending_predictions_resumes_exactly(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    reference = tmp_path / "ref.jsonl"
    reference.write_bytes(b"\n".join(reference_rows(5000, seed=5)))
    create_topics(kafka_bootstrap, {f"inf.{unique}": 2, f"lab.{unique}": 2, f"dlq.{unique}": 1})
    ev = generate_model_events(N, seed=21, label_delay=30.0)
    produce(kafka_bootstrap, f"inf.{unique}", ev.inference, ev.inference_keys)
    produce(kafka_bootstrap, f"lab.{unique}", ev.labels, ev.label_keys)
    total = N + len(ev.labels)

    def service(group: str) -> Service:
        return Service(
            _config(kafka_bootstrap, unique, group, reference), registry=CollectorRegistry()
        )

    whole = _run_until(service(f"whole-{unique}"), total)
    assert whole["counts"]["joined"] == len(set(ev.label_keys))
    assert whole["counts"]["duplicate_labels"] == len(ev.labels) - len(set(ev.label_keys))

    first = service(f"split-{unique}")
    first.runner.final_checkpoint = False  # as if killed: no checkpoint on the way out
    crashed = _run_until(first, total // 2)
    assert crashed["pending"] > 0 and crashed["counts"]["joined"] < whole["counts"]["joined"]
    resumed = _run_until(service(f"split-{unique}"), total)
    assert resumed == whole


def test_model_deploy_command_produces_the_deploy_event(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    import json

    import yaml

    from monitor.cli import main

    reference = tmp_path / "ref.jsonl"
    reference.write_bytes(b"\n".join(reference_rows(100, seed=5)))
    stream = copy.deepcopy(MODEL_STREAM)
    stream["model"]["reference"] = {"file": str(reference)}
    stream["model"]["deploy_topic"] = f"deploys.{unique}"
    create_topics(kafka_bootstrap, {f"deploys.{unique}": 1})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"kafka": {"bootstrap.servers": kafka_bootstrap},
                                    "streams": [stream]}))  # fmt: skip
    argv = ["model", "deploy", str(path), "--stream", "loans-model", "--version", "2"]
    assert main(argv) == 0
    (msg,) = read_topic(kafka_bootstrap, f"deploys.{unique}", 1)
    event = json.loads(msg.value() or b"{}")
    assert (event["model"], event["version"], msg.key()) == ("loans", "2", b"loans")
    assert main(["model", "deploy", str(path), "--stream", "nope", "--version", "2"]) == 1


def test_kill_9_with_pending_predictions_then_restart_equals_uninterrupted(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    """A ``driftwarden run`` process holding pending predictions is SIGKILLed; the labels
    come afterwards; a restart from its checkpoints ends like an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml
    from confluent_kafka import Consumer, TopicPartition

    root = Path(__file__).resolve().parents[2]
    reference = tmp_path / "ref.jsonl"
    reference.write_bytes(b"\n".join(reference_rows(2000, seed=5)))
    create_topics(kafka_bootstrap, {f"inf.{unique}": 2, f"lab.{unique}": 2, f"dlq.{unique}": 1})
    ev = generate_model_events(N_KILL, seed=22, label_delay=30.0)
    produce(kafka_bootstrap, f"inf.{unique}", ev.inference, ev.inference_keys)
    group = f"killed-{unique}"
    config = _config(kafka_bootstrap, unique, group, reference)
    raw = yaml.safe_load(config.model_dump_json(by_alias=True))
    raw["state"]["every_events"] = 1500
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))  # detector order is state order
    log = open(tmp_path / "run.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor.cli", "run", str(path), "--quiet"],
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    log.close()
    watcher = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group})
    try:
        deadline = time.monotonic() + 60
        committed = 0
        parts = [TopicPartition(f"inf.{unique}", p) for p in range(2)]
        while time.monotonic() < deadline and committed < N_KILL // 2:
            time.sleep(0.3)
            committed = sum(max(tp.offset, 0) for tp in watcher.committed(parts, timeout=5))
        assert committed >= N_KILL // 2, (tmp_path / "run.log").read_text()[-2000:]
        proc.send_signal(signal.SIGKILL)  # predictions pending, no label read yet
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        watcher.close()
        if proc.poll() is None:
            proc.kill()
    produce(kafka_bootstrap, f"lab.{unique}", ev.labels, ev.label_keys)
    total = N_KILL + len(ev.labels)

    def service(group: str) -> Service:
        return Service(
            _config(kafka_bootstrap, unique, group, reference), registry=CollectorRegistry()
        )

    resumed = _run_until(service(group), total)
    # the uninterrupted run, in process (the snapshot does not depend on partitioning)
    pipeline = StreamPipeline(config.streams[0], Metrics(CollectorRegistry()), "dlq")
    pipeline.stages.extend(registered_stages(pipeline))
    for topic, values in ((f"inf.{unique}", ev.inference), (f"lab.{unique}", ev.labels)):
        raw_batch = RawBatch(
            topic=topic,
            values=list(values),
            partitions=np.zeros(len(values), np.int32),
            offsets=np.arange(len(values), dtype=np.int64),
            keys=(_keys := [None] * len(values)),
            timestamps=[1_700_000_000_000] * len(_keys),
        )
        pipeline.process(raw_batch)
    stage = pipeline.stages[0]
    assert isinstance(stage, ModelStage)
    whole = _snapshot_stage(stage)
    assert whole["counts"]["joined"] == len(set(ev.label_keys))
    assert resumed == whole
