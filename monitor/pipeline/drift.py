"""The drift stage of a stream: a baseline, and per field the configured detectors.

Windows are the stream's. ``window.events`` and ``step`` count events of the stream,
whatever its partition count ``P`` (all its topics' partitions, from the topic
metadata: ``set_partition_count``):

* Each partition keeps one ring (``detectors.window_ring.WindowRing``) of
  ``R = window.events / step`` sub-windows of ``ceil(step / P)`` of *its* events,
  holding every binned detector's bins side by side: per field one segment for the
  baseline bins its KS, PSI and chi-square detectors read, and one for its
  data-quality outcomes. A sub-window counts the partition's events (every accepted
  event); a field's window holds its valid values among them. The ring is a
  function of that partition's events only (not of batching, interleaving or which
  process reads it), so it is checkpointed with the partition's offset and a
  restart or a rebalance continues it exactly. The checkpointed state
  (``DriftState.windows``) is the ring (``R x T`` bin counts, ``T`` all segments'
  bins in field-name order), its total, the filling sub-window, per slot the
  per-segment counts, first and last offsets and event times.
* The stream's verdict adds the newest ``R`` sub-windows of every partition (bin
  counts add exactly; partitions other replicas own come from their latest
  checkpoints, see ``set_remote``). With the partitions read evenly that is the
  last ``~window.events`` events of the stream (``R * ceil(step / P) * P``, at most
  ``R * (P - 1)`` more); a partition that gets fewer events contributes an older
  stretch of its own. The first verdict comes once a partition's ring is full,
  after about ``window.events`` stream events.
* A verdict is taken at every ``step`` events, also inside one large batch: one
  compiled pass per partition folds its events in and adds its window, as it stood
  at each step boundary of the batch, into the stream's windows there; the
  detectors are then screened for all fields and boundaries at once (array
  operations), and findings are built by the detectors' own ``evaluate`` for the
  verdicts that may drift and for the batch's last boundary. So detection
  positions do not depend on ``max_batch_events``. The boundaries count the events
  folded into this process's partitions' rings, which are checkpointed: a restart
  from checkpoints keeps them (a rebalance that moves partitions shifts them by
  less than one step). Every verdict is taken; a drifting one is reported at each
  boundary, a clean one once per batch (its last boundary), which is what the
  gauges and the alerts' resolution read.
* Windows that keep raw values (exact KS), event-time windows and detectors given a
  window of their own keep one window per detector (``SlidingCounts``) and are
  folded sub-batch by sub-batch (slower, the same verdicts); their sub-windows count
  the field's valid values and their step boundaries count from process start.
* Each test keeps the level ``step / (ert * family_size)`` (one test per stream
  step): per partition ``ert`` is scaled like the step.
* A change of ``P`` (partitions added to a topic) restarts the windows: states of
  another sub-window size are not restored (logged).
* Event-time windows (``window.seconds``) are per partition by time bucket and
  merge by bucket, so they need no scaling; their verdict comes when a bucket closes.
* ADWIN runs per partition on the partition's values; its ``min_window_length`` and
  ``subwindow`` are read as stream events and divided by ``P`` per partition, so a
  shift is reported after about as many stream events as on one partition (measured
  in tests/test_drift_windows.py and bench/RESULTS.md); a change reports the old
  and new mean and where (offset, event time). The price of dividing: the minimum
  window is also ADWIN's guard against a few outliers cutting the window, and per
  partition it is ``P`` times smaller; and ADWIN's delay beyond the minimum window
  (the evidence a cut needs, in the partition's own values) grows with ``P`` since
  each partition sees ``1/P`` of the stream. With many partitions, prefer KS/PSI
  for small shifts, or raise ``min_window_length`` (see ``_adwin_share``).

Per batch and field the valid values are binned once against the field's baseline
and the bins feed every binned detector of the field (all numeric fields in one
compiled call when their columns are rows of the decoder's matrix). The partitions'
ADWINs fold their values on a worker thread (a compiled pass without the GIL) while
this thread folds the windows and judges; the batch's update returns after both, so
the results do not depend on the thread. Findings are completed with
the stream name, the baseline id and their evidence: per partition the first and
last offsets and event times of the window (``Finding.partitions``), and for a
categorical field the categories contributing most and the unseen rate.

Multiple testing: every binned detector of the stream shares one false-alarm
budget (``ert``, expected events between false alarms for the whole stream), so
each gets ``family_size`` = the number of binned (field, detector) pairs.

A stream without a baseline file builds one from its first ``first_events``
accepted events (and says so in the log); detectors start after that. The built
baseline is part of the checkpointed state, so a restart keeps it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import math
import operator
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from scipy import special

from detectors.adwin import ADWIN, estimations, update_many
from detectors.adwin_defaults import SERVICE_DEFAULTS
from detectors.base import Detector, Finding, Verdicts, WindowBounds
from detectors.baseline import (
    QUALITY_KINDS,
    Baseline,
    CategoricalBaseline,
    NumericBaseline,
    load_baseline,
)
from detectors.binning import EdgeIndexes
from detectors.data_quality import QualityRates, quality_summary
from detectors.ks import KS
from detectors.psi import PSI
from detectors.registry import create
from detectors.screens import psi_screens, quality_screens
from detectors.views import views_of_one
from detectors.window import DEFAULT_ERT_EVENTS, SlidingCounts
from detectors.window_ring import CutSpans, FlatBins, WindowRing, ks_many
from monitor.checkpoints import BaselineCheckpoint, StageState
from monitor.config.schema import NUMERIC_TYPES, FieldType, StreamSpec
from monitor.errors import ConfigError
from monitor.pipeline.baselines import BaselineAccumulator
from monitor.pipeline.decode import Batch, StreamDecoder
from monitor.pipeline.drift_state import DriftState, as_drift_state
from monitor.pipeline.stage import worker

if TYPE_CHECKING:
    from monitor.pipeline.stage import Coordinates, Stage, StageContext
    from monitor.pipeline.stream import StreamPipeline

__all__ = ["DriftStage", "DriftState", "drift_stages"]

log = logging.getLogger("driftwarden.drift")

_UNBINNED = frozenset({"adwin"})  # detectors that take raw values, not baseline bins
_RECENT = 1000  # values whose mean an ADWIN change reports as the new mean
# A batch's ADWIN values from which their fold runs on the worker thread (below that
# the hand-over costs more than it overlaps).
_PARALLEL_VALUES = 8192
# Flat bin rows narrower than this are kept in 16 bits (see _flat_bins).
_NARROW_FLAT = 2**16 - 1
# A multi-partition batch whose partitions are runs of rows is folded in place (False:
# regrouped like any other batch; the tests compare the two).
_KEEP_RUNS = True


@dataclasses.dataclass
class _FieldPlan:
    """How to build one field's detectors, and the lookup from codes to bins."""

    name: str
    numeric: bool
    baseline: NumericBaseline | CategoricalBaseline
    binned: list[tuple[str, Callable[[], Any]]]  # (detector name, factory)
    raw: list[tuple[str, Callable[[], Detector]]]
    merged: list[Any]  # one scratch detector per binned detector, for stream verdicts
    lut: npt.NDArray[np.int64]
    # Per binned detector: True when it takes data-quality outcome codes of every
    # event (the data_quality detector) instead of the bins of the valid values.
    outcome: list[bool] = dataclasses.field(default_factory=list)
    # Per binned detector: its segment of the partition's shared window row (see
    # _Layout), when the stream's binned detectors share one count window.
    segments: list[int] = dataclasses.field(default_factory=list)

    def category_bins(
        self, codes: npt.NDArray[np.int64], vocabulary_names: list[Any]
    ) -> npt.NDArray[np.int64]:
        assert isinstance(self.baseline, CategoricalBaseline)
        unseen = len(self.baseline.categories)
        if len(self.lut) < len(vocabulary_names):
            index = {c: i for i, c in enumerate(self.baseline.categories)}
            self.lut = np.array([index.get(str(v), unseen) for v in vocabulary_names], np.int64)
        # -1: a value the bounded vocabulary had no room for; also unseen.
        return np.where(codes >= 0, self.lut[np.maximum(codes, 0)], unseen)


class _PartitionDetectors:
    """One partition's detector instances, field by field; with a ``_Layout``, one
    ``WindowRing`` holds every binned detector's window instead."""

    def __init__(self, plans: list[_FieldPlan], layout: _Layout | None = None) -> None:
        self.ring = None if layout is None else layout.ring()
        self.binned = (
            {p.name: [make() for _, make in p.binned] for p in plans} if layout is None else {}
        )
        self.raw = {p.name: [make() for _, make in p.raw] for p in plans}

    def state(self) -> DriftState:
        return DriftState(
            {f: tuple(d.state() for d in ds) for f, ds in self.binned.items()},
            {f: tuple(d.state() for d in ds) for f, ds in self.raw.items()},
            {} if self.ring is None else self.ring.state(),
        )

    def restore(self, state: DriftState) -> None:
        if self.ring is not None:
            if not state.windows:
                raise ConfigError("checkpointed windows are per detector; these share one ring")
            self.ring.restore(dict(state.windows))
        elif state.windows:
            raise ConfigError("checkpointed windows share one ring; these are per detector")
        for kind, dets in ((state.binned, self.binned), (state.raw, self.raw)):
            for name, ds in dets.items():
                saved = kind.get(name, ())
                if len(saved) != len(ds):
                    raise ConfigError(
                        f"checkpointed detectors of field {name!r} do not match the configuration"
                    )
                for det, st in zip(ds, saved, strict=True):
                    det.restore(st)


# data_quality details: per problem kind, the names of its rate and its baseline rate;
# and each kind in words (summaries).
_KIND_WORDS = [k.replace("_", " ") for k in QUALITY_KINDS]
# A verdict of ``_Screens.verdicts``: (detector, statistic, threshold, drift, p-value,
# window events, form, what the form's details are made of).
_Verdict = tuple[Any, float, float, bool, float, int, int, tuple[Any, ...]]
_KS, _PSI, _QUALITY = 0, 1, 2

_SCREEN_SLACK = 1e-9  # screens flag a little more than they decide; evaluate() decides


@dataclasses.dataclass
class _Layout:
    """How a stream's binned detectors share one count window per partition.

    Segment ``s`` of the window row is ``starts[s] .. starts[s + 1]``: one per field
    for the bins its KS, PSI and chi-square detectors read (they bin the same values
    on the same baseline bins), and one per field with a data_quality detector for
    its outcome codes. ``items`` lists every binned detector with its segment.
    """

    starts: npt.NDArray[np.int64]
    ring_size: int
    step: int
    fine: dict[str, int]  # field -> segment of its bins
    quality: dict[str, int]  # field -> segment of its outcome codes
    items: list[tuple[_FieldPlan, int, int]]  # (plan, detector index, segment)

    def ring(self) -> WindowRing:
        return WindowRing(self.starts, self.ring_size, self.step)

    @property
    def width(self) -> int:
        return int(self.starts[-1])

    @classmethod
    def plan(cls, plans: list[_FieldPlan]) -> _Layout | None:
        """The shared layout, or None when some binned detector needs its own window
        (event time, raw values for exact KS, a window of its own)."""
        shapes = set()
        for plan in plans:
            for det in plan.merged:
                w = getattr(det, "_window", None)
                if not isinstance(w, SlidingCounts) or w.timed or w.keep_values:
                    return None
                shapes.add((w.ring_size, w.step_events))
        if len(shapes) != 1:
            return None
        ((ring_size, step),) = shapes
        sizes: list[int] = []
        fine: dict[str, int] = {}
        quality: dict[str, int] = {}
        items: list[tuple[_FieldPlan, int, int]] = []
        # Segments in field-name order: the layout (and so the checkpointed ring) must
        # not depend on the order a configuration file happens to list the fields in.
        for plan in sorted(plans, key=lambda p: p.name):
            for i, det in enumerate(plan.merged):
                kinds = quality if plan.outcome[i] else fine
                if plan.name not in kinds:
                    kinds[plan.name] = len(sizes)
                    sizes.append(len(QUALITY_KINDS) if plan.outcome[i] else det._window.bins)
                elif sizes[kinds[plan.name]] != det._window.bins:
                    return None
        for plan in plans:
            plan.segments = []
            for i in range(len(plan.merged)):
                seg = (quality if plan.outcome[i] else fine)[plan.name]
                plan.segments.append(seg)
                items.append((plan, i, seg))
        starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
        return cls(starts, int(ring_size), int(step or 1), fine, quality, items)


