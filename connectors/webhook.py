"""Webhook delivery: bounded per-sink queues, retries with backoff, a transport seam.

The dispatcher knows nothing of alerts or their formats: it takes already rendered
:class:`Delivery` records (sink name, alert id, dedup key, severity, body, headers)
and :class:`Endpoint` descriptions (where and how to POST). Secrets stay out of the
queue: an endpoint's ``finalize`` hook adds them at send time (an HMAC signature
header, a PagerDuty routing key), so ``state()`` (which is checkpointed) holds none.

Order and retries. Each sink has its own FIFO queue; the head is sent first and a
failure holds the whole sink back (so a ``resolved`` never overtakes its ``firing``)
until the next attempt, due after exponential backoff with full jitter:
``uniform(0, min(backoff_max, backoff_initial * 2**attempt))``. One dead sink never
delays another. Status 2xx is delivered; 408, 425, 429 and 5xx, timeouts and
connection errors are retried; 3xx and other 4xx are permanent: the delivery is dropped
and both ``on_failed`` and ``on_dropped`` are called.

Queues are bounded: when a sink's queue is full the *new* delivery is refused (the
oldest are kept, since they are the start of the story), counted in ``dropped`` and
reported through ``on_dropped``. A delivery whose dedup key is already queued or was
recently delivered to that sink is ignored, so re-submitting the same alert after a
crash does not send it twice.

Running it. Either call ``pump(now)`` from the main loop (sends what is due; every
POST can block up to the endpoint's timeout, so only do this where blocking is
acceptable), or call ``start()`` once: a daemon thread pumps, sleeping until the
next retry is due or a delivery is submitted, and the event loop never waits on a
dead webhook. ``submit`` is thread-safe; ``stop()`` ends the thread.
"""

from __future__ import annotations

import base64
import http.client
import random
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = [
    "MAX_RESPONSE_BYTES",
    "SEVERITY_ORDER",
    "Delivery",
    "Endpoint",
    "RetryPolicy",
    "Transport",
    "UrllibTransport",
    "WebhookDispatcher",
    "WebhookObserver",
]

SEVERITY_ORDER: tuple[str, ...] = ("info", "warning", "critical")
_RETRYABLE_4XX = frozenset({408, 425, 429})
_DELIVERED_MEMORY = 10000  # dedup keys remembered per sink after delivery
_STATE_VERSION = 1

Finalize = Callable[[bytes, Mapping[str, str], float], tuple[bytes, Mapping[str, str]]]
"""``(body, headers, wall_time) -> (body, headers)``: add secrets at send time."""


@runtime_checkable
class Transport(Protocol):
    """POSTs one body; returns the HTTP status. Network errors raise ``OSError``."""

    def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int: ...


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx comes back as its status: a webhook URL that moved is an error


MAX_RESPONSE_BYTES = 65_536  # what is read of a receiver's answer; the rest is dropped


class UrllibTransport:
    """The default transport: ``urllib.request``. Honours the usual proxy variables.

    Defences against a hostile or broken receiver: redirects are never followed (a
    3xx is a permanent failure; a POST sent on to another host could leak the
    alert); TLS certificates are verified against ``ca_file`` or the system store;
    at most ``max_response_bytes`` of the answer are read; ``timeout`` bounds the
    connection and every read, and the whole exchange is cut at ``2 * timeout``.
    """

    def __init__(
        self, ca_file: str | None = None, max_response_bytes: int = MAX_RESPONSE_BYTES
    ) -> None:
        context = ssl.create_default_context(cafile=ca_file)  # verifies host and chain
        self.max_response_bytes = max_response_bytes
        self._opener = urllib.request.build_opener(
            _NoRedirect(), urllib.request.HTTPSHandler(context=context)
        )

    def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
        if not url.startswith(("https://", "http://")):
            raise OSError("webhook URLs must be http:// or https://")
        request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
        deadline = time.monotonic() + 2 * timeout
        try:
            with self._opener.open(request, timeout=timeout) as response:
                status: int = response.status
                left = self.max_response_bytes
                while left > 0 and time.monotonic() < deadline:
                    chunk = response.read1(min(left, 8192))  # what has arrived, no waiting for more
                    if not chunk:
                        break
                    left -= len(chunk)
                return status
        except urllib.error.HTTPError as e:
            e.close()
            return e.code
        except (urllib.error.URLError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, TimeoutError):
                raise reason from None
            raise OSError(type(reason).__name__) from None  # no URL in the message


