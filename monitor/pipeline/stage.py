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

Stages are registered by name (``STAGES``), lazily as ``"module:Class"``; each
registered class builds itself for a stream with ``for_stream`` (or returns None
when the stream does not use it). A new stage is one file plus one line here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from detectors.base import Finding
from detectors.registry import import_target
from monitor.checkpoints import BaselineCheckpoint, PlainStageState, StageState
from monitor.errors import ConfigError

if TYPE_CHECKING:
    from monitor.config.schema import StreamSpec
    from monitor.pipeline.decode import Batch, StreamDecoder
    from monitor.pipeline.stream import StreamPipeline

__all__ = [
    "STAGES",
    "LegacyStage",
    "SlotArray",
    "Stage",
    "StageFactory",
    "Ticking",
    "registered_stages",
    "stage_class",
    "stages_for",
]

SlotArray = npt.NDArray[np.int32]


@runtime_checkable
class Stage(Protocol):
    """One stream's stage: update per batch, state per slot, verdicts for the stream."""

    name: str
    judge: bool  # this process judges the stream (owns its first partition)

    def update(self, batch: Batch, slots: SlotArray) -> list[Finding]:
        """Fold in a batch; ``slots[i]`` is accepted row ``i``'s slot. Returns its findings."""
        ...

    def evaluate(self) -> list[Finding]:
        """Stream-level verdicts on the state as it is now (all slots, remote ones too)."""
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


class StageFactory(Protocol):
    """A registered stage class: builds the stage for a stream, or None when unused."""

    @classmethod
    def for_stream(cls, spec: StreamSpec, decoder: StreamDecoder) -> Stage | None: ...


# name -> "module:Class"; imported on first use.
STAGES: dict[str, str] = {
    "drift": "monitor.pipeline.drift:DriftStage",
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
    spec: StreamSpec, decoder: StreamDecoder, names: Sequence[str] | None = None
) -> list[Stage]:
    """The stages a stream runs: each registered (or named) stage that applies to it."""
    out = []
    for name in STAGES if names is None else names:
        stage = stage_class(name).for_stream(spec, decoder)
        if stage is not None:
            out.append(stage)
    return out


def registered_stages(pipeline: StreamPipeline) -> list[Stage]:
    """The stage factory the service uses: every registered stage that applies."""
    return stages_for(pipeline.spec, pipeline.decoder)


class LegacyStage:
    """A ``Stage`` over an object written to the earlier, untyped contract.

    That contract: ``update(batch, partitions)``, ``partition_state(slot) -> dict |
    None``, ``restore_partition(slot, dict)``, ``drop_partition(slot)``,
    ``set_remote(dict[slot, dict])`` and an ``aggregating`` flag. States cross as
    ``PlainStageState``; ``evaluate`` is the wrapped object's when it has one.
    """

    def __init__(self, inner: Any, name: str) -> None:
        self.inner = inner
        self.name = name

    @property
    def judge(self) -> bool:
        return bool(self.inner.aggregating)

    @judge.setter
    def judge(self, value: bool) -> None:
        self.inner.aggregating = value

    def update(self, batch: Batch, slots: SlotArray) -> list[Finding]:
        found: list[Finding] = self.inner.update(batch, slots)
        return found

    def evaluate(self) -> list[Finding]:
        evaluate = getattr(self.inner, "evaluate", None)
        return [] if evaluate is None else list(evaluate())

    def partition_state(self, slot: int) -> StageState | None:
        plain = self.inner.partition_state(slot)
        return None if plain is None else PlainStageState(plain)

    def decode_state(self, plain: Mapping[str, Any]) -> StageState:
        return PlainStageState(plain)

    def restore_partition(self, slot: int, state: StageState) -> None:
        self.inner.restore_partition(slot, dict(state.to_plain()))

    def drop_partition(self, slot: int) -> None:
        self.inner.drop_partition(slot)

    def set_remote(self, states: Mapping[int, StageState]) -> None:
        self.inner.set_remote({slot: dict(st.to_plain()) for slot, st in states.items()})

    @property
    def ready(self) -> bool:
        return bool(getattr(self.inner, "ready", True))

    def baseline_checkpoint(self) -> BaselineCheckpoint | None:
        return None

    def restore_baseline(self, checkpoint: BaselineCheckpoint) -> None:
        return None