class _Screens:
    """Which (detector, step boundary) verdicts may drift, for all detectors at once.

    KS, PSI and data_quality are screened as array operations across fields (their
    ``drifts_many`` with per-detector parameters stacked); other detectors through
    their own ``drifts_many``. A screen flags a superset (a relative slack of 1e-9
    on the threshold): the finding of a flagged verdict is built by the detector's
    ``evaluate``, which decides.
    """

    def __init__(self, layout: _Layout) -> None:
        self.layout = layout
        self.items = layout.items
        ks = [(j, it) for j, it in enumerate(self.items) if type(it[0].merged[it[1]]) is KS]
        psi = [(j, it) for j, it in enumerate(self.items) if type(it[0].merged[it[1]]) is PSI]
        qual = [
            (j, it) for j, it in enumerate(self.items) if type(it[0].merged[it[1]]) is QualityRates
        ]
        done = {j for j, _ in ks + psi + qual}
        self.other = [j for j in range(len(self.items)) if j not in done]
        starts = layout.starts
        # KS: per item its bins' start, the baseline CDF, d_min, critical value, n.
        self.ks_cols = np.asarray([j for j, _ in ks], dtype=np.int64)
        dets: list[Any] = [it[0].merged[it[1]] for _, it in ks]
        self.ks_starts = np.asarray([starts[it[2]] for _, it in ks], dtype=np.int64)
        cdfs = [d._cdf for d in dets]
        self.ks_cdf = np.concatenate(cdfs) if cdfs else np.empty(0)
        self.ks_cdf_starts = np.concatenate([[0], np.cumsum([c.size for c in cdfs])]).astype(
            np.int64
        )
        self.ks_dmin = np.asarray([d.d_min for d in dets], dtype=np.float64)
        self.ks_crit = np.asarray([d._crit for d in dets], dtype=np.float64)
        self.ks_n = np.asarray([float(d.baseline.n) for d in dets], dtype=np.float64)
        # PSI: coarse groups of every item as reductions over the flat row; segment
        # starts are cut points too, so a field's last group ends with its segment.
        self.psi_cols = np.asarray([j for j, _ in psi], dtype=np.int64)
        pdets: list[Any] = [it[0].merged[it[1]] for _, it in psi]
        group_starts = [starts[it[2]] + d._starts for (_, it), d in zip(psi, pdets, strict=True)]
        self.psi_cuts = np.unique(np.concatenate([starts[:-1], *group_starts])).astype(np.int64)
        self.psi_take = np.concatenate(
            [np.searchsorted(self.psi_cuts, g) for g in group_starts] or [np.empty(0, np.int64)]
        ).astype(np.int64)
        sizes = [g.size for g in group_starts]
        self.psi_offsets = np.concatenate([[0], np.cumsum(sizes)])[:-1].astype(np.int64)
        smooth = np.asarray([d.smoothing for d in pdets], dtype=np.float64)
        self.psi_b = (
            np.concatenate(
                [
                    (d._base + d.smoothing) / (d._base.sum() + d.smoothing * d._base.size)
                    for d in pdets
                ]
            )
            if pdets
            else np.empty(0)
        )
        # Each coarse group's columns in a row, and each item's groups (psi_screens).
        ends = np.append(self.psi_cuts, starts[-1])
        self.psi_g_start = self.psi_cuts[self.psi_take].astype(np.int64)
        self.psi_g_end = ends[self.psi_take + 1].astype(np.int64)
        self.psi_g_offsets = np.append(self.psi_offsets, self.psi_take.size).astype(np.int64)
        self.psi_smooth_items = smooth
        self.psi_min = np.asarray([d.psi_min for d in pdets], dtype=np.float64)
        self.psi_crit = np.asarray([d._chi2_crit for d in pdets], dtype=np.float64)
        self.psi_n = np.asarray([float(d._base.sum()) for d in pdets], dtype=np.float64)
        # data_quality: the outcome counts of every item side by side.
        self.q_cols = np.asarray([j for j, _ in qual], dtype=np.int64)
        qdets: list[Any] = [it[0].merged[it[1]] for _, it in qual]
        K = len(QUALITY_KINDS)
        self.q_index = np.asarray([starts[it[2]] for _, it in qual], dtype=np.int64)[
            :, None
        ] + np.arange(K)
        self.q_base = (
            np.stack([d.baseline.counts.astype(np.float64) for d in qdets])
            if qdets
            else np.empty((0, K))
        )
        self.q_min = np.asarray([d.min_increase for d in qdets], dtype=np.float64)
        self.q_crit = np.asarray([d._z_crit for d in qdets], dtype=np.float64)
        # Clean findings (``clean``): the detectors and their segments.
        self.ks_dets = dets
        self.ks_nint = [int(d.baseline.n) for d in dets]
        self.ks_segs = [it[2] for _, it in ks]
        self.q_dets = qdets
        self.psi_dets = pdets
        self.psi_nint = [int(d._base.sum()) for d in pdets]
        self.psi_dofs = np.asarray([d._dof for d in pdets], dtype=np.float64)
        # PSI items by their number of coarse bins: (items, their groups' columns in
        # the reduced row, baseline counts, smoothing, bins).
        by_size: dict[int, list[int]] = {}
        for k, size in enumerate(sizes):
            by_size.setdefault(int(size), []).append(k)
        self.psi_groups = [
            (
                np.asarray(ks_, dtype=np.int64),
                self.psi_offsets[ks_][:, None] + np.arange(size),
                np.stack([pdets[k]._base.astype(np.float64) for k in ks_]),
                np.asarray([pdets[k].smoothing for k in ks_], dtype=np.float64)[:, None],
                size,
            )
            for size, ks_ in by_size.items()
        ]
        self.q_base_rates = self.q_base / self.q_base.sum(axis=-1, keepdims=True)
        self.q_base_rates_l: list[list[float]] = self.q_base_rates.tolist()
        self.last_ks: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None = None

    def clean(
        self,
        row: npt.NDArray[np.int64],
        closed: int,
        skip: npt.NDArray[np.bool_],
        frame_of: Callable[[int], _Frame] | None = None,
        stream: str = "",
        baseline_id: str | None = None,
        ks: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None = None,
    ) -> dict[int, Finding | None]:
        """What ``evaluate`` returns on the stream window ``row`` (``(T,)``, one
        boundary, ``closed`` sub-windows) for each KS, PSI and data_quality item not in
        ``skip`` (the items the screen flagged: their own ``evaluate`` decides).

        The statistics of all fields come from array operations (the same operations
        as ``evaluate``'s, value by value, so the findings are equal); only the
        findings themselves are built per field. With ``frame_of`` (a segment's
        evidence ``_Frame``), a finding of a field without categories comes with its
        evidence, ``stream`` and ``baseline_id`` (what ``_with_frame`` would make of
        it, built once). ``ks``: the KS ``(D, m)`` of ``row`` if known (``last_ks``).
        """
        specs = self.verdicts(row, closed, skip, ks)
        frames: dict[int, _Frame] = {}

        def framed(seg: int) -> _Frame:
            assert frame_of is not None
            frame = frames.get(seg)
            if frame is None:
                frame = frames[seg] = frame_of(seg)
            return frame

        return {
            j: None
            if spec is None
            else self.finding(j, spec, None if frame_of is None else framed, stream, baseline_id)
            for j, spec in specs.items()
        }

    def verdicts(
        self,
        row: npt.NDArray[np.int64],
        closed: int,
        skip: npt.NDArray[np.bool_],
        ks: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None = None,
    ) -> dict[int, _Verdict | None]:
        """``clean``'s verdicts before they are findings: per item not in ``skip``, its
        statistic, threshold, drift flag, p-value, window events and what the
        finding's details and summary are made of (``finding`` builds it); None
        where ``evaluate`` gives None."""
        out: dict[int, _Verdict | None] = {}
        skip_l: list[bool] = skip.tolist()
        if closed < self.layout.ring_size:  # not ready: evaluate gives None
            for j in [*self.ks_cols.tolist(), *self.psi_cols.tolist(), *self.q_cols.tolist()]:
                if not skip_l[j]:
                    out[j] = None
            return out
        if self.ks_cols.size:
            if ks is None:
                d, m = ks_many(row[None, :], self.ks_starts, self.ks_cdf, self.ks_cdf_starts)
            else:
                d, m = ks[0][None, :], ks[1][None, :]
            seg_max = np.maximum.reduceat(row, self.layout.starts[:-1]).tolist()
            d_l, m_l = d[0].tolist(), m[0].tolist()
            # special.kolmogorov(sqrt(n_eff) * d) of every item in one call.
            args = []
            for k, n in enumerate(self.ks_nint):
                mk = int(m_l[k])
                args.append(math.sqrt(n * mk / (n + mk)) * d_l[k] if mk else 0.0)
            peaks = special.kolmogorov(np.asarray(args, dtype=np.float64)).tolist()
            for k, j in enumerate(self.ks_cols.tolist()):
                det = self.ks_dets[k]
                if skip_l[j] or det._exact:
                    continue
                mk = int(m_l[k])
                if mk == 0:
                    out[j] = None
                    continue
                n = self.ks_nint[k]
                dk = d_l[k]
                n_eff = n * mk / (n + mk)
                d_crit = det._crit / math.sqrt(n_eff)
                threshold = max(det.d_min, d_crit)
                resolution = max(det._p_max, float(seg_max[self.ks_segs[k]]) / mk)
                out[j] = (
                    det,
                    dk,
                    threshold,
                    dk >= threshold,
                    float(peaks[k]),
                    mk,
                    _KS,
                    (n_eff, d_crit, resolution),
                )
        if self.psi_cols.size:
            # psi_from_counts of every item, items with as many coarse bins together.
            g = np.add.reduceat(row, self.psi_cuts)[self.psi_take]
            K = len(self.psi_dets)
            values = np.zeros(K, dtype=np.float64)
            pm = np.zeros(K, dtype=np.int64)
            for items, cols, base_c, sm, size in self.psi_groups:
                cg = g[cols]
                pm[items] = cg.sum(axis=-1)
                cf = cg.astype(np.float64)
                b = (base_c + sm) / (base_c.sum(axis=-1, keepdims=True) + sm * size)
                w = (cf + sm) / (cf.sum(axis=-1, keepdims=True) + sm * size)
                values[items] = ((w - b) * np.log(w / b)).sum(axis=-1)
            effs: list[float] = []
            for k, n in enumerate(self.psi_nint):
                mk = int(pm[k])
                effs.append(n * mk / (n + mk) if mk else 0.0)
            chi = special.chdtrc(
                self.psi_dofs,
                np.asarray(effs, dtype=np.float64) * values,
            ).tolist()
            pm_l, values_l = pm.tolist(), values.tolist()
            for k, j in enumerate(self.psi_cols.tolist()):
                if skip_l[j]:
                    continue
                mk = pm_l[k]
                if mk == 0:
                    out[j] = None
                    continue
                pdet = self.psi_dets[k]
                value = values_l[k]
                n_eff = effs[k]
                crit = pdet._chi2_crit / n_eff
                threshold = max(pdet.psi_min, crit)
                out[j] = (
                    pdet,
                    value,
                    threshold,
                    value >= threshold,
                    float(chi[k]),
                    mk,
                    _PSI,
                    (n_eff, crit),
                )
        if self.q_cols.size:
            # QualityRates.evaluate for every item at once (see there).
            counts = row[self.q_index]  # (items, kinds), int64
            ms = counts.sum(axis=-1)
            safe = np.where(ms > 0, ms, 1)[:, None]
            rates_all = counts / safe
            base = self.q_base
            nf = base.sum(axis=-1, keepdims=True)
            mf = safe.astype(np.float64)
            c = counts.astype(np.float64)
            p = (c + base) / (mf + nf)
            var = p * (1.0 - p) * (1.0 / mf + 1.0 / nf)
            ok = var > 0
            z = np.where(ok, (c / mf - base / nf) / np.sqrt(np.where(ok, var, 1.0)), 0.0)
            z[(nf[:, 0] <= 0)] = 0.0
            rises = rates_all - self.q_base_rates
            z[:, 0] = -np.inf  # "ok" is not a problem kind
            enough = rises >= self.q_min[:, None]
            pick = np.argmax(np.where(enough, z, -np.inf), axis=-1)
            best_k = np.where(enough[:, 1:].any(axis=-1), pick, 0)
            best_k = np.where(best_k == 0, np.argmax(z, axis=-1), best_k)
            rows = np.arange(best_k.size)
            best_all = z[rows, best_k]
            tail = special.ndtr(-best_all).tolist()
            best_l, bk_l, ms_l = best_all.tolist(), best_k.tolist(), ms.tolist()
            enough_best = enough[rows, best_k].tolist()
            rise_best = rises[rows, best_k].tolist()
            rates_l = rates_all.tolist()
            for k, j in enumerate(self.q_cols.tolist()):
                if skip_l[j]:
                    continue
                mk = ms_l[k]
                if mk == 0:
                    out[j] = None
                    continue
                det = self.q_dets[k]
                best = best_l[k]
                crit = det._z_crit
                out[j] = (
                    det,
                    best,
                    crit,
                    bool(enough_best[k]) and best >= crit,
                    min(1.0, tail[k] * det._kinds),
                    mk,
                    _QUALITY,
                    (k, bk_l[k], rates_l[k], rise_best[k], bool(enough_best[k])),
                )
        return out

    def finding(
        self,
        item: int,
        verdict: _Verdict,
        frame_of: Callable[[int], _Frame] | None = None,
        stream: str = "",
        baseline_id: str | None = None,
    ) -> Finding:
        """The finding of one of ``verdicts``' verdicts (see ``clean``)."""
        det, statistic, threshold, drift, p_value, events, form, extra = verdict
        summary = ""
        details: tuple[tuple[str, float], ...]
        if form == _KS:
            n_eff, d_crit, resolution = extra
            details = det.details(events, n_eff, d_crit, resolution)
        elif form == _PSI:
            n_eff, crit = extra
            details = det.details(events, n_eff, crit)
        else:
            k, bk, rates, rise, enough = extra
            base_rates = self.q_base_rates_l[k]
            summary = quality_summary(
                _KIND_WORDS[bk],
                rates[bk],
                base_rates[bk],
                statistic,
                threshold,
                rise,
                enough,
                det.min_increase,
            )
            details = det.details(events, rates, base_rates)
        plan, _, seg = self.items[item]
        if frame_of is None or isinstance(plan.baseline, CategoricalBaseline):
            return Finding(
                detector=det.name,
                subject=det.subject,
                statistic=statistic,
                threshold=threshold,
                drift=drift,
                p_value=p_value,
                window=WindowBounds(events=events),
                details=details,
                summary=summary,
            )
        parts, one, start, end = frame_of(seg)
        window = (
            WindowBounds(events, None, None, start, end, None)
            if one is None
            else WindowBounds(events, one.first_offset, one.last_offset, start, end, one.partition)
        )
        return Finding(
            det.name,
            det.subject,
            statistic,
            threshold,
            drift,
            p_value,
            "field",
            stream,
            window,
            baseline_id,
            details,
            parts,
            (),
            summary,
        )

    def flags(
        self, totals: npt.NDArray[np.int32] | npt.NDArray[np.int64], closed: npt.NDArray[np.int64]
    ) -> Any:
        """``(C, items)`` bool: verdicts that may drift at each boundary (and the KS
        ``(D, m)`` of the last boundary in ``last_ks``, for ``clean``)."""
        self.last_ks = None
        C = totals.shape[0]
        out = np.zeros((C, len(self.items)), dtype=bool)
        ready = (closed >= self.layout.ring_size)[:, None]
        slack = 1.0 - _SCREEN_SLACK
        if self.ks_cols.size:
            d, m = ks_many(totals, self.ks_starts, self.ks_cdf, self.ks_cdf_starts, exact=False)
            d_last, m_last = ks_many(totals[-1:], self.ks_starts, self.ks_cdf, self.ks_cdf_starts)
            self.last_ks = (d_last[0], m_last[0])
            n = self.ks_n
            n_eff = np.where(m > 0, n * m / (n + np.where(m > 0, m, 1.0)), 1.0)
            threshold = np.maximum(self.ks_dmin, self.ks_crit / np.sqrt(n_eff))
            out[:, self.ks_cols] = ready & (m > 0) & (d >= threshold * slack)
        if self.psi_cols.size:
            out[:, self.psi_cols] = psi_screens(
                totals,
                self.psi_g_start,
                self.psi_g_end,
                self.psi_g_offsets,
                self.psi_smooth_items,
                self.psi_b,
                self.psi_n,
                self.psi_min,
                self.psi_crit,
                ready[:, 0],
                slack,
            )
        if self.q_cols.size:
            out[:, self.q_cols] = quality_screens(
                totals,
                self.q_index,
                self.q_base,
                self.q_crit,
                self.q_min,
                ready[:, 0],
                slack,
                _SCREEN_SLACK,
            )
        for j in self.other:
            plan, i, seg = self.items[j]
            a, b = int(self.layout.starts[seg]), int(self.layout.starts[seg + 1])
            out[:, j] = plan.merged[i].drifts_many(totals[:, a:b].astype(np.int64), closed)
        return out


