"""The demo's model stream: a loan-default classifier whose inputs drift halfway.

Inference events go to ``ml.loans.inference`` and labels, ``label_delay`` seconds of
event time later, to ``ml.loans.labels`` (both keyed by request id, same partition
count: co-partitioned). Event time runs at the wall clock, so the console shows, in
this order: the input drift (PSI/KS on x1, x2), the CBPE estimate dropping (no label
needed), the realized accuracy dropping once the labels of drifted requests arrive,
and the retrain request (this model asks for one on realized quality only).
"""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path
from typing import Any

from monitor.dev.demo import create_topic
from monitor.dev.model_synthetic import MODEL_STREAM, generate_model_events, reference_rows

__all__ = ["model_demo_stream", "produce_model", "write_reference"]

PARTITIONS = 2


def write_reference(directory: Path, rows: int = 20_000) -> Path:
    """The model's reference file (features, scores, labels) as JSONL."""
    path = directory / "loans-reference.jsonl"
    path.write_bytes(b"\n".join(reference_rows(rows, seed=5)) + b"\n")
    return path


def model_demo_stream(reference: Path) -> dict[str, Any]:
    """The demo's model stream configuration (see ``monitor.dev.model_synthetic``)."""
    stream = copy.deepcopy(MODEL_STREAM)
    stream["model"]["reference"] = {"file": str(reference), "id": "loans-v1-reference"}
    stream["model"]["retrain_on"] = ["realized"]
    return stream


def produce_model(
    bootstrap: str,
    *,
    events: int,
    rate: float,
    drift_at: int,
    label_delay: float = 8.0,
    stop: threading.Event | None = None,
    chunk: int = 500,
) -> int:
    """Produce ``events`` predictions at ``rate`` per second and their labels
    ``label_delay`` seconds later (by event time, which follows the wall clock)."""
    from confluent_kafka import Producer

    from monitor.dev.producing import produce_waiting

    for topic in ("ml.loans.inference", "ml.loans.labels"):
        create_topic(bootstrap, topic, PARTITIONS)
    start = time.time()
    ev = generate_model_events(
        events, seed=11, drift_at=drift_at, start=start, rate=rate, label_delay=label_delay
    )
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 10})
    sent = labelled = 0
    began = time.monotonic()

    def send(topic: str, value: bytes, key: bytes) -> None:
        produce_waiting(producer, topic, value=value, key=key)

    try:
        while (sent < events or labelled < len(ev.labels)) and not (
            stop is not None and stop.is_set()
        ):
            upto = min(sent + chunk, events)
            for i in range(sent, upto):
                send("ml.loans.inference", ev.inference[i], ev.inference_keys[i])
            sent = upto
            now = start + (time.monotonic() - began)
            while labelled < len(ev.labels) and ev.label_time[labelled] <= now:
                send("ml.loans.labels", ev.labels[labelled], ev.label_keys[labelled])
                labelled += 1
            producer.poll(0)
            ahead = sent / rate - (time.monotonic() - began)
            if sent >= events:  # only labels left: wait for their time to come
                ahead = max(ahead, 0.2)
            if ahead > 0:
                if stop is not None:
                    stop.wait(ahead)
                else:
                    time.sleep(ahead)
    finally:
        producer.flush(30)
    return sent
