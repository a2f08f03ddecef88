"""One stream's processing of a consumed batch: decode, check, dead-letter, measure, detect.

``StreamPipeline.process`` is synchronous and does no Kafka I/O: it returns the
outgoing messages (dead letters), the findings and the offsets the batch covers;
the runner sends, flushes and only then commits. Metrics are updated once per
batch with pre-bound children.
"""

from __future__ import annotations

import hashlib
import logging
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from connectors.base import OutMessage
from connectors.kafka import RawBatch
from detectors.base import Finding, Verdicts
from monitor.checkpoints import PartitionState, StageDecoder, StageState
from monitor.config.schema import Config, StreamSpec
from monitor.metrics import Metrics
from monitor.pipeline.decode import (
    FIELD_REASONS,
    LIMITS,
    REASONS,
    Batch,
    Reject,
    StreamDecoder,
    Violation,
)
from monitor.pipeline.stage import (
    Coordinates,
    RunsApart,
    SideTopics,
    Stage,
    Ticking,
    Verdicting,
    Violating,
    registered_stages,
    worker,
)

log = logging.getLogger("driftwarden.pipeline")

__all__ = [
    "BatchInput",
    "BatchResult",
    "DecodedInput",
    "OpenBatch",
    "StageOutcome",
    "StreamPipeline",
    "account_batch",
    "build_pipelines",
    "dead_letter",
    "output_topics",
    "record_findings",
    "record_verdicts",
    "unique_pipelines",
    "violations_dead_letter",
]


BatchInput = RawBatch


@dataclass
class BatchResult:
    """What processing one batch produced.

    Accounting: ``events == accepted + sum(rejected.values())``. ``rejected`` counts
    the events excluded as a whole, by reason; ``violations`` the accepted events
    with at least one excluded value, by their first violation's reason. Each of
    both is dead-lettered once (``out``).
    """

    stream: str
    events: int
    accepted: int
    rejected: dict[str, int]
    out: list[OutMessage] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    violations: dict[str, int] = field(default_factory=dict)
    stage_errors: int = 0  # accepted events dead-lettered because a stage failed on them
    # Clean verdicts handed over as rows (StreamPipeline.compact_clean), after ``findings``.
    verdicts: list[Verdicts] = field(default_factory=list)

    def every_finding(self) -> list[Finding]:
        """``findings``, then each of ``verdicts``' rows as its finding."""
        return [*self.findings, *(f for v in self.verdicts for f in v.findings())]

    @property
    def dead_letters(self) -> int:
        return sum(self.rejected.values()) + sum(self.violations.values()) + self.stage_errors


# A dead letter's key is kept up to this size (keys are not limited by max_event_bytes).
_MAX_KEY_BYTES = 16_384
_TRUNCATED = ("driftwarden.truncated", b"true")


def dead_letter(
    topic: str,
    stream: str,
    raw: BatchInput,
    index: int,
    reason: str,
    detail: str,
    *,
    max_bytes: int | None = None,
    extra: tuple[tuple[str, bytes], ...] = (),
) -> OutMessage:
    """A dead-letter record: the original bytes and key, the reason in headers.

    A value over ``max_bytes`` is cut to its first ``max_bytes`` bytes; the headers
    ``driftwarden.truncated``, ``driftwarden.original_size`` and
    ``driftwarden.original_sha256`` (hex, of the whole original) say so. Keys over
    16 KiB are cut the same way (``driftwarden.original_key_size``).
    """
    value = raw.values[index]
    key = raw.keys[index]
    ts = int(raw.timestamps[index])
    headers = (
        ("driftwarden.reason", reason.encode()),
        ("driftwarden.detail", detail.encode("utf-8", "replace")[:1000]),
        ("driftwarden.stream", stream.encode()),
        ("driftwarden.topic", raw.topic.encode()),
        ("driftwarden.partition", str(int(raw.partitions[index])).encode()),
        ("driftwarden.offset", str(int(raw.offsets[index])).encode()),
        ("driftwarden.timestamp", str(ts).encode()),
        *extra,
    )
    body = value if value is not None else b""
    if max_bytes is not None and len(body) > max_bytes:
        headers += (
            _TRUNCATED,
            ("driftwarden.original_size", str(len(body)).encode()),
            ("driftwarden.original_sha256", hashlib.sha256(body).hexdigest().encode()),
        )
        body = body[:max_bytes]
    if key is not None and len(key) > _MAX_KEY_BYTES:
        headers += (("driftwarden.original_key_size", str(len(key)).encode()),)
        key = key[:_MAX_KEY_BYTES]
    return OutMessage(topic=topic, value=body, key=key, headers=headers)