class DriftStage:
    """Runs a stream's drift detectors over accepted batches, per partition."""

    name = "drift"

    @property
    def runs_apart(self) -> bool:
        """``update`` may run on a worker thread while the service decodes the next
        batch (``monitor.pipeline.stage.RunsApart``) once the baseline is there: it
        reads its batch, its own state and the decoder's category names by code
        (a category the next batch adds has a code this batch does not hold). Not
        while it builds a baseline from the first events, which lists the decoder's
        categories as they are."""
        return self._accumulator is None

    @classmethod
    def for_stream(
        cls, spec: StreamSpec, decoder: StreamDecoder, context: StageContext | None = None
    ) -> DriftStage | None:
        """The stream's drift stage, or None when no field has a detector; its baseline
        is the one an earlier stage provides (a model's reference file), if any."""
        reference = None if context is None else context.reference()
        stage = cls(spec, decoder, reference)
        if reference is not None:  # rebuilt at every start, like a file: not checkpointed
            stage.baseline_source = "file"
        return stage if stage.fields else None

    def __init__(
        self, spec: StreamSpec, decoder: StreamDecoder, baseline: Baseline | None = None
    ) -> None:
        self.spec = spec
        self.decoder = decoder
        self.fields = [
            n
            for n, fs in spec.fields.items()
            if fs.type is not FieldType.STRING and fs.detector_specs()
        ]
        self.baseline: Baseline | None = None
        self.baseline_source = "file" if spec.baseline.file is not None else "first_events"
        self._plans: list[_FieldPlan] = []
        self._partitions: dict[int, _PartitionDetectors] = {}
        # Other replicas' partitions, as of their latest checkpoints (see set_remote).
        self._remote: dict[int, _PartitionDetectors] = {}
        # Whether this process judges the stream (it owns the stream's first slot).
        self.judge = True
        # Change points other replicas' partitions reported since they were last seen.
        self._remote_findings: list[Finding] = []
        # True: the clean verdicts of the shared windows' screens are kept as
        # ``Verdicts`` (take_verdicts) instead of reported as findings (the service's
        # consumers read them in that form; see StreamPipeline.compact_clean).
        self.compact_clean = False
        self._verdicts: list[Verdicts] = []
        self._remote_changes: dict[tuple[int, str, int], int] = {}
        self._accumulator: BaselineAccumulator | None = None
        self._time_window = spec.window.seconds is not None
        # The stream's partition count (see set_partition_count) and the events this
        # stage has folded in (it places the step boundaries of the verdicts).
        self.partition_count = 1
        self._seen = 0
        self._layout: _Layout | None = None
        self._screens: _Screens | None = None
        # The last batch's rows grouped by partition (see _fold_rings) and its
        # columns in that order (see _flat_bins).
        self._order: tuple[npt.NDArray[np.intp] | None, dict[int, tuple[int, int]]] = (None, {})
        self._gathered: dict[str, tuple[npt.NDArray[Any], npt.NDArray[np.bool_], bool]] = {}
        # (key, field names, their EdgeIndexes or None, fine segments, segment starts)
        self._together: tuple[Any, list[str], EdgeIndexes | None, Any, Any] | None = None
        self._buffers: dict[str, npt.NDArray[Any]] = {}
        self._constant: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)
        if baseline is None and spec.baseline.file is not None:
            try:
                baseline = load_baseline(spec.baseline.file)
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    f"streams[{spec.name}].baseline.file: cannot load {spec.baseline.file}: {exc}"
                ) from exc
        if baseline is not None:
            self._start(baseline)
        elif self.fields:
            log.info(
                "stream %s has no baseline file: building one from its first %d events",
                spec.name,
                spec.baseline.first_events,
            )
            self._accumulator = BaselineAccumulator(spec, decoder, self.fields)

    @property
    def ready(self) -> bool:
        return self.baseline is not None

    def _start(self, baseline: Baseline) -> None:
        missing = [f for f in self.fields if f not in baseline.fields]
        if missing:
            raise ConfigError(
                f"stream {self.spec.name!r}: baseline {baseline.id!r} has no field(s) {missing}"
            )
        self.baseline = baseline
        binned_pairs = sum(
            1
            for f in self.fields
            for d in self.spec.fields[f].detector_specs()
            if d not in _UNBINNED
        )
        window = self.spec.window.detector_params()
        P = self.partition_count
        self._plans = []
        for name in self.fields:
            fs = self.spec.fields[name]
            fb = baseline.fields[name]
            numeric = fs.type in NUMERIC_TYPES
            if numeric != isinstance(fb, NumericBaseline):
                held = "numeric" if isinstance(fb, NumericBaseline) else "categorical"
                raise ConfigError(
                    f"stream {self.spec.name!r}: field {name!r} is {fs.type} but baseline "
                    f"{baseline.id!r} holds a {held} reference"
                )
            if isinstance(fb, CategoricalBaseline) and name in self.decoder.vocabularies:
                self.decoder.seed_categories(name, list(fb.categories))
            plan = _FieldPlan(name, numeric, fb, [], [], [], np.empty(0, np.int64))
            for det_name, params in fs.detector_specs().items():
                if det_name in _UNBINNED:
                    if not numeric:
                        continue  # ADWIN watches a numeric mean
                    kw = {**SERVICE_DEFAULTS, **params} if det_name == "adwin" else dict(params)
                    if det_name == "adwin":
                        kw = _adwin_share(kw, P)
                    plan.raw.append((det_name, _factory(det_name, None, name, kw)))
                else:
                    kw = _partition_share({**window, "family_size": binned_pairs, **params}, P)
                    reference: Any = fb
                    if det_name == "data_quality":
                        reference = baseline.quality.get(name)
                        if reference is None:
                            log.warning(
                                "stream %s: baseline %s records no data-quality rates of "
                                "field %s: its data_quality detector is off (rebuild the baseline)",
                                self.spec.name,
                                baseline.id,
                                name,
                            )
                            continue
                    make = _factory(det_name, reference, name, kw)
                    plan.binned.append((det_name, make))
                    plan.merged.append(make())
                    plan.outcome.append(det_name == "data_quality")
            self._plans.append(plan)
        self._layout = None if self._time_window else _Layout.plan(self._plans)
        self._screens = None if self._layout is None else _Screens(self._layout)
        self._partitions.clear()
        log.info(
            "stream %s: baseline %s ready (%d fields)",
            self.spec.name,
            baseline.id,
            len(self.fields),
        )

    def _partition(self, partition: int) -> _PartitionDetectors:
        found = self._partitions.get(partition)
        if found is None:
            found = self._partitions[partition] = _PartitionDetectors(self._plans, self._layout)
        return found

    # -- processing ----------------------------------------------------------------
    def set_partition_count(self, count: int) -> None:
        """The stream's partition count ``P`` (all its topics), from the topic metadata.

        Count windows give each partition sub-windows of ``ceil(step / P)`` events, so
        the stream's verdict (the newest sub-windows of every partition, added) covers
        about ``window.events`` events of the stream. A change of ``P`` restarts the
        windows (checkpointed partition states of another ``P`` are not restored).
        """
        count = max(int(count), 1)
        if count == self.partition_count:
            return
        log.info("stream %s: %d partitions", self.spec.name, count)
        self.partition_count = count
        if self.baseline is not None:
            self._start(self.baseline)

    def update(
        self,
        batch: Batch,
        partitions: npt.NDArray[np.int32],
        offsets: npt.NDArray[np.int64] | None = None,
        *,
        coordinates: Coordinates | None = None,
    ) -> list[Finding]:
        """Fold in a batch; ``partitions`` gives each accepted row's partition (slot)
        and ``offsets`` (or ``coordinates``; optional) its Kafka offset, for the evidence."""
        if offsets is None and coordinates is not None:
            offsets = coordinates.offsets
        if self._accumulator is not None:
            target = int(self.spec.baseline.first_events or 0)
            taken = self._accumulator.add(batch, target)
            if self._accumulator.events < target:
                return []
            acc, self._accumulator = self._accumulator, None
            self._start(acc.build(self.spec.name, f"first {target} events"))
            if taken >= batch.n:
                return []
            batch, partitions = _tail(batch, taken), partitions[taken:]
            offsets = None if offsets is None else offsets[taken:]
        if self.baseline is None or batch.n == 0:
            return []
        n = batch.n
        # Stream step boundaries inside the batch: a verdict after each.
        cuts: list[int] = []
        step = self.spec.window.step
        if not self._time_window and step:
            seen = self._seen if self._layout is None else self._position()
            first_cut = step - seen % step
            cuts = list(range(first_cut, n + 1, step))
        self._seen += n
        bounds = [0, *cuts]
        if not cuts or cuts[-1] != n:
            bounds.append(n)
        first = int(partitions[0])
        rows_of: dict[int, npt.NDArray[np.intp] | None]
        if (partitions == first).all():
            rows_of = {first: None}
        else:
            rows_of = {int(p): np.flatnonzero(partitions == p) for p in np.unique(partitions)}
        times_all = batch.event_time
        # Per field, the bins of every row (garbage where the value is not valid) and,
        # for a data_quality detector, every row's outcome code.
        binned: list[tuple[_FieldPlan, Any, Any, Any, Any]] = []
        findings: list[Finding] = []
        due: set[tuple[str, int]] = set()
        pending: Future[list[int | None]] | None = None
        if self._layout is not None:
            # The partitions' ADWINs fold in on a worker thread (a compiled pass that
            # releases the GIL) while this thread folds the windows and judges.
            self._group_rows(rows_of, n)
            self._gather(batch)
            jobs = self._raw_jobs(self._ordered_shares(batch, offsets, times_all))
            befores = self._estimations(jobs)
            if sum(int(job[4].size) for job in jobs) >= _PARALLEL_VALUES:
                pending = worker("adwin").submit(_update_adwins, jobs)
            try:
                findings = self._fold_rings(batch, rows_of, cuts, offsets, times_all)
            except BaseException:
                if pending is not None:  # never leave the worker folding after we return
                    concurrent.futures.wait([pending])
                raise
            bounds = []  # done: skip the sub-batch loop below
        else:
            binned = self._bin_fields(batch)
            if not self._time_window and not self._keeps_values():
                findings = self._fold_and_judge(binned, rows_of, cuts, offsets, times_all)
                bounds = []  # done: skip the sub-batch loop below
        for j in range(len(bounds) - 1):
            lo, hi = bounds[j], bounds[j + 1]
            for partition, rows in rows_of.items():
                if rows is None:
                    sel: Any = slice(lo, hi)
                else:
                    a, b = np.searchsorted(rows, (lo, hi))
                    if a == b:
                        continue
                    sel = rows[a:b]
                dets = self._partition(partition)
                for plan, valid, bins, column, codes in binned:
                    if codes is not None:  # data_quality: every event of the field counts
                        every = np.arange(lo, hi) if isinstance(sel, slice) else sel
                        t_all = None if times_all is None else times_all[every]
                        o_all = None if offsets is None else offsets[every]
                        for i, det in enumerate(dets.binned[plan.name]):
                            if plan.outcome[i] and det.accumulate(codes[every], t_all, None, o_all):
                                due.add((plan.name, i))
                    ok = valid[sel]
                    idx = np.flatnonzero(ok) + lo if isinstance(sel, slice) else sel[ok]
                    if idx.size == 0:
                        continue
                    times = None if times_all is None else times_all[idx]
                    offs = None if offsets is None else offsets[idx]
                    b_rows = bins[idx]
                    values = column[idx]
                    for i, det in enumerate(dets.binned[plan.name]):
                        if not plan.outcome[i] and det.accumulate(b_rows, times, values, offs):
                            due.add((plan.name, i))
            at_cut = hi in cuts
            last = j == len(bounds) - 2 or (j == len(bounds) - 3 and bounds[-1] not in cuts)
            if self.judge and (at_cut or (self._time_window and last)):
                # Every verdict is taken; a clean one is reported only at the batch's
                # last step boundary (the gauges and the alerts' resolution read it).
                for plan in self._plans:
                    for i, merged in enumerate(plan.merged):
                        if self._time_window and (plan.name, i) not in due:
                            continue
                        finding = self._judge(plan, i, merged, evidence=False)
                        if finding is not None and (finding.drift or last):
                            findings.append(self._locate(finding, plan, i))
                due.clear()
        # ADWIN per partition over the whole batch (its change points carry their own
        # positions, so it needs no step boundaries).
        clean: dict[tuple[str, int], Any] = {}
        # One compiled ADWIN call for all partitions and fields (update_many); a
        # finding is built for a change, and for one partition per field (the last)
        # when there is none.
        if self._layout is not None:
            changes = _update_adwins(jobs) if pending is None else pending.result()
        else:
            jobs = self._raw_jobs(_raw_shares(binned, rows_of, offsets, times_all))
            befores = self._estimations(jobs)
            changes = _update_adwins(jobs)
        for job, before, changed in zip(jobs, befores, changes, strict=True):
            plan, partition, r, det, values, times, offs = job
            if changed is None:
                continue
            if changed:
                f = det.finding(changed, times)
                findings.append(_locate_change(f, partition, before, values, offs, times))
            else:  # one clean finding per field and batch is enough
                clean[(plan.name, r)] = (det, partition, before, values, offs, times)
        stream, baseline_id = self.spec.name, self.baseline.id
        if self.compact_clean and clean and not self._remote_findings:
            # As rows (see _compact); with other replicas' changes to report, as
            # findings, so that those still come after them.
            kept = [(det, slot, det.numbers(times)) for det, slot, _, _, _, times in clean.values()]

            def build(i: int) -> Finding:
                det, slot, numbers = kept[i]
                return _on_partition(det.finding(0, numbers=numbers), slot, stream, baseline_id)

            self._verdicts.append(
                Verdicts(
                    stream,
                    tuple(det.subject for det, _, _ in kept),
                    tuple(det.name for det, _, _ in kept),
                    [0.0] * len(kept),
                    [1.0] * len(kept),
                    [None] * len(kept),
                    build,
                )
            )
        else:
            for det, partition, _, _, _, times in clean.values():
                findings.append(
                    _on_partition(det.finding(0, times), partition, stream, baseline_id)
                )
        if not self.judge:
            findings = []  # the stream's judge reports this replica's changes from checkpoints
            self._verdicts = []
        else:
            findings.extend(self._remote_findings)
            self._remote_findings = []
        baseline_id = self.baseline.id
        return [
            f
            if f.stream == self.spec.name and f.baseline_id == baseline_id
            else _evolve_finding(f, stream=self.spec.name, baseline_id=baseline_id)
            for f in findings
        ]

    def _raw_jobs(self, shares: list[_Share]) -> list[tuple[Any, ...]]:
        """Per share and raw-value detector: (plan, partition, index, detector,
        values, times, offsets)."""
        return [
            (plan, partition, r, det, values, times, offs)
            for plan, partition, values, times, offs in shares
            for r, det in enumerate(self._partition(partition).raw[plan.name])
        ]

    @staticmethod
    def _estimations(jobs: list[tuple[Any, ...]]) -> list[float]:
        """Each job's detector's estimate before the batch (an ADWIN change reports it
        as the old mean)."""
        dets = [job[3] for job in jobs]
        if all(type(d) is ADWIN for d in dets):
            return estimations(dets)
        return [float(getattr(d, "estimation", math.nan)) for d in dets]

    def _group_rows(self, rows_of: dict[int, npt.NDArray[np.intp] | None], n: int) -> None:
        """Rows grouped by partition (each partition's rows stay in batch order), so
        each partition's fold reads one stretch: ``self._order`` = (the order, None
        when the batch already is; per partition its stretch)."""
        order: npt.NDArray[np.intp] | None = None
        bounds: dict[int, tuple[int, int]] = {}
        if len(rows_of) == 1:
            bounds = {next(iter(rows_of)): (0, n)}
        elif _KEEP_RUNS and all(
            rows is not None and int(rows[-1]) - int(rows[0]) + 1 == rows.size
            for rows in rows_of.values()
        ):
            # Each partition's rows are one stretch already (the Kafka source hands a
            # batch over as per-partition runs of records): nothing to reorder.
            for partition, rows in rows_of.items():
                assert rows is not None
                bounds[partition] = (int(rows[0]), int(rows[-1]) + 1)
        else:
            parts = []
            at = 0
            for partition, rows in rows_of.items():
                assert rows is not None
                bounds[partition] = (at, at + rows.size)
                at += rows.size
                parts.append(rows)
            order = np.concatenate(parts)
        self._order = (order, bounds)

    def _gather(self, batch: Batch) -> None:
        """Every field's column and validity in ``self._order`` (``self._gathered``:
        column, valid, whether every value is valid)."""
        order = self._order[0]
        self._gathered = {}
        every = None  # one all-valid mask for the fields with no invalid value
        for plan in self._plans:
            valid = batch.valid[plan.name]
            column = batch.columns[plan.name]
            whole = bool(valid.all())
            if whole:
                if every is None:
                    every = np.ones(batch.n, dtype=bool)
                valid = every
            if order is not None:
                column = column[order]
                if not whole:
                    valid = valid[order]
            self._gathered[plan.name] = (column, valid, whole)

    def _position(self) -> int:
        """The stream position the step boundaries count from: the events folded into
        this process's partitions' windows (checkpointed with them, so a restart
        continues the same boundaries)."""
        total = 0
        for dets in self._partitions.values():
            ring = dets.ring
            if ring is not None:
                total += ring.closed * ring.step + ring.open_n
        return total

    def _fold_rings(
        self,
        batch: Batch,
        rows_of: dict[int, npt.NDArray[np.intp] | None],
        cuts: list[int],
        offsets: npt.NDArray[np.int64] | None,
        times_all: npt.NDArray[np.float64] | None,
    ) -> list[Finding]:
        """Shared count windows: fold every partition's share of the batch into its
        ring (one compiled pass for all fields), then judge the stream at each step
        boundary from the partitions' windows added there."""
        layout, screens = self._layout, self._screens
        assert layout is not None and screens is not None
        T = layout.width
        order, bounds = self._order  # (_group_rows; _gather has the columns)
        flat = self._flat_bins(batch, layout, order)
        judging = self.judge and bool(cuts)
        cut_arr = np.asarray(cuts if judging else [], dtype=np.int64)
        C = int(cut_arr.size)
        # Stream windows at the boundaries: 32-bit counts (half the memory every
        # boundary writes and the screens read) when no bin can reach 2**31 events.
        rings_all = len(self._partitions) + len(self._remote)
        wide = layout.ring_size * layout.step * max(rings_all, len(rows_of)) >= 2**31 - 1
        totals = self._scratch(
            "totals64" if wide else "totals", (C, T), np.int64 if wide else np.int32
        )
        closed = np.zeros(C, dtype=np.int64)
        touched = {p: self._partition(p).ring for p in rows_of}
        # Windows the batch does not move count at every boundary as they are: their
        # sum is every boundary's starting row (the folds add the moving ones).
        still_sum: npt.NDArray[Any] | None = None
        if judging:
            for slot, ring in self._rings():
                if slot not in touched or slot in self._remote:
                    if still_sum is None:
                        still_sum = ring.total.astype(totals.dtype)
                    else:
                        still_sum += ring.total
                    closed = np.maximum(closed, ring.closed)
        if still_sum is None:
            totals.fill(0)
        else:
            totals[:] = still_sum
        where: dict[int, CutSpans] = {}
        for partition, (lo, hi) in bounds.items():
            moving = touched[partition]
            assert moving is not None
            positions = np.arange(lo, hi) if order is None else order[lo:hi]
            where[partition] = moving.fold(
                flat[:, lo:hi],
                positions,
                offsets,
                times_all,
                cut_arr,
                totals,
                closed,
                self._constant,
            )
        if not judging:
            return []
        flags = screens.flags(totals, closed)
        last = C - 1
        # Evidence per (boundary, segment), shared by the items of a segment, from
        # each ring's window per boundary (counts per segment, and one span).
        frames: dict[tuple[int, int], _Frame] = {}
        heads: dict[tuple[int, int], tuple[list[int], tuple[Any, Any, Any, Any]]] = {}
        still: dict[int, CutSpans] = {}
        rings = self._rings()

        # Segments whose windows hold as many events in every partition (all fields
        # without nulls, say) have equal evidence: built once (frozen values).
        by_events: dict[tuple[int, tuple[int, ...]], _Frame] = {}

        def frame_at(c: int, seg: int) -> _Frame:
            frame = frames.get((c, seg))
            if frame is not None:
                return frame
            per_c = events_at.get(c)
            if per_c is None:
                per_c = events_at[c] = head_rows(c)
            heads_c, columns = per_c
            key = (c, columns[seg])
            frame = by_events.get(key)
            if frame is None:
                located: list[WindowBounds | None] = []
                for (slot, _), head in zip(rings, heads_c, strict=True):
                    events = head[0][seg]
                    first, last_off, start, end = head[1]
                    located.append(
                        WindowBounds(events, first, last_off, start, end, slot) if events else None
                    )
                frame = by_events[key] = _frame(located)
            frames[(c, seg)] = frame
            return frame

        events_at: dict[int, tuple[list[Any], list[tuple[int, ...]]]] = {}

        def head_rows(c: int) -> tuple[list[Any], list[tuple[int, ...]]]:
            """Each ring's (segment counts, span) at boundary ``c``, and per segment
            its counts across the rings."""
            heads_c = []
            for slot, ring in rings:
                head = heads.get((slot, c))
                if head is None:
                    moved = where.get(slot)
                    at = c
                    if moved is None:  # a window this batch did not move: as it is
                        if slot not in still:
                            still[slot] = ring.spans()
                        moved, at = still[slot], 0
                    head = heads[(slot, c)] = (
                        moved.events[at].tolist(),
                        _span_fields(moved.spans[at]),
                    )
                heads_c.append(head)
            if not heads_c:
                return heads_c, [()] * (layout.starts.size - 1)
            return heads_c, list(zip(*(head[0] for head in heads_c), strict=True))

        labels = self._labels()
        # Verdicts the screen clears at the last boundary are clean: built from arrays,
        # with their evidence (fields without categories; see _Screens.clean).
        fast: dict[int, Finding | None]
        if self.compact_clean:
            fast = self._compact(
                screens.verdicts(
                    totals[last].astype(np.int64), int(closed[last]), flags[-1], screens.last_ks
                ),
                lambda seg: frame_at(last, seg),
                labels,
            )
        else:
            fast = screens.clean(
                totals[last].astype(np.int64),
                int(closed[last]),
                flags[-1],
                lambda seg: frame_at(last, seg),
                **labels,
                ks=screens.last_ks,
            )
        flags[-1] = True  # a clean verdict is reported once per batch, at its last boundary
        findings: list[Finding] = []
        flagged_j, flagged_c = np.nonzero(flags.T)
        for j, c in zip(flagged_j.tolist(), flagged_c.tolist(), strict=True):
            plan, i, seg = layout.items[j]
            a, b = int(layout.starts[seg]), int(layout.starts[seg + 1])
            if c == last and j in fast:
                finding = fast[j]
                if finding is not None and not isinstance(plan.baseline, CategoricalBaseline):
                    findings.append(finding)  # complete (see _Screens.clean)
                    continue
            else:
                merged = plan.merged[i]
                merged.load_counts(totals[c, a:b].astype(np.int64), int(closed[c]))
                finding = merged.evaluate()
            if finding is None or not (finding.drift or c == last):
                continue
            frame = frame_at(c, seg)
            categories = [] if plan.outcome[i] else self._category_names(plan)
            counts = totals[c, a:b].astype(np.int64)
            findings.append(_with_frame(finding, frame, plan, categories, counts, **labels))
        return findings

    def _compact(
        self,
        verdicts: dict[int, _Verdict | None],
        frame_at: Callable[[int], _Frame],
        labels: dict[str, Any],
    ) -> dict[int, Finding | None]:
        """``_Screens.clean``'s findings, except that the clean verdicts of fields
        without categories are kept as one ``Verdicts`` (``take_verdicts``) and read
        None here; their evidence frames are taken now, so that a row's finding is
        the same whenever it is built."""
        screens, layout = self._screens, self._layout
        assert screens is not None and layout is not None
        out: dict[int, Finding | None] = {}
        rows: list[tuple[int, _Verdict]] = []
        frames: dict[int, _Frame] = {}
        for j, verdict in verdicts.items():
            out[j] = None
            if verdict is None:
                continue
            plan, _, seg = layout.items[j]
            if verdict[3] or isinstance(plan.baseline, CategoricalBaseline):
                frame = frames.get(seg)
                if frame is None:
                    frame = frames[seg] = frame_at(seg)
                out[j] = screens.finding(j, verdict, frames.__getitem__, **labels)
                continue
            if seg not in frames:
                frames[seg] = frame_at(seg)
            rows.append((j, verdict))
        if rows:
            items = [j for j, _ in rows]
            kept = [v for _, v in rows]

            def build(i: int) -> Finding:
                return screens.finding(items[i], kept[i], frames.__getitem__, **labels)

            self._verdicts.append(
                Verdicts(
                    labels["stream"],
                    tuple(v[0].subject for v in kept),
                    tuple(v[0].name for v in kept),
                    [v[1] for v in kept],
                    [v[2] for v in kept],
                    [v[4] for v in kept],
                    build,
                )
            )
        return out

    def take_verdicts(self) -> list[Verdicts]:
        """The clean verdicts kept as ``Verdicts`` (``compact_clean``) since the last
        call, batch by batch."""
        out, self._verdicts = self._verdicts, []
        return out

    def _labels(self) -> dict[str, Any]:
        """What every finding of this stage carries: the stream and the baseline id."""
        assert self.baseline is not None
        return {"stream": self.spec.name, "baseline_id": self.baseline.id}

    def _scratch(self, name: str, shape: tuple[int, int], dtype: Any) -> npt.NDArray[Any]:
        """A working array of ``shape``, reused from batch to batch (a fresh megabyte
        array per batch costs its page faults every time)."""
        rows, cols = shape
        buf = self._buffers.get(name)
        if buf is None or buf.shape[0] < rows or buf.shape[1] < cols:
            size = (max(rows, 1 if buf is None else buf.shape[0]), max(cols, 1))
            buf = self._buffers[name] = np.empty(size, dtype=dtype)
        # A view of the leading rows and columns (row-major: contiguous per row).
        return buf[:rows, :cols]

    def _rings(self) -> list[tuple[int, WindowRing]]:
        out = [(s, p.ring) for s, p in self._partitions.items() if p.ring is not None]
        out += [(s, p.ring) for s, p in self._remote.items() if p.ring is not None]
        return out

    def _bin_fields(self, batch: Batch) -> list[tuple[_FieldPlan, Any, Any, Any, Any]]:
        """Per field, the bins of every row (garbage where the value is not valid) and,
        for a data_quality detector, every row's outcome code."""
        binned: list[tuple[_FieldPlan, Any, Any, Any, Any]] = []
        violations = None
        for plan in self._plans:
            valid = batch.valid[plan.name]
            column = batch.columns[plan.name]
            if plan.numeric:
                bins = plan.baseline.bin_index(np.where(valid, column, 0.0))
            else:
                names = self.decoder.vocabularies[plan.name].names()
                bins = plan.category_bins(np.where(valid, column, 0), names)
            codes = None
            if any(plan.outcome):
                if violations is None:
                    violations = violation_kinds(batch)
                codes = outcome_codes(batch, plan.name, valid, bins, plan.baseline, violations)
            binned.append((plan, valid, bins, column, codes))
        return binned

    def _flat_bins(
        self, batch: Batch, layout: _Layout, order: npt.NDArray[np.intp] | None
    ) -> FlatBins:
        """Every row's flat bin in each segment of the shared window row, shape
        ``(segments, n)``, rows taken in ``order`` (grouped by partition; None: as
        they are); the row width ``T`` where the value does not count; a segment where
        every event has one bin is left unwritten and named in ``self._constant``. Reads
        the columns ``_gather`` took in ``order``."""
        T = layout.width
        # 16-bit flat bins when the row is narrow enough (the marker T included): half
        # the memory the binning writes and every partition's fold reads.
        narrow = T < _NARROW_FLAT
        flat = self._scratch(
            "flat16" if narrow else "flat",
            (layout.starts.size - 1, batch.n),
            np.uint16 if narrow else np.int32,
        )
        # Segments where every event has one bin (a field's data quality, all ok).
        constant = self._constant = np.full(layout.starts.size - 1, -1, dtype=np.int64)
        violations = None
        flagged = {v.field for v in batch.violations} if batch.violations else set()
        # The numeric fields' fine bins in one compiled call when their columns are
        # rows of one matrix (the decoder's output), else field by field.
        together = self._bin_together(batch, layout, order, flat)
        for plan in self._plans:
            column, valid, whole = self._gathered[plan.name]
            seg = layout.fine.get(plan.name)
            q = layout.quality.get(plan.name)
            bins = None
            if seg is not None and plan.numeric:
                if not together:
                    assert isinstance(plan.baseline, NumericBaseline)
                    plan.baseline.bin_into(column, valid, flat[seg], int(layout.starts[seg]), T)
            elif not plan.numeric:
                names = self.decoder.vocabularies[plan.name].names()
                bins = plan.category_bins(np.where(valid, column, 0), names)
                if seg is not None:
                    flat[seg] = np.where(valid, bins + layout.starts[seg], T)
            if q is None:
                continue
            qs = int(layout.starts[q])
            if plan.numeric and plan.name not in flagged:
                if whole:
                    constant[q] = qs  # ok, every event (the fold reads no row)
                else:
                    flat[q] = np.where(valid, qs, qs + 1)  # ok or null
                continue
            if violations is None:
                violations = violation_kinds(batch)
            codes = outcome_codes(
                batch,
                plan.name,
                batch.valid[plan.name],
                np.zeros(batch.n, np.int64) if bins is None else _unorder(bins, order),
                plan.baseline,
                violations,
            )
            flat[q] = (codes if order is None else codes[order]) + qs
        return flat

    def _bin_together(
        self,
        batch: Batch,
        layout: _Layout,
        order: npt.NDArray[np.intp] | None,
        flat: npt.NDArray[np.int32],
    ) -> bool:
        """Write every numeric field's fine bins into ``flat`` with one
        ``EdgeIndexes`` call; False (nothing written) when the fields' columns or
        masks are not rows of one matrix or an index cannot take part."""
        # Keyed by the baseline and layout themselves (held here, so never confused
        # with later objects at the same address).
        key = (self.baseline, layout)
        cached = self._together
        if cached is None or cached[0][0] is not key[0] or cached[0][1] is not key[1]:
            plans = [p for p in self._plans if p.numeric and layout.fine.get(p.name) is not None]
            indexes = [p.baseline.edge_index() for p in plans]  # type: ignore[union-attr]
            usable = bool(plans) and all(ix.usable for ix in indexes)
            cached = self._together = (
                key,
                [p.name for p in plans],
                EdgeIndexes(indexes) if usable else None,
                np.asarray([layout.fine[p.name] for p in plans], dtype=np.int64),
                np.asarray([layout.starts[layout.fine[p.name]] for p in plans], dtype=np.int64),
            )
        _, names, indexes_all, segs, shifts = cached
        if indexes_all is None:
            return False
        values = _rows_of_one([batch.columns[name] for name in names])
        if values is None:
            return False
        masks: list[npt.NDArray[np.bool_]] = []
        valid_at: list[int] = []
        for name in names:
            if self._gathered[name][2]:  # every value valid
                valid_at.append(-1)
            else:
                valid_at.append(len(masks))
                masks.append(batch.valid[name])
        valid = None
        valid_rows = np.asarray(valid_at, dtype=np.int64)
        if masks:
            found = _rows_of_one(masks)
            if found is None:
                return False
            valid, at = found
            valid_rows[valid_rows >= 0] = at
        matrix, rows = values
        indexes_all.count_into(
            matrix,
            rows,
            valid,
            valid_rows,
            None if order is None else order.astype(np.int64, copy=False),
            flat,
            segs,
            shifts,
            layout.width,
        )
        return True

    def _ordered_shares(
        self,
        batch: Batch,
        offsets: npt.NDArray[np.int64] | None,
        times_all: npt.NDArray[np.float64] | None,
    ) -> list[_Share]:
        """``_raw_shares`` from the columns ``_flat_bins`` grouped by partition."""
        out: list[_Share] = []
        order, bounds = self._order
        offs_o = None if offsets is None else offsets if order is None else offsets[order]
        times_o = None if times_all is None else times_all if order is None else times_all[order]
        for plan in self._plans:
            if not plan.raw:
                continue
            column, valid, whole = self._gathered[plan.name]
            for partition, (lo, hi) in bounds.items():
                ok = valid[lo:hi]
                if whole or ok.all():
                    sel: Any = slice(lo, hi)
                else:
                    sel = lo + np.flatnonzero(ok)
                    if sel.size == 0:
                        continue
                out.append(
                    (
                        plan,
                        partition,
                        column[sel],
                        None if times_o is None else times_o[sel],
                        None if offs_o is None else offs_o[sel],
                    )
                )
        return out

    def _keeps_values(self) -> bool:
        return any(
            d._window.keep_values for p in self._plans for d in p.merged if hasattr(d, "_window")
        )

    def _fold_and_judge(
        self,
        binned: list[tuple[_FieldPlan, Any, Any, Any, Any]],
        rows_of: dict[int, npt.NDArray[np.intp] | None],
        cuts: list[int],
        offsets: npt.NDArray[np.int64] | None,
        times_all: npt.NDArray[np.float64] | None,
    ) -> list[Finding]:
        """Count windows: fold each (partition, field) in once, recording the window
        at every sub-window close, then judge the stream at each step boundary from
        the partitions' windows as they stood there."""
        folds: dict[tuple[str, int], list[_Fold]] = {}
        n = len(next(iter(binned))[1]) if binned else 0
        for partition, rows in rows_of.items():
            dets = self._partition(partition)
            every = np.arange(n) if rows is None else rows
            for plan, valid, bins, column, codes in binned:
                idx = every[valid[every]]
                for i, det in enumerate(dets.binned[plan.name]):
                    pos = every if plan.outcome[i] else idx
                    if pos.size == 0:
                        continue
                    fold = _Fold(det, pos)
                    data = codes[pos] if plan.outcome[i] else bins[pos]
                    values = column[pos] if not plan.outcome[i] else None
                    det._window.history = fold.history
                    try:
                        det.accumulate(
                            data,
                            None if times_all is None else times_all[pos],
                            values,
                            None if offsets is None else offsets[pos],
                        )
                    finally:
                        det._window.history = None
                    folds.setdefault((plan.name, i), []).append(fold)
        findings: list[Finding] = []
        if not self.judge or not cuts:
            return findings
        self._span_cache: dict[tuple[int, int], Any] = {}
        for fs in folds.values():
            for f in fs:
                f.prepare(cuts)
        n_cuts = len(cuts)
        for plan in self._plans:
            for i, merged in enumerate(plan.merged):
                here = folds.get((plan.name, i), [])
                moved = {f.slot for f in here}
                totals: npt.NDArray[np.int64] | None = None  # (cuts, bins), stream windows
                closed = np.zeros(n_cuts, dtype=np.int64)
                for f in here:
                    t, k = f.at_all()
                    totals = t if totals is None else totals + t
                    closed = np.maximum(closed, k)
                for _, det in self._slots(plan, i):
                    if id(det) in moved:
                        continue
                    w = det._window
                    totals = (
                        np.repeat(w._total[None, :], n_cuts, axis=0)
                        if totals is None
                        else totals + w._total
                    )
                    closed = np.maximum(closed, w._closed)
                if totals is None:
                    continue
                # Every boundary is judged; findings are built where the stream drifts,
                # and at the batch's last boundary (a clean verdict is reported once).
                judged = merged.drifts_many(totals, closed)
                judged[-1] = True
                for c in np.flatnonzero(judged).tolist():
                    merged.load_counts(totals[c].copy(), int(closed[c]))
                    finding = merged.evaluate()
                    if finding is None or not (finding.drift or c == n_cuts - 1):
                        continue
                    findings.append(self._locate_at(finding, plan, i, here, cuts[c]))
        return findings

    def _slots(self, plan: _FieldPlan, index: int) -> list[tuple[int, Any]]:
        slots = [(s, p.binned[plan.name][index]) for s, p in self._partitions.items()]
        slots += [(s, p.binned[plan.name][index]) for s, p in self._remote.items()]
        return slots

    def _locate_at(
        self, finding: Finding, plan: _FieldPlan, index: int, folds: list[_Fold], cut: int
    ) -> Finding:
        """Evidence for a verdict taken inside a batch: partitions the batch moved
        are located as their windows stood at the step boundary ``cut``."""
        at = {}
        for f in folds:  # detectors of a field that took the same rows share the span
            key = (id(f.positions), cut)
            if key not in self._span_cache:
                self._span_cache[key] = f.span_at(cut)
            at[id(f.det)] = self._span_cache[key]
        slots = [
            (s, _SpanAt(det, at[id(det)]) if id(det) in at else det)
            for s, det in self._slots(plan, index)
        ]
        categories = [] if plan.outcome[index] else self._category_names(plan)
        spans, counts = _spans_and_counts(slots, categories)
        return _with_evidence(finding, spans, plan, categories, counts)

    def _judge(
        self, plan: _FieldPlan, index: int, merged: Any, evidence: bool = True
    ) -> Finding | None:
        """The stream-level verdict: all partitions' windows added, then judged.

        ``evidence=False`` leaves out where the window lies (``_locate``), for
        verdicts that are dropped unless they drift.
        """
        slots = [(s, p.binned[plan.name][index]) for s, p in self._partitions.items()]
        slots += [(s, p.binned[plan.name][index]) for s, p in self._remote.items()]
        if not slots:
            return None
        if len(slots) == 1:
            finding: Finding | None = slots[0][1].evaluate()
        else:
            if not merged.load_sum([det for _, det in slots]):
                merged.clear()
                for _, det in slots:
                    merged.merge(det)
            finding = merged.evaluate()
        if finding is None or not evidence:
            return finding
        return self._locate(finding, plan, index)

    def _locate(self, finding: Finding, plan: _FieldPlan, index: int) -> Finding:
        """``finding`` with the evidence of where its window lies, partition by partition."""
        slots = [(s, p.binned[plan.name][index]) for s, p in self._partitions.items()]
        slots += [(s, p.binned[plan.name][index]) for s, p in self._remote.items()]
        categories = [] if plan.outcome[index] else self._category_names(plan)
        spans, counts = _spans_and_counts(slots, categories)
        return _with_evidence(finding, spans, plan, categories, counts)

    def _category_names(self, plan: _FieldPlan) -> list[str]:
        if isinstance(plan.baseline, CategoricalBaseline):
            return [str(c) for c in plan.baseline.categories]
        return []

    def evaluate(self) -> list[Finding]:
        """Stream-level verdicts of every binned detector on the windows as they are now."""
        out: list[Finding] = []
        if self._layout is not None:
            rings = self._rings()
            if not self._partitions or not rings:
                return out
            total = np.sum([r.total for _, r in rings], axis=0)
            closed = max(r.closed for _, r in rings)
            for plan, i, seg in self._layout.items:
                a, b = int(self._layout.starts[seg]), int(self._layout.starts[seg + 1])
                merged = plan.merged[i]
                merged.load_counts(total[a:b].copy(), closed)
                finding = merged.evaluate()
                if finding is None:
                    continue
                categories = [] if plan.outcome[i] else self._category_names(plan)
                spans = [(slot, ring.span(seg)) for slot, ring in rings]
                finding = _with_evidence(finding, spans, plan, categories, total[a:b])
                out.append(dataclasses.replace(finding, stream=self.spec.name))
            return out
        for plan in self._plans:
            for i, merged in enumerate(plan.merged):
                if self._partitions and (finding := self._judge(plan, i, merged)):
                    out.append(dataclasses.replace(finding, stream=self.spec.name))
        return out

    # -- state ---------------------------------------------------------------------
    def partition_state(self, partition: int) -> DriftState | None:
        """What continues ``partition``'s detectors exactly (None before the baseline)."""
        if self.baseline is None:
            return None
        return self._partition(partition).state()

    def decode_state(self, plain: Mapping[str, Any]) -> DriftState:
        return DriftState.from_plain(plain)

    def restore_partition(self, partition: int, state: StageState) -> None:
        """Continue ``partition`` from its checkpoint; a state that does not fit this
        configuration (another partition count, other detectors) restarts its windows."""
        try:
            self._partition(partition).restore(as_drift_state(state))
        except (ConfigError, ValueError, KeyError) as exc:
            log.warning(
                "stream %s: checkpointed state of slot %d does not fit (%s): its windows restart",
                self.spec.name,
                partition,
                exc,
            )
            self._partitions[partition] = _PartitionDetectors(self._plans, self._layout)

    def drop_partition(self, partition: int) -> None:
        """Forget a partition this process no longer owns."""
        self._partitions.pop(partition, None)

    def set_remote(self, states: Mapping[int, StageState]) -> None:
        """Windows of partitions other replicas own, from their latest checkpoints.

        The stream's verdicts then merge every partition of the stream, whoever owns
        it, so adding or removing replicas does not change what is judged (remote
        windows lag by at most one checkpoint interval).
        """
        self._remote = {}
        if self.baseline is None:
            return
        for slot, state in states.items():
            if slot in self._partitions or state is None:
                continue
            dets = _PartitionDetectors(self._plans, self._layout)
            try:
                dets.restore(as_drift_state(state))
            except (ConfigError, ValueError, KeyError) as exc:
                log.warning(
                    "stream %s: remote state of slot %d unusable: %s", self.spec.name, slot, exc
                )
                continue
            self._remote[slot] = dets
            self._report_remote_changes(slot, dets)

    def _report_remote_changes(self, slot: int, dets: _PartitionDetectors) -> None:
        """ADWIN change points of a partition another replica owns, as findings.

        A replica that does not judge the stream reports nothing itself; its
        partitions' ADWIN histograms reach the judge in their checkpoints, and the
        judge reports the change points counted since it last saw them.
        """
        for field_name, raw in dets.raw.items():
            for i, det in enumerate(raw):
                count = int(getattr(det, "n_detections", 0))
                key = (slot, field_name, i)
                new = count - self._remote_changes.get(key, count)
                self._remote_changes[key] = count
                self._remote_findings.append(
                    Finding(
                        detector=det.name,
                        subject=field_name,
                        statistic=float(new),
                        threshold=1.0,
                        drift=new > 0,
                        window=WindowBounds(partition=slot),
                        details=(("changes", float(new)),),
                    )
                )

    def baseline_checkpoint(self) -> BaselineCheckpoint | None:
        """The baseline built from first events (None for a file baseline)."""
        if self.baseline is None or self.baseline_source == "file":
            return None
        return BaselineCheckpoint(self.baseline.to_json())

    def restore_baseline(self, checkpoint: BaselineCheckpoint) -> None:
        """Adopt a checkpointed baseline instead of building one."""
        if self.baseline is not None and self.baseline_source == "file":
            return
        baseline = Baseline.from_json(checkpoint.json)
        if self.baseline is not None and self.baseline.id == baseline.id:
            return
        self._accumulator = None
        self._start(baseline)


