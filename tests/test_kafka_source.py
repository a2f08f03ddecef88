"""KafkaSource without a broker: which librdkafka handle serves what."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from connectors.kafka import KafkaSource


class _NoMetadataOnTheGroupConsumer:
    """The group's consumer, refusing metadata requests: ``list_topics`` on it from
    inside a rebalance callback (where the runner asks partition counts) ends its
    call state early and aborts the process at the next callback of the same
    ``consume``."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def list_topics(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("metadata asked on the group's consumer")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.mark.parametrize("fetch", ["librdkafka", "direct"])
def test_metadata_never_goes_to_the_group_consumer(fetch: str) -> None:
    source = KafkaSource({"bootstrap.servers": "127.0.0.1:9"}, "g", ["t"], fetch=fetch)
    real = source._consumer
    asked: list[tuple[Any, ...]] = []

    class Admin:
        def list_topics(self, *args: Any, **kwargs: Any) -> Any:
            asked.append(args)
            parts = {0: None, 1: None, 2: None}
            return SimpleNamespace(topics={"t": SimpleNamespace(partitions=parts)})

    try:
        source._consumer = _NoMetadataOnTheGroupConsumer(real)  # type: ignore[assignment]
        source._metadata_client = Admin()
        assert source.partition_count("t") == 3
        assert source.probe(0.1)
        assert asked == [("t",), ()]
    finally:
        source._consumer = real
        source.close()