def violations_dead_letter(
    topic: str,
    stream: str,
    raw: BatchInput,
    violations: Sequence[Violation],
    *,
    max_bytes: int | None = None,
) -> OutMessage:
    """The one dead letter of an accepted event with excluded values: the first
    violation's reason, every ``field:reason`` in ``driftwarden.violations`` and
    every detail (``; ``-separated) in ``driftwarden.detail``."""
    first = violations[0]
    listed = ",".join(f"{v.field}:{v.reason}" for v in violations)
    return dead_letter(
        topic,
        stream,
        raw,
        first.index,
        first.reason,
        "; ".join(v.detail for v in violations),
        max_bytes=max_bytes,
        extra=(
            ("driftwarden.level", b"field"),
            ("driftwarden.violations", listed.encode("utf-8", "replace")[:1000]),
        ),
    )


def _next_offsets(
    topic: str, partitions: npt.NDArray[np.int32], offsets: npt.NDArray[np.int64]
) -> dict[tuple[str, int], int]:
    if len(partitions) == 0:
        return {}
    first = partitions[0]
    if (partitions == first).all():
        return {(topic, int(first)): int(offsets.max()) + 1}
    out = {}
    for p in np.unique(partitions).tolist():
        out[(topic, int(p))] = int(offsets[partitions == p].max()) + 1
    return out


@dataclass(frozen=True, slots=True)
class DecodedInput:
    """A consumed batch and its decoded events (``batch`` None: a side topic's batch,
    which its stages decode themselves); ``seconds`` the decoding took."""

    raw: BatchInput
    batch: Batch | None
    seconds: float


@dataclass(frozen=True, slots=True)
class StageOutcome:
    """What one stage's ``update`` gave on a batch (``error``: what it raised)."""

    findings: list[Finding]
    verdicts: list[Verdicts]
    violations: list[Violation]
    error: Exception | None
    seconds: float


@dataclass(slots=True)
class OpenBatch:
    """A batch between ``StreamPipeline.begin`` and ``finish``: per stage its outcome,
    or the future of one running apart (``result``: a side topic's, already whole)."""

    decoded: DecodedInput
    result: BatchResult | None
    out: list[OutMessage] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    checks_seconds: float = 0.0
    outcomes: list[StageOutcome | Future[StageOutcome]] = field(default_factory=list)

    @property
    def apart(self) -> bool:
        """A stage still runs (or ran) on a worker thread for this batch."""
        return any(isinstance(o, Future) for o in self.outcomes)

    def wait(self) -> None:
        """Wait until no stage runs apart for this batch any more."""
        futures.wait([o for o in self.outcomes if isinstance(o, Future)])


def _run_stage(
    stage: Stage, batch: Batch, partitions: npt.NDArray[np.int32], coordinates: Coordinates
) -> StageOutcome:
    """One stage's update on a batch; what it raised is returned, not raised (a stage's
    fault on some data never stops the stream: ``finish`` dead-letters the batch's
    events as ``stage_error``)."""
    t = time.perf_counter()
    try:
        findings = stage.update(batch, partitions, coordinates=coordinates)
        verdicts = stage.take_verdicts() if isinstance(stage, Verdicting) else []
        violations = stage.take_violations() if isinstance(stage, Violating) else []
    except Exception as exc:
        if isinstance(stage, Verdicting):
            stage.take_verdicts()  # a failed batch's verdicts are not reported
        return StageOutcome([], [], [], exc, time.perf_counter() - t)
    return StageOutcome(findings, verdicts, violations, None, time.perf_counter() - t)


