"""The drift stage of a stream: a baseline, and per field the configured detectors.

Per batch and field the valid values are binned once against the field's
baseline (``searchsorted``) and the bins feed every binned detector of the field
(KS, PSI, chi-square); ADWIN takes the raw values. Findings are completed with
the stream name and the baseline id.

Multiple testing: every binned detector of the stream shares one false-alarm
budget (``ert``, expected events between false alarms for the whole stream), so
each gets ``family_size`` = the number of binned (field, detector) pairs.

A stream without a baseline file builds one from its first ``first_events``
accepted events (and says so in the log); detectors start after that.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.base import Detector, Finding
from detectors.baseline import Baseline, CategoricalBaseline, NumericBaseline, load_baseline
from detectors.registry import create
from monitor.baselines import BaselineAccumulator
from monitor.config import NUMERIC_TYPES, FieldType, StreamSpec
from monitor.decode import Batch, StreamDecoder
from monitor.errors import ConfigError

__all__ = ["DriftStage", "drift_stages"]

log = logging.getLogger("driftwarden.drift")

_UNBINNED = frozenset({"adwin"})  # detectors that take raw values, not baseline bins


def _adwin_defaults() -> dict[str, Any]:
    try:
        from detectors.adwin_defaults import SERVICE_DEFAULTS
    except ImportError:  # pragma: no cover - shipped with the package
        return {"mode": "subwindow", "subwindow": 1000}
    return dict(SERVICE_DEFAULTS)


class _FieldDetectors:
    """The detectors of one field and the lookup from decoder codes to baseline bins."""

    def __init__(
        self, name: str, numeric: bool, baseline: NumericBaseline | CategoricalBaseline
    ) -> None:
        self.name = name
        self.numeric = numeric
        self.baseline = baseline
        self.binned: list[Any] = []
        self.raw: list[Detector] = []
        self._lut = np.empty(0, dtype=np.int64)

    def category_bins(
        self, codes: npt.NDArray[np.int64], vocabulary_names: list[Any]
    ) -> npt.NDArray[np.int64]:
        assert isinstance(self.baseline, CategoricalBaseline)
        if len(self._lut) < len(vocabulary_names):
            index = {c: i for i, c in enumerate(self.baseline.categories)}
            unseen = len(self.baseline.categories)
            self._lut = np.array(
                [index.get(str(v), unseen) for v in vocabulary_names], dtype=np.int64
            )
        unseen = len(self.baseline.categories)
        # -1: a value the bounded vocabulary had no room for; also unseen.
        return np.where(codes >= 0, self._lut[np.maximum(codes, 0)], unseen)


class DriftStage:
    """Runs a stream's drift detectors over accepted batches."""

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
        self._detectors: list[_FieldDetectors] = []
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
            if not numeric and name in self.decoder.vocabularies:
                self.decoder.seed_categories(name, list(fb.categories))  # type: ignore[union-attr]
            group = _FieldDetectors(name, numeric, fb)
            for det_name, params in fs.detector_specs().items():
                if det_name in _UNBINNED:
                    kwargs = (
                        {**_adwin_defaults(), **params} if det_name == "adwin" else dict(params)
                    )
                    if not numeric:
                        continue  # ADWIN watches a numeric mean
                    group.raw.append(create(det_name, baseline=None, subject=name, **kwargs))
                else:
                    kwargs = {**window, "family_size": binned_pairs, **params}
                    group.binned.append(create(det_name, baseline=fb, subject=name, **kwargs))
            self._detectors.append(group)
        log.info(
            "stream %s: baseline %s ready (%d fields)",
            self.spec.name,
            baseline.id,
            len(self.fields),
        )

    def update(self, batch: Batch) -> list[Finding]:
        if self._accumulator is not None:
            target = int(self.spec.baseline.first_events or 0)
            taken = self._accumulator.add(batch, target)
            if self._accumulator.events < target:
                return []
            acc, self._accumulator = self._accumulator, None
            self._start(acc.build(self.spec.name, f"first {target} events"))
            if taken >= batch.n:
                return []
            batch = _tail(batch, taken)
        if self.baseline is None:
            return []
        findings: list[Finding] = []
        for group in self._detectors:
            ok = batch.valid[group.name]
            values = batch.columns[group.name][ok]
            if values.size == 0:
                continue
            times = (
                batch.event_time[ok] if batch.event_time is not None and self._time_window else None
            )
            if group.numeric:
                bins = group.baseline.bin_index(values)
            else:
                names = self.decoder.vocabularies[group.name].names()
                bins = group.category_bins(values, names)
            for det in group.binned:
                findings.extend(det.update_bins(bins, times, values))
            for det in group.raw:
                findings.extend(det.update(values, times))
        baseline_id = self.baseline.id
        return [
            dataclasses.replace(f, stream=self.spec.name, baseline_id=baseline_id) for f in findings
        ]


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


def drift_stages(pipeline: Any) -> list[Any]:
    """The stage factory the service uses: one drift stage per stream pipeline."""
    stage = DriftStage(pipeline.spec, pipeline.decoder)
    return [stage] if stage.fields else []
