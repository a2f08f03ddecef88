"""Producing demo, test and benchmark data: one loop for librdkafka's full queue.

``Producer.produce`` raises ``BufferError`` while librdkafka's local queue is full
(``queue.buffering.max.messages``); serving delivery reports with ``poll`` makes
room. The demos, the benchmarks and the tests' helpers all produce through here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from confluent_kafka import Producer

__all__ = ["produce_waiting"]


def produce_waiting(producer: Producer, topic: str, *, wait: float = 0.05, **message: Any) -> None:
    """``producer.produce(topic, **message)``, serving delivery reports for ``wait``
    seconds at a time while librdkafka's queue is full.

    >>> produce_waiting.__name__
    'produce_waiting'
    """
    while True:
        try:
            producer.produce(topic, **message)
            return
        except BufferError:
            producer.poll(wait)