#: Decode reasons of a field-level violation -> data-quality outcome (QUALITY_KINDS);
#: others (number_too_large, string_too_long, ...) count as wrong_type.
_VIOLATION_KIND = {
    "null_not_allowed": 1,
    "missing_field": 1,
    "unknown_category": 2,
    "out_of_range": 3,
    "wrong_type": 4,
    "non_finite": 5,
}


def violation_kinds(batch: Batch) -> dict[str, tuple[npt.NDArray[np.intp], npt.NDArray[np.int64]]]:
    """Per field, the accepted rows (positions in the batch) whose value the decoder
    excluded for a field-level violation, and its data-quality kind."""
    found = getattr(batch, "violations", ())
    if not found:
        return {}
    grouped: dict[str, tuple[list[int], list[int]]] = {}
    for v in found:
        rows, kinds = grouped.setdefault(v.field, ([], []))
        rows.append(int(v.index))
        kinds.append(_VIOLATION_KIND.get(v.reason, 4))
    out = {}
    accepted = batch.rows
    for name, (rows, kinds) in grouped.items():
        index = np.asarray(rows, dtype=np.int64)
        pos = np.searchsorted(accepted, index)
        ok = pos < accepted.size
        ok[ok] = accepted[pos[ok]] == index[ok]
        out[name] = (pos[ok], np.asarray(kinds, dtype=np.int64)[ok])
    return out


