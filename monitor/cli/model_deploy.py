"""``driftwarden model deploy``: announce a model version on the stream's deploy topic.

The event ``{"model": NAME, "version": V, "at": SECONDS}`` is keyed by the model name
and waits for the broker's acknowledgement. The model stage that reads the deploy
topic switches the stream's drift baseline to the version's reference (when
``model.versions`` gives one) and starts fresh windows (monitor/config/model.py).

>>> deploy_event("loans", "8", at=0.0)
b'{"at":0.0,"model":"loans","version":"8"}'
"""

from __future__ import annotations

import argparse
import json
import time

from monitor.config.schema import Config, load_config
from monitor.errors import ConfigError, SinkError

__all__ = ["deploy_command", "deploy_event", "send_deploy"]


def deploy_event(model: str, version: str, at: float) -> bytes:
    """The deploy event's JSON (keys sorted)."""
    return json.dumps(
        {"model": model, "version": version, "at": at}, sort_keys=True, separators=(",", ":")
    ).encode()


def send_deploy(config: Config, stream: str, version: str, timeout: float = 10.0) -> str:
    """Produce the deploy event of ``stream``'s model; return the topic it went to."""
    from confluent_kafka import Producer

    from connectors.kafka import client_options

    spec = next((s for s in config.streams if s.name == stream), None)
    if spec is None:
        raise ConfigError(f"no stream {stream!r} in the configuration")
    if spec.model is None or spec.model.deploy_topic is None or spec.model.labels is None:
        raise ConfigError(f"stream {stream!r} has no model.deploy_topic (and model.labels)")
    producer = Producer(client_options(dict(config.kafka)))
    topic = spec.model.deploy_topic
    producer.produce(
        topic, deploy_event(spec.model.name, version, time.time()), key=spec.model.name.encode()
    )
    if producer.flush(timeout):
        raise SinkError(f"the deploy event was not acknowledged by the broker within {timeout}s")
    return topic


def deploy_command(args: argparse.Namespace) -> int:
    topic = send_deploy(load_config(args.config), args.stream, args.version)
    print(f"deployed version {args.version} of stream {args.stream}'s model (topic {topic})")
    return 0
