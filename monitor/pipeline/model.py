"""The model stage: delayed labels joined to predictions, quality windows, CBPE, per version.

A stream whose ``model:`` has ``labels`` reads two co-partitioned topics: the
inference topic (slots ``p``) and the label topic (slots ``1 << 20 | p``), with
the same partition count and the request id as the message key on both sides, so
a request's prediction and label land in the same partition number ``p``. The
stage keeps one :class:`_Part` per partition number: the join table
(``detectors.label_join``), the quality windows and the estimate windows per model
version, and the next offset of *both* topics that its state covers.

Checkpoints. The runner checkpoints each (topic, partition) under its own key with
its own offset. The stage returns the same part state for ``p`` and ``1 << 20 | p``
(written in the same checkpoint call: the join table is stored twice, the cost of
this design), and on restore keeps the newer of the two (the larger offsets). The
runner seeks each topic to its own checkpoint's offset; events before the offsets
the kept state covers are replayed by Kafka and skipped here by offset. So a
restart loses no pending prediction and counts no label twice, whichever of the
two records a crash left newer.

Topics that are not co-partitioned (different partition counts, or keyed by
something else) cannot join locally: a request's label may be read by another
replica. The strategy then is to repartition one side by the request id into a
co-partitioned topic first (a small Kafka Streams / Faust job, or driftwarden's
producer), at the cost of writing every label once more and one more hop of
latency; joining across replicas through the state topic would cost a lookup per
label and break the exact-restart contract, so it is not done.

Per batch of predictions: request ids, scores, classes and versions are decoded
from the accepted rows' raw payloads with a small msgspec struct (a second parse
of those payloads; the stream decoder keeps no string columns), hashed, and added
to the join table in one numba call; the joined ones enter the version's quality
window (a ring of the last ``window.events`` joined events), and every prediction
enters the version's estimate window (a ring of the last ``window.events``
predictions). At every ``step`` joined events (predictions) of a version, counted
over the stream's partitions, the windows of all partitions are judged against
the version's reference: realized quality with the drop tests of
``detectors.quality_drop``, and the CBPE estimate. Findings have kind ``model``,
subject ``MODEL@VERSION:METRIC`` and detector ``quality`` (realized) or ``cbpe``
(estimated, marked with the detail ``estimate = 1``).

Tests: accuracy, precision and recall are proportions (two-proportion z-test
against the reference's counts), ROC AUC has DeLong's interval, log loss, MAE,
RMSE (as MSE) and bias are per-event means (Welch z-test); F1 and ECE are reported
(gauges, ``driftwarden_model_quality``) but not tested. The CBPE accuracy estimate
is tested like a realized accuracy of the same size, whose binomial variance is at
least CBPE's own (sum of c(1 - c)), so the estimate's test is conservative. At every
realized verdict CBPE is also run on the joined window's own predictions and its
error against the realized accuracy is reported (detail ``estimate_error``, gauge
``driftwarden_model_estimate_error``).

Multiple testing: the quality metrics of a version share the budget
``false_alerts`` per ``per_events`` joined events (each of the ``k`` tested
metrics gets ``false_alerts / k``); the estimate has its own equal budget.

Windows are per partition (the last ``window.events`` joined events of each); the
stream's verdict judges their union, which is exactly the stream's last window for
one partition. Which events a window holds depends on the order in which the two
topics' batches were joined; the join counts do not (decisions use event times).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import operator
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import numpy.typing as npt

from connectors.kafka import RawBatch
from detectors.base import Finding, WindowBounds
from detectors.baseline import Baseline
from detectors.cbpe import CBPE
from detectors.label_join import COUNTERS, Joined, LabelJoin, hash_ids
from detectors.quality import (
    ClassificationQuality,
    RegressionQuality,
    classification_quality,
    regression_quality,
)
from detectors.quality_drop import AccuracyDrop, AUCDrop, DropTest, MeanShift, delong_auc_variance
from monitor.checkpoints import BaselineCheckpoint, PlainStageState, StageState
from monitor.config.model import ModelSpec, ReferenceSpec
from monitor.config.schema import StreamSpec
from monitor.errors import ConfigError
from monitor.metrics import Metrics
from monitor.pipeline.decode import Batch, Reject, StreamDecoder
from monitor.pipeline.drift import DriftStage
from monitor.status import StatusSection

if TYPE_CHECKING:
    from monitor.pipeline.stage import Coordinates, Stage, StageContext

__all__ = [
    "DeployState",
    "ModelPartState",
    "ModelReference",
    "ModelStage",
    "RingState",
    "decode_model_state",
]

log = logging.getLogger("driftwarden.model")

LABEL_SLOT = 1 << 20
DEPLOY_SLOT = 2 << 20
_PART_MASK = LABEL_SLOT - 1
_TIME_SCALE = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
_UNVERSIONED = "unversioned"
_OTHER = "other"  # the versions beyond ``model.max_versions``
_FLOAT_MAX = int(np.finfo(np.float64).max)
_TESTED = frozenset(
    {"accuracy", "precision", "recall", "roc_auc", "log_loss", "mae", "rmse", "bias"}
)


_RID = operator.attrgetter("rid")
_KEY = operator.attrgetter("key")
_TIME = operator.attrgetter("time")
_VERSION = operator.attrgetter("version")
_SCORE = operator.attrgetter("score")
_CLS = operator.attrgetter("cls")
_VALUE = operator.attrgetter("value")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _norm(value: object) -> str:
    return "" if value is None else str(value)


class _Vocab:
    """Strings to stable int codes (class values, versions); part of the stage state."""

    def __init__(self, names: Sequence[str] = ()) -> None:
        self.names: list[str] = []
        self.codes: dict[str, int] = {}
        for n in names:
            self.code(n)

    def code(self, name: str) -> int:
        found = self.codes.get(name)
        if found is None:
            found = self.codes[name] = len(self.names)
            self.names.append(name)
        return found

    def encode(
        self, values: list[str], none_as: str | None = None, limit: int | None = None
    ) -> npt.NDArray[np.int64]:
        """Codes of ``values`` (a loop over the distinct values only); the string
        ``"None"`` (a JSON null) is read as ``none_as`` when given. New values once the
        vocabulary holds ``limit`` names get code -1 (no class)."""
        if not values:
            return np.empty(0, np.int64)
        # distinct values in sorted order (as np.unique did), without a fixed-width
        # array as wide as the longest value times the batch
        lut = {}
        for u in sorted(set(values)):
            name = none_as if none_as is not None and u == "None" else u
            full = limit is not None and len(self.names) >= limit and name not in self.codes
            lut[u] = -1 if full else self.code(name)
        return np.fromiter(map(lut.__getitem__, values), np.int64, len(values))


@dataclasses.dataclass
class _Ring:
    """The last ``size`` rows of (score, class, label, value, prediction event time);
    ``count`` rows ever added."""

    size: int
    score: npt.NDArray[np.float64]
    klass: npt.NDArray[np.int64]
    label: npt.NDArray[np.float64]
    value: npt.NDArray[np.float64]
    time: npt.NDArray[np.float64]
    count: int = 0

    @classmethod
    def empty(cls, size: int) -> _Ring:
        return cls(
            size,
            np.zeros(size),
            np.zeros(size, np.int64),
            np.zeros(size),
            np.zeros(size),
            np.zeros(size),
        )

    def add(
        self,
        score: npt.NDArray[np.float64],
        klass: npt.NDArray[np.int64],
        label: npt.NDArray[np.float64],
        value: npt.NDArray[np.float64],
        time: npt.NDArray[np.float64],
    ) -> None:
        n = score.size
        if n == 0:
            return
        take = min(n, self.size)
        idx = (self.count + (n - take) + np.arange(take)) % self.size
        for ring, new in (
            (self.score, score),
            (self.klass, klass),
            (self.label, label),
            (self.value, value),
            (self.time, time),
        ):
            ring[idx] = new[n - take :]
        self.count += n

    def rows(self) -> tuple[npt.NDArray[np.float64], ...]:
        k = min(self.count, self.size)
        return (
            self.score[:k],
            self.klass[:k].astype(np.float64),
            self.label[:k],
            self.value[:k],
            self.time[:k],
        )

    def state(self) -> RingState:
        return RingState(
            self.score.copy(),
            self.klass.copy(),
            self.label.copy(),
            self.value.copy(),
            self.time.copy(),
            self.count,
        )

    @classmethod
    def from_state(cls, size: int, s: RingState) -> _Ring:
        ring = cls.empty(size)
        if s.score.size != size:
            raise ValueError("checkpointed quality window does not match window.events")
        ring.score[:] = s.score
        ring.klass[:] = s.klass
        ring.label[:] = s.label
        ring.value[:] = s.value
        ring.time[:] = s.time
        ring.count = s.count
        return ring


@dataclasses.dataclass(frozen=True, slots=True)
class RingState:
    """A quality or estimate window's checkpoint: its ring arrays and rows ever added."""

    score: npt.NDArray[np.float64]
    klass: npt.NDArray[np.int64]
    label: npt.NDArray[np.float64]
    value: npt.NDArray[np.float64]
    time: npt.NDArray[np.float64]
    count: int

    def to_plain(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "klass": self.klass,
            "label": self.label,
            "value": self.value,
            "time": self.time,
            "count": self.count,
        }

    @classmethod
    def from_plain(cls, plain: Mapping[str, Any]) -> RingState:
        return cls(
            np.asarray(plain["score"], np.float64),
            np.asarray(plain["klass"], np.int64),
            np.asarray(plain["label"], np.float64),
            np.asarray(plain["value"], np.float64),
            np.asarray(plain["time"], np.float64),
            int(plain["count"]),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class ModelPartState:
    """One partition number's model state (the same for its inference and label slots):
    the join table's arrays (``LabelJoin.state``), the next offset of both topics it
    covers, the vocabularies its codes refer to, the windows per version, the judged
    counts per (kind, version) and the deployed version.

    >>> st = ModelPartState({"keys": np.zeros(0, np.uint64)}, (-1, 1), ("0", "1"), ("v1",),
    ...                     {}, {}, (("quality", "v1", 5),), "v1")
    >>> back = ModelPartState.from_plain(st.to_plain())
    >>> back.offsets, back.classes, back.judged, back.current
    ((-1, 1), ('0', '1'), (('quality', 'v1', 5),), 'v1')
    """

    join: Mapping[str, npt.NDArray[Any]]
    offsets: tuple[int, int]  # [inference topic, label topic]; -1: none seen
    classes: tuple[str, ...]
    versions: tuple[str, ...]
    joined: Mapping[str, RingState]
    predicted: Mapping[str, RingState]
    judged: tuple[tuple[str, str, int], ...]
    current: str | None

    def to_plain(self) -> dict[str, Any]:
        return {
            "join": dict(self.join),
            "offsets": list(self.offsets),
            "classes": list(self.classes),
            "versions": list(self.versions),
            "joined": {v: r.to_plain() for v, r in self.joined.items()},
            "predicted": {v: r.to_plain() for v, r in self.predicted.items()},
            "judged": [list(j) for j in self.judged],
            "current": self.current,
        }

    @classmethod
    def from_plain(cls, plain: Mapping[str, Any]) -> ModelPartState:
        first, second = (int(o) for o in plain["offsets"])
        current = plain.get("current")
        return cls(
            {str(k): np.asarray(v) for k, v in plain["join"].items()},
            (first, second),
            tuple(str(c) for c in plain["classes"]),
            tuple(str(v) for v in plain["versions"]),
            {str(v): RingState.from_plain(r) for v, r in plain["joined"].items()},
            {str(v): RingState.from_plain(r) for v, r in plain["predicted"].items()},
            tuple((str(k), str(v), int(n)) for k, v, n in plain.get("judged", [])),
            current if isinstance(current, str) else None,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class DeployState:
    """The deploy topic's slot: the deployed version and the next deploy offset."""

    current: str | None
    next: int

    def to_plain(self) -> dict[str, Any]:
        return {"deploy": True, "current": self.current, "next": self.next}

    @classmethod
    def from_plain(cls, plain: Mapping[str, Any]) -> DeployState:
        current = plain.get("current")
        return cls(current if isinstance(current, str) else None, int(plain["next"]))


def decode_model_state(plain: Mapping[str, Any]) -> ModelPartState | DeployState:
    """The typed model state of a checkpointed ``to_plain()`` (either kind)."""
    if plain.get("deploy"):
        return DeployState.from_plain(plain)
    return ModelPartState.from_plain(plain)


def _model_state(state: StageState) -> ModelPartState | DeployState:
    if isinstance(state, ModelPartState | DeployState):
        return state
    return decode_model_state(state.to_plain())


@dataclasses.dataclass
class _Part:
    """One partition number's model state (see the module docstring)."""

    join: LabelJoin
    next_offsets: list[int]  # [inference topic, label topic]; -1: none seen
    joined: dict[str, _Ring]
    predicted: dict[str, _Ring]


@dataclasses.dataclass(frozen=True)
class ModelReference:
    """A version's reference quality, built from a file of predictions with labels."""

    id: str
    n: int
    quality: ClassificationQuality | RegressionQuality
    tests: dict[str, AccuracyDrop | AUCDrop | MeanShift]
    cbpe: CBPE | None


class ModelStage:
    """Joins labels to predictions and judges quality per model version (a ``Stage``).

    >>> from connectors.kafka import RawBatch
    >>> from monitor.config.schema import parse_config
    >>> from monitor.dev.model_synthetic import MODEL_STREAM
    >>> config = {"kafka": {"bootstrap.servers": "x:1"}, "streams": [MODEL_STREAM]}
    >>> spec = parse_config(config, env={}).streams[0]
    >>> stage = ModelStage(spec)
    >>> labels = RawBatch("ml.loans.labels", [b'{"request_id":"a","ts":1,"defaulted":1}'],
    ...                   np.array([LABEL_SLOT], np.int32), np.zeros(1, np.int64), [None], [-1])
    >>> stage.update_labels(labels, labels.partitions)
    ([], [])
    >>> stage.join_counts()["joined"], stage.partition_state(0).offsets
    (0, (-1, 1))
    """

    name = "model"

    @classmethod
    def for_stream(
        cls, spec: StreamSpec, decoder: StreamDecoder, context: StageContext | None = None
    ) -> ModelStage | None:
        """The stream's model stage with its references read, or None when the stream's
        model has no labels."""
        model = spec.model
        if model is None or model.labels is None:
            return None
        stage = cls(spec, None if context is None else context.metrics)
        references: dict[str, ModelReference] = {}
        if model.reference is not None:
            references["*"] = reference_from_file(stage, model.reference)
        for v in model.versions:
            references[v.version] = reference_from_file(stage, v.reference)
        stage.references = references
        stage.publish_references()
        return stage

    def __init__(
        self,
        spec: StreamSpec,
        metrics: Metrics | None = None,
        references: dict[str, ModelReference] | None = None,
    ) -> None:
        if spec.model is None or spec.model.labels is None or spec.model.prediction is None:
            raise ConfigError(f"stream {spec.name!r}: the model stage needs model.labels")
        self.spec = spec
        self.model: ModelSpec = spec.model
        self.labels = spec.model.labels
        self.prediction = spec.model.prediction
        self.quality = spec.model.quality
        self.judge = True
        self.window = self.quality.window.events
        self.step = self.quality.window.step
        self.classes = _Vocab()
        self.versions = _Vocab()
        self.classification = self.prediction.task == "classification"
        self.positive = self.classes.code(self.prediction.positive_class or "")
        self.references: dict[str, ModelReference] = dict(references or {})
        self._parts: dict[int, _Part] = {}
        self._owned: set[int] = set()
        self._remote: dict[int, _Part] = {}
        self._judged: dict[tuple[str, str], int] = {}  # (kind, version) -> judged count
        self.last_estimate: dict[str, float] = {}
        self.findings_log: list[Finding] = []
        self._build_decoders()
        self._metrics = metrics
        self._reported: dict[int, npt.NDArray[np.int64]] = {}
        # Latest values by (version, metric, realized|estimated|reference|error).
        self._latest: dict[tuple[str, str, str], float] = {}
        # The stream's drift stage, for the per-model ranking of drifting features.
        self.drift: DriftStage | None = None
        # Drift baselines of versions that bring their own reference; the first event
        # of such a version is its deployment: the drift stage switches to its
        # baseline and starts fresh windows. ``current`` is checkpointed.
        self.baselines: dict[str, Baseline] = {}
        self.current: str | None = None
        self._drift_reference: Baseline | None = None
        self._capped_hits = 0  # predictions and deploys of versions beyond max_versions
        self.clock = time.time  # event times beyond it + labels.max_future do not join
        # versions always tracked: the configured ones (and a null version)
        self._configured = frozenset(
            {"None", _UNVERSIONED, *(v.version for v in self.model.versions)}
            | ({self.model.version} if self.model.version else set())
        )

    # -- the stage contract: references and the drift stage ----------------------------
    def _drift_baseline(self, ref: ReferenceSpec, ref_id: str) -> Baseline:
        """A drift baseline of the stream's fields, from a model reference file."""
        from monitor.pipeline.baselines import baseline_from_batches, read_file_payloads

        spec = self.spec
        built, _, _ = baseline_from_batches(
            spec, read_file_payloads(Path(ref.file), spec), None, str(ref.file)
        )
        return dataclasses.replace(built, id=ref_id)

    def drift_reference(self) -> Baseline | None:
        """The drift stage's baseline, from the model's reference file, when the stream
        names no baseline file (``ReferenceSource``; the drift stage is built after)."""
        ref = self.references.get("*")
        if self.spec.baseline.file is not None or self.model.reference is None or ref is None:
            return None
        if self._drift_reference is None:
            self._drift_reference = self._drift_baseline(self.model.reference, ref.id)
        return self._drift_reference

    def link(self, stages: Sequence[Stage]) -> None:
        """Keep the stream's drift stage (``Linked``): a deployment switches its baseline
        to the version's own, and its verdicts rank the model's features."""
        drift = next((s for s in stages if isinstance(s, DriftStage)), None)
        if drift is None:
            return
        self.drift = drift
        for v in self.model.versions:
            self.baselines[v.version] = self._drift_baseline(
                v.reference, self.references[v.version].id
            )

    @property
    def ready(self) -> bool:
        return True  # references are read when the stage is built

    def set_partition_count(self, count: int) -> None:
        """Windows are per partition and judged together: the count does not matter."""
        return

    def baseline_checkpoint(self) -> BaselineCheckpoint | None:
        return None

    def restore_baseline(self, checkpoint: BaselineCheckpoint) -> None:
        return None

    # -- decoding ------------------------------------------------------------------
    def _build_decoders(self) -> None:
        p, m = self.prediction, self.model
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = [("rid", str | int)]
        rename = {"rid": m.request_id or "request_id"}
        for attr, name, typ in (
            ("version", m.version_field, str | int | None),
            ("score", p.score, float | None),
            ("cls", p.class_field, str | int | bool | None),
            ("value", p.value, float | None),
        ):
            if name is not None:
                fields.append((attr, typ, None))
                rename[attr] = name
        for i, prob in enumerate(p.probabilities):
            fields.append((f"p{i}", float | None, None))
            rename[f"p{i}"] = prob.field
        self._probs = operator.attrgetter(
            *[f"p{i}" for i in range(len(p.probabilities))] or ["rid"]
        )
        # class codes of the probability columns, and the positive class's column
        self._prob_codes = np.array([self.classes.code(c.name) for c in p.probabilities], np.int64)
        self._prob_positive = next(
            (i for i, c in enumerate(p.probabilities) if c.name == p.positive_class), -1
        )
        self._inference = msgspec.json.Decoder(
            msgspec.defstruct("InferenceKeys", fields, rename=rename, gc=False)
        )
        self._has = {f[0] for f in fields}
        lb = self.labels
        self._label_decoder = msgspec.json.Decoder(
            msgspec.defstruct(
                "LabelEvent",
                [("key", str | int), ("value", str | int | float | bool), ("time", float)],
                rename={"key": lb.key, "value": lb.value, "time": lb.time},
                gc=False,
            )
        )
        self._label_scale = _TIME_SCALE[lb.time_unit]
        self._deploy_decoder = msgspec.json.Decoder(
            msgspec.defstruct("DeployEvent", [("model", str), ("version", str | int)], gc=False)
        )
        self._deploy_next: dict[int, int] = {}

    @staticmethod
    def _decode(
        decoder: msgspec.json.Decoder[Any], payloads: Sequence[bytes | None]
    ) -> tuple[list[Any], list[tuple[int, str, str]]]:
        rows: list[Any] = []
        failed: list[tuple[int, str, str]] = []
        it = iter(payloads)
        while True:
            try:
                rows.extend(map(decoder.decode, it))  # type: ignore[arg-type]  # None raises TypeError
                return rows, failed
            except RecursionError:  # msgspec skipping a deeply nested unknown member
                failed.append((len(rows), "too_deep", "nesting too deep for the parser"))
                rows.append(None)
            except (msgspec.DecodeError, TypeError) as exc:
                msg = str(exc)
                reason = (
                    "missing_field"
                    if "missing required field" in msg
                    else "wrong_type"
                    if msg.startswith("Expected")
                    else "invalid_json"
                )
                failed.append((len(rows), reason, msg[:300]))
                rows.append(None)  # keeps rows aligned with payloads

    def _decode_side(
        self, decoder: msgspec.json.Decoder[Any], payloads: Sequence[bytes | None]
    ) -> tuple[list[Any], list[tuple[int, str, str]]]:
        """``_decode`` for the label and deploy topics, which the stream decoder does not
        see: a payload over the stream's ``max_event_bytes`` is rejected ``too_large``
        without being parsed."""
        limit = self.spec.max_event_bytes
        if not any(p is not None and len(p) > limit for p in payloads):
            return self._decode(decoder, payloads)
        big = {i for i, p in enumerate(payloads) if p is not None and len(p) > limit}
        rows, failed = self._decode(
            decoder, [b"{}" if i in big else p for i, p in enumerate(payloads)]
        )
        failed = [f for f in failed if f[0] not in big] + [
            (i, "too_large", f"{len(payloads[i] or b'')} bytes > max_event_bytes {limit}")
            for i in sorted(big)
        ]
        for i in big:
            rows[i] = None
        return rows, sorted(failed)

    def _check_side(self, rows: list[Any], failed: list[tuple[int, str, str]]) -> None:
        """Decoded label / deploy events the stage cannot use become ``failed`` rows (and
        None): an id, class or version longer than ``max_string_length``; a regression
        label that is not a number."""
        limit = self.spec.max_string_length
        regression = not self.classification
        scale, latest = self._label_scale, self.clock() + self.labels.max_future
        for i, row in enumerate(rows):
            if row is None:
                continue
            problem: tuple[str, str] | None = None
            for attr in ("key", "value", "version"):
                v = getattr(row, attr, None)
                if isinstance(v, str) and len(v) > limit:
                    problem = ("string_too_long", f"{attr}: {len(v)} characters > {limit}")
                    break
            if problem is None and hasattr(row, "time") and row.time * scale > latest:
                problem = ("invalid_time", f"label time {row.time!r} is after labels.max_future")
            if problem is None and regression and hasattr(row, "time"):
                if isinstance(row.value, str | bool):
                    problem = ("wrong_type", f"label value {_show(row.value)} is not a number")
                elif isinstance(row.value, int) and not -_FLOAT_MAX <= row.value <= _FLOAT_MAX:
                    problem = ("number_too_large", "label value does not fit a float64")
            if problem is not None:
                failed.append((i, *problem))
                rows[i] = None
        failed.sort()

    # -- parts ---------------------------------------------------------------------
    def _part(self, p: int) -> _Part:
        part = self._parts.get(p)
        if part is None:
            part = self._parts[p] = _Part(
                LabelJoin(self.labels.max_pending, self.labels.max_delay), [-1, -1], {}, {}
            )
            self._reported[p] = np.zeros(len(COUNTERS), np.int64)
        return part

    def _ring(self, rings: dict[str, _Ring], version: str) -> _Ring:
        ring = rings.get(version)
        if ring is None:
            ring = rings[version] = _Ring.empty(self.window)
        return ring

    # -- processing ----------------------------------------------------------------
    def update(
        self,
        batch: Batch,
        partitions: npt.NDArray[np.int32],
        *,
        coordinates: Coordinates | None = None,
    ) -> list[Finding]:
        """Fold a batch of accepted inference events in (request ids, scores and
        versions are read from the records' payloads: without ``coordinates`` the
        batch cannot be joined and is skipped)."""
        if batch.n == 0 or batch.event_time is None or coordinates is None:
            return []
        raw, offsets = coordinates.raw, coordinates.offsets
        payloads = list(map(raw.values.__getitem__, batch.rows.tolist()))
        rows, failed = self._decode(self._inference, payloads)
        ok = np.ones(len(rows), np.bool_)
        for i, _, _ in failed:
            ok[i] = False
        future = batch.event_time > self.clock() + self.labels.max_future
        if future.any():  # a wrong clock must not expire every pending label
            ok &= ~future
            if self._metrics is not None:
                hits = int(np.count_nonzero(future))
                self._metrics.limit_hits.labels(self.spec.name, "max_future").inc(hits)
        touched: set[str] = set()
        parts = partitions & _PART_MASK
        for p in np.unique(parts).tolist():
            part = self._part(int(p))
            self._owned.add(int(p))
            sel = (parts == p) & ok & (offsets >= part.next_offsets[0])
            if (parts == p).any():
                part.next_offsets[0] = max(part.next_offsets[0], int(offsets[parts == p].max()) + 1)
            if not sel.any():
                continue
            chosen = list(map(rows.__getitem__, np.flatnonzero(sel).tolist()))
            touched |= self._add_predictions(part, chosen, batch.event_time[sel])
        return self._after(touched)

    def _add_predictions(
        self, part: _Part, rows: list[Any], times: npt.NDArray[np.float64]
    ) -> set[str]:
        n = len(rows)
        keys = hash_ids(list(map(_RID, rows)))
        if "version" in self._has:
            names = self._capped(list(map(str, map(_VERSION, rows))))
        else:
            names = [self.model.version or _UNVERSIONED] * n
        known = len(self.versions.names)
        version = self.versions.encode(names, none_as=_UNVERSIONED).astype(np.int32)
        if len(self.versions.names) > known:
            for name in self.versions.names[known:]:
                self._deployed(name)
        score, klass, value = self._predictions(rows)
        joined = part.join.add_predictions(keys, times, score, klass, value, version)
        touched = self._add_joined(part, joined)
        for code in np.unique(version).tolist():
            name = self.versions.names[code]
            sel = version == code
            self._ring(part.predicted, name).add(
                score[sel], klass[sel], np.zeros(int(sel.sum())), value[sel], times[sel]
            )
            touched.add(name)
        part.join.expire()
        return touched

    def _predictions(
        self, rows: list[Any]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """Positive-class score, predicted class code and regression value per row."""
        n = len(rows)
        score = np.full(n, math.nan)
        if "score" in self._has:
            score = np.array(list(map(_SCORE, rows)), np.float64)  # None -> nan
        probs = None
        if self._prob_codes.size:
            probs = np.array(list(map(self._probs, rows)), np.float64).reshape(n, -1)
            score = probs[:, self._prob_positive].copy()
        if "cls" in self._has:
            names = list(map(str, map(_CLS, rows)))
            klass = self.classes.encode(names, limit=self.spec.max_categories)
        elif probs is not None:
            best = np.argmax(np.where(np.isnan(probs), -np.inf, probs), axis=1)
            klass = self._prob_codes[best] if n else np.empty(0, np.int64)
        elif self.classification:
            klass = np.where(score >= self.prediction.threshold, self.positive, -1).astype(np.int64)
        else:
            klass = np.full(n, -1, np.int64)
        value = np.full(n, math.nan)
        if "value" in self._has:
            value = np.array(list(map(_VALUE, rows)), np.float64)
        return score, klass, value

    def _deployed(self, version: str, explicit: bool = False) -> None:
        """A version seen for the first time (or named by a deploy event): switch the
        drift baseline to its own, if it has one; a deploy event also restarts the
        drift windows of a version without one."""
        if version == self.current or self.drift is None:
            return
        baseline = self.baselines.get(version)
        if baseline is None and explicit and self.drift.baseline is not None:
            baseline = self.drift.baseline
        if baseline is None:
            return
        log.info(
            "stream %s: model %s version %s deployed: drift baseline %s, fresh windows",
            self.spec.name,
            self.model.name,
            version,
            baseline.id,
        )
        self.current = version
        self.drift._start(baseline)  # the drift stage has no public switch yet

    def _capped(self, names: list[str]) -> list[str]:
        """``names`` with the versions beyond ``model.max_versions`` as ``other`` (each
        version has its own windows: a producer sending a new version per event must
        not grow memory without bound); counted in ``driftwarden_limit_hits_total``
        (limit ``max_versions``)."""
        codes = self.versions.codes
        configured = self._configured
        new = [v for v in dict.fromkeys(names) if v not in codes and v not in configured]
        room = self.model.max_versions - len(codes)
        if len(new) <= room:
            return names
        over = set(new[max(room, 0) :])
        out = [_OTHER if v in over else v for v in names]
        hits = sum(v in over for v in names)
        if not self._capped_hits:
            log.warning(
                "stream %s: model %s has more than max_versions=%d versions; the "
                "predictions of further new ones are judged together as version %r",
                self.spec.name,
                self.model.name,
                self.model.max_versions,
                _OTHER,
            )
        self._capped_hits += hits
        if self._metrics is not None:
            self._metrics.limit_hits.labels(self.spec.name, "max_versions").inc(hits)
        return out

    def update_topic(
        self, raw: RawBatch, slots: npt.NDArray[np.int32]
    ) -> tuple[list[Finding], list[Reject]]:
        """A batch of the label or the deploy topic (``SideTopics``)."""
        if raw.topic == self.labels.topic:
            return self.update_labels(raw, slots)
        if raw.topic == self.model.deploy_topic:
            return self.update_deploys(raw, slots)
        return [], []

    def update_deploys(
        self, raw: RawBatch, partitions: npt.NDArray[np.int32]
    ) -> tuple[list[Finding], list[Reject]]:
        """Deploy events ``{"model": NAME, "version": V}``: switch to the version."""
        rows, failed = self._decode_side(self._deploy_decoder, raw.values)
        self._check_side(rows, failed)
        bad = {i for i, _, _ in failed}
        for i, row in enumerate(rows):
            p = int(partitions[i]) & _PART_MASK
            self._owned.add(p | DEPLOY_SLOT)
            offset = int(raw.offsets[i])
            if i in bad or offset < self._deploy_next.get(p, -1):
                continue
            self._deploy_next[p] = offset + 1
            if row.model == self.model.name:
                version = self._capped([str(row.version)])[0]
                self.versions.code(version)
                self._deployed(version, explicit=True)
        return [], [Reject(i, reason, detail) for i, reason, detail in failed]

    def update_labels(
        self, raw: RawBatch, partitions: npt.NDArray[np.int32]
    ) -> tuple[list[Finding], list[Reject]]:
        """Fold a batch of label events in; undecodable ones are returned as rejects."""
        rows, failed = self._decode_side(self._label_decoder, raw.values)
        self._check_side(rows, failed)
        rejects = [Reject(i, reason, detail) for i, reason, detail in failed]
        ok = np.ones(len(rows), np.bool_)
        for r in rejects:
            ok[r.index] = False
        touched: set[str] = set()
        parts = partitions & _PART_MASK
        for p in np.unique(parts).tolist():
            part = self._part(int(p))
            self._owned.add(int(p) | LABEL_SLOT)
            here = parts == p
            sel = here & ok & (raw.offsets >= part.next_offsets[1])
            part.next_offsets[1] = max(part.next_offsets[1], int(raw.offsets[here].max()) + 1)
            if not sel.any():
                continue
            chosen = list(map(rows.__getitem__, np.flatnonzero(sel).tolist()))
            keys = hash_ids(list(map(_KEY, chosen)))
            times = np.array(list(map(_TIME, chosen)), np.float64) * self._label_scale
            if self.classification:
                label = self._label_codes(list(map(str, map(_VALUE, chosen))))
            else:
                label = np.array(list(map(float, map(_VALUE, chosen))), np.float64)
            touched |= self._add_joined(part, part.join.add_labels(keys, times, label))
            part.join.expire()
        return self._after(touched), rejects

    def _label_codes(self, values: list[str]) -> npt.NDArray[np.float64]:
        """Class codes of labels; without a class field, positive or not (-1). At most
        ``max_categories`` classes are told apart (further new ones: -1, no class)."""
        if "cls" not in self._has and not self._prob_codes.size:  # no vocabulary needed
            pos = self.prediction.positive_class
            return np.array([self.positive if v == pos else -1 for v in values], np.float64)
        codes = self.classes.encode(values, limit=self.spec.max_categories)
        return codes.astype(np.float64)

    def _add_joined(self, part: _Part, joined: Joined) -> set[str]:
        touched: set[str] = set()
        if joined.n == 0:
            return touched
        for code in np.unique(joined.version).tolist():
            sel = joined.version == code
            name = self.versions.names[code]
            self._ring(part.joined, name).add(
                joined.score[sel],
                joined.klass[sel],
                joined.label[sel],
                joined.value[sel],
                joined.prediction_time[sel],
            )
            touched.add(name)
        return touched

    # -- judging -------------------------------------------------------------------
    def _all_parts(self) -> list[_Part]:
        return list(self._parts.values()) + [
            p for k, p in self._remote.items() if k not in self._parts
        ]

    def _after(self, touched: set[str]) -> list[Finding]:
        self._record_join_metrics()
        if not self.judge:
            return []
        findings: list[Finding] = []
        parts = self._all_parts()
        for version in sorted(touched):
            for kind, attr in (("quality", "joined"), ("cbpe", "predicted")):
                total = sum(
                    getattr(p, attr)[version].count for p in parts if version in getattr(p, attr)
                )
                key = (kind, version)
                last = self._judged.get(key, 0)
                if total // self.step > last // self.step:
                    self._judged[key] = total
                    rings = [
                        getattr(p, attr)[version] for p in parts if version in getattr(p, attr)
                    ]
                    if kind == "quality":
                        findings.extend(self._judge_quality(version, rings))
                    else:
                        findings.extend(self._judge_estimate(version, rings))
                        if (ranking := self._feature_ranking(version)) is not None:
                            findings.append(ranking)
        out = [dataclasses.replace(f, stream=self.spec.name) for f in findings]
        self.findings_log.extend(out)
        return out

    def _feature_ranking(self, version: str) -> Finding | None:
        """The model's input features ranked by drift (statistic / threshold, the
        strongest detector of each), from the drift stage's stream-level windows.

        Informational (``drift`` is False: the features' own findings alert); the
        ranking rides in ``details`` as ``(field, score)`` pairs, strongest first, and
        becomes the evidence of retrain requests. ``statistic`` counts drifting fields.
        """
        if self.drift is None:
            return None
        skip = set(self.prediction.fields)
        scores: dict[str, float] = {}
        for f in self.drift.evaluate():
            if f.subject in skip or not math.isfinite(f.statistic):
                continue
            score = f.statistic / f.threshold if f.threshold > 0 else 0.0
            scores[f.subject] = max(scores.get(f.subject, 0.0), score)
        if not scores:
            return None
        ranked = tuple(sorted(scores.items(), key=lambda kv: (-kv[1], kv[0])))
        return Finding(
            detector="feature_drift",
            subject=f"{self.model.name}@{version}:features",
            statistic=float(sum(1 for _, v in ranked if v >= 1.0)),
            threshold=1.0,
            drift=False,
            kind="model",
            baseline_id=self.drift.baseline.id if self.drift.baseline is not None else None,
            details=ranked,
        )

    def evaluate(self) -> list[Finding]:
        """Verdicts on every version's windows as they are now (not only at steps)."""
        parts = self._all_parts()
        versions = sorted({v for p in parts for v in (*p.joined, *p.predicted)})
        findings: list[Finding] = []
        for version in versions:
            joined = [p.joined[version] for p in parts if version in p.joined]
            predicted = [p.predicted[version] for p in parts if version in p.predicted]
            if joined:
                findings.extend(self._judge_quality(version, joined))
            if predicted:
                findings.extend(self._judge_estimate(version, predicted))
        return [dataclasses.replace(f, stream=self.spec.name) for f in findings]

    def _reference(self, version: str) -> ModelReference | None:
        return self.references.get(version) or self.references.get("*")

    def _finding(
        self, version: str, metric: str, detector: str, t: DropTest, window: WindowBounds,
        ref: ModelReference, details: tuple[tuple[str, float], ...] = (),
    ) -> Finding:  # fmt: skip
        return Finding(
            detector=detector,
            subject=f"{self.model.name}@{version}:{metric}",
            statistic=t.statistic,
            threshold=t.threshold,
            drift=t.drift,
            p_value=t.p_value,
            kind="model",
            window=window,
            baseline_id=ref.id,
            details=(("value", t.value), ("reference", t.reference), *details),
        )

    def _judge_quality(self, version: str, rings: list[_Ring]) -> list[Finding]:
        cols = [r.rows() for r in rings]
        score, klass, label, value, times = (np.concatenate([c[i] for c in cols]) for i in range(5))
        n = int(score.size)
        window = _bounds(n, times)
        ref = self._reference(version)
        out: list[Finding] = []
        if self.classification:
            truth = label.astype(np.int64)
            pred = klass.astype(np.int64)
            q: ClassificationQuality | RegressionQuality = classification_quality(
                truth, pred, self.positive, score if self.prediction.has_score else None
            )
        else:
            q = regression_quality(label, value)
        self._record_quality(version, q, "realized")
        if ref is None:
            return out
        positive = label.astype(np.int64) == self.positive
        said = klass.astype(np.int64) == self.positive
        estimate_error: tuple[tuple[str, float], ...] = ()
        if ref.cbpe is not None and self.classification and self.prediction.has_score and n:
            est = ref.cbpe.estimate(score, said)
            err = est.accuracy - q.get("accuracy")
            estimate_error = (("estimate_error", err),)
            self._set_gauge("model_estimate_error", version, "accuracy", err)
        for metric in self.quality.metrics:
            test = ref.tests.get(metric)
            if test is None:
                continue
            t: DropTest
            if isinstance(test, AccuracyDrop):
                if metric == "accuracy":
                    k, m = int(np.count_nonzero(klass == label)), n
                elif metric == "precision":
                    k, m = int(np.count_nonzero(said & positive)), int(np.count_nonzero(said))
                else:
                    k, m = int(np.count_nonzero(said & positive)), int(np.count_nonzero(positive))
                t = test.test(k, m)
            elif isinstance(test, AUCDrop):
                t = test.test(positive, score)
            else:
                per = _per_event(metric, positive, score, label, value)
                t = test.test(
                    float(per.mean()) if per.size else math.nan,
                    float(per.var(ddof=1)) if per.size > 1 else math.nan,
                    per.size,
                )
            extra = estimate_error if metric == "accuracy" else ()
            out.append(self._finding(version, metric, "quality", t, window, ref, extra))
        return out

    def _judge_estimate(self, version: str, rings: list[_Ring]) -> list[Finding]:
        ref = self._reference(version)
        if ref is None or ref.cbpe is None or not self.quality.estimate.enabled:
            return []
        cols = [r.rows() for r in rings]
        score = np.concatenate([c[0] for c in cols])
        klass = np.concatenate([c[1] for c in cols]).astype(np.int64)
        times = np.concatenate([c[4] for c in cols])
        ok = np.isfinite(score)
        est = ref.cbpe.estimate(score[ok], klass[ok] == self.positive)
        self.last_estimate[version] = est.accuracy
        self._set_gauge("model_quality", version, "accuracy", est.accuracy, "estimated")
        test = ref.tests.get("estimated_accuracy")
        if not isinstance(test, AccuracyDrop) or est.n == 0:
            return []
        t = test.test(round(est.accuracy * est.n), est.n)
        window = _bounds(est.n, times[ok])
        return [self._finding(version, "accuracy", "cbpe", t, window, ref, (("estimate", 1.0),))]

    # -- metrics -------------------------------------------------------------------
    def _set_gauge(
        self, name: str, version: str, metric: str, value: float, source: str | None = None
    ) -> None:
        if not math.isfinite(value):
            return
        self._latest[(version, metric, source or "error")] = value  # for /status
        if self._metrics is None:
            return
        family = getattr(self._metrics, name)
        labels = (self.spec.name, self.model.name, version, metric)
        family.labels(*labels, *(() if source is None else (source,))).set(value)

    def _record_quality(
        self, version: str, q: ClassificationQuality | RegressionQuality, src: str
    ) -> None:
        for metric in self.quality.metrics:
            self._set_gauge("model_quality", version, metric, q.get(metric), src)

    def _record_join_metrics(self) -> None:
        m = self._metrics
        if m is None:
            return
        total = np.zeros(len(COUNTERS), np.int64)
        for p, part in self._parts.items():
            counts = part.join._counts
            total += counts - self._reported[p]
            self._reported[p] = counts.copy()
        for name, delta in zip(COUNTERS, total.tolist(), strict=True):
            if delta > 0:
                m.model_labels.labels(self.spec.name, self.model.name, name).inc(delta)
        parts = list(self._parts.values())
        m.model_pending.labels(self.spec.name, self.model.name).set(
            sum(p.join.pending for p in parts)
        )
        m.model_held_labels.labels(self.spec.name, self.model.name).set(
            sum(p.join.held_labels for p in parts)
        )
        m.model_state_bytes.labels(self.spec.name, self.model.name).set(
            sum(p.join.nbytes for p in parts)
        )

    def publish_references(self) -> None:
        """The references' quality as gauges (``source="reference"``) and on /status."""
        for version, ref in self.references.items():
            name = "all" if version == "*" else version
            self._record_quality(name, ref.quality, "reference")

    def status_sections(self) -> list[StatusSection]:
        """The model's tables on /status: quality per version (realized from joined labels,
        estimated by CBPE before labels, reference, estimate error) and the label join."""
        latest = dict(self._latest)  # read on the HTTP thread: take a copy first
        versions = sorted({v for v, _, _ in latest if v != "all"})
        rows = []
        for version in versions[-10:]:
            for metric in self.quality.metrics:
                cells = [
                    latest.get((version, metric, src), latest.get(("all", metric, src)))
                    if src == "reference"
                    else latest.get((version, metric, src))
                    for src in ("realized", "estimated", "reference", "error")
                ]
                rows.append((version, metric, *("-" if c is None else f"{c:.4g}" for c in cells)))
        counts = self.join_counts()
        pending = sum(p.join.pending for p in list(self._parts.values()))
        join_rows = ((k, f"{v:,}") for k, v in (*counts.items(), ("pending", pending)))
        title = f"model {self.model.name} ({self.spec.name})"
        return [
            StatusSection(
                title=f"{title}: quality",
                columns=(
                    "version",
                    "metric",
                    "realized",
                    "estimated (CBPE)",
                    "reference",
                    "estimate error",
                ),
                rows=tuple(rows[:50]),
                note="estimated: CBPE from calibrated scores, before labels arrive; "
                "realized: from joined labels",
            ),
            StatusSection(
                title=f"{title}: label join", columns=("outcome", "count"), rows=tuple(join_rows)
            ),
        ]

    # -- counts for tests, /status and the console -----------------------------------
    def join_counts(self) -> dict[str, int]:
        """The join counters summed over this process's partitions."""
        total = dict.fromkeys(COUNTERS, 0)
        for part in self._parts.values():
            for k, v in part.join.counts().items():
                total[k] += v
        return total

    # -- state ---------------------------------------------------------------------
    def partition_state(self, slot: int) -> ModelPartState | DeployState | None:
        """Partition number ``slot & (2**20 - 1)``'s whole state (same for both topics);
        for the deploy topic's slot, the current version and the next deploy offset."""
        if slot & DEPLOY_SLOT:
            return DeployState(self.current, self._deploy_next.get(slot & _PART_MASK, -1))
        part = self._parts.get(slot & _PART_MASK)
        if part is None:
            return None
        first, second = part.next_offsets
        return ModelPartState(
            join=part.join.state(),
            offsets=(first, second),
            classes=tuple(self.classes.names),
            versions=tuple(self.versions.names),
            joined={v: r.state() for v, r in part.joined.items()},
            predicted={v: r.state() for v, r in part.predicted.items()},
            judged=tuple((k, v, n) for (k, v), n in sorted(self._judged.items())),
            current=self.current,
        )

    def decode_state(self, plain: Mapping[str, Any]) -> StageState:
        """The typed state (kept plain when it does not decode: restoring it then fails
        like any unusable checkpoint)."""
        try:
            return decode_model_state(plain)
        except (KeyError, TypeError, ValueError):
            return PlainStageState(plain)

    def _part_from_state(self, state: ModelPartState) -> _Part:
        # Codes in the checkpoint are the checkpointing process's: map them to ours.
        class_map = np.array([self.classes.code(n) for n in state.classes] or [0], np.int64)
        version_map = np.array([self.versions.code(n) for n in state.versions] or [0], np.int32)
        join_state: dict[str, Any] = dict(state.join)
        status = np.asarray(join_state["status"])
        klass = np.asarray(join_state["klass"], np.int64).copy()
        has_class = klass >= 0
        klass[has_class] = class_map[klass[has_class]]
        join_state["klass"] = klass
        version = np.asarray(join_state["version"], np.int32).copy()
        has_version = (version >= 0) & (status != 2)
        version[has_version] = version_map[version[has_version]]
        join_state["version"] = version
        if self.classification:
            lab = np.asarray(join_state["label"], np.float64).copy()
            held = np.isfinite(lab) & (lab >= 0)
            lab[held] = class_map[lab[held].astype(np.int64)]
            join_state["label"] = lab
        join = LabelJoin(self.labels.max_pending, self.labels.max_delay)
        join.restore(join_state)
        rings: list[dict[str, _Ring]] = [{}, {}]
        for out, key, saved in zip(
            rings, ("joined", "predicted"), (state.joined, state.predicted), strict=True
        ):
            for v, s in saved.items():
                ring = _Ring.from_state(self.window, s)
                ok = ring.klass >= 0
                ring.klass[ok] = class_map[ring.klass[ok]]
                if self.classification and key == "joined":
                    lab = ring.label[: min(ring.count, ring.size)]
                    coded = lab >= 0
                    lab[coded] = class_map[lab[coded].astype(np.int64)]
                out[v] = ring
        return _Part(join, list(state.offsets), rings[0], rings[1])

    def restore_partition(self, slot: int, saved: StageState) -> None:
        p = slot & _PART_MASK
        try:
            state = _model_state(saved)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning(
                "stream %s: checkpointed model state of slot %d is unusable (%s): it starts afresh",
                self.spec.name,
                slot,
                exc,
            )
            return
        if isinstance(state, DeployState):
            self._owned.add(slot)
            self._deploy_next[p] = max(self._deploy_next.get(p, -1), state.next)
            if state.current is not None:
                self._deployed(state.current, explicit=True)
            return
        current = self._parts.get(p)
        if current is not None and sum(current.next_offsets) >= sum(state.offsets):
            self._owned.add(slot)
            return  # the other topic's checkpoint of this part was newer: keep it
        current_version = state.current
        if current_version is not None and current_version != self.current:
            # before the drift stage restores its windows (this stage comes first)
            self._deployed(current_version)
        try:
            self._parts[p] = self._part_from_state(state)
        except (KeyError, ValueError) as exc:  # another window size, a damaged table
            log.warning(
                "stream %s: checkpointed model state of slot %d does not fit (%s): it "
                "starts afresh",
                self.spec.name,
                slot,
                exc,
            )
            return
        self._reported[p] = self._parts[p].join._counts.copy()
        for kind, version, n in state.judged:
            key = (kind, version)
            self._judged[key] = max(self._judged.get(key, 0), n)
        self._owned.add(slot)

    def drop_partition(self, slot: int) -> None:
        self._owned.discard(slot)
        if slot & DEPLOY_SLOT:
            return
        p = slot & _PART_MASK
        if p not in self._owned and (p | LABEL_SLOT) not in self._owned:
            self._parts.pop(p, None)
            self._reported.pop(p, None)

    def set_remote(self, states: Mapping[int, StageState]) -> None:
        """Quality windows of partitions other replicas own (from their checkpoints)."""
        self._remote = {}
        for slot, saved in states.items():
            p = slot & _PART_MASK
            if saved is None or p in self._parts or p in self._remote:
                continue
            try:
                state = _model_state(saved)
                if isinstance(state, ModelPartState):
                    self._remote[p] = self._part_from_state(state)
            except (KeyError, ValueError) as exc:
                log.warning(
                    "stream %s: remote model state of slot %d unusable: %s",
                    self.spec.name,
                    slot,
                    exc,
                )


def _bounds(n: int, times: npt.NDArray[np.float64]) -> WindowBounds:
    """A window of ``n`` events whose predictions' event times are ``times``."""
    if times.size == 0:
        return WindowBounds(events=n)
    return WindowBounds(events=n, start_time=float(times.min()), end_time=float(times.max()))


def _per_event(
    metric: str,
    positive: npt.NDArray[np.bool_],
    score: npt.NDArray[np.float64],
    label: npt.NDArray[np.float64],
    value: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """Per-event values whose mean is the metric (MSE for RMSE)."""
    if metric == "log_loss":
        p = np.clip(score, np.finfo(np.float64).eps, 1 - np.finfo(np.float64).eps)
        out: npt.NDArray[np.float64] = -np.where(positive, np.log(p), np.log1p(-p))
        return out
    err = value - label
    if metric == "mae":
        return np.abs(err)
    if metric == "rmse":
        return err * err
    return err  # bias


# -- references -------------------------------------------------------------------


def build_reference(
    stage: ModelStage,
    score: npt.NDArray[np.float64],
    klass: npt.NDArray[np.int64],
    label: npt.NDArray[np.float64],
    value: npt.NDArray[np.float64],
    reference_id: str,
) -> ModelReference:
    """A reference from arrays of predictions and labels (codes in ``stage``'s vocabulary)."""
    qs = stage.quality
    n = int(label.size)
    if n < 2:
        raise ConfigError(f"model {stage.model.name}: the reference needs at least 2 labelled rows")
    tested = [m for m in qs.metrics if m in _TESTED]
    budget = qs.false_alerts / max(len(tested), 1)
    common = {"false_alerts": budget, "per_events": qs.per_events, "step": qs.window.step}
    tests: dict[str, AccuracyDrop | AUCDrop | MeanShift] = {}
    positive = label.astype(np.int64) == stage.positive
    said = klass == stage.positive
    if stage.classification:
        has_score = stage.prediction.has_score
        q: ClassificationQuality | RegressionQuality = classification_quality(
            label.astype(np.int64), klass, stage.positive, score if has_score else None
        )
        for metric, k, m in (
            ("accuracy", int(np.count_nonzero(klass == label.astype(np.int64))), n),
            ("precision", int(np.count_nonzero(said & positive)), int(np.count_nonzero(said))),
            ("recall", int(np.count_nonzero(said & positive)), int(np.count_nonzero(positive))),
        ):
            if metric in tested and m > 0:
                tests[metric] = AccuracyDrop(k, m, min_drop=qs.min_drop, **common)  # type: ignore[arg-type]
        if "roc_auc" in tested and has_score:
            auc, var = delong_auc_variance(positive, score)
            if math.isfinite(var):
                tests["roc_auc"] = AUCDrop(auc, var, min_drop=qs.min_drop, **common)  # type: ignore[arg-type]
        cbpe = None
        if has_score and qs.estimate.enabled and stage.prediction.binary:
            cbpe = CBPE(
                score, positive, stage.prediction.threshold, qs.estimate.method, qs.estimate.bins
            )
            correct = int(np.count_nonzero(klass == label.astype(np.int64)))
            tests["estimated_accuracy"] = AccuracyDrop(
                correct, n, min_drop=qs.min_drop, false_alerts=qs.false_alerts,
                per_events=qs.per_events, step=qs.window.step,
            )  # fmt: skip
    else:
        q = regression_quality(label, value)
        cbpe = None
    for metric in ("log_loss", "mae", "rmse", "bias"):
        if metric in tested and (metric != "log_loss" or stage.classification):
            per = _per_event(metric, positive, score, label, value)
            tests[metric] = MeanShift(
                float(per.mean()), float(per.var(ddof=1)), n, two_sided=metric == "bias",
                min_change=qs.min_drop, **common,  # type: ignore[arg-type]
            )  # fmt: skip
    return ModelReference(reference_id, n, q, tests, cbpe)


def reference_from_file(stage: ModelStage, ref: ReferenceSpec) -> ModelReference:
    """Read a reference file (JSONL, CSV or Parquet rows with predictions and labels)."""
    from monitor.pipeline.baselines import read_file_payloads

    try:
        digest = hashlib.sha256(Path(ref.file).read_bytes()).hexdigest()[:12]
        payloads = [p for chunk in read_file_payloads(Path(ref.file), stage.spec) for p in chunk]
    except OSError as exc:
        raise ConfigError(
            f"model {stage.model.name}: cannot read reference {ref.file}: {exc}"
        ) from exc
    rows, failed = stage._decode(stage._inference, payloads)
    labels, lfailed = stage._decode(
        msgspec.json.Decoder(
            msgspec.defstruct("RefLabel", [("value", str | int | float | bool)],
                              rename={"value": stage.labels.value}, gc=False)
        ),
        payloads,
    )  # fmt: skip
    bad = {i for i, _, _ in failed} | {i for i, _, _ in lfailed}
    keep = [i for i in range(len(rows)) if i not in bad]
    if bad:
        log.warning(
            "model %s: %d reference rows skipped (no prediction or label)",
            stage.model.name,
            len(bad),
        )
    r = [rows[i] for i in keep]
    lab = [labels[i] for i in keep]
    score, klass, value = stage._predictions(r)
    if stage.classification:
        label = stage._label_codes([_norm(x.value) for x in lab])
    else:
        label = np.array([float(x.value) for x in lab], np.float64)
    return build_reference(
        stage, score, klass, label, value, ref.id or f"{Path(ref.file).stem}-{digest}"
    )
