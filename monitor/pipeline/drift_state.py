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
    """One partition's drift detectors.

    ``binned``: per field, each binned detector's own state (windows kept per
    detector: event-time windows, exact KS, detectors with windows of their own);
    empty when the binned detectors share one count window, whose state is
    ``windows`` (``detectors.window_ring.WindowRing.state``: the ring of sub-windows
    x every detector's bins, the filling sub-window, the slots' offsets and times).
    ``raw``: per field, each raw-value detector's state (ADWIN).
    """

    binned: Mapping[str, tuple[DetectorState, ...]]
    raw: Mapping[str, tuple[DetectorState, ...]]
    windows: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_plain(self) -> dict[str, Any]:
        plain: dict[str, Any] = {
            "binned": {f: list(ds) for f, ds in self.binned.items()},
            "raw": {f: list(ds) for f, ds in self.raw.items()},
        }
        if self.windows:
            plain["windows"] = self.windows
        return plain

    @classmethod
    def from_plain(cls, plain: Mapping[str, Any]) -> DriftState:
        return cls(
            {f: tuple(ds) for f, ds in plain.get("binned", {}).items()},
            {f: tuple(ds) for f, ds in plain.get("raw", {}).items()},
            plain.get("windows", {}),
        )


def as_drift_state(state: StageState) -> DriftState:
    """A drift state, also from a plain one read without the stage."""
    return state if isinstance(state, DriftState) else DriftState.from_plain(state.to_plain())
