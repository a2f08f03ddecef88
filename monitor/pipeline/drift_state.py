"""The drift stage's per-partition state: a frozen value, one detector state each."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from detectors.base import DetectorState
from monitor.checkpoints import StageState

__all__ = ["DriftState", "as_drift_state"]


@dataclasses.dataclass(frozen=True, slots=True)
class DriftState:
    """One partition's drift detectors: per field, each detector's own state."""

    binned: Mapping[str, tuple[DetectorState, ...]]
    raw: Mapping[str, tuple[DetectorState, ...]]

    def to_plain(self) -> dict[str, Any]:
        return {
            "binned": {f: list(ds) for f, ds in self.binned.items()},
            "raw": {f: list(ds) for f, ds in self.raw.items()},
        }

    @classmethod
    def from_plain(cls, plain: Mapping[str, Any]) -> DriftState:
        return cls(
            {f: tuple(ds) for f, ds in plain.get("binned", {}).items()},
            {f: tuple(ds) for f, ds in plain.get("raw", {}).items()},
        )


def as_drift_state(state: StageState) -> DriftState:
    """A drift state, also from a plain one read without the stage."""
    return state if isinstance(state, DriftState) else DriftState.from_plain(state.to_plain())