class WebhookObserver:
    """Observability hooks, all no-ops; subclass and override (faust sensor style).

    Hooks are called from whichever thread pumps; they must be cheap and not raise.
    """

    def on_sent(self, sink: str, latency_s: float) -> None:
        """A delivery was accepted (2xx); ``latency_s`` is the POST's duration."""

    def on_failed(self, sink: str, reason: str) -> None:
        """An attempt failed; ``reason`` is e.g. ``"http 503"``, ``"timeout"``."""

    def on_queued(self, sink: str, depth: int) -> None:
        """A delivery was queued; ``depth`` is the queue length after it."""

    def on_dropped(self, sink: str) -> None:
        """A delivery was refused (queue full) or given up (permanent failure)."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where one sink POSTs. ``url`` may carry a token: it is kept out of ``repr``."""

    name: str
    url: str = field(repr=False)
    min_severity: str = "info"
    timeout: float = 5.0
    max_queue: int = 10000
    finalize: Finalize | None = field(default=None, repr=False)
    # this endpoint's own transport (e.g. a private CA); None uses the dispatcher's
    transport: Transport | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.min_severity not in SEVERITY_ORDER:
            raise ValueError(f"min_severity must be one of {SEVERITY_ORDER}")
        if self.timeout <= 0 or self.max_queue < 1:
            raise ValueError("timeout must be > 0 and max_queue >= 1")


@dataclass(frozen=True, slots=True)
class Delivery:
    """One rendered message for one sink. ``key`` deduplicates (alert id + status)."""

    sink: str
    alert_id: str
    key: str
    severity: str
    body: bytes = field(repr=False)
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)

    def to_state(self) -> dict[str, Any]:
        return {
            "sink": self.sink,
            "alert_id": self.alert_id,
            "key": self.key,
            "severity": self.severity,
            "body": base64.b64encode(self.body).decode("ascii"),
            "headers": [list(h) for h in self.headers],
        }

    @classmethod
    def from_state(cls, s: Mapping[str, Any]) -> Delivery:
        return cls(
            sink=s["sink"],
            alert_id=s["alert_id"],
            key=s["key"],
            severity=s["severity"],
            body=base64.b64decode(s["body"]),
            headers=tuple((str(k), str(v)) for k, v in s["headers"]),
        )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff in seconds; ``max_attempts`` 0 retries until delivered."""

    backoff_initial: float = 1.0
    backoff_max: float = 300.0
    max_attempts: int = 0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Full jitter: uniform in ``[0, min(max, initial * 2**(attempt-1))]``."""
        cap = min(self.backoff_max, self.backoff_initial * 2.0 ** min(attempt - 1, 62))
        return rng.uniform(0.0, cap)


@dataclass
class _SinkQueue:
    endpoint: Endpoint
    items: deque[Delivery] = field(default_factory=deque)
    keys: set[str] = field(default_factory=set)
    delivered: OrderedDict[str, None] = field(default_factory=OrderedDict)
    attempts: int = 0  # failed attempts of the head
    next_at: float = 0.0  # monotonic time the head may be tried
    dropped: int = 0
    sent: int = 0


