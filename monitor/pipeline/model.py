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
to the join table in one numba call; the joined ones are held in the version's
quality window of their partition and released into it in a canonical order
(``detectors.quality_window``: by the later of the two event times, once no earlier
join can still come), and every prediction enters the version's estimate window of
its partition (the last ``window.events`` predictions, in offset order). Realized
quality is judged on the stream's window (below), the CBPE estimate on each
partition's estimate window at every ``step`` predictions of that partition; both
against the version's reference (the drop tests of ``detectors.quality_drop``).
Findings have kind ``model``, subject ``MODEL@VERSION:METRIC``, detector
``quality`` (realized, with the detail ``position``: the stream position judged) or
``cbpe`` (estimated, marked with the detail ``estimate = 1``, and the detail
``partition``).

Tests: accuracy, precision and recall are proportions (two-proportion z-test
against the reference's counts), ROC AUC has DeLong's interval, log loss, MAE,
RMSE (as MSE) and bias are per-event means (Welch z-test), F1 has its
delta-method interval and ECE a conservative test against the reference's
calibration curve (``detectors.quality_drop``): every configured metric alerts.
The CBPE accuracy estimate (a binary classifier's from its positive-class score; a
multiclass one's, with more than two ``probabilities``, from its calibrated top
probability, carried in the value column of its windows) is tested like a realized
accuracy of the same size, whose binomial variance is at least CBPE's own (sum of
c(1 - c)), so the estimate's test is conservative. At every realized verdict CBPE is
also run on the joined window's own predictions and its error against the realized
accuracy is reported (detail ``estimate_error``, gauge
``driftwarden_model_estimate_error``).

Multiple testing: the quality metrics of a version share the budget
``false_alerts`` per ``per_events`` joined events (each of the ``k`` tested
metrics gets ``false_alerts / k``); the estimate has its own equal budget.

The stream's quality window. Each partition releases its joins into its own
rings in key order (``detectors.quality_window``; the key is the later of the
prediction's and the label's event time) once its join table's frontier
(``LabelJoin.settled_before``) has passed them, and every ring row keeps its key.
The stream's sequence of joins is all partitions' released joins in the total order
(key, partition, release order within the partition). It is final below the
*stream frontier*: the smallest, over the stream's partitions (``0 .. P - 1`` from
``set_partition_count``, or those seen), of each partition's frontier. The judging
replica releases its partitions' joins only below the stream frontier, and takes a
verdict at every ``step`` of each version's stream sequence (the count of its joins
below the frontier), each on exactly its last ``window.events`` joins up to that
position: the partitions' rings merged by the total order, with the joins about to
be released appended (a batch that passes several positions gives a verdict at
each). The false-alarm budget counts one verdict per ``step`` joined events of the
stream, as before.

