"""Kafka in and out with confluent-kafka: batch consume, manual commits, durable produce.

The source never commits on its own (``enable.auto.commit=false``,
``enable.auto.offset.store=false``): the runner commits a batch's offsets only
after that batch's outgoing messages are acknowledged. Every librdkafka option,
SASL and SSL included, passes through from the configuration unchanged.

Message fields are pulled out of a batch with ``map`` over C methods, so a batch of
any size costs no Python bytecode per message.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import numpy as np
import numpy.typing as npt
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from connectors.base import OutMessage
from connectors.errors import DriftwardenError, SinkError
from connectors.fetch import DirectFetcher, FetchStatus
from connectors.records import PackedValues, RecordColumns

__all__ = [
    "RECORD_OVERHEAD_BYTES",
    "BrokerUnreachableError",
    "KafkaSink",
    "KafkaSource",
    "RateLimitFilter",
    "RawBatch",
    "TopicPartitionKey",
    "client_options",
    "consumer_limits",
    "ensure_topics",
    "librdkafka_logger",
    "producer_limits",
    "wait_for_cluster",
]

log = logging.getLogger("driftwarden.kafka")


class BrokerUnreachableError(DriftwardenError):
    """The cluster did not answer at start; the message names the servers and why."""


class RateLimitFilter(logging.Filter):
    """Drops repeats of a log line (digits ignored) within ``window`` seconds and
    lets at most ``burst`` lines through per window; the next line that passes says
    how many were dropped. librdkafka repeats a connection failure every retry.

    >>> f = RateLimitFilter(window=10.0, burst=5, clock=lambda: 0.0)
    >>> rec = lambda m: logging.LogRecord("x", 30, "", 0, m, None, None)
    >>> [f.filter(rec(f"connect to :{p} failed")) for p in (1, 2)]
    [True, False]
    >>> r = rec("another problem"); f.filter(r), r.getMessage()
    (True, 'another problem (1 earlier line(s) suppressed)')
    """

    def __init__(
        self, window: float = 10.0, burst: int = 5, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.window = window
        self.burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._last_seen: dict[str, float] = {}
        self._window_start = -float("inf")
        self._passed = 0
        self.suppressed = 0
        self._pending = 0

    def filter(self, record: logging.LogRecord) -> bool:
        key = re.sub(r"\d+", "#", record.getMessage())
        now = self._clock()
        with self._lock:
            if now - self._window_start >= self.window:
                self._window_start, self._passed = now, 0
            last = self._last_seen.get(key)
            if (last is not None and now - last < self.window) or self._passed >= self.burst:
                self.suppressed += 1
                self._pending += 1
                return False
            if len(self._last_seen) > 1000:
                self._last_seen.clear()
            self._last_seen[key] = now
            self._passed += 1
            if self._pending:
                record.msg = f"{record.getMessage()} ({self._pending} earlier line(s) suppressed)"
                record.args = None
                self._pending = 0
        return True


_LIBRDKAFKA_LOG = logging.getLogger("driftwarden.librdkafka")
_LIBRDKAFKA_LOG.addFilter(RateLimitFilter())


def librdkafka_logger() -> logging.Logger:
    """The logger every client hands librdkafka (``logger=``): its lines go through
    Python logging, de-duplicated and rate-limited, instead of raw to stderr."""
    return _LIBRDKAFKA_LOG


def _with_logger(conf: Mapping[str, Any]) -> dict[str, Any]:
    return {"logger": librdkafka_logger(), **conf}


def wait_for_cluster(options: Mapping[str, Any], timeout: float) -> None:
    """Return once the cluster answers a metadata request; after ``timeout`` seconds
    raise :class:`BrokerUnreachableError` naming ``bootstrap.servers`` and the last
    reason librdkafka gave (connection refused, name resolution, TLS, SASL...)."""
    from confluent_kafka.admin import AdminClient

    reasons: list[str] = []

    def on_error(err: KafkaError) -> None:
        reasons.append(err.str())

    admin = AdminClient(_with_logger({**client_options(options), "error_cb": on_error}))
    deadline = time.monotonic() + timeout
    last: str = ""
    while True:
        left = deadline - time.monotonic()
        try:
            admin.list_topics(timeout=max(0.1, min(left, 2.0)))
            return
        except KafkaException as exc:
            last = exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else str(exc)
        admin.poll(0)  # serve error callbacks and log lines
        if time.monotonic() >= deadline:
            break
    reason = reasons[-1] if reasons else last
    reason = " ".join(reason.split())
    raise BrokerUnreachableError(
        f"Kafka is unreachable at bootstrap.servers={options.get('bootstrap.servers')} "
        f"after {timeout:g} s: {reason}"
    )


_T = TypeVar("_T")

TopicPartitionKey = tuple[str, int]

_CONSUMER_ONLY = (
    "fetch.",
    "queued.",
    "session.",
    "heartbeat.",
    "auto.offset",
    "max.poll",
    "partition.assignment",
    "group.",
)


# Room for a dead letter's key (cut to 16 KiB), headers and record framing.
RECORD_OVERHEAD_BYTES = 32_768


def producer_limits(max_value_bytes: int) -> dict[str, Any]:
    """Producer size settings for records whose value is at most ``max_value_bytes``.

    ``message.max.bytes`` fits the largest record the service produces (a dead
    letter cut to ``dead_letter_max_bytes``, plus key and headers); the default
    900,000 bytes keeps records under the broker's default limit (1,048,588).
    The send queue is bounded in bytes (64 MiB) so a stalled broker cannot grow it
    without bound (``send`` then waits for room).
    """
    return {
        "message.max.bytes": max(max_value_bytes + RECORD_OVERHEAD_BYTES, 1_000_000),
        "queue.buffering.max.kbytes": 65_536,
    }


def consumer_limits(fetch: str = "librdkafka") -> dict[str, Any]:
    """Consumer memory bounds, in bytes rather than messages.

    Records are fetched ahead into a local queue: at most
    ``queued.max.messages.kbytes`` whatever the message count (librdkafka's path:
    32 MiB; the direct path, ``fetch="direct"``: 128 MiB, see below), from fetches of
    at most ``fetch.max.bytes`` (16 MiB per request, ``max.partition.fetch.bytes``
    1 MiB per partition; the direct path 4 MiB). A record larger than these is still
    fetched whole (Kafka returns the first record even when over the limit), so huge
    records slow consumption but never block it; the decoder rejects those over
    ``max_event_bytes`` without copying them. ``receive.message.max.bytes`` keeps
    librdkafka's default (100 MB, a bound on one response, not an allocation), so a
    record up to that size cannot wedge the consumer.

    The direct path keeps more ahead: its queue holds packed values only (no object
    per record), and a broker that pauses 0.15-0.35 s between answers (measured
    here) then no longer idles the stream: pipeline+drift at 4 partitions went from
    348k to 536k-548k events/s with 128 MiB against 32 MiB (bench/RESULTS.md), for
    ~80 MB more peak memory. It also asks 4 MiB per partition: a batch is mostly one
    partition's records (``DirectFetcher.take``), so refilling the drained partition
    took one round trip per MiB while the others were full; the main thread's waits
    for records at 4 partitions fell from ~160 to ~90 ns per event (same bench, four
    runs each).
    """
    direct = fetch == "direct"
    return {
        "queued.max.messages.kbytes": 131_072 if direct else 32_768,
        "fetch.max.bytes": 16 * 1_048_576,
        "max.partition.fetch.bytes": (4 if direct else 1) * 1_048_576,
    }


def _headers(raw: Any) -> tuple[tuple[str, bytes], ...]:
    """A consumed or delivered message's headers as (name, bytes) pairs."""
    if not raw:
        return ()
    pairs = raw.items() if isinstance(raw, dict) else raw
    return tuple((str(k), v if isinstance(v, bytes) else (v or "").encode()) for k, v in pairs)