class StreamPipeline:
    """Decode + schema checks + dead letters + metrics (+ finding stages) for one stream."""

    def __init__(
        self,
        spec: StreamSpec,
        metrics: Metrics,
        dead_letter_topic: str,
        stages: Sequence[Stage] = (),
        dead_letter_max_bytes: int | None = None,
    ) -> None:
        self.spec = spec
        self.metrics = metrics
        self.dead_letter_topic = dead_letter_topic
        self.dead_letter_max_bytes = dead_letter_max_bytes
        self.decoder = StreamDecoder(spec)
        # What the stage factory built, in registry order (``monitor.pipeline.stage``).
        self.stages: list[Stage] = list(stages)
        name = spec.name
        self._invalid = {r: metrics.invalid_events.labels(name, r) for r in REASONS}
        self._events = {t: metrics.events.labels(name, t) for t in spec.all_topics}
        self._nulls = {f: metrics.field_nulls.labels(name, f) for f in spec.fields}
        self._null_ratio = {f: metrics.null_ratio.labels(name, f) for f in spec.fields}
        self._last = metrics.last_processed.labels(name)
        self._last_event_time = metrics.last_event_time.labels(name)
        self._entities = metrics.entities.labels(name)
        self._entity_overflow = metrics.entity_overflow.labels(name)
        self._decode_fallback = metrics.decode_fallback.labels(name)
        self._decode_fallback.inc(0)
        self._baseline_ready = metrics.baseline_ready.labels(name)
        self._violations = {
            (f, r): metrics.field_violations.labels(name, f, r)
            for f in spec.fields
            for r in sorted(FIELD_REASONS)
        }
        self._limits = {lim: metrics.limit_hits.labels(name, lim) for lim in LIMITS}
        self._truncated = metrics.dead_letters_truncated.labels(name)
        for child in (  # so rate() sees a zero before the first reject
            *self._invalid.values(),
            *self._violations.values(),
            *self._limits.values(),
            self._truncated,
        ):
            child.inc(0)
        # Stages key their state by slot = topic index << 20 | partition (= the partition
        # for a one-topic stream), so the partitions of a stream's topics stay apart.
        self._slot_base = {t: np.int32(i << 20) for i, t in enumerate(spec.all_topics)}
        # Per (topic, partition): events seen, checkpointed with the partition's state.
        self.partition_events: dict[tuple[str, int], int] = {}
        labels = spec.model.labels if spec.model is not None else None
        # A model's label and deploy topics: their events go to the stages that read
        # them (``SideTopics.update_topic``), not to the stream decoder.
        self.label_topic = labels.topic if labels is not None else None
        self.deploy_topic = spec.model.deploy_topic if spec.model is not None else None
        self.last_batch: Batch | None = None  # the latest decoded batch (replay reads it)
        self._stage_error_counts: dict[str, int] = {}
        self._compact_clean = False
        # The batch whose stages run apart (``begin``), until ``finish``.
        self._running: OpenBatch | None = None

    @property
    def compact_clean(self) -> bool:
        """Whether stages that can (``Verdicting``) hand their clean verdicts over as
        ``BatchResult.verdicts`` rather than findings: the service's batch
        transaction reads them in that form (they cost no ``Finding`` each)."""
        return self._compact_clean

    @compact_clean.setter
    def compact_clean(self, on: bool) -> None:
        self._compact_clean = on
        for stage in self.stages:
            if isinstance(stage, Verdicting):
                stage.compact_clean = on

    def process(self, raw: BatchInput) -> BatchResult:
        """Decode, check and run every stage on ``raw``; its result."""
        return self.finish(self.begin(self.decode(raw)))

    def decode(self, raw: BatchInput) -> DecodedInput:
        """Step one of ``process``: decode ``raw`` (nothing else; the service may
        decode the next batch while a stage still runs on this one, see ``begin``)."""
        if raw.topic in (self.label_topic, self.deploy_topic):
            return DecodedInput(raw, None, 0.0)
        t0 = time.perf_counter()
        batch = self.decoder.decode(raw.values)
        return DecodedInput(raw, batch, time.perf_counter() - t0)

    def begin(self, decoded: DecodedInput, *, apart: bool = False) -> OpenBatch:
        """Step two: count, check and run the stages, in order. With ``apart``, a
        stage that can (``RunsApart``) runs on a worker thread of its own meanwhile;
        ``finish`` waits for it. Nothing else touches that stage until then."""
        raw, batch = decoded.raw, decoded.batch
        if self._running is not None:  # (the same poll's batch of another topic)
            self._running.wait()
            self._running = None
        if batch is None:
            return OpenBatch(decoded, self._process_side(raw))
        self.last_batch = batch
        t1 = time.perf_counter()
        topic, name, cap = self.dead_letter_topic, self.spec.name, self.dead_letter_max_bytes
        out = [
            dead_letter(topic, name, raw, r.index, r.reason, r.detail, max_bytes=cap)
            for r in batch.rejects
        ]
        if batch.fallback_rows:
            self._decode_fallback.inc(batch.fallback_rows)
        counts = batch.reason_counts()
        excluded: dict[str, int] = {}
        for (fld, _), count in batch.violation_counts().items():
            excluded[fld] = excluded.get(fld, 0) + count
        for reason, count in counts.items():
            self._invalid[reason].inc(count)
        for limit, count in batch.limit_hits:
            self._limits[limit].inc(count)
        if cap is not None:
            cut = sum(_TRUNCATED in m.headers for m in out)
            if cut:
                self._truncated.inc(cut)
        n = len(raw.values)
        self._events[raw.topic].inc(n)
        if batch.n:
            for fld, ok in batch.valid.items():
                nulls = batch.n - int(np.count_nonzero(ok)) - excluded.get(fld, 0)
                if nulls:
                    self._nulls[fld].inc(nulls)
                self._null_ratio[fld].set(nulls / batch.n)
        if batch.event_time is not None and batch.n:
            self._last_event_time.set(float(batch.event_time.max()))
        if self.decoder.entities is not None:
            self._entities.set(len(self.decoder.entities.codes) - 1)
            if batch.entity_overflow:
                self._entity_overflow.inc(int(np.count_nonzero(batch.entity == -1)))
        t2 = time.perf_counter()
        opened = OpenBatch(decoded, None, out, counts, t2 - t1)
        if self.stages and batch.n:
            partitions = raw.partitions[batch.rows] + self._slot_base[raw.topic]
            coordinates = Coordinates(raw, raw.offsets[batch.rows])
            for stage in self.stages:
                if apart and isinstance(stage, RunsApart) and stage.runs_apart:
                    opened.outcomes.append(
                        worker("stage").submit(_run_stage, stage, batch, partitions, coordinates)
                    )
                else:
                    opened.outcomes.append(_run_stage(stage, batch, partitions, coordinates))
            if opened.apart:
                self._running = opened
        return opened

    def finish(self, opened: OpenBatch) -> BatchResult:
        """Step three: wait for the stages running apart, then the batch's findings
        (in stage order, as if every stage had run here), dead letters and result."""
        if opened is self._running:
            self._running = None
        if opened.result is not None:
            return opened.result
        raw, batch = opened.decoded.raw, opened.decoded.batch
        assert batch is not None
        out = opened.out
        findings: list[Finding] = []
        verdicts: list[Verdicts] = []
        violations = list(batch.violations)
        stage_errors = 0
        stage_s = 0.0
        for stage, outcome in zip(self.stages, opened.outcomes, strict=False):
            done = outcome.result() if isinstance(outcome, Future) else outcome
            stage_s += done.seconds
            if done.error is not None:
                failed = self._stage_failed(stage, done.error, raw, batch.rows)
                out.extend(failed)
                stage_errors += len(failed)
                continue
            findings.extend(done.findings)
            verdicts.extend(done.verdicts)
            violations += [
                Violation(int(batch.rows[v.index]), v.field, v.reason, v.detail)
                for v in done.violations
            ]
        if opened.outcomes:
            self.refresh_ready()
        t3 = time.perf_counter()
        violated = self._dead_letter_violations(raw, batch, violations, out)
        self._last.set(time.time())
        self._count_partitions(raw)
        return BatchResult(
            stream=self.spec.name,
            events=len(raw.values),
            accepted=batch.n,
            rejected=opened.counts,
            out=out,
            findings=findings,
            next_offsets=_next_offsets(raw.topic, raw.partitions, raw.offsets),
            stage_seconds={
                "decode": opened.decoded.seconds,
                "checks": opened.checks_seconds,
                "detectors": stage_s + time.perf_counter() - t3,
            },
            violations=violated,
            stage_errors=stage_errors,
            verdicts=verdicts,
        )

    def _dead_letter_violations(
        self, raw: BatchInput, batch: Batch, violations: list[Violation], out: list[OutMessage]
    ) -> dict[str, int]:
        """One dead letter per accepted event with violations (the decoder's and the
        stages'), in input order after the rejects; counts per field and reason, and
        the events per first reason (returned)."""
        violated: dict[str, int] = {}
        if not violations:
            return violated
        by_event: dict[int, list[Violation]] = {}
        for v in violations:
            by_event.setdefault(v.index, []).append(v)
            key = (v.field, v.reason)
            counter = self._violations.get(key)
            if counter is None:  # a stage's field outside the declared ones
                counter = self._violations[key] = self.metrics.field_violations.labels(
                    self.spec.name, v.field, v.reason
                )
            counter.inc()
        topic, name, cap = self.dead_letter_topic, self.spec.name, self.dead_letter_max_bytes
        rejects = [r.index for r in batch.rejects]
        order = rejects + sorted(by_event)
        letters = [
            violations_dead_letter(topic, name, raw, by_event[i], max_bytes=cap)
            for i in sorted(by_event)
        ]
        for vs in by_event.values():
            violated[vs[0].reason] = violated.get(vs[0].reason, 0) + 1
        for reason, count in violated.items():  # dead-lettered events, by their first reason
            self._invalid[reason].inc(count)
        if cap is not None:
            cut = sum(_TRUNCATED in m.headers for m in letters)
            if cut:
                self._truncated.inc(cut)
        head = out[: len(rejects)]
        merged = sorted(zip(order, head + letters, strict=True), key=lambda p: p[0])
        out[: len(rejects)] = [m for _, m in merged]
        return violated

    def _process_side(self, raw: BatchInput) -> BatchResult:
        """A batch of the label (or deploy) topic, for the stages that read it."""
        t0 = time.perf_counter()
        n = len(raw.values)
        self._events[raw.topic].inc(n)
        partitions = raw.partitions + self._slot_base[raw.topic]
        findings: list[Finding] = []
        rejects: dict[int, Reject] = {}
        failed: list[OutMessage] = []
        for stage in self.stages:
            if isinstance(stage, SideTopics):
                try:
                    found, bad = stage.update_topic(raw, partitions)
                except Exception as exc:  # as for the stream's own topic
                    failed += self._stage_failed(stage, exc, raw, np.arange(n))
                    continue
                findings.extend(found)
                rejects.update((r.index, r) for r in bad)
        out = [
            dead_letter(
                self.dead_letter_topic,
                self.spec.name,
                raw,
                r.index,
                r.reason,
                r.detail,
                max_bytes=self.dead_letter_max_bytes,
            )
            for r in sorted(rejects.values(), key=lambda r: r.index)
        ] + failed
        counts: dict[str, int] = {}
        for r in rejects.values():
            counts[r.reason] = counts.get(r.reason, 0) + 1
            self._invalid[r.reason].inc()
        self._count_partitions(raw)
        return BatchResult(
            stream=self.spec.name,
            events=n,
            accepted=n - len(rejects),
            rejected=counts,
            out=out,
            findings=findings,
            next_offsets=_next_offsets(raw.topic, raw.partitions, raw.offsets),
            stage_seconds={"labels": time.perf_counter() - t0},
            stage_errors=len(failed),
        )

    def tick_stage(self, stage: Ticking) -> list[Finding]:
        """A ticking stage's wall-clock findings; a fault in it is counted and logged
        like a failed batch (no events are involved) and the loop goes on."""
        try:
            return stage.tick()
        except Exception as exc:
            self._stage_fault(getattr(stage, "name", type(stage).__name__), exc, "a tick")
            return []

    def _stage_failed(
        self, stage: Stage, exc: Exception, raw: BatchInput, rows: npt.NDArray[np.int64]
    ) -> list[OutMessage]:
        """A stage raised on a batch: count and log it (``_stage_fault``), and
        dead-letter the batch's events it did not fold in as ``stage_error`` so they can
        be replayed once the fault is fixed. The other stages and the stream go on; the
        failed stage keeps what it had folded before the fault."""
        name = stage.name
        self._stage_fault(
            name,
            exc,
            f"a batch of {len(rows)} events (they go to the dead-letter topic as stage_error)",
        )
        detail = f"stage {name}: {type(exc).__name__}: {exc}"
        topic, cap = self.dead_letter_topic, self.dead_letter_max_bytes
        return [
            dead_letter(topic, self.spec.name, raw, int(i), "stage_error", detail, max_bytes=cap)
            for i in rows
        ]

    def _stage_fault(self, name: str, exc: Exception, what: str) -> None:
        """Count a stage's fault; log it with its traceback the first time and then
        every 100th."""
        seen = self._stage_error_counts.get(name, 0)
        self._stage_error_counts[name] = seen + 1
        self.metrics.stage_errors.labels(self.spec.name, name).inc()
        if seen % 100 == 0:
            log.error(
                "stream %s: stage %s failed on %s (%d so far)",
                self.spec.name,
                name,
                what,
                seen + 1,
                exc_info=exc,
            )

    def _count_partitions(self, raw: BatchInput) -> None:
        parts = raw.partitions
        if len(parts) and (parts == parts[0]).all():
            key = (raw.topic, int(parts[0]))
            self.partition_events[key] = self.partition_events.get(key, 0) + len(parts)
            return
        values, counts = np.unique(parts, return_counts=True)
        for p, c in zip(values.tolist(), counts.tolist(), strict=True):
            key = (raw.topic, int(p))
            self.partition_events[key] = self.partition_events.get(key, 0) + int(c)

    # -- state ---------------------------------------------------------------------
    def refresh_ready(self) -> None:
        """``driftwarden_baseline_ready``: 1 once every stage has its baseline."""
        self._baseline_ready.set(1 if all(s.ready for s in self.stages) else 0)

    def partition_state(self, topic: str, partition: int) -> PartitionState:
        """Everything that continues ``(topic, partition)`` exactly."""
        slot = self._slot(topic, partition)
        return PartitionState(
            self.partition_events.get((topic, partition), 0),
            tuple(s.partition_state(slot) for s in self.stages),
            self.stage_names,
        )

    @property
    def stage_names(self) -> tuple[str, ...]:
        """The stages' names, in run order (checkpoints key stage states by them)."""
        return tuple(s.name for s in self.stages)

    @property
    def state_decoders(self) -> dict[str, StageDecoder]:
        """Each stage's decoder by its name, to type a checkpointed ``PartitionState``."""
        return {s.name: s.decode_state for s in self.stages}

    def restore_partition(self, topic: str, partition: int, state: PartitionState) -> None:
        """Each stage restores its own state (by name; by position from a checkpoint
        written before stages were named); a stage without one starts afresh."""
        self.partition_events[(topic, partition)] = state.events
        for stage, st in zip(self.stages, state.aligned(self.stage_names), strict=True):
            if st is not None:
                stage.restore_partition(self._slot(topic, partition), st)

    def drop_partition(self, topic: str, partition: int) -> None:
        self.partition_events.pop((topic, partition), None)
        for stage in self.stages:
            stage.drop_partition(self._slot(topic, partition))

    @property
    def judge_partition(self) -> tuple[str, int]:
        """The partition whose owner judges the stream (and keeps its alert state)."""
        return (self.spec.all_topics[0], 0)

    def judges(self, owned: set[tuple[str, int]]) -> bool:
        return self.judge_partition in owned

    def set_partition_count(self, count: int) -> None:
        """The stream's partition count over all its topics (stages size windows by it)."""
        for stage in self.stages:
            stage.set_partition_count(count)

    def set_ownership(self, owned: set[tuple[str, int]]) -> None:
        """This process judges the stream when it owns the stream's first partition."""
        judge = self.judges(owned)
        for stage in self.stages:
            stage.judge = judge

    def set_remote(self, states: dict[tuple[str, int], PartitionState]) -> None:
        """Checkpointed pipeline states of partitions other processes own (for the
        stages that judge here: all of them on the stream's judge, the fleet's
        everywhere, since each replica judges its own devices against the fleet)."""
        names = self.stage_names
        aligned = {key: st.aligned(names) for key, st in states.items()}
        for index, stage in enumerate(self.stages):
            if not stage.judge:
                continue
            remote: dict[int, StageState] = {}
            for (t, p), sts in aligned.items():
                found = sts[index]
                if t in self._slot_base and found is not None:
                    remote[self._slot(t, p)] = found
            stage.set_remote(remote)

    def _slot(self, topic: str, partition: int) -> int:
        return int(self._slot_base[topic]) + partition


