"""Consume driftwarden retrain requests and handle each trigger exactly once.

Retrain requests are delivered at least once (keyed by model name, with a
deterministic ``trigger_id``), so a consumer must be idempotent: this one remembers
the trigger ids it has handled in a small JSON file and commits an offset only after
the request is handled and remembered.

    python deploy/examples/retrain_consumer.py --bootstrap 127.0.0.1:9092 \\
        --topic ml.retrain.requests --group retrainer --seen /tmp/retrain-seen.json

Replace ``handle`` with a call to your training pipeline (Airflow, Kubeflow, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer

REQUIRED = ("trigger_id", "model", "version", "reason", "alert_ids", "created_at")


class SeenTriggers:
    """Trigger ids already handled, persisted atomically (temp file + rename)."""

    def __init__(self, path: Path | None, limit: int = 100_000) -> None:
        self.path = path
        self.limit = limit
        self.ids: dict[str, None] = {}
        if path is not None and path.exists():
            self.ids = dict.fromkeys(json.loads(path.read_text()))

    def __contains__(self, trigger_id: str) -> bool:
        return trigger_id in self.ids

    def add(self, trigger_id: str) -> None:
        self.ids[trigger_id] = None
        while len(self.ids) > self.limit:
            del self.ids[next(iter(self.ids))]
        if self.path is not None:
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".seen-")
            with os.fdopen(fd, "w") as f:
                json.dump(list(self.ids), f)
            os.replace(tmp, self.path)


def handle(request: dict[str, Any]) -> None:
    """Start a retrain; here: print it, with the evidence when the request carries it."""
    print(
        f"retrain {request['model']}@{request['version']} "
        f"(trigger {request['trigger_id']}, alerts {', '.join(request['alert_ids'])}): "
        f"{request['reason']}",
        flush=True,
    )
    evidence = request.get("evidence")
    if evidence:
        what = evidence["metric"] or evidence["detector"]
        kind = "estimated" if evidence["estimate"] else "realized"
        features = ", ".join(f["subject"] for f in evidence["features"]) or "none"
        print(
            f"  evidence: {kind} {what} over {evidence['window']['events']} events "
            f"vs reference {evidence['reference_id']}; features by drift: {features}",
            flush=True,
        )


def acknowledgement(request: dict[str, Any]) -> bytes:
    """The record sent to --ack-topic once a request is handled (keyed by trigger id)."""
    return json.dumps(
        {"trigger_id": request["trigger_id"], "model": request["model"], "status": "accepted"},
        sort_keys=True,
    ).encode()


def process(
    msg: Message, seen: SeenTriggers, ack: Callable[[str, bytes], None] | None = None
) -> str:
    """Handle one message; returns 'handled', 'duplicate' or 'invalid'."""
    try:
        value = msg.value()
        if value is None:
            raise ValueError("empty message")
        request = json.loads(value)
        missing = [k for k in REQUIRED if k not in request]
        if missing:
            raise ValueError(f"missing {missing}")
    except ValueError as e:  # JSONDecodeError is a ValueError
        print(
            f"skipping invalid request at {msg.topic()}[{msg.partition()}]@{msg.offset()}: {e}",
            file=sys.stderr,
        )
        return "invalid"
    if request["trigger_id"] in seen:
        return "duplicate"
    handle(request)
    if ack is not None:
        ack(request["trigger_id"], acknowledgement(request))
    seen.add(request["trigger_id"])
    return "handled"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", default="127.0.0.1:9092")
    p.add_argument("--topic", default="ml.retrain.requests")
    p.add_argument("--group", default="driftwarden-retrainer")
    p.add_argument("--seen", type=Path, default=None, help="file of handled trigger ids")
    p.add_argument("--max-messages", type=int, default=0, help="stop after N (0: run forever)")
    p.add_argument("--ack-topic", default=None, help="acknowledge handled requests here")
    args = p.parse_args(argv)
    producer = Producer({"bootstrap.servers": args.bootstrap}) if args.ack_topic else None

    def ack(trigger_id: str, record: bytes) -> None:
        assert producer is not None
        producer.produce(args.ack_topic, record, key=trigger_id.encode())
        if producer.flush(10.0):  # acknowledged before the offset is committed
            raise RuntimeError("acknowledgement not delivered")

    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    seen = SeenTriggers(args.seen)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    count = 0
    try:
        consumer.subscribe([args.topic])
        while not stopping and (args.max_messages == 0 or count < args.max_messages):
            msg = consumer.poll(1.0)  # a second keeps shutdown responsive
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    print(f"consumer error: {error}", file=sys.stderr)
                continue
            process(msg, seen, ack if producer is not None else None)
            consumer.commit(message=msg, asynchronous=False)  # after handling: at least once
            count += 1
    finally:
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