def client_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The connection and security options of a config, without consumer tuning,
    for producers and admin clients; librdkafka's log lines go to
    :func:`librdkafka_logger`."""
    return _with_logger({k: v for k, v in options.items() if not k.startswith(_CONSUMER_ONLY)})


def ensure_topics(
    options: Mapping[str, Any],
    topics: Sequence[str],
    *,
    partitions: int = 1,
    config: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> list[str]:
    """Create the topics that do not exist yet; return those that could not be.

    Lacking the permission to create topics is not fatal here: production clusters
    usually create them through their own tooling. The caller decides.
    """
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    admin = AdminClient(_with_logger(client_options(options)))
    existing = set(admin.list_topics(timeout=timeout).topics)
    missing = [t for t in dict.fromkeys(topics) if t and t not in existing]
    if not missing:
        return []
    new = [NewTopic(t, partitions, 1, config=dict(config or {})) for t in missing]
    failed = []
    for topic, future in admin.create_topics(new, request_timeout=timeout).items():
        try:
            future.result(timeout)
            log.info("created topic %s", topic)
        except Exception as exc:
            log.warning("could not create topic %s: %s", topic, exc)
            failed.append(topic)
    return failed


@dataclass(frozen=True, slots=True)
class RawBatch:
    """One consumed batch of one topic, fields as parallel sequences.

    ``keys`` and ``timestamps`` (ms since the epoch, -1 where the record has none)
    are read by the few rows that are dead-lettered: the Kafka source reads them
    from its messages on access, nothing after the source sees a client's message
    object, and a Faust batch or a test passes plain lists.

    >>> import numpy as np
    >>> b = RawBatch("t", [b"{}"], np.zeros(1, np.int32), np.arange(1), [None], [-1])
    >>> len(b), b.keys[0], b.timestamps[0]
    (1, None, -1)
    """

    topic: str
    values: Sequence[bytes | None]  # a list, or PackedValues from the direct fetch path
    partitions: npt.NDArray[np.int32]
    offsets: npt.NDArray[np.int64]
    keys: Sequence[bytes | None]
    timestamps: Sequence[int]

    def __len__(self) -> int:
        return len(self.values)


class _Column(Sequence[_T]):
    """One field of a batch's messages (or an array's items), read from a message
    only when asked for."""

    __slots__ = ("_get", "_msgs")

    def __init__(self, msgs: Sequence[Any] | npt.NDArray[Any], get: Callable[[Any], _T]) -> None:
        self._msgs = msgs
        self._get = get

    def __len__(self) -> int:
        return len(self._msgs)

    @overload
    def __getitem__(self, index: int) -> _T: ...

    @overload
    def __getitem__(self, index: slice) -> list[_T]: ...

    def __getitem__(self, index: int | slice) -> _T | list[_T]:
        if isinstance(index, slice):
            return [self._get(m) for m in self._msgs[index]]
        return self._get(self._msgs[index])


def _key(msg: Message) -> bytes | None:
    key: bytes | None = msg.key()
    return key


def _timestamp(msg: Message) -> int:
    return int(msg.timestamp()[1])  # librdkafka gives -1 where there is none


def _split_by_topic(messages: list[Message], only: str | None = None) -> list[RawBatch]:
    """One RawBatch per topic; ``only``: the one topic every message can be from (a
    subscription to one topic name), which spares reading each message's topic."""
    if only is not None:
        return [_raw_batch(only, messages)]
    topics = list(map(Message.topic, messages))
    first = topics[0]
    if topics.count(first) == len(topics):
        groups = {first: messages}
    else:
        groups = {}
        for topic, msg in zip(topics, messages, strict=True):  # rare: several topics at once
            groups.setdefault(topic, []).append(msg)
    return [_raw_batch(str(topic), msgs) for topic, msgs in groups.items()]


