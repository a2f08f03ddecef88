"""A direct fetch path: the Kafka Fetch protocol read straight into columns.

librdkafka makes a Python ``Message`` per record (~1.1-1.4 µs of CPU each here),
which caps a consumer at about 800k events/s per core before any decoding. On this
path the consumer group stays librdkafka's (joins, heartbeats, rebalances, offset
commits), but its partitions are paused there and a fetch thread of our own asks
each partition's leader for records (Fetch v4) and walks the record batches with
compiled kernels (:mod:`connectors.records`): a batch reaches the decoder as one
buffer of values end to end, with no object per record.

The thread fetches ahead while the caller decodes (sockets and kernels release the
GIL), up to ``queued.max.messages.kbytes``; requests are bounded by
``fetch.max.bytes`` and ``max.partition.fetch.bytes`` as librdkafka's are. Reading a
backlog of several partitions it keeps two requests out per leader (for disjoint
partitions, each answered at once), so the broker prepares a response while the
thread reads the last; caught up, one request waits for records of all, at most 10 ms
while another partition waits for the caller to take what was fetched for it (so that
partition is not held a whole ``max_wait`` behind the long poll). It follows
leaders through metadata, reconnects with backoff after broker failures, resets a
partition whose offset is out of range (``auto.offset.reset``) and reports every
failure through ``on_error`` (librdkafka's error names where one exists); nothing it
meets stops it.

Supported: ``security.protocol`` plaintext, ssl, sasl_plaintext and sasl_ssl; TLS
with ``ssl.ca.location``, ``ssl.certificate.location``, ``ssl.key.location``,
``ssl.key.password``, ``enable.ssl.certificate.verification`` and
``ssl.endpoint.identification.algorithm``; SASL PLAIN, SCRAM-SHA-256 and
SCRAM-SHA-512 with ``sasl.username`` and ``sasl.password``. Other mechanisms
(GSSAPI, OAUTHBEARER) are not: :func:`direct_fetch_problem` says so before anything
starts, and librdkafka's path serves them.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import logging
import os
import socket
import ssl
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from connectors.records import CorruptRecordsError, RecordColumns, read_records

__all__ = ["DirectFetcher", "FetchStatus", "direct_fetch_problem"]

log = logging.getLogger("driftwarden.fetch")

TopicPartitionKey = tuple[str, int]

_API_FETCH, _API_LIST_OFFSETS, _API_METADATA = 1, 2, 3
_FETCH_VERSION, _LIST_OFFSETS_VERSION, _METADATA_VERSION = 4, 1, 1

# Kafka error codes the fetcher handles (names as librdkafka reports them)
_ERRORS = {
    1: "OFFSET_OUT_OF_RANGE",
    3: "UNKNOWN_TOPIC_OR_PART",
    5: "LEADER_NOT_AVAILABLE",
    6: "NOT_LEADER_FOR_PARTITION",
    7: "REQUEST_TIMED_OUT",
    56: "KAFKA_STORAGE_ERROR",
    74: "FENCED_LEADER_EPOCH",
    75: "UNKNOWN_LEADER_EPOCH",
}
_OFFSET_OUT_OF_RANGE = 1
_CORRUPT_TRIES = 3
# Fetch requests a leader may have out at once (see DirectFetcher._fetch_round).
_PIPELINE = 2
# How long the broker may wait for records when none is readable now and another
# partition of the leader waits for the caller (its fetched records are not taken).
_HELD_WAIT_MS = 10
SWITCH_INTERVAL = 0.001  # s: the GIL switch interval a process with a fetcher runs with
_SUPPORTED_PROTOCOLS = ("plaintext", "ssl", "sasl_plaintext", "sasl_ssl")
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_API_SASL_HANDSHAKE, _API_SASL_AUTHENTICATE = 17, 36


def _mechanism(options: Mapping[str, Any]) -> str:
    return str(options.get("sasl.mechanism", options.get("sasl.mechanisms", "GSSAPI"))).upper()


def direct_fetch_problem(options: Mapping[str, Any]) -> str | None:
    """Why the direct fetch path cannot serve these client options, or None."""
    protocol = str(options.get("security.protocol", "plaintext")).lower()
    if protocol not in _SUPPORTED_PROTOCOLS:
        return (
            f"kafka.security.protocol {protocol!r} is not supported by source.fetch 'direct' "
            f"({', '.join(_SUPPORTED_PROTOCOLS)}); use source.fetch 'librdkafka'"
        )
    if protocol.startswith("sasl") and _mechanism(options) not in _SASL_MECHANISMS:
        return (
            f"kafka.sasl.mechanism {_mechanism(options)!r} is not supported by source.fetch "
            f"'direct' ({', '.join(_SASL_MECHANISMS)}); use source.fetch 'librdkafka'"
        )
    return None


class _ProtocolError(Exception):
    """A broker answer that does not parse, or a connection that failed."""


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">h", len(raw)) + raw


class _Reader:
    """Big-endian fields read from a response, front to back."""

    __slots__ = ("data", "pos")

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str) -> tuple[Any, ...]:
        try:
            values = struct.unpack_from(fmt, self.data, self.pos)
        except struct.error as exc:
            raise _ProtocolError(f"short response: {exc}") from exc
        self.pos += struct.calcsize(fmt)
        return values

    def int16(self) -> int:
        return int(self.take(">h")[0])

    def int32(self) -> int:
        return int(self.take(">i")[0])

    def int64(self) -> int:
        return int(self.take(">q")[0])

    def string(self) -> str | None:
        n = self.int16()
        if n < 0:
            return None
        raw = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return raw.decode(errors="replace")


@dataclass(frozen=True)
class _Sasl:
    """SASL credentials (never logged)."""

    mechanism: str
    username: str
    password: str = field(repr=False)


def _sasl(options: Mapping[str, Any]) -> _Sasl | None:
    if not str(options.get("security.protocol", "plaintext")).lower().startswith("sasl"):
        return None
    return _Sasl(
        _mechanism(options),
        str(options.get("sasl.username", "")),
        str(options.get("sasl.password", "")),
    )


class _Connection:
    """One socket to one broker; requests are answered in order."""

    def __init__(
        self,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        timeout: float,
        sasl: _Sasl | None = None,
    ) -> None:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock: socket.socket = (
            tls.wrap_socket(sock, server_hostname=host) if tls is not None else sock
        )
        self.correlation = 0
        self.pending: deque[int] = deque()  # requests sent and not yet answered
        # The receive buffer, reused by every response: a fresh multi-megabyte buffer
        # per response is zero-filled and page-faulted while this thread holds the GIL
        # (the decoding thread waits); the pages of a reused one stay mapped. A
        # response is only read until the next request (records are copied out).
        self._rx = np.empty(0, np.uint8)
        if sasl is not None:
            try:
                self._authenticate(sasl)
            except BaseException:
                self.close()
                raise

    def _authenticate(self, sasl: _Sasl) -> None:
        """SaslHandshake v1 + SaslAuthenticate v0: PLAIN, or SCRAM (RFC 5802)."""
        r = _Reader(self.request(_API_SASL_HANDSHAKE, 1, _string(sasl.mechanism)))
        if r.int16() != 0:
            raise _ProtocolError(f"the broker does not offer SASL {sasl.mechanism}")
        if sasl.mechanism == "PLAIN":
            self._sasl_step(b"\0" + sasl.username.encode() + b"\0" + sasl.password.encode())
            return
        scram = _Scram(sasl)
        server_first = self._sasl_step(scram.first())
        server_final = self._sasl_step(scram.final(server_first))
        scram.verify(server_final)

    def _sasl_step(self, token: bytes) -> bytes:
        r = _Reader(self.request(_API_SASL_AUTHENTICATE, 0, struct.pack(">i", len(token)) + token))
        code = r.int16()
        message = r.string()
        if code != 0:
            raise _ProtocolError(f"SASL authentication failed: {message or code}")
        size = r.int32()
        return bytes(r.data[r.pos : r.pos + max(size, 0)])

    def request(self, api: int, version: int, body: bytes) -> memoryview:
        """Send a request and return its response body, valid until the next response
        is read on this connection (it lives in the reused receive buffer)."""
        self.send(api, version, body)
        return self.receive()

    def send(self, api: int, version: int, body: bytes) -> None:
        """Send a request; its response comes with ``receive``, after those of the
        requests sent before it (a broker answers a connection's requests in order)."""
        self.correlation += 1
        head = struct.pack(">hhi", api, version, self.correlation) + _string("driftwarden")
        self.sock.sendall(struct.pack(">i", len(head) + len(body)) + head + body)
        self.pending.append(self.correlation)

    def receive(self) -> memoryview:
        """The body of the response to the oldest request not yet answered, valid
        until the next ``receive``."""
        expected = self.pending.popleft()
        (size,) = struct.unpack(">i", self._read(memoryview(bytearray(4))))
        if size < 4:
            raise _ProtocolError(f"response of {size} bytes")
        if self._rx.size < size:
            self._rx = np.empty(max(size, 2 * self._rx.size), np.uint8)
        data = self._read(memoryview(self._rx.data)[:size])
        (correlation,) = struct.unpack_from(">i", data, 0)
        if correlation != expected:
            raise _ProtocolError("response out of order")
        return data[4:]

    def _read(self, view: memoryview) -> memoryview:
        """Fill ``view`` from the socket; returns it."""
        n = len(view)
        got = 0
        # One system call for the whole response where the socket allows it: each
        # return to Python waits for the GIL, which the decoding thread holds.
        flags = 0 if isinstance(self.sock, ssl.SSLSocket) else socket.MSG_WAITALL
        while got < n:
            k = self.sock.recv_into(view[got:], n - got, flags)
            if not k:
                raise _ProtocolError("connection closed by the broker")
            got += k
        return view

    def interrupt(self) -> None:
        """Make a read in progress on another thread end now."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class _Scram:
    """The client side of SCRAM-SHA-256/512 (RFC 5802, as Kafka uses it)."""

    def __init__(self, sasl: _Sasl) -> None:
        self.sasl = sasl
        self.hash = "sha256" if sasl.mechanism.endswith("256") else "sha512"
        name = sasl.username.replace("=", "=3D").replace(",", "=2C")
        self.nonce = base64.b64encode(os.urandom(24)).decode()
        self.first_bare = f"n={name},r={self.nonce}"
        self.server_key = b""
        self.auth_message = b""

    def first(self) -> bytes:
        return f"n,,{self.first_bare}".encode()

    def final(self, server_first: bytes) -> bytes:
        fields = dict(p.split("=", 1) for p in server_first.decode().split(",") if "=" in p)
        nonce, salt, rounds = fields.get("r", ""), fields.get("s", ""), int(fields.get("i", "0"))
        if not nonce.startswith(self.nonce) or not salt or rounds < 1:
            raise _ProtocolError("SASL SCRAM: the broker's first message is not valid")
        salted = hashlib.pbkdf2_hmac(
            self.hash, self.sasl.password.encode(), base64.b64decode(salt), rounds
        )
        client_key = hmac.digest(salted, b"Client Key", self.hash)
        stored = hashlib.new(self.hash, client_key).digest()
        without_proof = f"c=biws,r={nonce}"
        self.auth_message = f"{self.first_bare},{server_first.decode()},{without_proof}".encode()
        signature = hmac.digest(stored, self.auth_message, self.hash)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self.server_key = hmac.digest(salted, b"Server Key", self.hash)
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, server_final: bytes) -> None:
        expected = hmac.digest(self.server_key, self.auth_message, self.hash)
        text = server_final.decode(errors="replace")
        if not text.startswith("v=") or not hmac.compare_digest(
            base64.b64decode(text[2:]), expected
        ):
            raise _ProtocolError("SASL SCRAM: the broker's signature does not verify")


def _tls_context(options: Mapping[str, Any]) -> ssl.SSLContext | None:
    if str(options.get("security.protocol", "plaintext")).lower() not in ("ssl", "sasl_ssl"):
        return None
    ctx = ssl.create_default_context(cafile=options.get("ssl.ca.location") or None)
    if options.get("ssl.certificate.location"):
        ctx.load_cert_chain(
            options["ssl.certificate.location"],
            options.get("ssl.key.location") or None,
            options.get("ssl.key.password") or None,
        )
    if str(options.get("ssl.endpoint.identification.algorithm", "https")).lower() == "none":
        ctx.check_hostname = False
    if str(options.get("enable.ssl.certificate.verification", "true")).lower() == "false":
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _servers(options: Mapping[str, Any]) -> list[tuple[str, int]]:
    out = []
    for item in str(options.get("bootstrap.servers", "")).split(","):
        item = item.strip().split("://")[-1]
        if item:
            host, _, port = item.rpartition(":")
            out.append((host.strip("[]") or item, int(port or 9092)))
    return out


@dataclass
class _Part:
    """One assigned partition as the fetch thread sees it."""

    generation: int
    position: int | None  # next offset to fetch; None until resolved
    leader: int | None = None
    high: int = -1
    # The offset below which records can be read now (the high watermark, or the last
    # stable offset for read_committed), as of the latest response; -1: unknown.
    readable: int = -1
    queued: deque[RecordColumns] = field(default_factory=deque)
    queued_bytes: int = 0
    retry_at: float = 0.0
    corrupt_tries: int = 0


@dataclass(frozen=True, slots=True)
class FetchStatus:
    """What the direct fetcher has done so far: record bytes fetched ahead and not yet
    taken (``queued_bytes``), and since start the fetch requests answered and the
    record bytes they delivered.

    >>> FetchStatus(queued_bytes=0, requests=0, fetched_bytes=0).queued_bytes
    0
    """

    queued_bytes: int
    requests: int
    fetched_bytes: int


class DirectFetcher:
    """Fetches assigned partitions ahead of the caller, into :class:`RecordColumns`.

    ``assign`` and ``revoke`` come from the consumer group's rebalance callbacks
    (the caller's thread); ``take`` hands out what was fetched, in offset order per
    partition, at most ``max_events`` records at once.
    """

    def __init__(
        self,
        options: Mapping[str, Any],
        *,
        on_error: Callable[[str, bool], None] | None = None,
        max_wait: float = 0.5,
        max_queued_bytes: int | None = None,
        partition_max_bytes: int | None = None,
        timeout: float = 10.0,
    ) -> None:
        problem = direct_fetch_problem(options)
        if problem is not None:
            raise ValueError(problem)
        self._servers = _servers(options)
        self._tls = _tls_context(options)
        self._sasl = _sasl(options)
        self._committed = str(options.get("isolation.level", "read_committed")) == "read_committed"
        self._reset_latest = str(options.get("auto.offset.reset", "earliest")).lower() in (
            "latest",
            "largest",
            "end",
        )
        self._on_error = on_error
        self._max_wait_ms = max(1, min(int(max_wait * 1000), 500))
        # librdkafka's own bounds, in bytes, unless given
        kbytes = int(options.get("queued.max.messages.kbytes", 32_768))
        self._max_queued = max_queued_bytes or max(1 << 20, kbytes * 1024)
        self._partition_max = partition_max_bytes or int(
            options.get("max.partition.fetch.bytes", 1 << 20)
        )
        self._fetch_max = int(options.get("fetch.max.bytes", 16 << 20))
        self._timeout = timeout
        self._lock = threading.Condition()
        self._parts: dict[TopicPartitionKey, _Part] = {}
        self._generation = 0
        self._queued_bytes = 0
        self._requests = 0
        self._fetched_bytes = 0
        self._brokers: dict[int, tuple[str, int]] = {}
        self._conns: dict[int, _Connection] = {}
        self._metadata_due = True
        self._metadata_at = 0.0
        self._backoff = 0.0
        self._stop = False
        self._rr = 0
        self._turn = 0
        # Fetch requests sent and not yet answered, oldest first (connection, what it
        # asks for, whether the broker answers it at once): the fetch thread's own.
        self._inflight: deque[
            tuple[_Connection, list[tuple[TopicPartitionKey, int, int]], bool]
        ] = deque()
        # The fetch thread needs the GIL a few times per response; with Python's
        # default switch interval (5 ms) a thread busy decoding and judging kept it
        # waiting long enough to starve the stream (356k against 411-476k events/s
        # at 1 ms, bench/RESULTS.md). A process-wide setting: it is only lowered.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        self._thread = threading.Thread(target=self._run, name="driftwarden-fetch", daemon=True)
        self._thread.start()

    # -- the caller's side ----------------------------------------------------------
    def assign(self, starts: Mapping[TopicPartitionKey, int | None]) -> None:
        """Fetch these partitions from these offsets (None: by ``auto.offset.reset``)."""
        with self._lock:
            for key, start in starts.items():
                self._generation += 1
                self._drop(key)
                self._parts[key] = _Part(
                    self._generation, start if start is None or start >= 0 else None
                )
            self._metadata_due = True
            self._lock.notify_all()

    def revoke(self, keys: Iterable[TopicPartitionKey]) -> None:
        """Stop fetching these partitions and forget what was fetched ahead."""
        with self._lock:
            for key in keys:
                self._drop(key)
                self._parts.pop(key, None)
            self._lock.notify_all()

    def _drop(self, key: TopicPartitionKey) -> None:
        part = self._parts.get(key)
        if part is not None:
            self._queued_bytes -= part.queued_bytes
            part.queued.clear()
            part.queued_bytes = 0

    def take(
        self, max_events: int, timeout: float
    ) -> list[tuple[TopicPartitionKey, RecordColumns]]:
        """Up to ``max_events`` fetched records, waiting up to ``timeout`` s for some."""
        deadline = time.monotonic() + timeout
        out: list[tuple[TopicPartitionKey, RecordColumns]] = []
        with self._lock:
            while not any(p.queued for p in self._parts.values()):
                left = deadline - time.monotonic()
                if left <= 0 or self._stop:
                    return out
                self._lock.wait(left)
            keys = list(self._parts)
            start = self._rr % len(keys)
            self._rr += 1
            room = max_events
            for key in keys[start:] + keys[:start]:
                part = self._parts[key]
                while part.queued and room > 0:
                    cols = part.queued[0]
                    if len(cols) <= room:
                        part.queued.popleft()
                        taken = cols
                    else:
                        taken, part.queued[0] = _split(cols, room)
                    size = int(taken.values.starts[-1] - taken.values.starts[0])
                    part.queued_bytes -= size
                    self._queued_bytes -= size
                    room -= len(taken)
                    out.append((key, taken))
                if room <= 0:
                    break
            self._lock.notify_all()
        return out

    def status(self) -> FetchStatus:
        """Queued bytes now, requests and delivered bytes since start."""
        with self._lock:
            return FetchStatus(self._queued_bytes, self._requests, self._fetched_bytes)

    def high_watermark(self, key: TopicPartitionKey) -> int | None:
        """The partition's high watermark from the latest fetch response, or None."""
        part = self._parts.get(key)
        return None if part is None or part.high < 0 else part.high

    def close(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        for conn in list(self._conns.values()):  # ends a fetch waiting on the broker
            conn.interrupt()
        self._thread.join(timeout=5.0)
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    # -- the fetch thread ------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._lock:
                while (
                    not self._stop
                    and not self._inflight
                    and (not self._parts or self._queued_bytes >= self._max_queued)
                ):
                    self._lock.wait(0.2)
                if self._stop:
                    return
            try:
                if not self._inflight:  # other requests only on idle connections
                    now = time.monotonic()
                    if self._metadata_due or (self._leaderless() and now >= self._metadata_at):
                        self._metadata_at = now + 1.0  # a partition without a leader: ask again
                        self._refresh_metadata()
                    self._resolve_positions()
                sent = self._fetch_round()
                if self._inflight:
                    self._receive()
                    self._backoff = 0.0
                elif not sent:
                    time.sleep(0.01)  # nothing fetchable (positions or leaders pending)
            except (OSError, _ProtocolError, ssl.SSLError) as exc:
                self._failed(exc)
            except Exception as exc:  # a bug must not end the thread silently
                log.exception("direct fetch failed")
                self._failed(exc)

    def _leaderless(self) -> bool:
        with self._lock:
            return any(part.leader is None for part in self._parts.values())

    def _failed(self, exc: BaseException) -> None:
        self._inflight.clear()  # unanswered: their partitions are fetched again
        if self._stop:
            return
        log.warning("direct fetch: %s; retrying", exc)
        self._report("_TRANSPORT")
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
        self._metadata_due = True
        self._backoff = min(2.0, max(0.1, self._backoff * 2))
        with self._lock:
            self._lock.wait(self._backoff)

    def _report(self, name: str) -> None:
        if self._on_error is not None:
            try:
                self._on_error(name, False)
            except Exception:  # the caller's counter must not stop fetching
                log.exception("error callback failed")

    def _connection(self, node: int | None) -> _Connection:
        if node is not None and node in self._conns:
            return self._conns[node]
        if node is None:
            candidates = list(self._conns.items())
            if candidates:
                return candidates[0][1]
            last: Exception | None = None
            for host, port in self._servers:
                try:
                    conn = _Connection(host, port, self._tls, self._timeout, self._sasl)
                    self._conns[-1] = conn
                    return conn
                except OSError as exc:
                    last = exc
            raise _ProtocolError(f"no bootstrap server answers: {last}")
        host, port = self._brokers[node]
        conn = _Connection(host, port, self._tls, self._timeout, self._sasl)
        self._conns[node] = conn
        return conn

    def _refresh_metadata(self) -> None:
        with self._lock:
            topics = sorted({t for t, _ in self._parts})
        body = struct.pack(">i", len(topics)) + b"".join(_string(t) for t in topics)
        r = _Reader(self._connection(None).request(_API_METADATA, _METADATA_VERSION, body))
        brokers = {}
        for _ in range(r.int32()):
            node = r.int32()
            host = r.string() or ""
            port = r.int32()
            r.string()  # rack
            brokers[node] = (host, port)
        r.int32()  # controller
        leaders: dict[TopicPartitionKey, int] = {}
        for _ in range(r.int32()):
            r.int16()
            topic = r.string() or ""
            r.take(">b")  # internal
            for _ in range(r.int32()):
                err, partition, leader = r.take(">hii")
                for _ in range(2):  # replicas, isr
                    count = r.int32()
                    r.pos += 4 * max(count, 0)
                if err == 0 and leader >= 0:
                    leaders[(topic, partition)] = leader
        self._brokers = brokers
        with self._lock:
            for key, part in self._parts.items():
                part.leader = leaders.get(key)
        self._metadata_due = False

    def _resolve_positions(self) -> None:
        """Ask each leader for the reset offset of partitions without a position."""
        with self._lock:
            todo: dict[int, list[tuple[TopicPartitionKey, int]]] = {}
            for key, part in self._parts.items():
                if part.position is None and part.leader is not None:
                    todo.setdefault(part.leader, []).append((key, part.generation))
        when = -1 if self._reset_latest else -2
        for node, items in todo.items():
            by_topic: dict[str, list[int]] = {}
            for (topic, partition), _ in items:
                by_topic.setdefault(topic, []).append(partition)
            body = struct.pack(">ii", -1, len(by_topic))
            for topic, partitions in by_topic.items():
                body += _string(topic) + struct.pack(">i", len(partitions))
                body += b"".join(struct.pack(">iq", p, when) for p in partitions)
            r = _Reader(
                self._connection(node).request(_API_LIST_OFFSETS, _LIST_OFFSETS_VERSION, body)
            )
            found: dict[TopicPartitionKey, int] = {}
            for _ in range(r.int32()):
                topic = r.string() or ""
                for _ in range(r.int32()):
                    partition, err, _ts, offset = r.take(">ihqq")
                    if err == 0:
                        found[(topic, partition)] = offset
                    else:
                        self._report(_ERRORS.get(err, f"ERROR_{err}"))
                        self._metadata_due = True
            with self._lock:
                for key, generation in items:
                    now = self._parts.get(key)
                    if now is not None and now.generation == generation and key in found:
                        now.position = found[key]

    def _fetch_round(self) -> bool:
        """Send fetch requests for the ready partitions no request is out for; True if
        any was sent.

        A leader has up to ``_PIPELINE`` requests out, for disjoint partitions, but
        more than one only while each asks for a partition with records to read now
        (below its high watermark, or last stable offset): the broker answers such a
        request at once (min_bytes 1), so none waits behind a request the broker holds
        for new records (``max_wait``). Reading a backlog, the broker prepares the next
        response while this thread reads the last one; caught up, one request asks
        for all."""
        now = time.monotonic()
        busy = {key for _, items, _ in self._inflight for key, _, _ in items}
        with self._lock:
            if self._metadata_due or self._queued_bytes >= self._max_queued:
                return False  # metadata first (on idle connections); or full
            if self._inflight and any(p.position is None for p in self._parts.values()):
                return False  # positions to resolve first (on idle connections)
            plan: dict[int, list[tuple[TopicPartitionKey, int, int]]] = {}
            readable: set[TopicPartitionKey] = set()
            held: set[int] = set()  # leaders with a partition fetched far enough ahead
            share = self._max_queued // max(1, len(self._parts))
            for key, part in self._parts.items():
                if part.position is None or part.leader is None or part.retry_at > now:
                    continue
                if key in busy:  # a request for it is out
                    continue
                if part.queued_bytes >= share:  # fetched far enough ahead
                    held.add(part.leader)
                    continue
                plan.setdefault(part.leader, []).append((key, part.position, part.generation))
                if 0 <= part.position < part.readable:
                    readable.add(key)
        # A broker returns a batch larger than max.partition.fetch.bytes whole only for
        # the first partition of a request that has data: the order turns every round
        # so no partition waits behind the others for ever (as the Java client does).
        self._turn += 1
        sent = False
        for node, items in plan.items():
            k = self._turn % len(items)
            items = items[k:] + items[:k]
            lagging = [item for item in items if item[0] in readable]
            conn = self._connection(node)
            out = [prompt for c, _, prompt in self._inflight if c is conn]
            if out and not (lagging and all(out) and len(out) < _PIPELINE):
                continue  # behind a request that may wait for records: wait for it
            if not out and len(lagging) > 1 and _PIPELINE > 1:
                # Two requests, each with records to read: half the lagging partitions
                # in the second, everything else in the first.
                second = lagging[len(lagging) // 2 :]
                taken = {item[0] for item in second}
                self._send_fetch(conn, [i for i in items if i[0] not in taken], True)
                self._send_fetch(conn, second, True)
            elif lagging or node not in held:
                self._send_fetch(conn, items, bool(lagging))
            else:
                # Nothing to read now, and a partition waits for the caller to take
                # what was fetched for it: a short wait, so that partition is asked
                # for again soon (not after a whole max_wait behind this request).
                self._send_fetch(conn, items, False, _HELD_WAIT_MS)
            sent = True
        return sent

    def _send_fetch(
        self,
        conn: _Connection,
        items: list[tuple[TopicPartitionKey, int, int]],
        prompt: bool,
        wait_ms: int | None = None,
    ) -> None:
        """Send a fetch request for ``items``; ``prompt``: one of them has records to
        read now, so the broker answers at once; ``wait_ms``: how long the broker may
        wait for records (default ``max_wait``)."""
        by_topic: dict[str, list[tuple[int, int]]] = {}
        for (topic, partition), position, _ in items:
            by_topic.setdefault(topic, []).append((partition, position))
        body = struct.pack(
            ">iiiib i",
            -1,
            self._max_wait_ms if wait_ms is None else wait_ms,
            1,
            self._fetch_max,
            1 if self._committed else 0,
            len(by_topic),
        )
        for topic, parts in by_topic.items():
            body += _string(topic) + struct.pack(">i", len(parts))
            body += b"".join(struct.pack(">iqi", p, o, self._partition_max) for p, o in parts)
        conn.send(_API_FETCH, _FETCH_VERSION, body)
        self._inflight.append((conn, items, prompt))

    def _receive(self) -> None:
        """Read the oldest fetch response and deliver what it holds."""
        conn, items, _ = self._inflight.popleft()
        data = conn.receive()
        self._requests += 1  # this thread's counter (read under the lock: an int)
        buf = np.frombuffer(data, np.uint8)
        r = _Reader(data)
        r.int32()  # throttle time
        asked = {key: (position, generation) for key, position, generation in items}
        for _ in range(r.int32()):
            topic = r.string() or ""
            for _ in range(r.int32()):
                partition, err, high, lso = r.take(">ihqq")
                count = r.int32()
                aborted = [tuple(r.take(">qq")) for _ in range(max(count, 0))]
                size = r.int32()
                start = r.pos
                r.pos += max(size, 0)
                key = (topic, partition)
                if key not in asked:
                    continue
                position, generation = asked[key]
                if err != 0:
                    self._partition_error(key, generation, err)
                    continue
                cols: RecordColumns | None = None
                if size > 0:
                    try:
                        cols = read_records(
                            buf, start, start + size, position, aborted if self._committed else ()
                        )
                    except CorruptRecordsError as exc:
                        self._report("_BAD_MSG")
                        self._corrupt(key, generation, position, exc)
                        continue
                readable = lso if self._committed and lso >= 0 else high
                self._deliver(key, generation, high, cols, readable)

    def _deliver(
        self,
        key: TopicPartitionKey,
        generation: int,
        high: int,
        cols: RecordColumns | None,
        readable: int,
    ) -> None:
        with self._lock:
            part = self._parts.get(key)
            if part is None or part.generation != generation:
                return  # revoked or re-assigned meanwhile
            part.high = high
            part.readable = readable
            if cols is None:
                return
            part.position = cols.next_offset
            part.corrupt_tries = 0
            if len(cols):
                size = int(cols.values.starts[-1] - cols.values.starts[0])
                part.queued.append(cols)
                part.queued_bytes += size
                self._queued_bytes += size
                self._fetched_bytes += size
                self._lock.notify_all()

    def _partition_error(self, key: TopicPartitionKey, generation: int, err: int) -> None:
        name = _ERRORS.get(err, f"ERROR_{err}")
        log.warning("direct fetch %s[%d]: %s", key[0], key[1], name)
        self._report(name)
        with self._lock:
            part = self._parts.get(key)
            if part is None or part.generation != generation:
                return
            if err == _OFFSET_OUT_OF_RANGE:
                part.position = None  # reset by auto.offset.reset
            self._metadata_due = True
            part.retry_at = time.monotonic() + 0.1

    def _corrupt(
        self, key: TopicPartitionKey, generation: int, position: int, exc: CorruptRecordsError
    ) -> None:
        """An unreadable batch (``read_records`` raises only when no good record comes
        before it, so nothing is skipped by moving to it) is fetched again
        ``_CORRUPT_TRIES`` times, then skipped (logged with its offsets), so one broken
        batch never stalls its partition."""
        with self._lock:
            part = self._parts.get(key)
            if part is None or part.generation != generation:
                return
            if exc.at > position:
                part.position = exc.at  # no record between: fetch from the bad batch
                return
            part.corrupt_tries += 1
            if part.corrupt_tries < _CORRUPT_TRIES:
                log.warning("%s[%d]: %s; fetching it again", key[0], key[1], exc)
                part.retry_at = time.monotonic() + 0.5
                return
            log.error(
                "%s[%d]: %s; skipped offsets %d to %d after %d tries",
                key[0],
                key[1],
                exc,
                position,
                exc.after - 1,
                part.corrupt_tries,
            )
            part.corrupt_tries = 0
            part.position = max(exc.after, position + 1)  # always forward


def _split(cols: RecordColumns, n: int) -> tuple[RecordColumns, RecordColumns]:
    head = RecordColumns(
        cols.values.rows(0, n),
        cols.keys.rows(0, n),
        cols.offsets[:n],
        cols.timestamps[:n],
        int(cols.offsets[n]),
    )
    tail = RecordColumns(
        cols.values.rows(n, len(cols)),
        cols.keys.rows(n, len(cols)),
        cols.offsets[n:],
        cols.timestamps[n:],
        cols.next_offset,
    )
    return head, tail
