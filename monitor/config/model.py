"""The ``model:`` section of a stream: an ML model whose inference events the stream carries.

Every key is typed and validated (unknown keys are errors)::

    model:
      name: loans
      version_field: model_version        # or version: "7" (a fixed version)
      request_id: request_id              # the join key in inference events
      prediction:
        task: classification              # or regression
        score: p_default                  # positive-class probability (a float field)
        class_field: y_pred               # the predicted class (optional with score)
        positive_class: "1"
        threshold: 0.5                    # score >= threshold -> positive, without class_field
      labels:
        topic: ml.loans.labels            # co-partitioned with the inference topic
        key: request_id                   # the join key in label events
        value: defaulted                  # the label (class, or a number for regression)
        time: ts                          # the label's event time
        max_delay: 7d
        max_pending: 100000               # pending predictions per partition (bounded)
      quality:
        metrics: [accuracy, roc_auc, f1]
        window: {events: 5000, step: 500}
        false_alerts: 1.0                 # expected false quality alerts ...
        per_events: 1000000               # ... per this many joined events
        min_drop: 0.01
        estimate: {method: isotonic}      # CBPE before labels; method: isotonic | histogram
      reference: {file: ref/loans.jsonl}  # features, predictions and labels
      versions:                           # versions with their own reference
        - {version: "8", reference: {file: ref/loans-v8.jsonl}}
      retrain_on: [estimated, realized]   # of drift, estimated, realized
      retrain_severity: warning

A version's first inference event is its deployment: the drift baseline switches to
that version's reference (fresh windows) and its quality is judged against it. A
deploy event on ``deploy_topic`` (``driftwarden model deploy CONFIG --stream S
--version V``) does the same ahead of the first event (and restarts the drift windows
even for a version without its own reference). With several replicas, only the one
that owns the deploy topic's partition sees the event; the others switch at the
version's first inference event in their partitions.

>>> spec = ModelSpec.model_validate({"name": "loans", "prediction": {
...     "probabilities": [{"name": "no", "field": "p_no"}, {"name": "yes", "field": "p_yes"}],
...     "positive_class": "yes"}})
>>> spec.prediction.fields, spec.prediction.binary
(('p_no', 'p_yes'), True)

Prediction fields that are also declared under the stream's ``fields`` are watched
for drift by the drift stage like any feature (same detectors, same false-alarm
budget): that is prediction drift. Class values (predicted and labelled) are
compared as strings (JSON ``true`` reads ``"True"``, ``1`` reads ``"1"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from detectors.quality import CLASSIFICATION_METRICS, REGRESSION_METRICS
from monitor.config.alerts import Duration
from monitor.config.base import StrictModel

__all__ = [
    "ClassProbability",
    "LabelsSpec",
    "ModelSpec",
    "ModelVersionSpec",
    "PredictionSpec",
    "QualitySpec",
    "QualityWindowSpec",
    "ReferenceSpec",
]

_NAME = r"^[A-Za-z_][A-Za-z0-9_.\-]*$"
QualityMetric = Literal[
    "accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "ece", "mae", "rmse", "bias"
]


class _Model(StrictModel):
    """The strict base of every model configuration class."""


class ClassProbability(_Model):
    """One class's probability field: ``{name: approved, field: p_approved}``."""

    name: str = Field(description="The class (compared as a string with labels).")
    field: str = Field(description="Field holding that class's probability.")


