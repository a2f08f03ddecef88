"""The detector contract: numpy arrays in, findings out.

Every detector in this package is pure: no I/O, no logging, no clocks, no Kafka.
It is built for one subject (a field of a stream, usually) and for one partition's
share of the stream; the pipeline owns one instance per (stream, field, partition).

``update`` takes a whole batch at once:

* ``values``: 1-D array of the batch's *valid* values for the subject, in event
  order. float64 for numeric fields; int64 category codes for categorical fields
  (codes ``0..K-1`` are the baseline's categories in baseline order, codes ``>= K``
  are categories never seen in the baseline).
* ``times``: optional 1-D float64 array of event times in seconds since the epoch,
  same length as ``values``; detectors with event-time windows need it.

It returns the findings of this batch: at most one per detector and subject per
call (a verdict on the window as it stands after the batch), possibly none (for
example while a window is still filling).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, Self, TypedDict, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = [
    "BinnedDetector",
    "ChangeDetector",
    "Detector",
    "DetectorError",
    "DetectorState",
    "Finding",
    "FloatArray",
    "IntArray",
    "Mergeable",
    "Verdicts",
    "WindowBounds",
    "WindowParams",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


DetectorState = dict[str, Any]
"""A detector's own ``state()``: plain scalars, lists, strings and numpy arrays."""


class WindowParams(TypedDict, total=False):
    """Window and false-alarm arguments every binned detector takes (see window.py)."""

    window_events: int | None
    step_events: int | None
    window_seconds: float | None
    step_seconds: float | None
    ert: float | None
    family_size: int


class DetectorError(ValueError):
    """A detector was built or restored with arguments it cannot work with."""


@dataclass(frozen=True, slots=True)
class WindowBounds:
    """Where a finding's window lies in the stream.

    Offsets are Kafka offsets (first inclusive, last inclusive) and times are event
    times in seconds since the epoch. Detectors fill what they know (usually only
    ``events``); the pipeline completes offsets and partition.
    """

    events: int = 0
    first_offset: int | None = None
    last_offset: int | None = None
    start_time: float | None = None
    end_time: float | None = None
    partition: int | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    """One detector's verdict on one subject after a batch.

    ``statistic`` is the detector's own statistic (KS D, PSI, chi-square, ...);
    ``threshold`` is the value of ``statistic`` at and above which ``drift`` is
    true (for detectors that decide by p-value, ``threshold`` is still stated on
    the statistic's scale where possible and ``p_value`` is given).
    """

    detector: str
    subject: str
    statistic: float
    threshold: float
    drift: bool
    p_value: float | None = None
    kind: str = "field"  # field | entity | model
    stream: str = ""  # filled by the pipeline
    window: WindowBounds = field(default_factory=WindowBounds)
    baseline_id: str | None = None
    details: tuple[tuple[str, float], ...] = ()  # extra named statistics
    # Where the window lies in each partition it merges (first/last offsets, event
    # times, events), filled by the pipeline; ``window`` is then their union.
    partitions: tuple[WindowBounds, ...] = ()
    # The largest contributions to the statistic, e.g. categories of a chi-square
    # test: (name, share of the statistic), largest first.
    top: tuple[tuple[str, float], ...] = ()
    # One sentence, true as written, saying what the verdict rests on ("" = the
    # generic "statistic >= threshold" reading applies).
    summary: str = ""


@dataclass(frozen=True, slots=True, eq=False)
class Verdicts:
    """A batch's clean verdicts (no drift) of one stage, row by row.

    What the drift gauges, the status board and the alert engine read of a clean
    verdict (subject, detector, statistic, threshold, p-value) as plain lists, so
    that a batch's few dozen "no drift" verdicts cost no ``Finding`` each.
    ``finding(i)`` builds row ``i``'s whole ``Finding`` (evidence included), equal to
    the one the stage reports without this form; the alert engine builds it only
    for a subject with an open episode, which resolves on it.

    >>> v = Verdicts("s", ("x",), ("ks",), [0.01], [0.05], [0.9],
    ...              lambda i: Finding("ks", "x", 0.01, 0.05, False, 0.9, stream="s"))
    >>> len(v), v.finding(0).drift, v.finding(0).subject
    (1, False, 'x')
    """

    stream: str
    subjects: tuple[str, ...]
    detectors: tuple[str, ...]
    statistic: list[float]
    threshold: list[float]
    p_value: list[float | None]
    build: Callable[[int], Finding]
    kind: str = "field"

    def __len__(self) -> int:
        return len(self.subjects)

    def finding(self, i: int) -> Finding:
        """Row ``i`` as the whole ``Finding``."""
        return self.build(i)

    def rows(self) -> Iterator[tuple[str, str, float, float, float | None]]:
        """Each row's (subject, detector, statistic, threshold, p-value)."""
        return zip(
            self.subjects, self.detectors, self.statistic, self.threshold, self.p_value, strict=True
        )

    def findings(self) -> list[Finding]:
        """Every row as its whole ``Finding``, in row order."""
        return [self.build(i) for i in range(len(self.subjects))]


@runtime_checkable
class Detector(Protocol):
    """What the pipeline needs of a detector."""

    name: ClassVar[str]

    def update(self, values: Any, times: FloatArray | None = None) -> list[Finding]:
        """Fold one batch of valid values in and return this batch's findings."""
        ...

    def state(self) -> dict[str, Any]:
        """Everything needed to continue exactly where this instance is.

        Values are plain Python scalars, lists, strings or numpy arrays, so the
        state codec (msgpack/npz) can store it.
        """
        ...

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a ``state()`` taken from an instance built the same way."""
        ...


@runtime_checkable
class Mergeable(Protocol):
    """Detectors whose state combines exactly across partitions or replicas."""

    def merge(self, other: Any) -> None:
        """Add ``other``'s window state to this one (same construction arguments)."""
        ...


@runtime_checkable
class BinnedDetector(Detector, Protocol):
    """A detector over a sliding window of baseline-bin counts (KS, PSI, chi-square).

    Its window state adds exactly across partitions: the stream's verdict is taken
    on ``clear()`` + ``merge()`` of every partition's detector, then ``evaluate()``.
    """

    def accumulate(
        self, bins: IntArray, times: FloatArray | None = None, values: Any = None
    ) -> bool:
        """Fold pre-binned values in without judging; True when a verdict is due."""
        ...

    def evaluate(self) -> Finding | None:
        """The verdict on the current window, or None while it is filling."""
        ...

    def merge(self, other: Self) -> None:
        """Add ``other``'s window (same class and construction arguments)."""
        ...

    def clear(self) -> None:
        """Forget the window (construction arguments and baseline stay)."""
        ...


@runtime_checkable
class ChangeDetector(Detector, Protocol):
    """A detector over raw values that reports change points (ADWIN)."""

    @property
    def n_detections(self) -> int:
        """Change points detected since construction (kept in ``state()``)."""
        ...