def _raw_batch(topic: str, msgs: list[Message]) -> RawBatch:
    n = len(msgs)
    return RawBatch(
        topic=topic,
        values=list(map(Message.value, msgs)),
        partitions=np.fromiter(map(Message.partition, msgs), dtype=np.int32, count=n),
        offsets=np.fromiter(map(Message.offset, msgs), dtype=np.int64, count=n),
        keys=_Column(msgs, _key),
        timestamps=_Column(msgs, _timestamp),
    )


def _columns_batch(topic: str, parts: list[tuple[int, RecordColumns]]) -> RawBatch:
    """One RawBatch of a topic from the direct fetcher's columns (values stay packed)."""
    if len(parts) == 1:
        values, keys = parts[0][1].values, parts[0][1].keys
    else:
        values = PackedValues.concat([c.values for _, c in parts])
        keys = PackedValues.concat([c.keys for _, c in parts])
    partitions = np.concatenate([np.full(len(c), p, dtype=np.int32) for p, c in parts])
    return RawBatch(
        topic=topic,
        values=values,
        partitions=partitions,
        offsets=np.concatenate([c.offsets for _, c in parts]),
        keys=keys,
        timestamps=_Column(np.concatenate([c.timestamps for _, c in parts]), int),
    )


class KafkaSource:
    """A consumer-group member reading batches from one or many topics."""

    def __init__(
        self,
        options: Mapping[str, Any],
        group: str,
        topics: Sequence[str],
        *,
        max_batch_events: int = 10_000,
        max_wait: float = 0.5,
        on_assign: Callable[[list[TopicPartitionKey]], Mapping[TopicPartitionKey, int]]
        | None = None,
        on_revoke: Callable[[list[TopicPartitionKey]], None] | None = None,
        on_error: Callable[[str, bool], None] | None = None,
        fetch: str = "librdkafka",
    ) -> None:
        if fetch not in ("librdkafka", "direct"):
            raise ValueError(f"fetch must be 'librdkafka' or 'direct', not {fetch!r}")
        self.topics = tuple(topics)
        # One topic name (not a ^regex): every message is from it.
        self._only_topic = (
            self.topics[0] if len(self.topics) == 1 and not self.topics[0].startswith("^") else None
        )
        self.max_batch_events = max_batch_events
        self.max_wait = max_wait
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._on_error = on_error
        conf: dict[str, Any] = {
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 10_000,
            **options,
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "error_cb": self._error,
        }
        # cooperative-sticky hands partitions over incrementally (no stop-the-world).
        self._cooperative = "cooperative" in str(conf.get("partition.assignment.strategy", ""))
        self._consumer = Consumer(_with_logger(conf))
        # "direct": librdkafka keeps the group (its partitions paused); records come
        # from connectors.fetch, packed into columns with no object per record.
        self._direct: DirectFetcher | None = None
        if fetch == "direct":
            self._direct = DirectFetcher(conf, on_error=self._on_error, max_wait=max_wait)
        self.assignment: set[TopicPartitionKey] = set()
        self.errors: list[str] = []
        self._partition_counts: dict[str, int] = {}
        # Metadata is asked on a handle of its own: ``list_topics`` on the group's
        # consumer from inside a rebalance callback (the runner asks partition counts
        # while it restores an assignment) ends the consumer's call state early, and
        # the next callback served by the same ``consume`` then aborts the process
        # (confluent-kafka's "CallState_get: Assertion `cs != NULL' failed").
        self._metadata_options = _with_logger(client_options(options))
        self._metadata_client: Any = None
        self._consumer.subscribe(
            list(self.topics), on_assign=self._assigned, on_revoke=self._revoked
        )

    def _error(self, err: KafkaError) -> None:
        self.errors.append(err.str())
        if self._on_error is not None:
            self._on_error(
                err.name() if hasattr(err, "name") else str(err.code()), bool(err.fatal())
            )

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._partition_counts.clear()  # a rebalance may follow new partitions
        keys = [(tp.topic, tp.partition) for tp in partitions]
        self.assignment.update(keys)
        starts: Mapping[TopicPartitionKey, int] = {}
        if self._on_assign is not None:
            starts = self._on_assign(keys)
        for tp in partitions:  # start where the checkpoint says, else at the group offset
            start = starts.get((tp.topic, tp.partition))
            if start is not None:
                tp.offset = start
        if self._cooperative:
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)
        if self._direct is not None:
            consumer.pause(partitions)  # the group stays librdkafka's, the records ours
            self._direct.assign(self._direct_starts(consumer, partitions))

    def _direct_starts(
        self, consumer: Consumer, partitions: list[TopicPartition]
    ) -> dict[TopicPartitionKey, int | None]:
        """Where the direct fetcher starts: the checkpoint's offset, else the group's
        committed one, else None (``auto.offset.reset``)."""
        starts: dict[TopicPartitionKey, int | None] = {
            (tp.topic, tp.partition): tp.offset if tp.offset >= 0 else None for tp in partitions
        }
        ask = [TopicPartition(t, p) for (t, p), o in starts.items() if o is None]
        while ask:
            try:
                for tp in consumer.committed(ask, timeout=10.0):
                    if tp.offset >= 0:
                        starts[(tp.topic, tp.partition)] = tp.offset
                break
            except KafkaException as exc:  # retried: starting elsewhere would not be exact
                log.warning("reading committed offsets failed (%s); retrying", exc)
                time.sleep(1.0)
        return starts

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        if self._on_revoke is not None:
            self._on_revoke(keys)
        self.assignment.difference_update(keys)
        if self._direct is not None:
            self._direct.revoke(keys)

    def poll(self) -> list[RawBatch]:
        """Wait up to ``max_wait`` for up to ``max_batch_events`` messages, split by topic."""
        if self._direct is not None:
            return self._poll_direct(self._direct)
        messages = self._consumer.consume(self.max_batch_events, self.max_wait)
        if not messages:
            return []
        if any(map(Message.error, messages)):  # rare: look again, message by message
            messages = self._without_errors(messages)
            if not messages:
                return []
        return _split_by_topic(messages, self._only_topic)

    def _without_errors(self, messages: list[Message]) -> list[Message]:
        """The messages that are records; the errors among them are reported (end of
        partition events ignored) and a fatal one raises."""
        good = []
        for msg in messages:
            err = msg.error()
            if err is None:
                good.append(msg)
            elif err.code() != KafkaError._PARTITION_EOF:
                self._error(err)
                if err.fatal():
                    raise KafkaException(err)
        return good

    def _poll_direct(self, direct: DirectFetcher) -> list[RawBatch]:
        # serve the group (rebalance callbacks, errors); records of paused partitions
        # that librdkafka fetched before the pause are not used
        self._without_errors(self._consumer.consume(1_000, 0))
        taken = direct.take(self.max_batch_events, self.max_wait)
        if not taken:
            return []
        by_topic: dict[str, list[tuple[int, RecordColumns]]] = {}
        for (topic, partition), cols in taken:
            by_topic.setdefault(topic, []).append((partition, cols))
        return [_columns_batch(topic, parts) for topic, parts in by_topic.items()]

    def commit(self, next_offsets: Mapping[TopicPartitionKey, int]) -> None:
        """Commit ``next_offsets`` (the offset of the next message to read) synchronously."""
        if not next_offsets:
            return
        tps = [TopicPartition(t, p, o) for (t, p), o in next_offsets.items()]
        try:
            self._consumer.commit(offsets=tps, asynchronous=False)
        except KafkaException as exc:
            raise SinkError(f"offset commit failed: {exc.args[0]}") from exc

    def committed(
        self, partitions: Iterable[TopicPartitionKey], timeout: float = 10.0
    ) -> dict[TopicPartitionKey, int]:
        tps = self._consumer.committed(
            [TopicPartition(t, p) for t, p in partitions], timeout=timeout
        )
        return {(tp.topic, tp.partition): tp.offset for tp in tps}

    def fetch_status(self) -> FetchStatus | None:
        """The direct fetcher's queue and totals (None on librdkafka's path, whose
        queue is its own)."""
        return None if self._direct is None else self._direct.status()

    def lag(self, positions: Mapping[TopicPartitionKey, int]) -> dict[TopicPartitionKey, int]:
        """Messages between each assigned partition's high watermark and ``positions``.

        Uses the watermarks cached from fetch responses: they are cheap (no broker
        round trip) and right where a broker's ListOffsets answer is not.
        """
        out = {}
        for key in sorted(self.assignment):
            if self._direct is not None:
                high = self._direct.high_watermark(key)
                if high is not None:
                    out[key] = max(0, high - positions.get(key, 0)) if key in positions else high
                continue
            try:
                _, high = self._consumer.get_watermark_offsets(TopicPartition(*key), cached=True)
            except KafkaException:
                continue
            if high is None or high < 0:
                continue
            out[key] = max(0, high - positions.get(key, 0)) if key in positions else high
        return out

    def partition_count(self, topic: str) -> int:
        """How many partitions ``topic`` has (from cached metadata, refreshed when unknown)."""
        known = self._partition_counts.get(topic)
        if known is None:
            meta = self._metadata().list_topics(topic, timeout=10).topics.get(topic)
            known = len(meta.partitions) if meta is not None and meta.partitions else 0
            self._partition_counts[topic] = known
        return known

    def probe(self, timeout: float) -> bool:
        """True when the cluster answers a metadata request within ``timeout`` s."""
        try:
            self._metadata().list_topics(timeout=timeout)
        except KafkaException:
            return False
        return True

    def _metadata(self) -> Any:
        """The handle metadata requests go to (an admin client, made once; never the
        group's consumer, see ``__init__``)."""
        if self._metadata_client is None:
            from confluent_kafka.admin import AdminClient

            self._metadata_client = AdminClient(self._metadata_options)
        return self._metadata_client

    def close(self) -> None:
        if self._direct is not None:
            self._direct.close()
        self._consumer.close()