class PredictionSpec(_Model):
    """Where the prediction is in an inference event.

    A classifier gives a positive-class ``score``, or ``probabilities`` per class (the
    positive class's is the score; without ``class_field`` the predicted class is the
    most probable), and/or the predicted ``class_field``. With a score only, the
    prediction is positive when ``score >= threshold``.
    """

    task: Literal["classification", "regression"] = Field(
        default="classification", description="What the model predicts."
    )
    score: str | None = Field(
        default=None, description="Field holding the positive class's probability."
    )
    probabilities: tuple[ClassProbability, ...] = Field(
        default=(),
        description=(
            "Per-class probability fields (instead of `score`); the positive class's is the score."
        ),
    )
    class_field: str | None = Field(
        default=None,
        description=(
            "Field holding the predicted class (else: score >= threshold, or the most probable "
            "class)."
        ),
    )
    positive_class: str | None = Field(
        default=None, description="The positive class (precision, recall, F1, AUC, CBPE)."
    )
    threshold: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="A score at or above it predicts the positive class (without `class_field`).",
    )
    value: str | None = Field(
        default=None, description="Field holding a regression model's prediction."
    )

    @model_validator(mode="after")
    def _fits_task(self) -> PredictionSpec:
        if self.task == "classification":
            if self.score is None and self.class_field is None and not self.probabilities:
                raise ValueError(
                    "a classifier needs prediction.score, probabilities or class_field"
                )
            if self.positive_class is None:
                raise ValueError("a classifier needs prediction.positive_class")
            if self.value is not None:
                raise ValueError("prediction.value is for regression models")
            if self.probabilities:
                classes = [p.name for p in self.probabilities]
                if self.score is not None:
                    raise ValueError("give prediction.score or probabilities, not both")
                if len(classes) < 2 or len(set(classes)) != len(classes):
                    raise ValueError(
                        "prediction.probabilities must name 2 or more distinct classes"
                    )
                if self.positive_class not in classes:
                    raise ValueError(
                        f"positive_class {self.positive_class!r} is not among the probabilities' "
                        f"classes {classes}"
                    )
        else:
            if self.value is None:
                raise ValueError("a regression model needs prediction.value")
            if self.score is not None or self.class_field is not None or self.probabilities:
                raise ValueError(
                    "prediction.score, probabilities and class_field are for classifiers"
                )
        return self

    @property
    def has_score(self) -> bool:
        """Whether a positive-class probability is known (score or probabilities)."""
        return self.score is not None or bool(self.probabilities)

    @property
    def binary(self) -> bool:
        """Two classes known (CBPE then estimates from the positive-class score; with more
        classes, from the confidence: expected accuracy only)."""
        return len(self.probabilities) in (0, 2)

    @property
    def fields(self) -> tuple[str, ...]:
        named = (self.score, self.class_field, self.value, *(p.field for p in self.probabilities))
        return tuple(f for f in named if f is not None)


class LabelsSpec(_Model):
    """The label topic and how a label finds its prediction."""

    topic: str = Field(
        description=(
            "Label topic, co-partitioned with the inference topic (same partition count, "
            "keyed by request id)."
        )
    )
    key: str = Field(description="Field of label events holding the request id (the join key).")
    value: str = Field(
        description="Field of label events holding the label (a class, or a number for regression)."
    )
    time: str = Field(description="Field of label events holding their event time.")
    time_unit: Literal["s", "ms", "us", "ns"] = Field(
        default="s", description="Unit of `time` since the epoch."
    )
    max_delay: Duration = Field(
        default=86_400.0,
        description="Event time a label may come after its prediction; older predictions expire.",
    )
    max_future: Duration = Field(
        default=365 * 86_400.0,
        description=(
            "Label and prediction event times more than this ahead of the wall clock do not "
            "join (one such event would expire every pending prediction): such a label is "
            "rejected `invalid_time`, such a prediction is left out of the join and the "
            "model's windows."
        ),
    )
    idle_after: Duration = Field(
        default=60.0,
        gt=0,
        description=(
            "Wall clock a partition may go without events on either topic before it stops "
            "holding the stream's quality frontier back (its later joins below the frontier "
            "count as late). The one place timing enters the quality verdicts."
        ),
    )
    max_held: int = Field(
        default=1_000_000,
        gt=0,
        le=100_000_000,
        description=(
            "Joins held per partition and model version until the stream frontier (the "
            "slowest partition) passes them (48 bytes each). Beyond it the oldest are "
            'released early (counted in `driftwarden_limit_hits_total{limit="max_held"}`): '
            "verdicts stay exact while the quality window still holds them when the frontier "
            "passes, else those positions are skipped."
        ),
    )
    max_pending: int = Field(
        default=100_000,
        gt=0,
        le=50_000_000,
        description=(
            "Pending predictions and early labels kept per partition (about 139 bytes each at "
            "10^5)."
        ),
    )

    @model_validator(mode="after")
    def _positive_delay(self) -> LabelsSpec:
        if not self.max_delay > 0:
            raise ValueError(f"labels.max_delay must be > 0, got {self.max_delay}")
        return self


class QualityWindowSpec(_Model):
    """Joined events per quality window and between verdicts."""

    events: int = Field(
        default=5_000,
        gt=0,
        description=(
            "Joined events (predictions, for the estimate) per window; a window is one partition's."
        ),
    )
    step: int = Field(
        default=500,
        gt=0,
        description=(
            "A verdict every `step` joined events of a partition (a multiple of it makes `events`)."
        ),
    )

    @model_validator(mode="after")
    def _step_fits(self) -> QualityWindowSpec:
        if self.step > self.events or self.events % self.step:
            raise ValueError(
                f"window.events ({self.events}) must be a multiple of step ({self.step})"
            )
        return self


class EstimateSpec(_Model):
    """Confidence-based performance estimation before labels (classifiers with a score)."""

    enabled: bool = Field(
        default=True,
        description=(
            "Estimate accuracy before labels (CBPE; classifiers with a score or probabilities: "
            "multiclass ones from their calibrated top probability)."
        ),
    )
    method: Literal["isotonic", "histogram"] = Field(
        default="isotonic", description="Calibration of the scores on the reference."
    )
    bins: int = Field(
        default=20,
        ge=2,
        le=1000,
        description="Equal-frequency bins of the `histogram` calibration.",
    )