def outcome_codes(
    batch: Batch,
    name: str,
    valid: npt.NDArray[np.bool_],
    bins: npt.NDArray[np.int64],
    baseline: NumericBaseline | CategoricalBaseline,
    violations: dict[str, tuple[npt.NDArray[np.intp], npt.NDArray[np.int64]]] | None = None,
) -> npt.NDArray[np.int64]:
    """Each accepted event's data-quality outcome for field ``name`` (an index into
    ``QUALITY_KINDS``): ok, null (not valid), unseen category (a valid code outside
    the baseline's categories), or the kind of the field-level violation the decoder
    reports for it (``violation_kinds``: ``null_not_allowed`` -> null,
    ``unknown_category`` -> unseen category, ``out_of_range``, ``non_finite``, any
    other -> wrong type).
    """
    codes = np.where(valid, 0, 1).astype(np.int64)
    if isinstance(baseline, CategoricalBaseline):
        codes[valid & (bins >= len(baseline.categories))] = 2
    if violations and name in violations:
        pos, kinds = violations[name]
        codes[pos] = kinds
    return codes


class _Fold:
    """One partition's binned detector folding a batch in: its window before the
    batch and at every sub-window it closed (``SlidingCounts.history``)."""

    def __init__(self, det: Any, positions: npt.NDArray[np.intp]) -> None:
        w: SlidingCounts = det._window
        self.det = det
        self.slot = id(det)
        self.positions = positions  # batch rows this detector took, ascending
        self.total0 = w._total.copy()
        self.closed0 = int(w._closed)
        self._pos0 = int(w._pos)
        # Where the slots lay before the batch (read only for evidence, lazily).
        self._off0 = w._off.copy()
        self._tspan0 = w._tspan.copy()
        self.history: list[tuple[int, npt.NDArray[np.int64], int, npt.NDArray[np.float64]]] = []
        self._at: dict[int, int] = {}

    def prepare(self, cuts: list[int]) -> None:
        """Locate every step boundary of the batch in the history at once."""
        ends = np.asarray([h[0] for h in self.history], dtype=np.int64)
        taken = np.searchsorted(self.positions, cuts)
        index = (np.searchsorted(ends, taken, side="right") - 1).tolist()
        self._at = dict(zip(cuts, index, strict=True))

    def at_all(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Window totals ``(cuts, bins)`` and closed sub-windows ``(cuts,)`` at every
        step boundary given to ``prepare``, in order."""
        rows = np.asarray(list(self._at.values()), dtype=np.int64) + 1
        stack = np.stack([self.total0, *(h[1] for h in self.history)])
        closed = np.asarray([self.closed0, *(h[2] for h in self.history)], dtype=np.int64)
        return stack[rows], closed[rows]

    def _index(self, cut: int) -> int:
        """Index into ``history`` of the window at batch row ``cut`` (-1: as before)."""
        return self._at[cut]

    def at(self, cut: int) -> tuple[npt.NDArray[np.int64], int]:
        """Window total and closed sub-windows at batch row ``cut``."""
        k = self._index(cut)
        if k < 0:
            return self.total0, self.closed0
        return self.history[k][1], self.history[k][2]  # total, closed

    def span_at(self, cut: int) -> tuple[int, int | None, int | None, float | None, float | None]:
        """``SlidingCounts.span`` of the window at batch row ``cut``."""
        w: SlidingCounts = self.det._window
        ring = w.ring_size
        k = self._index(cut)
        pushed = k + 1
        total, closed = (self.total0, self.closed0) if k < 0 else self.history[k][1:3]
        n_win = min(int(closed), ring)
        newest_pushed = min(pushed, n_win)
        old_needed = n_win - newest_pushed
        # Slots closed before the batch sat at ring positions pos0 - old .. pos0 - 1;
        # those closed in it are in the history.
        old = (self._pos0 - np.arange(old_needed, 0, -1)) % ring
        rows = [np.concatenate([self._off0[old].astype(np.float64), self._tspan0[old]], axis=1)]
        rows += [h[3][None, :] for h in self.history[pushed - newest_pushed : pushed]]
        spans = np.concatenate(rows)
        known = spans[:, 0] >= 0
        tk = ~np.isnan(spans[:, 2])
        return (
            int(total.sum()),
            int(spans[known, 0].min()) if known.any() else None,
            int(spans[known, 1].max()) if known.any() else None,
            float(spans[tk, 2].min()) if tk.any() else None,
            float(spans[tk, 3].max()) if tk.any() else None,
        )


class _SpanAt:
    """A detector seen with the window span it had at a step boundary."""

    def __init__(
        self, det: Any, span: tuple[int, int | None, int | None, float | None, float | None]
    ) -> None:
        self._det = det
        self._span = span

    def span(self) -> tuple[int, int | None, int | None, float | None, float | None]:
        return self._span

    @property
    def window_counts(self) -> Any:
        return self._det.window_counts


def _partition_share(kw: dict[str, Any], partitions: int) -> dict[str, Any]:
    """A binned detector's arguments for one partition's share of a count window.

    Each of the ``P`` partitions keeps ``R = window / step`` sub-windows of
    ``ceil(step / P)`` of its own events, so the newest sub-windows of all partitions
    add up to about ``window`` events of the stream. Verdicts are taken once per
    ``step`` events of the stream, so each test keeps the level
    ``step / (ert * family_size)``: ``ert`` is scaled by the same factor as the step.
    Time windows are left alone (partitions merge by time bucket).
    """
    if partitions <= 1 or kw.get("window_seconds") is not None:
        return kw
    window, step = kw.get("window_events"), kw.get("step_events")
    if not window or not step or window % step:
        return kw  # the detector reports the invalid window itself
    share = -(-int(step) // partitions)
    ert = float(kw["ert"]) if kw.get("ert") is not None else DEFAULT_ERT_EVENTS
    return {
        **kw,
        "window_events": window // step * share,
        "step_events": share,
        "ert": ert * share / step,
    }


def _adwin_share(kw: dict[str, Any], partitions: int) -> dict[str, Any]:
    """ADWIN's arguments for one partition's share of the stream.

    ADWIN runs per partition (its histogram is a function of that partition's values,
    so restarts stay exact). Its configured ``min_window_length`` and ``subwindow``
    are in events of the stream: each partition uses ``ceil(value / P)``, so a shift
    is reported after about as many stream events as on one partition (the minimum
    window dominates ADWIN's delay at the service defaults). The price: the
    outlier protection of ``min_window_length`` is that of the smaller share.
    """
    if partitions <= 1:
        return kw
    out = dict(kw)
    for key in ("min_window_length", "subwindow"):
        if key in out:
            out[key] = max(1, -(-int(out[key]) // partitions))
    return out


_Share = tuple[
    _FieldPlan,
    int,
    npt.NDArray[Any],
    "npt.NDArray[np.float64] | None",
    "npt.NDArray[np.int64] | None",
]


def _rows_of_one(
    columns: list[npt.NDArray[Any]],
) -> tuple[npt.NDArray[Any], npt.NDArray[np.int64]] | None:
    """``(matrix, the row of each column)`` when every column is a whole row of one
    C-contiguous 2-D array (how the decoder hands out a batch's columns), else None."""
    found = views_of_one(columns)
    if found is None or found[0].ndim != 2:
        return None
    base, at = found
    width = base.shape[1]
    if any(c.size != width for c in columns) or (at % width).any():
        return None
    return base, at // width


def _unorder(values: npt.NDArray[Any], order: npt.NDArray[np.intp] | None) -> npt.NDArray[Any]:
    """``values`` taken in ``order`` put back in batch order."""
    if order is None:
        return values
    out = np.empty_like(values)
    out[order] = values
    return out


def _update_adwins(jobs: list[tuple[Any, ...]]) -> list[int | None]:
    """Fold each job's values into its raw-value detector: the ADWINs of all
    partitions (independent instances) with one compiled call per ``max_buckets``,
    others one by one; the changes each found (None: a detector without
    ``finding``, whose findings are not reported here)."""
    out: list[int | None] = [None] * len(jobs)
    groups: dict[int, list[int]] = {}
    for k, job in enumerate(jobs):
        det = job[3]
        if isinstance(det, ADWIN):
            groups.setdefault(det.max_buckets, []).append(k)
        else:
            det.update(job[4], job[5])
    for ks in groups.values():
        found = update_many([jobs[k][3] for k in ks], [jobs[k][4] for k in ks])
        for k, n in zip(ks, found, strict=True):
            out[k] = n
    return out


def _raw_shares(
    binned: list[tuple[_FieldPlan, Any, Any, Any, Any]],
    rows_of: dict[int, npt.NDArray[np.intp] | None],
    offsets: npt.NDArray[np.int64] | None,
    times_all: npt.NDArray[np.float64] | None,
) -> list[_Share]:
    """Per field with raw-value detectors and partition: the valid values, their
    event times and offsets, in event order."""
    out: list[_Share] = []
    for plan, valid, _, column, _ in binned:
        if not plan.raw:
            continue
        for partition, rows in rows_of.items():
            idx = np.flatnonzero(valid) if rows is None else rows[valid[rows]]
            if idx.size == 0:
                continue
            times = None if times_all is None else times_all[idx]
            offs = None if offsets is None else offsets[idx]
            out.append((plan, partition, column[idx], times, offs))
    return out


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.4g}"


def _on_partition(f: Finding, slot: int, stream: str, baseline_id: str | None) -> Finding:
    """``f`` with its window on partition slot ``slot`` (its one partition), in
    ``stream`` against ``baseline_id``; built directly (one per field and batch)."""
    w = f.window
    window = WindowBounds(w.events, w.first_offset, w.last_offset, w.start_time, w.end_time, slot)
    return Finding(
        f.detector,
        f.subject,
        f.statistic,
        f.threshold,
        f.drift,
        f.p_value,
        f.kind,
        stream,
        window,
        baseline_id,
        f.details,
        (window,),
        f.top,
        f.summary,
    )


def _locate_change(
    f: Finding,
    slot: int,
    before: float,
    values: npt.NDArray[Any],
    offsets: npt.NDArray[np.int64] | None,
    times: npt.NDArray[np.float64] | None,
) -> Finding:
    """An ADWIN finding with its partition, and for a change where and how much."""
    if not f.drift:
        return _on_partition(f, slot, f.stream, f.baseline_id)
    window = _evolve(f.window, partition=slot)
    details = dict(f.details)
    i = int(details.get("first_change_index", 0))
    recent = values[max(0, i + 1 - _RECENT) : i + 1].astype(np.float64)
    new = float(recent.mean()) if recent.size else math.nan
    where = f"partition slot {slot}"
    extra: list[tuple[str, float]] = [("old_mean", before), ("new_mean", new)]
    offset = None if offsets is None else int(offsets[i])
    when = None if times is None else float(times[i])
    if offset is not None:
        where += f" at offset {offset}"
        extra.append(("change_offset", float(offset)))
    if when is not None:
        extra.append(("change_time", when))
    window = dataclasses.replace(
        window,
        first_offset=offset,
        last_offset=None if offsets is None else int(offsets[-1]),
        end_time=when if when is not None else window.end_time,
    )
    summary = (
        f"ADWIN found a change of the mean of {f.subject} on {where}: window mean before "
        f"{_fmt(before)}, mean of the last {recent.size} values up to the change {_fmt(new)} "
        f"({int(f.statistic)} change(s) >= 1)"
    )
    return dataclasses.replace(
        f,
        window=window,
        partitions=(window,),
        details=(*f.details, *extra),
        summary=summary,
    )


def _part(
    slot: int, span: tuple[int, int | None, int | None, float | None, float | None]
) -> WindowBounds | None:
    """One partition's window as evidence (None when it holds no events)."""
    events, first, last, start, end = span
    if not events:
        return None
    return WindowBounds(events, first, last, start, end, slot)


# Per class: its fields' positions by name, and one getter of all their values.
_FIELDS: dict[type, tuple[dict[str, int], Callable[[Any], tuple[Any, ...]]]] = {}


def _evolve(obj: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` for the frozen values built per verdict, a few times
    cheaper (field names cached per class, no validation pass)."""
    known = _FIELDS.get(type(obj))
    if known is None:
        names = tuple(f.name for f in dataclasses.fields(obj))
        one = operator.attrgetter(*names)
        getter = one if len(names) > 1 else (lambda o: (one(o),))
        known = _FIELDS[type(obj)] = ({n: i for i, n in enumerate(names)}, getter)
    index, getter = known
    values = list(getter(obj))
    for name, value in changes.items():
        at = index.get(name)
        if at is not None:  # like before: a name that is no field changes nothing
            values[at] = value
    return type(obj)(*values)


def _evolve_finding(finding: Finding, **changes: Any) -> Finding:
    out: Finding = _evolve(finding, **changes)
    return out


def _span_fields(
    span: npt.NDArray[np.float64],
) -> tuple[int | None, int | None, float | None, float | None]:
    """``(first offset, last offset, start time, end time)`` of a ``CutSpans`` row
    (None where unknown), as ``CutSpans.span_at`` gives them."""
    first, last, start, end = span.tolist()
    return (
        None if first < 0 else int(first),
        None if last < 0 else int(last),
        None if math.isnan(start) else start,
        None if math.isnan(end) else end,
    )


# A verdict's evidence: the partitions' windows, the one window when there is only
# one, and the earliest start and latest end of theirs (None: none known).
_Frame = tuple[tuple[WindowBounds, ...], WindowBounds | None, float | None, float | None]


def _frame(
    spans: list[tuple[int, tuple[int, int | None, int | None, float | None, float | None]]]
    | list[WindowBounds | None],
) -> _Frame:
    """The evidence of ``spans`` (see ``_with_evidence``)."""
    parts: list[WindowBounds] = []
    for item in spans:
        part = item if item is None or isinstance(item, WindowBounds) else _part(*item)
        if part is not None:
            parts.append(part)
    starts = [p.start_time for p in parts if p.start_time is not None]
    ends = [p.end_time for p in parts if p.end_time is not None]
    one = parts[0] if len(parts) == 1 else None
    return tuple(parts), one, min(starts) if starts else None, max(ends) if ends else None


def _with_evidence(
    finding: Finding,
    spans: list[tuple[int, tuple[int, int | None, int | None, float | None, float | None]]]
    | list[WindowBounds | None],
    plan: _FieldPlan,
    categories: list[str],
    counts: npt.NDArray[np.int64] | None = None,
    **extra: Any,
) -> Finding:
    """A stream verdict with each partition's window (``(slot, (events, first offset,
    last offset, start time, end time))``, or already as ``WindowBounds``) and, for a
    categorical field, the categories contributing most and the unseen rate (from the
    stream window's ``counts``); ``extra`` sets other fields (stream, baseline id)."""
    return _with_frame(finding, _frame(spans), plan, categories, counts, **extra)


def _with_frame(
    finding: Finding,
    frame: _Frame,
    plan: _FieldPlan,
    categories: list[str],
    counts: npt.NDArray[np.int64] | None = None,
    **extra: Any,
) -> Finding:
    """``_with_evidence`` from the evidence ``_frame`` made of the spans."""
    parts, one, start, end = frame
    w = finding.window
    window = WindowBounds(
        w.events,
        w.first_offset if one is None else one.first_offset,
        w.last_offset if one is None else one.last_offset,
        w.start_time if start is None else start,
        w.end_time if end is None else end,
        w.partition if one is None else one.partition,
    )
    top: tuple[tuple[str, float], ...] = ()
    details = finding.details
    if categories and counts is not None:
        top, unseen = _category_contributions(counts, plan.baseline, categories)
        if "unseen_rate" not in dict(details):
            details = (*details, ("unseen_rate", unseen))
    return _evolve_finding(
        finding, window=window, partitions=parts, top=top, details=details, **extra
    )


def _spans_and_counts(
    slots: list[tuple[int, Any]], categories: list[str]
) -> tuple[list[tuple[int, Any]], npt.NDArray[np.int64] | None]:
    """Per-detector windows' spans, and their counts added (categorical fields)."""
    spans = [(slot, det.span()) for slot, det in slots]
    if not categories:
        return spans, None
    counts = np.zeros(len(categories) + 1, np.int64)
    for _, det in slots:
        counts += det.window_counts
    return spans, counts


def _category_contributions(
    counts: npt.NDArray[np.int64], baseline: Any, categories: list[str], k: int = 5
) -> tuple[tuple[tuple[str, float], ...], float]:
    """The categories with the largest Pearson terms ``(o - e)^2 / e`` (share of their
    sum, largest first) and the window's unseen-category rate."""
    K = len(categories)
    m = int(counts.sum())
    if m == 0:
        return (), 0.0
    unseen = float(counts[K:].sum()) / m
    q = np.asarray(baseline.counts, dtype=np.float64)
    tested = q > 0
    m_seen = float(counts[:K][tested].sum())
    if m_seen == 0:
        return (), unseen
    e = m_seen * q[tested] / q[tested].sum()
    o = counts[:K][tested].astype(np.float64)
    terms = (o - e) ** 2 / e
    total = float(terms.sum())
    if total <= 0:
        return (), unseen
    names = [c for c, t in zip(categories, tested, strict=True) if t]
    order = np.argsort(-terms, kind="stable")[:k]
    return tuple((names[i], float(terms[i] / total)) for i in order), unseen


def _factory(
    name: str, baseline: Any, subject: str, kwargs: Mapping[str, Any]
) -> Callable[[], Any]:
    def make() -> Any:
        return create(name, baseline=baseline, subject=subject, **kwargs)

    return make


def _tail(batch: Batch, start: int) -> Batch:
    """The rows of ``batch`` from ``start`` on."""
    return dataclasses.replace(
        batch,
        rows=batch.rows[start:],
        columns={k: v[start:] for k, v in batch.columns.items()},
        valid={k: v[start:] for k, v in batch.valid.items()},
        entity=None if batch.entity is None else batch.entity[start:],
        event_time=None if batch.event_time is None else batch.event_time[start:],
        rejects=(),
    )


def drift_stages(pipeline: StreamPipeline) -> list[Stage]:
    """One drift stage per stream pipeline (when a field has a detector)."""
    stage = DriftStage.for_stream(pipeline.spec, pipeline.decoder)
    return [] if stage is None else [stage]