class WebhookDispatcher:
    """Queues deliveries per sink and sends them with retries (see the module doc)."""

    def __init__(
        self,
        endpoints: Iterable[Endpoint],
        transport: Transport | None = None,
        observer: WebhookObserver | None = None,
        retry: RetryPolicy | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.transport: Transport = transport if transport is not None else UrllibTransport()
        self.observer = observer if observer is not None else WebhookObserver()
        self.retry = retry if retry is not None else RetryPolicy()
        self.rng = rng if rng is not None else random.Random()
        self.clock = clock
        self.wall_clock = wall_clock
        self._queues: dict[str, _SinkQueue] = {}
        for ep in endpoints:
            if ep.name in self._queues:
                raise ValueError(f"duplicate endpoint name {ep.name!r}")
            self._queues[ep.name] = _SinkQueue(ep)
        self._lock = threading.Lock()  # guards the queues
        self._pump_lock = threading.Lock()  # one pumper at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- submitting ---------------------------------------------------------------

    @property
    def sinks(self) -> tuple[str, ...]:
        return tuple(self._queues)

    def wants(self, sink: str, severity: str) -> bool:
        """Whether ``sink`` takes alerts of ``severity`` (its ``min_severity``)."""
        q = self._queues[sink]
        return SEVERITY_ORDER.index(severity) >= SEVERITY_ORDER.index(q.endpoint.min_severity)

    def submit(self, delivery: Delivery) -> bool:
        """Queue one delivery; False when filtered, a duplicate, or refused (queue full)."""
        q = self._queues.get(delivery.sink)
        if q is None:
            raise KeyError(f"unknown sink {delivery.sink!r}; known: {sorted(self._queues)}")
        if not self.wants(delivery.sink, delivery.severity):
            return False
        with self._lock:
            if delivery.key in q.keys or delivery.key in q.delivered:
                return False
            if len(q.items) >= q.endpoint.max_queue:
                q.dropped += 1
                full = True
            else:
                q.items.append(delivery)
                q.keys.add(delivery.key)
                depth = len(q.items)
                full = False
        if full:
            self.observer.on_dropped(delivery.sink)
            return False
        self.observer.on_queued(delivery.sink, depth)
        self._wake.set()
        return True

    def submit_all(self, deliveries: Iterable[Delivery]) -> int:
        """Queue many; returns how many were queued."""
        return sum(self.submit(d) for d in deliveries)

    # -- sending ------------------------------------------------------------------

    def pump(self, now: float | None = None, max_sends: int = 1000) -> int:
        """Send every delivery that is due at ``now`` (monotonic seconds; default the
        clock). Returns the number delivered. Blocks for the POSTs it makes."""
        delivered = 0
        with self._pump_lock:
            for name, q in self._queues.items():
                while delivered < max_sends:
                    t = self.clock() if now is None else now
                    with self._lock:
                        if not q.items or q.next_at > t:
                            break
                        head = q.items[0]
                    outcome = self._attempt(name, q, head, t)
                    if outcome == "retry":
                        break
                    delivered += outcome == "sent"
        return delivered

    def _attempt(
        self, name: str, q: _SinkQueue, d: Delivery, now: float
    ) -> Literal["sent", "gave_up", "retry"]:
        ep = q.endpoint
        body: bytes = d.body
        headers: Mapping[str, str] = dict(d.headers)
        if ep.finalize is not None:
            body, headers = ep.finalize(body, headers, self.wall_clock())
        started = self.clock()
        reason: str | None
        try:
            transport = ep.transport if ep.transport is not None else self.transport
            status = transport.post(ep.url, body, headers, ep.timeout)
        except TimeoutError:
            reason, status = "timeout", 0
        except OSError as e:
            reason, status = f"connection: {type(e).__name__}", 0
        else:
            reason = None if 200 <= status < 300 else f"http {status}"
        latency = self.clock() - started
        if reason is None:
            with self._lock:
                self._pop_head(q, delivered=True)
                q.sent += 1
            self.observer.on_sent(name, latency)
            return "sent"
        permanent = 300 <= status < 500 and status not in _RETRYABLE_4XX
        with self._lock:
            q.attempts += 1
            give_up = permanent or (0 < self.retry.max_attempts <= q.attempts)
            if give_up:
                self._pop_head(q, delivered=False)
                q.dropped += 1
            else:
                q.next_at = now + self.retry.delay(q.attempts, self.rng)
        self.observer.on_failed(name, reason if not give_up else f"{reason} (gave up)")
        if give_up:
            self.observer.on_dropped(name)
            return "gave_up"  # the head moved on: keep sending this sink's queue
        return "retry"

    @staticmethod
    def _pop_head(q: _SinkQueue, delivered: bool) -> None:
        d = q.items.popleft()
        q.keys.discard(d.key)
        q.attempts = 0
        q.next_at = 0.0
        if delivered:
            q.delivered[d.key] = None
            while len(q.delivered) > _DELIVERED_MEMORY:
                q.delivered.popitem(last=False)

    def next_due(self) -> float | None:
        """The monotonic time the next send is due, or None when nothing is queued."""
        with self._lock:
            dues = [q.next_at for q in self._queues.values() if q.items]
        return min(dues) if dues else None

    # -- introspection and state ---------------------------------------------------

    def pending(self, sink: str | None = None) -> int:
        """Queued deliveries of ``sink`` (or of all sinks)."""
        with self._lock:
            qs = [self._queues[sink]] if sink is not None else list(self._queues.values())
            return sum(len(q.items) for q in qs)

    def dropped(self, sink: str) -> int:
        """Deliveries refused or given up for ``sink`` since start (not checkpointed)."""
        return self._queues[sink].dropped

    def state(self) -> dict[str, Any]:
        """The pending queues and recently delivered keys, as plain JSON-able values.

        Holds no secrets: endpoints (URLs) are configuration, not state.
        """
        with self._lock:
            return {
                "version": _STATE_VERSION,
                "sinks": {
                    name: {
                        "pending": [d.to_state() for d in q.items],
                        "delivered": list(q.delivered),
                    }
                    for name, q in self._queues.items()
                },
            }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Load a ``state()``; sinks no longer configured are dropped (and reported)."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"webhook state version {state.get('version')!r} is not 1")
        gone: list[tuple[str, int]] = []
        with self._lock:
            for name, s in state["sinks"].items():
                q = self._queues.get(name)
                if q is None:
                    gone.append((name, len(s["pending"])))
                    continue
                q.items = deque(Delivery.from_state(d) for d in s["pending"])
                q.keys = {d.key for d in q.items}
                q.delivered = OrderedDict((k, None) for k in s["delivered"])
                q.attempts, q.next_at = 0, 0.0
        for name, n in gone:
            for _ in range(n):
                self.observer.on_dropped(name)
        self._wake.set()

    # -- the delivery thread -------------------------------------------------------

    def start(self) -> None:
        """Pump in a daemon thread until ``stop()``."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="driftwarden-webhooks", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (a POST in flight finishes or times out first)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            self.pump()
            due = self.next_due()
            wait = 1.0 if due is None else min(1.0, max(0.01, due - self.clock()))
            self._wake.wait(wait)