class QualitySpec(_Model):
    """Which quality metrics are watched, over which windows, with which alarm budget."""

    metrics: tuple[QualityMetric, ...] = Field(
        default=("accuracy", "roc_auc"),
        description=(
            "Quality metrics watched, each tested against the reference (f1: delta-method "
            "interval; ece: against the reference's calibration curve)."
        ),
    )
    window: QualityWindowSpec = Field(
        default=QualityWindowSpec(), description="Windows of joined events."
    )
    false_alerts: float = Field(
        default=1.0, gt=0, description="Expected false quality alerts on a stationary stream..."
    )
    per_events: int = Field(
        default=1_000_000,
        gt=0,
        description="...per this many joined events (shared by the tested metrics).",
    )
    min_drop: float = Field(
        default=0.01,
        ge=0,
        description="Smallest degradation that alerts (effect size, in the metric's units).",
    )
    estimate: EstimateSpec = Field(
        default=EstimateSpec(), description="Quality estimate before labels."
    )


class ReferenceSpec(_Model):
    """A file (JSONL, CSV, Parquet) of reference events: features, predictions, labels."""

    file: Path = Field(
        description="JSONL, CSV or Parquet rows with features, predictions and labels."
    )
    id: str | None = Field(
        default=None,
        description=(
            "Reference id in findings, alerts and retrain requests (default: file name and hash)."
        ),
    )


class ModelVersionSpec(_Model):
    """A version that brings its own reference."""

    version: str = Field(description="The version (as in `version_field`).")
    reference: ReferenceSpec = Field(
        description="That version's reference (its drift baseline and quality)."
    )


class ModelSpec(_Model):
    """An ML model whose inference events a stream carries."""

    name: str = Field(pattern=_NAME)
    version: str | None = None
    version_field: str | None = None
    request_id: str | None = Field(
        default=None, description="Field of inference events holding the request id (the join key)."
    )
    prediction: PredictionSpec | None = None
    labels: LabelsSpec | None = None
    quality: QualitySpec = Field(
        default=QualitySpec(), description="Quality windows, metrics and false-alarm budget."
    )
    reference: ReferenceSpec | None = Field(
        default=None, description="The reference of every version without its own."
    )
    versions: tuple[ModelVersionSpec, ...] = Field(
        default=(), description="Versions that bring their own reference."
    )
    # Which alerts on this stream ask for a retrain: input drift (field alerts), the
    # CBPE estimate, realized quality; and the least severity (default: alerts.retrain).
    retrain_on: tuple[Literal["drift", "estimated", "realized"], ...] = Field(
        default=(
            "drift",
            "estimated",
            "realized",
        ),
        description=(
            "Alerts that ask for a retrain: input `drift`, `estimated` (CBPE) or `realized` "
            "quality."
        ),
    )
    retrain_severity: Literal["info", "warning", "critical"] | None = Field(
        default=None,
        description="Least severity of those alerts (default: `alerts.retrain.min_severity`).",
    )
    # Deploy events ({"model": NAME, "version": V}, `driftwarden model deploy`) on a
    # one-partition topic the stream also reads.
    deploy_topic: str | None = Field(
        default=None,
        description="One-partition topic of deploy events (`driftwarden model deploy`).",
    )
    max_versions: int = Field(
        default=100,
        gt=0,
        description=(
            "Model versions tracked (each has its own windows); the predictions of further "
            "new versions are judged together as version `other`."
        ),
    )

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        if self.labels is not None:
            if self.prediction is None:
                raise ValueError("model.labels needs model.prediction")
            if self.request_id is None:
                raise ValueError("model.labels needs model.request_id (the join key)")
        if self.prediction is not None:
            allowed = (
                CLASSIFICATION_METRICS
                if self.prediction.task == "classification"
                else REGRESSION_METRICS
            )
            wrong = [m for m in self.quality.metrics if m not in allowed]
            if wrong:
                raise ValueError(
                    f"quality metrics {wrong} do not apply to {self.prediction.task}; "
                    f"allowed: {', '.join(allowed)}"
                )
            if self.prediction.task == "classification" and not self.prediction.has_score:
                needs_score = {"roc_auc", "log_loss", "ece"} & set(self.quality.metrics)
                if needs_score:
                    raise ValueError(
                        f"quality metrics {sorted(needs_score)} need prediction.score "
                        "or probabilities"
                    )
        versions = [v.version for v in self.versions]
        if len(set(versions)) != len(versions):
            raise ValueError(f"model.versions must be distinct, got {versions}")
        return self