def build_pipelines(
    config: Config,
    metrics: Metrics,
    stages: Callable[[StreamPipeline], list[Stage]] | None = registered_stages,
) -> dict[str, StreamPipeline]:
    """One pipeline per configured stream, keyed by each of its topics; ``stages``
    builds each stream's stages (by default every registered one that applies; None:
    none, the pipeline only decodes, checks and dead-letters)."""
    pipelines: dict[str, StreamPipeline] = {}
    for spec in config.streams:
        pipeline = StreamPipeline(
            spec,
            metrics,
            config.dead_letter_topic,
            dead_letter_max_bytes=config.dead_letter_max_bytes,
        )
        if stages is not None:
            pipeline.stages.extend(stages(pipeline))
        for stage in pipeline.stages:  # so rate() sees a zero before the first failure
            metrics.stage_errors.labels(spec.name, stage.name).inc(0)
        pipeline.refresh_ready()
        for topic in spec.all_topics:
            pipelines[topic] = pipeline
    return pipelines


def unique_pipelines(pipelines: Mapping[str, StreamPipeline]) -> list[StreamPipeline]:
    """Each stream's pipeline once (``pipelines`` is keyed by topic)."""
    return list(dict.fromkeys(pipelines.values()))


def output_topics(config: Config) -> list[str]:
    """The topics the service produces to: dead letters, alerts, retrain requests."""
    topics = [config.dead_letter_topic]
    alerts = config.alerts
    if alerts is not None:
        topics += [t for t in (alerts.topic, alerts.retrain_topic) if t]
    return list(dict.fromkeys(topics))