Determinism. Below the stream frontier the sequence is a function of the data
(event times in order within each topic partition), so the same data gives the same
verdicts at the same positions whatever the interleaving of the two topics, the
batch sizes and the partition count (a drop is flagged after as many joined events
on 4 partitions as on 1: ``tests/model/test_quality_delay.py``). A partition's
state is its join table, its rings with their keys, its held joins and the frontier
it released to (``ModelPartState.released``), so restarts and rebalances continue it
exactly; the stream position judged is not checkpointed: a process that restores
states starts judging after the position they cover (the positions between the
oldest checkpoint and a crash are judged again, with the same verdicts, or by the
previous judge already). Two cases where timing enters, both documented cases of
out-of-order joins (a join below a frontier already passed is released at the next
release and merges into the stream's past):

* An idle partition. A partition not seen yet counts as frontier -inf (the stream
  waits for it). A partition with no event on either topic for ``labels.idle_after``
  (default ``IDLE_SECONDS``) of wall clock before the newest event of a local
  partition (never seen: since the stage started; remote: since its checkpointed
  offsets last moved, and for at least 3 times the longest gap seen between two
  moves of a remote partition's checkpointed offsets, so that the checkpoint cadence
  is not taken for idleness) no longer holds the frontier back; when it wakes up,
  its joins below the frontier already passed are late. A partition whose prediction
  topic stops while one of its labels waits for its prediction holds its later joins
  (at most its pending predictions) until that label joins or becomes an orphan, and
  the stream frontier with it, until it is idle.
* Remote partitions. Non-judging replicas release at their partitions' own
  frontiers and report nothing; the judging replica reads their latest checkpoints
  (``set_remote``, at checkpoint cadence) and their frontier is the one their rings
  were released to. Their rings hold their last ``window.events`` joins, so a
  position whose window reaches back past the oldest row a full ring still holds is
  not judged (counted in ``skipped``, never judged on part of a window): with
  replicas whose checkpoints lag the stream by more than about a window of their
  own joins, the judge skips positions. Verdicts follow the checkpoints' cadence.

``evaluate`` (on demand, ``/status``, the replay report) judges the union of all
partitions' windows with the joins still held. The realized gauges show the newest
stream verdict of each batch; the estimated gauge the union of the estimate windows.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import math
import operator
import re
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
from detectors.quality_drop import (
    AccuracyDrop,
    AUCDrop,
    DropTest,
    ECERise,
    F1Drop,
    MeanShift,
    calibration_sums,
    delong_auc_variance,
)
from detectors.quality_window import QualityWindow
from monitor.checkpoints import BaselineCheckpoint, PlainStageState, StageState
from monitor.config.model import ModelSpec, ReferenceSpec
from monitor.config.schema import StreamSpec
from monitor.errors import ConfigError
from monitor.metrics import Metrics
from monitor.pipeline.decode import Batch, Reject, StreamDecoder, Violation
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
# A partition with no event on either topic for this long (wall-clock seconds) no
# longer holds the stream's quality frontier back (see the module docstring).
_ERROR_FIELD = re.compile(r"at `\$\.([^`\[.]+)|required field `([^`]+)`")
IDLE_SECONDS = 60.0  # the default of labels.idle_after
_TIME_SCALE = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
_UNVERSIONED = "unversioned"
_OTHER = "other"  # the versions beyond ``model.max_versions``
_FLOAT_MAX = int(np.finfo(np.float64).max)
_TESTED = frozenset(
    {"accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "ece", "mae", "rmse", "bias"}
)
_Test = AccuracyDrop | AUCDrop | F1Drop | ECERise | MeanShift


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


# The quality window of one partition and version (deterministic order; see
# detectors.quality_window); a slot's state holds its ``RingState`` per version.
_Ring = QualityWindow


@dataclasses.dataclass(frozen=True, slots=True)
class RingState:
    """A quality or estimate window's checkpoint: its ring arrays, rows ever added and
    the joins it still holds (``detectors.quality_window``; empty when none)."""

    score: npt.NDArray[np.float64]
    klass: npt.NDArray[np.int64]
    label: npt.NDArray[np.float64]
    value: npt.NDArray[np.float64]
    time: npt.NDArray[np.float64]
    count: int
    held: Mapping[str, npt.NDArray[np.float64]] = dataclasses.field(default_factory=dict)
    # each ring row's key (the stream order of released joins); empty in old checkpoints
    key: npt.NDArray[np.float64] = dataclasses.field(default_factory=lambda: np.empty(0))

    @classmethod
    def of(cls, window: QualityWindow) -> RingState:
        """A copy of ``window``'s state (the window goes on changing)."""
        return cls.from_plain(copy.deepcopy(window.state()))

    def to_plain(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "score": self.score,
            "klass": self.klass,
            "label": self.label,
            "value": self.value,
            "time": self.time,
            "count": self.count,
        }
        if self.key.size:
            out["key"] = self.key
        if self.held:
            out["held"] = dict(self.held)
        return out

    @classmethod
    def from_plain(cls, plain: Mapping[str, Any]) -> RingState:
        held = plain.get("held") or {}
        key = plain.get("key")
        return cls(
            np.asarray(plain["score"], np.float64),
            np.asarray(plain["klass"], np.int64),
            np.asarray(plain["label"], np.float64),
            np.asarray(plain["value"], np.float64),
            np.asarray(plain["time"], np.float64),
            int(plain["count"]),
            {str(k): np.asarray(v, np.float64) for k, v in held.items()},
            np.empty(0) if key is None else np.asarray(key, np.float64),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class ModelPartState:
    """One partition number's model state (the same for its inference and label slots):
    the join table's arrays (``LabelJoin.state``), the next offset of both topics it
    covers, the vocabularies its codes refer to, the windows per version, the deployed
    version and the frontier its quality windows were released to (``released``).

    >>> st = ModelPartState({"keys": np.zeros(0, np.uint64)}, (-1, 1), ("0", "1"), ("v1",),
    ...                     {}, {}, "v1")
    >>> back = ModelPartState.from_plain(st.to_plain())
    >>> back.offsets, back.classes, back.current
    ((-1, 1), ('0', '1'), 'v1')
    """

    join: Mapping[str, npt.NDArray[Any]]
    offsets: tuple[int, int]  # [inference topic, label topic]; -1: none seen
    classes: tuple[str, ...]
    versions: tuple[str, ...]
    joined: Mapping[str, RingState]
    predicted: Mapping[str, RingState]
    current: str | None
    released: float = -math.inf

    def to_plain(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "join": dict(self.join),
            "offsets": list(self.offsets),
            "classes": list(self.classes),
            "versions": list(self.versions),
            "joined": {v: r.to_plain() for v, r in self.joined.items()},
            "predicted": {v: r.to_plain() for v, r in self.predicted.items()},
            "current": self.current,
        }
        if math.isfinite(self.released):
            out["released"] = self.released
        return out

    @classmethod
    def from_plain(cls, plain: Mapping[str, Any]) -> ModelPartState:
        first, second = (int(o) for o in plain["offsets"])
        current = plain.get("current")
        released = plain.get("released")
        return cls(
            {str(k): np.asarray(v) for k, v in plain["join"].items()},
            (first, second),
            tuple(str(c) for c in plain["classes"]),
            tuple(str(v) for v in plain["versions"]),
            {str(v): RingState.from_plain(r) for v, r in plain["joined"].items()},
            {str(v): RingState.from_plain(r) for v, r in plain["predicted"].items()},
            current if isinstance(current, str) else None,
            float(released) if isinstance(released, int | float) else -math.inf,
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
    # the frontier its quality windows were released to (key order: below it, every
    # join of this partition is in its rings); checkpointed
    released: float = -math.inf
    # wall-clock (monotonic) time of its last event on either topic; not checkpointed
    seen: float = math.nan


@dataclasses.dataclass(frozen=True)
class ModelReference:
    """A version's reference quality, built from a file of predictions with labels."""

    id: str
    n: int
    quality: ClassificationQuality | RegressionQuality
    tests: dict[str, _Test]
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
        # (partition, version) -> the count of a remote estimate window last judged
        self._remote_judged: dict[tuple[int, str], int] = {}
        self._unusable_seen = 0  # inference events the join could not read
        self._violations: list[Violation] = []  # the last batch's, for the pipeline
        self._early = 0  # joins released before the stream frontier (labels.max_held)
        # The stream's quality verdicts (see the module docstring): partition count
        # (None: the partitions seen), the stream position judged last per version,
        # whether restored states set that position, the frontier judged last.
        self._partitions: int | None = None
        self._judged: dict[str, int] = {}
        self._rebase = False
        self.frontier = -math.inf
        self.clock = time.monotonic
        self._started = math.nan
        self._remote_seen: dict[int, tuple[tuple[int, int], float]] = {}
        self._remote_gap = 0.0
        # stream positions not judged: their rows were no longer in remote rings
        self.skipped = 0
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
        """The stream's partitions (numbers ``0 .. count - 1``): the stream frontier
        waits for each of them (see the module docstring)."""
        self._partitions = count if count > 0 else None

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
        if failed:  # accepted stream events (drift counts them) the join cannot use
            self._unusable(failed)
            self._violations = [
                Violation(
                    i, self._failed_field(detail), reason, f"model {self.model.name}: {detail}"
                )
                for i, reason, detail in failed
            ]
        future = batch.event_time > self.clock() + self.labels.max_future
        if future.any():  # a wrong clock must not expire every pending label
            ok &= ~future
            if self._metrics is not None:
                hits = int(np.count_nonzero(future))
                self._metrics.limit_hits.labels(self.spec.name, "max_future").inc(hits)
        self._begin()
        findings: list[Finding] = []
        estimated: set[str] = set()
        parts = partitions & _PART_MASK
        now = self.clock()
        for p in np.unique(parts).tolist():
            part = self._part(int(p))
            part.seen = now
            self._owned.add(int(p))
            sel = (parts == p) & ok & (offsets >= part.next_offsets[0])
            if (parts == p).any():
                part.next_offsets[0] = max(part.next_offsets[0], int(offsets[parts == p].max()) + 1)
            if not sel.any():
                continue
            chosen = list(map(rows.__getitem__, np.flatnonzero(sel).tolist()))
            findings += self._add_predictions(
                int(p), part, chosen, batch.event_time[sel], estimated
            )
        findings += self._release()
        return self._after(findings, estimated)

    def take_violations(self) -> list[Violation]:
        """The last batch's inference events the label join cannot read (``Violating``):
        dead-lettered by the pipeline, with the field and the reason."""
        out, self._violations = self._violations, []
        return out

    def _failed_field(self, detail: str) -> str:
        """The payload field a msgspec error names (``at `$.score```, ``missing required
        field `version```), else the join key's field."""
        match = _ERROR_FIELD.search(detail)
        if match is not None:
            return match.group(1) or match.group(2)
        return self.model.request_id or "request_id"

    def _unusable(self, failed: list[tuple[int, str, str]]) -> None:
        """Count (and log, the first time and every 1,000th) inference events whose
        request id, score or version the join cannot read: they still count in the
        stream's statistics, but no label can join them (theirs end as orphans)."""
        seen = self._unusable_seen
        self._unusable_seen += len(failed)
        if self._metrics is not None:
            self._metrics.model_labels.labels(
                self.spec.name, self.model.name, "unusable_predictions"
            ).inc(len(failed))
        if seen == 0 or seen // 1000 != self._unusable_seen // 1000:
            _, reason, detail = failed[0]
            log.warning(
                "stream %s: %d inference event(s) the label join cannot use so far (%s: %s)",
                self.spec.name,
                self._unusable_seen,
                reason,
                detail,
            )

    def _add_predictions(
        self,
        p: int,
        part: _Part,
        rows: list[Any],
        times: npt.NDArray[np.float64],
        estimated: set[str],
    ) -> list[Finding]:
        """Fold partition ``p``'s predictions in: joins are held (``_release`` judges
        them), the estimate windows take the predictions in offset order and are
        judged at every ``step``."""
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
        self._add_joined(part, joined)
        findings: list[Finding] = []
        for code in np.unique(version).tolist():
            name = self.versions.names[code]
            sel = version == code
            ring = self._ring(part.predicted, name)
            for _ in ring.push(
                score[sel], klass[sel], np.zeros(int(sel.sum())), value[sel], times[sel], self.step
            ):
                if self.judge:
                    findings += self._judge_estimate(name, [ring.rows()], p)
                    estimated.add(name)
        part.join.expire()
        return findings

    # -- the stream's quality windows -------------------------------------------------
    def _begin(self) -> None:
        """Before a batch: the start of the idle clock; after a restore, the stream
        position the restored states cover counts as judged (by the process that
        checkpointed them)."""
        if math.isnan(self._started):
            self._started = self.clock()
        if self._rebase:
            self._rebase = False
            frontier = self._stream_frontier()
            for version in self._versions_joined():
                n = sum(w.released_below(frontier) for w in self._windows(version))
                self._judged[version] = max(self._judged.get(version, 0), n)
            self.frontier = max(self.frontier, frontier)

    def _numbered(self) -> list[tuple[int, _Part]]:
        """Local and remote partitions by number (a local one wins)."""
        remote = [(p, part) for p, part in self._remote.items() if p not in self._parts]
        return sorted([*self._parts.items(), *remote], key=operator.itemgetter(0))

    def _versions_joined(self) -> list[str]:
        return sorted({v for part in self._all_parts() for v in part.joined})

    def _windows(self, version: str) -> list[_Ring]:
        return [part.joined[version] for part in self._all_parts() if version in part.joined]

    def _idle(self, seen: float, now: float) -> bool:
        return now - seen >= self.labels.idle_after if math.isfinite(seen) else False

    def _stream_frontier(self, local: Mapping[int, float] | None = None) -> float:
        """The stream's settled frontier: the smallest over its partitions of the
        frontier below which each has every join (local: its join table's
        ``settled_before``; remote: the frontier its checkpointed windows were
        released to); a partition not seen yet counts as -inf; partitions idle (no
        event for ``labels.idle_after`` of wall-clock before the newest event of a local
        partition) are left out while others are not."""
        latest = [part.seen for part in self._parts.values() if math.isfinite(part.seen)]
        now = max(latest) if latest else self.clock()
        live: list[float] = []
        idle: list[float] = []
        numbers = set(self._parts) | set(self._remote)
        if self._partitions is not None:
            numbers |= set(range(self._partitions))
        for p in sorted(numbers):
            part = self._parts.get(p)
            if part is not None:
                f = part.join.settled_before() if local is None else local[p]
                seen = part.seen
            elif (remote := self._remote.get(p)) is not None:
                f, seen = remote.released, self._remote_seen.get(p, ((0, 0), math.nan))[1]
                # its checkpoints come at their cadence: idle after 3 gaps at least
                if math.isfinite(seen) and now - seen < 3 * self._remote_gap:
                    live.append(f)
                    continue
            else:
                f, seen = -math.inf, self._started
            (idle if self._idle(seen, now) else live).append(f)
        if live:
            return min(live)
        return min(idle) if idle else -math.inf

    def _release(self) -> list[Finding]:
        """Judge the stream's windows at every ``step`` the stream passes below its
        frontier (on the judging replica), then release the local partitions' held
        joins below their frontiers (on the judging replica, below the stream's
        frontier too) into their quality windows."""
        own = {p: part.join.settled_before() for p, part in self._parts.items()}
        stream = self._stream_frontier(own) if self.judge else math.inf
        cuts = {p: min(f, stream) for p, f in own.items()}
        findings = self._judge_stream(stream, cuts) if self.judge else []
        for p, part in self._parts.items():
            for window in part.joined.values():
                window.settle(cuts[p])
                if window.n_held > self.labels.max_held:
                    self._release_early(p, window)
            if math.isfinite(cuts[p]):
                part.released = max(part.released, cuts[p])
        return findings

    def _release_early(self, p: int, window: _Ring) -> None:
        """Bound the joins held back by a slow partition of the stream (read skew):
        the oldest beyond ``labels.max_held`` go into the ring now. The verdicts stay
        the same while the ring still holds them when the frontier passes; otherwise
        the positions whose window they left are skipped (counted in ``skipped``)."""
        keys = np.sort(window.held["key"])
        extra = window.n_held - self.labels.max_held
        released = window.settle(float(np.nextafter(keys[extra - 1], np.inf)))
        self._early += released
        if self._metrics is not None:
            self._metrics.limit_hits.labels(self.spec.name, "max_held").inc(released)
        if self._early == released or self._early // 100_000 != (self._early - released) // 100_000:
            log.warning(
                "stream %s partition %d: %d joins released before the stream frontier "
                "(labels.max_held %d; a partition of the stream lags far behind)",
                self.spec.name,
                p,
                self._early,
                self.labels.max_held,
            )

    def _judge_stream(self, frontier: float, cuts: Mapping[int, float]) -> list[Finding]:
        """Verdicts at every ``step`` of each version's stream sequence below
        ``frontier`` (the rows in the partitions' rings and the local joins about to
        be released below ``cuts``), merged by (key, partition, release order); each
        on exactly the last ``window.events`` rows up to its position."""
        self.frontier = max(self.frontier, frontier)
        findings: list[Finding] = []
        empty = (np.empty(0),) * 5, np.empty(0)
        for version in self._versions_joined():
            parts = [
                (p, part.joined[version]) for p, part in self._numbered() if version in part.joined
            ]
            total = sum(
                w.released_below(frontier) + (w.n_held_below(cuts[p]) if p in cuts else 0)
                for p, w in parts
            )
            done = self._judged.get(version, 0)
            first = (done // self.step + 1) * self.step
            if first > total:
                continue
            new = {p: w.held_below(cuts[p]) if p in cuts else empty for p, w in parts}
            self._judged[version] = total
            cols: list[tuple[npt.NDArray[np.float64], ...]] = []
            keys, owner, seq = [], [], []
            for p, w in parts:
                c, k = w.ordered()
                below = k < frontier
                held_cols, held_keys = new[p]
                cols.append(
                    tuple(np.concatenate([x[below], h]) for x, h in zip(c, held_cols, strict=True))
                )
                keys.append(np.concatenate([k[below], held_keys]))
                owner.append(np.full(keys[-1].size, p, np.int64))
                seq.append(np.arange(keys[-1].size))
            order = np.lexsort((np.concatenate(seq), np.concatenate(owner), np.concatenate(keys)))
            merged = tuple(np.concatenate([c[i] for c in cols])[order] for i in range(5))
            size = int(order.size)  # the stream's last ``size`` rows below the frontier
            # A ring that lost older rows (a full ring) leaves the merge complete only
            # from its oldest row on: windows must start there or later.
            where = np.empty_like(order)
            where[order] = np.arange(size)
            blocks = np.cumsum([0] + [k.size for k in keys[:-1]])
            complete = max(
                (
                    int(where[b])
                    for b, (_, w), k in zip(blocks.tolist(), parts, keys, strict=True)
                    if w.count > w.size and k.size
                ),
                default=0,
            )
            for position in range(first, total + 1, self.step):
                end = size - (total - position)
                start = end - min(self.window, position)
                if start < complete:
                    # rows a remote partition's checkpointed ring no longer holds (it
                    # released more than a window past this position): not judged
                    self.skipped += 1
                    continue
                window = tuple(c[start:end] for c in merged)
                last = position + self.step > total  # the gauges show the newest
                found = self._judge_quality(version, [window], gauge=last)
                findings += [
                    dataclasses.replace(f, details=(*f.details, ("position", float(position))))
                    for f in found
                ]
        return findings

    def _predictions(
        self, rows: list[Any]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """Positive-class score, predicted class code and regression value per row; a
        classifier with more than two class probabilities carries its confidence (the
        top probability, what its CBPE estimate reads) in the value column."""
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
        elif probs is not None and not self.prediction.binary and n:
            top = np.max(np.where(np.isnan(probs), -np.inf, probs), axis=1)
            value = np.where(np.isfinite(top), top, math.nan)
        return score, klass, value

    def _cbpe_inputs(
        self,
        score: npt.NDArray[np.float64],
        klass: npt.NDArray[np.int64],
        value: npt.NDArray[np.float64],
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        """What CBPE reads of predictions, rows without a score dropped: a binary
        classifier's positive-class score and whether it said positive; a multiclass
        one's confidence, every prediction "positive" (expected accuracy = mean of the
        calibrated confidence)."""
        if self.prediction.binary:
            ok = np.isfinite(score)
            return score[ok], klass[ok] == self.positive
        ok = np.isfinite(value)
        return value[ok], np.ones(int(ok.sum()), np.bool_)

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
        self._begin()
        findings: list[Finding] = []
        parts = partitions & _PART_MASK
        now = self.clock()
        for p in np.unique(parts).tolist():
            part = self._part(int(p))
            part.seen = now
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
            self._add_joined(part, part.join.add_labels(keys, times, label))
            part.join.expire()
        findings += self._release()
        return self._after(findings, set()), rejects

    def _label_codes(self, values: list[str]) -> npt.NDArray[np.float64]:
        """Class codes of labels; without a class field, positive or not (-1). At most
        ``max_categories`` classes are told apart (further new ones: -1, no class)."""
        if "cls" not in self._has and not self._prob_codes.size:  # no vocabulary needed
            pos = self.prediction.positive_class
            return np.array([self.positive if v == pos else -1 for v in values], np.float64)
        codes = self.classes.encode(values, limit=self.spec.max_categories)
        return codes.astype(np.float64)

    def _add_joined(self, part: _Part, joined: Joined) -> None:
        """Hold the joins in their version's window, keyed by the later event time."""
        if joined.n == 0:
            return
        key = np.fmax(joined.prediction_time, joined.label_time)
        key[np.isnan(key)] = -np.inf  # no event time at all: released at once
        for code in np.unique(joined.version).tolist():
            sel = joined.version == code
            name = self.versions.names[code]
            self._ring(part.joined, name).hold(
                joined.score[sel],
                joined.klass[sel].astype(np.float64),
                joined.label[sel],
                joined.value[sel],
                joined.prediction_time[sel],
                key[sel],
            )

    # -- judging -------------------------------------------------------------------
    def _all_parts(self) -> list[_Part]:
        return list(self._parts.values()) + [
            p for k, p in self._remote.items() if k not in self._parts
        ]

    def _after(self, findings: list[Finding], estimated: set[str]) -> list[Finding]:
        """Join metrics; verdicts on remote windows that passed a step since they were
        last judged; the feature ranking of versions just estimated; the stream name."""
        self._record_join_metrics()
        if not self.judge:
            return []
        findings = list(findings)
        for p, part in sorted(self._remote.items()):
            if p in self._parts:
                continue
            for version, window in sorted(part.predicted.items()):
                key = (p, version)
                if window.count // self.step <= self._remote_judged.get(key, 0) // self.step:
                    continue
                self._remote_judged[key] = window.count
                findings += self._judge_estimate(version, [window.rows()], p)
                estimated.add(version)
        for version in sorted(estimated):
            if (ranking := self._feature_ranking(version)) is not None:
                findings.append(ranking)
        self._record_gauges({f.subject.partition("@")[2].rpartition(":")[0] for f in findings
                             if f.detector in ("quality", "cbpe")})  # fmt: skip
        out = [dataclasses.replace(f, stream=self.spec.name) for f in findings]
        self.findings_log.extend(out)
        return out

    def _record_gauges(self, versions: set[str]) -> None:
        """The estimated-quality gauge of these versions, over the union of the
        partitions' estimate windows (a CBPE verdict judges one partition's window;
        the gauge shows the stream's). The realized gauges are set by the stream's
        quality verdicts (the newest of each batch)."""
        parts = self._all_parts()
        for version in sorted(versions):
            ref = self._reference(version)
            predicted = [p.predicted[version].rows() for p in parts if version in p.predicted]
            if ref is not None and ref.cbpe is not None and predicted:
                score, klass, _, value, _ = (
                    np.concatenate([c[i] for c in predicted]) for i in range(5)
                )
                est = ref.cbpe.estimate(*self._cbpe_inputs(score, klass.astype(np.int64), value))
                self.last_estimate[version] = est.accuracy
                self._set_gauge("model_quality", version, "accuracy", est.accuracy, "estimated")

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
            # the union of the partitions' windows, with the joins still held
            joined = [
                c
                for p in parts
                if version in p.joined
                for c in (p.joined[version].rows(), p.joined[version].held_rows())
            ]
            predicted = [p.predicted[version].rows() for p in parts if version in p.predicted]
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

    def _judge_quality(
        self,
        version: str,
        cols: list[tuple[npt.NDArray[np.float64], ...]],
        p: int | None = None,
        gauge: bool = True,
    ) -> list[Finding]:
        """Realized quality of the rows ``cols`` (of partition ``p``'s window, or of the
        stream's when ``p`` is None) against the reference; ``gauge``: with ``p`` None,
        set the realized gauges from it."""
        score, klass, label, value, times = (np.concatenate([c[i] for c in cols]) for i in range(5))
        n = int(score.size)
        window = _bounds(n, times)
        ref = self._reference(version)
        out: list[Finding] = []
        # DeLong's AUC and variance once, for the gauge and the test
        auc_test = ref.tests.get("roc_auc") if ref is not None else None
        delong: tuple[float, float] | None = None
        if isinstance(auc_test, AUCDrop) and "roc_auc" in self.quality.metrics:
            delong = delong_auc_variance(label.astype(np.int64) == self.positive, score)
        if self.classification:
            truth = label.astype(np.int64)
            pred = klass.astype(np.int64)
            has_auc = delong is not None and math.isfinite(delong[0])
            q: ClassificationQuality | RegressionQuality = classification_quality(
                truth,
                pred,
                self.positive,
                score if self.prediction.has_score else None,
                auc=delong[0] if delong is not None and has_auc else None,
            )
        else:
            q = regression_quality(label, value)
        if p is None and gauge:
            self._record_quality(version, q, "realized")
        if ref is None:
            return out
        positive = label.astype(np.int64) == self.positive
        said = klass.astype(np.int64) == self.positive
        estimate_error: tuple[tuple[str, float], ...] = ()
        if ref.cbpe is not None and self.classification and self.prediction.has_score and n:
            est = ref.cbpe.estimate(*self._cbpe_inputs(score, klass.astype(np.int64), value))
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
                t = test.test_auc(*delong) if delong is not None else test.test(positive, score)
            elif isinstance(test, ECERise):
                t = test.test(positive, score)
            elif isinstance(test, F1Drop):
                t = test.test(
                    int(np.count_nonzero(said & positive)),
                    int(np.count_nonzero(said & ~positive)),
                    int(np.count_nonzero(~said & positive)),
                )
            else:
                per = _per_event(metric, positive, score, label, value)
                t = test.test(
                    float(per.mean()) if per.size else math.nan,
                    float(per.var(ddof=1)) if per.size > 1 else math.nan,
                    per.size,
                )
            extra = (estimate_error if metric == "accuracy" else ()) + _partition(p)
            out.append(self._finding(version, metric, "quality", t, window, ref, extra))
        return out

    def _judge_estimate(
        self, version: str, cols: list[tuple[npt.NDArray[np.float64], ...]], p: int | None = None
    ) -> list[Finding]:
        ref = self._reference(version)
        if ref is None or ref.cbpe is None or not self.quality.estimate.enabled:
            return []
        score = np.concatenate([c[0] for c in cols])
        klass = np.concatenate([c[1] for c in cols]).astype(np.int64)
        value = np.concatenate([c[3] for c in cols])
        times = np.concatenate([c[4] for c in cols])
        ok = np.isfinite(score if self.prediction.binary else value)
        est = ref.cbpe.estimate(*self._cbpe_inputs(score, klass, value))
        if p is None:
            self.last_estimate[version] = est.accuracy
            self._set_gauge("model_quality", version, "accuracy", est.accuracy, "estimated")
        test = ref.tests.get("estimated_accuracy")
        if not isinstance(test, AccuracyDrop) or est.n == 0:
            return []
        t = test.test(round(est.accuracy * est.n), est.n)
        window = _bounds(est.n, times[ok])
        extra = (("estimate", 1.0), *_partition(p))
        return [self._finding(version, "accuracy", "cbpe", t, window, ref, extra)]

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
                "realized: from joined labels"
                + (
                    ""
                    if any(r.cbpe is not None for r in self.references.values())
                    else " (no estimate for this model: CBPE needs a classifier with a score "
                    "or class probabilities, and estimate.enabled)"
                ),
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
            joined={v: RingState.of(r) for v, r in part.joined.items()},
            predicted={v: RingState.of(r) for v, r in part.predicted.items()},
            current=self.current,
            released=part.released,
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
                ring = _Ring.from_state(self.window, s.to_plain())
                ring.remap_classes(class_map, self.classification and key == "joined")
                out[v] = ring
        return _Part(join, list(state.offsets), rings[0], rings[1], state.released)

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
        self._owned.add(slot)
        self._rebase = True  # its windows' stream positions were judged by its owner

    def drop_partition(self, slot: int) -> None:
        self._owned.discard(slot)
        if slot & DEPLOY_SLOT:
            return
        p = slot & _PART_MASK
        if p not in self._owned and (p | LABEL_SLOT) not in self._owned:
            self._parts.pop(p, None)
            self._reported.pop(p, None)

    def set_remote(self, states: Mapping[int, StageState]) -> None:
        """Quality windows of partitions other replicas own (from their checkpoints);
        a remote partition whose offsets have not moved for ``labels.idle_after`` counts
        as idle for the stream frontier."""
        self._remote = {}
        now = self.clock()
        for slot, saved in states.items():
            p = slot & _PART_MASK
            if saved is None or p in self._parts or p in self._remote:
                continue
            try:
                state = _model_state(saved)
                if isinstance(state, ModelPartState):
                    self._remote[p] = self._part_from_state(state)
                    before = self._remote_seen.get(p)
                    if before is None or before[0] != state.offsets:
                        self._remote_seen[p] = (state.offsets, now)
                        if before is not None:  # the checkpoint cadence, as observed
                            self._remote_gap = max(self._remote_gap, now - before[1])
            except (KeyError, ValueError) as exc:
                log.warning(
                    "stream %s: remote model state of slot %d unusable: %s",
                    self.spec.name,
                    slot,
                    exc,
                )


def _partition(p: int | None) -> tuple[tuple[str, float], ...]:
    """The ``partition`` detail of a verdict on one partition's window."""
    return () if p is None else (("partition", float(p)),)


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
    tests: dict[str, _Test] = {}
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
        tp = int(np.count_nonzero(said & positive))
        fp = int(np.count_nonzero(said & ~positive))
        fn = int(np.count_nonzero(~said & positive))
        if "f1" in tested and tp + fp + fn > 0:
            tests["f1"] = F1Drop(tp, fp, fn, min_drop=qs.min_drop, **common)  # type: ignore[arg-type]
        scored = np.isfinite(score)
        if "ece" in tested and has_score and scored.any():
            tests["ece"] = ECERise(
                calibration_sums(positive[scored], score[scored]),
                min_drop=qs.min_drop,
                **common,  # type: ignore[arg-type]
            )
        cbpe = None
        if has_score and qs.estimate.enabled and stage.prediction.binary:
            cbpe = CBPE(
                score, positive, stage.prediction.threshold, qs.estimate.method, qs.estimate.bins
            )
        elif has_score and qs.estimate.enabled and np.isfinite(value).sum() >= 2:
            # multiclass: calibrate the confidence (top probability) on being right
            ok = np.isfinite(value)
            right = klass[ok] == label[ok].astype(np.int64)
            cbpe = CBPE(value[ok], right, 0.0, qs.estimate.method, qs.estimate.bins)
        if cbpe is not None:
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