class KafkaSink:
    """An idempotent producer that tells when everything sent is durable.

    ``send`` never blocks for long: when librdkafka's queue is full it serves
    delivery reports until there is room. ``flush`` waits for acknowledgements;
    a message that finally failed makes ``flush`` raise ``SinkError`` (the caller
    then must not commit the batch that produced it).
    """

    def __init__(
        self,
        options: Mapping[str, Any],
        *,
        retry_failed: bool = False,
        on_failure: Callable[[str, str], None] | None = None,
    ) -> None:
        conf: dict[str, Any] = {
            "linger.ms": 5,
            "compression.type": "lz4",
            **client_options(options),
            "enable.idempotence": True,
            "acks": "all",
        }
        self._producer = Producer(_with_logger(conf))
        self._failures: list[str] = []
        self._failed: list[OutMessage] = []
        # True: a refused record is sent again on the next flush, which reports it as
        # still unacknowledged (the caller keeps waiting) instead of raising.
        self.retry_failed = retry_failed
        self._on_failure = on_failure
        self.sent = 0
        self.acknowledged = 0

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            topic = str(msg.topic())
            self._failures.append(f"{topic}: {err.str()}")
            if self._on_failure is not None:
                self._on_failure(topic, err.name() if hasattr(err, "name") else str(err.code()))
            if self.retry_failed:
                self._failed.append(
                    OutMessage(
                        topic=topic,
                        value=msg.value() or b"",
                        key=msg.key(),
                        headers=_headers(msg.headers()),
                    )
                )
        else:
            self.acknowledged += 1

    def send(self, message: OutMessage) -> None:
        deadline = time.monotonic() + 60.0
        while True:
            try:
                self._producer.produce(
                    message.topic,
                    value=message.value,
                    key=message.key,
                    headers=list(message.headers) or None,
                    on_delivery=self._delivered,
                )
                self.sent += 1
                break
            except BufferError:
                if time.monotonic() > deadline:
                    raise SinkError("the producer queue stayed full for 60 s") from None
                self._producer.poll(0.1)
            except KafkaException as exc:  # e.g. a record over message.max.bytes
                raise SinkError(
                    f"cannot produce {len(message.value)} bytes to {message.topic}: "
                    f"{exc.args[0].str() if exc.args else exc} (dead letters are cut to "
                    "dead_letter_max_bytes; keep kafka message.max.bytes above it)"
                ) from None
        self._producer.poll(0)

    def flush(self, timeout: float) -> int:
        remaining = int(self._producer.flush(timeout))
        if self._failed:  # retry_failed: send again, still owed
            failed, self._failed = self._failed, []
            log.warning(
                "%d record(s) refused, sending again; first: %s", len(failed), self._failures[0]
            )
            self._failures = []
            time.sleep(min(timeout, 1.0))  # do not spin against a broker that says no
            for message in failed:
                self.send(message)
            return remaining + len(failed)
        if self._failures:
            failures, self._failures = self._failures, []
            raise SinkError(f"{len(failures)} message(s) not delivered, first: {failures[0]}")
        return remaining

    def close(self, timeout: float = 10.0) -> int:
        return int(self._producer.flush(timeout))