_GAUGES: weakref.WeakKeyDictionary[Metrics, dict[tuple[str, str, str], list[Any]]] = (
    weakref.WeakKeyDictionary()
)


def record_findings(metrics: Metrics, findings: Sequence[Finding]) -> None:
    """The drift gauges and ADWIN's change counter, from a batch's findings."""
    m = metrics
    # The labelled gauges of each (stream, subject, detector), looked up once: a batch
    # reports ~4 findings per field and ``labels()`` costs a lock and a validation.
    children = _GAUGES.setdefault(m, {})
    for f in findings:
        if f.kind == "entity":  # per-device: the fleet stage keeps its own metrics
            continue
        _set_gauges(
            m,
            children,
            (f.stream, f.subject, f.detector),
            f.statistic,
            f.threshold,
            f.p_value,
            f.drift,
        )
        if f.detector == "adwin" and f.drift:
            m.adwin_changes.labels(f.stream, f.subject).inc(dict(f.details).get("changes", 1.0))


def record_verdicts(metrics: Metrics, verdicts: Verdicts) -> None:
    """``record_findings`` of clean verdicts handed over as rows."""
    children = _GAUGES.setdefault(metrics, {})
    stream = verdicts.stream
    for subject, detector, statistic, threshold, p_value in verdicts.rows():
        _set_gauges(
            metrics, children, (stream, subject, detector), statistic, threshold, p_value, False
        )


