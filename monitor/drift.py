"""The drift stage of a stream: a baseline, and per field the configured detectors.

State is kept per Kafka partition, so that it can be checkpointed with the offsets
it covers and move with the partition on a rebalance: a partition's windows hold
exactly the events of that partition up to its checkpointed offset, whatever the
batching or the process. The stream-level verdict of a binned detector (KS, PSI,
chi-square) judges the merge of the partitions' windows (bin counts add exactly);
ADWIN watches each partition's mean and reports per partition.

Per batch and field the valid values are binned once against the field's baseline
and the bins feed every binned detector of the field. Findings are completed
with the stream name and the baseline id.

Multiple testing: every binned detector of the stream shares one false-alarm
budget (``ert``, expected events between false alarms for the whole stream), so
each gets ``family_size`` = the number of binned (field, detector) pairs.

A stream without a baseline file builds one from its first ``first_events``
accepted events (and says so in the log); detectors start after that. The built
baseline is part of the checkpointed state, so a restart keeps it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from detectors.adwin_defaults import SERVICE_DEFAULTS
from detectors.base import BinnedDetector, ChangeDetector, Finding, WindowBounds
from detectors.baseline import Baseline, CategoricalBaseline, NumericBaseline, load_baseline
from detectors.registry import create
from monitor.baselines import BaselineAccumulator
from monitor.checkpoints import BaselineCheckpoint, StageState
from monitor.config import NUMERIC_TYPES, FieldType, StreamSpec
from monitor.decode import Batch, StreamDecoder
from monitor.drift_state import DriftState, as_drift_state
from monitor.errors import ConfigError

if TYPE_CHECKING:
    from monitor.pipeline import StreamPipeline
    from monitor.stage import Stage

__all__ = ["DriftStage", "DriftState", "drift_stages"]

log = logging.getLogger("driftwarden.drift")

_UNBINNED = frozenset({"adwin"})  # detectors that take raw values, not baseline bins


@dataclasses.dataclass
class _FieldPlan:
    """How to build one field's detectors, and the lookup from codes to bins."""

    name: str
    numeric: bool
    baseline: NumericBaseline | CategoricalBaseline
    binned: list[tuple[str, Callable[[], BinnedDetector]]]  # (detector name, factory)
    raw: list[tuple[str, Callable[[], ChangeDetector]]]
    merged: list[BinnedDetector]  # one scratch detector per binned detector, for verdicts
    lut: npt.NDArray[np.int64]

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
    """One partition's detector instances, field by field."""

    def __init__(self, plans: list[_FieldPlan]) -> None:
        self.binned = {p.name: [make() for _, make in p.binned] for p in plans}
        self.raw = {p.name: [make() for _, make in p.raw] for p in plans}

    def state(self) -> DriftState:
        return DriftState(
            {f: tuple(d.state() for d in ds) for f, ds in self.binned.items()},
            {f: tuple(d.state() for d in ds) for f, ds in self.raw.items()},
        )

    def restore(self, state: DriftState) -> None:
        binned: dict[str, list[BinnedDetector]] = self.binned
        raw: dict[str, list[ChangeDetector]] = self.raw
        for kind, dets in ((state.binned, binned), (state.raw, raw)):
            for name, ds in dets.items():
                saved = kind.get(name, ())
                if len(saved) != len(ds):
                    raise ConfigError(
                        f"checkpointed detectors of field {name!r} do not match the configuration"
                    )
                for det, st in zip(ds, saved, strict=True):
                    det.restore(st)


class DriftStage:
    """Runs a stream's drift detectors over accepted batches, per partition."""

    name = "drift"

    @classmethod
    def for_stream(cls, spec: StreamSpec, decoder: StreamDecoder) -> DriftStage | None:
        """The stream's drift stage, or None when no field has a detector."""
        stage = cls(spec, decoder)
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
        self._remote_changes: dict[tuple[int, str, int], int] = {}
        self._accumulator: BaselineAccumulator | None = None
        self._time_window = spec.window.seconds is not None
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
                    plan.raw.append((det_name, _factory(det_name, None, name, kw)))
                else:
                    kw = {**window, "family_size": binned_pairs, **params}
                    make = _factory(det_name, fb, name, kw)
                    plan.binned.append((det_name, make))
                    plan.merged.append(make())
            self._plans.append(plan)
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
            found = self._partitions[partition] = _PartitionDetectors(self._plans)
        return found

    # -- processing ----------------------------------------------------------------
    def update(self, batch: Batch, partitions: npt.NDArray[np.int32]) -> list[Finding]:
        """Fold in a batch; ``partitions`` gives each accepted row's partition."""
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
        if self.baseline is None or batch.n == 0:
            return []
        first = int(partitions[0])
        if (partitions == first).all():
            split = [(first, None)]
        else:
            split = [(int(p), partitions == p) for p in np.unique(partitions)]
        findings: list[Finding] = []
        due: set[tuple[str, int]] = set()
        for plan in self._plans:
            valid = batch.valid[plan.name]
            column = batch.columns[plan.name]
            for partition, rows in split:
                ok = valid if rows is None else valid & rows
                values = column[ok]
                if values.size == 0:
                    continue
                times = None
                if batch.event_time is not None and self._time_window:
                    times = batch.event_time[ok]
                dets = self._partition(partition)
                if plan.numeric:
                    bins = plan.baseline.bin_index(values)
                else:
                    names = self.decoder.vocabularies[plan.name].names()
                    bins = plan.category_bins(values, names)
                for i, det in enumerate(dets.binned[plan.name]):
                    if det.accumulate(bins, times, values):
                        due.add((plan.name, i))
                for change in dets.raw[plan.name]:
                    for f in change.update(values, times):
                        window = dataclasses.replace(f.window, partition=partition)
                        findings.append(dataclasses.replace(f, window=window))
        if not self.judge:
            findings = []  # the stream's judge reports this replica's changes from checkpoints
        else:
            findings.extend(self._remote_findings)
            self._remote_findings = []
            for plan in self._plans:
                for i, merged in enumerate(plan.merged):
                    if (plan.name, i) in due and (finding := self._judge(plan, i, merged)):
                        findings.append(finding)
        baseline_id = self.baseline.id
        return [
            dataclasses.replace(f, stream=self.spec.name, baseline_id=baseline_id) for f in findings
        ]

    def _judge(self, plan: _FieldPlan, index: int, merged: BinnedDetector) -> Finding | None:
        """The stream-level verdict: all partitions' windows added, then judged."""
        parts = [p.binned[plan.name][index] for p in self._partitions.values()]
        parts += [p.binned[plan.name][index] for p in self._remote.values()]
        if len(parts) == 1:
            finding: Finding | None = parts[0].evaluate()
            return finding
        merged.clear()
        for det in parts:
            merged.merge(det)
        finding = merged.evaluate()
        return finding

    def evaluate(self) -> list[Finding]:
        """Stream-level verdicts of every binned detector on the windows as they are now."""
        out = []
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
        self._partition(partition).restore(as_drift_state(state))

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
            dets = _PartitionDetectors(self._plans)
            try:
                dets.restore(as_drift_state(state))
            except (ConfigError, ValueError) as exc:
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
                count = det.n_detections
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
