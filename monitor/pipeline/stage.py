"""The stage contract: what turns a stream's accepted batches into findings.

A stage (drift, fleet health, model quality) keeps its state per *slot*: one slot
per Kafka partition of the stream (``slot = topic index << 20 | partition``, which is
the partition for a one-topic stream). A slot's state is a frozen value
(``monitor.checkpoints.StageState``) checkpointed with the offsets it covers, so it
moves with the partition on a rebalance and continues exactly after a restart.

The process that owns the stream's first partition *judges* the stream (``judge``):
it alone reports stream-level verdicts, merging its own slots with the latest
checkpointed state of slots other replicas own (``set_remote``). The others only
fold their events in.

Stages are registered by name (``STAGES``), lazily as ``"module:Class"``, in the
order they run on a batch (and hold their state in a checkpoint). Each registered
class builds itself for a stream with ``for_stream(spec, decoder, context)`` (or
returns None when the stream does not use it); ``context`` holds the service's
metrics and the stages already built for the stream, so a later stage can take a
reference an earlier one provides (``ReferenceSource``: the model stage's reference
file is the drift stage's baseline). Once all are built, each ``Linked`` stage sees
them all (the model stage keeps the drift stage, whose baseline a deployment
switches). A new stage is one file plus one line here.

A stage that reports a clean verdict per subject and batch can hand those over as
rows (``Verdicting``: ``Verdicts``, lists of statistics and thresholds) rather than
one ``Finding`` each; the service's batch transaction reads them so, and builds a
row's finding only for the alert episode that resolves on it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from connectors.kafka import RawBatch
from detectors.base import Finding, Verdicts
from detectors.baseline import Baseline
from detectors.registry import import_target
from monitor.checkpoints import BaselineCheckpoint, StageState
from monitor.errors import ConfigError

if TYPE_CHECKING:
    from monitor.config.schema import StreamSpec
    from monitor.metrics import Metrics
    from monitor.pipeline.decode import Batch, Reject, StreamDecoder, Violation
    from monitor.pipeline.stream import StreamPipeline

__all__ = [
    "STAGES",
    "Coordinates",
    "Linked",
    "ReferenceSource",
    "RunsApart",
    "SideTopics",
    "SlotArray",
    "Stage",
    "StageContext",
    "StageFactory",
    "Ticking",
    "Verdicting",
    "Violating",
    "registered_stages",
    "stage_class",
    "stages_for",
    "worker",
]

SlotArray = npt.NDArray[np.int32]


@dataclass(frozen=True, slots=True)
class Coordinates:
    """Where a decoded batch came from: the consumed records (payloads, keys, offsets)
    and each accepted row's offset (``offsets[i]`` is ``raw.offsets[batch.rows[i]]``)."""

    raw: RawBatch
    offsets: npt.NDArray[np.int64]


@runtime_checkable
class Stage(Protocol):
    """One stream's stage: update per batch, state per slot, verdicts for the stream."""

    name: str
    # This process judges the stream (owns its first partition); set by the pipeline.
    # A stage that judges on every replica (fleet: each replica its own devices)
    # stays True. Stages that judge receive remote states (``set_remote``).
    judge: bool

    def update(
        self, batch: Batch, slots: SlotArray, *, coordinates: Coordinates | None = None
    ) -> list[Finding]:
        """Fold in a batch; ``slots[i]`` is accepted row ``i``'s slot; ``coordinates``
        (the pipeline always passes them) its Kafka records. Returns its findings."""
        ...

    def evaluate(self) -> list[Finding]:
        """Stream-level verdicts on the state as it is now (all slots, remote ones too)."""
        ...

    def set_partition_count(self, count: int) -> None:
        """The stream's partition count (from topic metadata; before any restore)."""
        ...

    def partition_state(self, slot: int) -> StageState | None:
        """What continues ``slot`` exactly (None while the stage holds nothing for it)."""
        ...

    def decode_state(self, plain: Mapping[str, Any]) -> StageState:
        """The typed state of a checkpointed ``partition_state(...).to_plain()``."""
        ...

    def restore_partition(self, slot: int, state: StageState) -> None: ...

    def drop_partition(self, slot: int) -> None:
        """Forget a slot this process no longer owns."""
        ...

    def set_remote(self, states: Mapping[int, StageState]) -> None:
        """The latest checkpointed state of slots other replicas own."""
        ...

    @property
    def ready(self) -> bool:
        """The stage has what it needs to judge (for example a baseline)."""
        ...

    def baseline_checkpoint(self) -> BaselineCheckpoint | None:
        """A reference the stage built itself and that must survive a restart."""
        ...

    def restore_baseline(self, checkpoint: BaselineCheckpoint) -> None: ...


@runtime_checkable
class Ticking(Protocol):
    """A stage that also judges by wall clock while no event arrives (fleet health:
    the devices of a quiet partition go silent)."""

    def tick(self) -> list[Finding]: ...