def _set_gauges(
    m: Metrics,
    children: dict[tuple[str, str, str], list[Any]],
    labels: tuple[str, str, str],
    statistic: float,
    threshold: float,
    p_value: float | None,
    drift: bool,
) -> None:
    """Set a (stream, subject, detector)'s drift gauges to one verdict's numbers."""
    found = children.get(labels)
    if found is None:
        found = children[labels] = [
            m.drift_statistic.labels(*labels),
            m.drift_threshold.labels(*labels),
            m.drift_detected.labels(*labels),
            None,  # the p-value's, made at the first p-value (none for ADWIN)
            None,  # the threshold and drift flag last set (set again only on change:
            None,  # each set takes the gauge's lock; these two rarely change)
        ]
    found[0].set(statistic)
    if threshold != found[4]:
        found[1].set(threshold)
        found[4] = threshold
    if p_value is not None:
        if found[3] is None:
            found[3] = m.drift_p_value.labels(*labels)
        found[3].set(p_value)
    if drift is not found[5]:
        found[2].set(1 if drift else 0)
        found[5] = drift


def account_batch(metrics: Metrics, result: BatchResult) -> None:
    """Stage times and dead-letter counts of one processed batch."""
    for stage, secs in result.stage_seconds.items():
        metrics.stage_seconds.labels(stage).inc(secs)
    dead = result.dead_letters
    if dead:
        metrics.dead_letters.labels(result.stream).inc(dead)