@runtime_checkable
class SideTopics(Protocol):
    """A stage that also reads topics of the stream the stream decoder does not (a
    model's label and deploy topics): it decodes their records itself and returns
    the ones it cannot read as rejects (dead-lettered by the pipeline)."""

    def update_topic(
        self, raw: RawBatch, slots: SlotArray
    ) -> tuple[list[Finding], list[Reject]]: ...


@runtime_checkable
class Violating(Protocol):
    """A stage that finds values of accepted events it cannot use (a prediction the
    label join cannot read): after each ``update``, ``take_violations`` hands them
    over (``index``: the accepted row of that batch) and forgets them. The pipeline
    dead-letters each such event once, with the decoder's violations of it, and
    counts them per field and reason; the event still counts everywhere else."""

    def take_violations(self) -> list[Violation]: ...


@runtime_checkable
class Verdicting(Protocol):
    """A stage that can hand over its clean verdicts as ``Verdicts`` instead of
    findings: with ``compact_clean`` set, ``update`` leaves them out of its findings
    and ``take_verdicts`` hands them over after each ``update`` (and forgets them).
    The verdicts are the same: ``Verdicts.finding`` builds each one's finding."""

    compact_clean: bool

    def take_verdicts(self) -> list[Verdicts]: ...


@runtime_checkable
class RunsApart(Protocol):
    """A stage whose ``update`` may run on a worker thread while the service reads and
    decodes the next batch (``runs_apart`` True): it reads only its arguments and
    its own state, and no other stage reads that state during a batch. The service
    waits for it before the batch's findings are handled and before anything else
    (a checkpoint, a rebalance, the next batch's stages) touches the stage."""

    runs_apart: bool


_WORKERS: dict[tuple[int, str], ThreadPoolExecutor] = {}  # by (process id, name)
_WORKERS_LOCK = threading.Lock()


def worker(name: str) -> ThreadPoolExecutor:
    """The process's one worker thread called ``name`` (thread ``driftwarden-<name>``),
    made on first use; a forked process makes its own. One thread keeps the jobs
    given to it in order; two names never wait on each other's queue (the drift
    stage runs apart on "stage" and hands its ADWIN folds to "adwin").

    >>> worker("doc") is worker("doc")
    True
    """
    key = (os.getpid(), name)
    with _WORKERS_LOCK:
        pool = _WORKERS.get(key)
        if pool is None:
            pool = _WORKERS[key] = ThreadPoolExecutor(1, thread_name_prefix=f"driftwarden-{name}")
        return pool


@runtime_checkable
class ReferenceSource(Protocol):
    """A stage that provides the stream's drift baseline (None: it has none)."""

    def drift_reference(self) -> Baseline | None: ...


@runtime_checkable
class Linked(Protocol):
    """A stage that works with others of its stream (given all of them once built)."""

    def link(self, stages: Sequence[Stage]) -> None: ...


@dataclass(frozen=True, slots=True)
class StageContext:
    """What a stage factory gets besides the stream: the service's metrics (None in
    tools and tests) and the stages already built for the stream, in order."""

    metrics: Metrics | None = None
    built: tuple[Stage, ...] = ()

    def reference(self) -> Baseline | None:
        """The drift baseline an earlier stage provides (``ReferenceSource``), if any."""
        for stage in self.built:
            if isinstance(stage, ReferenceSource):
                found = stage.drift_reference()
                if found is not None:
                    return found
        return None


class StageFactory(Protocol):
    """A registered stage class: builds the stage for a stream, or None when unused."""

    @classmethod
    def for_stream(
        cls, spec: StreamSpec, decoder: StreamDecoder, context: StageContext = ...
    ) -> Stage | None: ...


# name -> "module:Class"; imported on first use. The order is the order stages run on
# a batch and hold their state in a checkpoint: the model stage comes first, so that
# a deployment switches the drift baseline before the drift stage sees the batch
# (and before it restores its windows).
STAGES: dict[str, str] = {
    "model": "monitor.pipeline.model:ModelStage",
    "drift": "monitor.pipeline.drift:DriftStage",
    "fleet": "monitor.pipeline.fleet:FleetStage",
}


def stage_class(name: str) -> StageFactory:
    """The registered stage class called ``name``."""
    try:
        target = STAGES[name]
    except KeyError:
        raise ConfigError(f"unknown stage {name!r}; known: {sorted(STAGES)}") from None
    factory: StageFactory = import_target(target)
    return factory


def stages_for(
    spec: StreamSpec,
    decoder: StreamDecoder,
    names: Sequence[str] | None = None,
    *,
    metrics: Metrics | None = None,
) -> list[Stage]:
    """The stages a stream runs: each registered (or named) stage that applies to it,
    in registry order, linked once all are built."""
    out: list[Stage] = []
    for name in STAGES if names is None else names:
        context = StageContext(metrics, tuple(out))
        stage = stage_class(name).for_stream(spec, decoder, context)
        if stage is not None:
            out.append(stage)
    for stage in out:
        if isinstance(stage, Linked):
            stage.link(out)
    return out


def registered_stages(pipeline: StreamPipeline) -> list[Stage]:
    """The stage factory the service uses: every registered stage that applies."""
    return stages_for(pipeline.spec, pipeline.decoder, metrics=pipeline.metrics)
