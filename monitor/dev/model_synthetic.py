"""Synthetic inference and label events of a binary classifier, for the demo and tests.

Two features ``x1``, ``x2`` ~ N(0, 1); the true probability of the positive class is
``sigmoid(1.5 x1 - x2)`` and the model's score is ``sigmoid(2 (1.5 x1 - x2))``
(right ranking, overconfident: CBPE's calibration step has work to do). From
``drift_at`` on, the inputs shrink towards 0 (covariate shift: x ~ N(0.2, 0.35)), so
scores crowd around the threshold and accuracy drops while P(y | x) is unchanged,
which is exactly what CBPE can see before labels do.

Labels come ``label_delay`` seconds of event time after their prediction; a share
``missing`` never comes and a share ``duplicated`` comes twice.

>>> ev = generate_model_events(1000, seed=1, drift_at=500)
>>> len(ev.inference), len(ev.labels) > 900, ev.inference[0][:14]
(1000, True, b'{"request_id":')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

__all__ = ["MODEL_STREAM", "ModelEvents", "generate_model_events", "reference_rows"]

# The demo's model stream (the reference file path is filled in by the caller).
MODEL_STREAM: dict[str, Any] = {
    "name": "loans-model",
    "topic": "ml.loans.inference",
    "event_time": "ts",
    "fields": {
        "x1": {"type": "float", "detectors": ["psi", "ks"]},
        "x2": {"type": "float", "detectors": ["psi", "ks"]},
        "p_default": {"type": "float", "range": [0, 1], "detectors": ["psi", "ks"]},
    },
    "window": {"events": 2000, "step": 500},
    "model": {
        "name": "loans",
        "version_field": "model_version",
        "request_id": "request_id",
        "prediction": {"score": "p_default", "positive_class": "1", "threshold": 0.5},
        "labels": {
            "topic": "ml.loans.labels",
            "key": "request_id",
            "value": "defaulted",
            "time": "ts",
            "max_delay": "1h",
            "max_pending": 200_000,
        },
        "quality": {
            "metrics": ["accuracy", "roc_auc", "f1", "log_loss", "ece"],
            "window": {"events": 4000, "step": 1000},
            "false_alerts": 1.0,
            "per_events": 1_000_000,
            "min_drop": 0.02,
        },
    },
}


@dataclass(frozen=True)
class ModelEvents:
    """Inference and label payloads with their request ids (keys) and times."""

    inference: list[bytes]
    inference_keys: list[bytes]
    labels: list[bytes]
    label_keys: list[bytes]
    label_time: npt.NDArray[np.float64]
    truth: npt.NDArray[np.bool_]
    score: npt.NDArray[np.float64]


def _draw(
    rng: np.random.Generator, n: int, shifted: npt.NDArray[np.bool_]
) -> tuple[npt.NDArray[np.float64], ...]:
    x1 = rng.normal(0.0, 1.0, n)
    x2 = rng.normal(0.0, 1.0, n)
    x1 = np.where(shifted, 0.2 + 0.35 * x1, x1)
    x2 = np.where(shifted, 0.35 * x2, x2)
    z = 1.5 * x1 - x2
    truth = rng.uniform(0, 1, n) < 1 / (1 + np.exp(-z))
    score = 1 / (1 + np.exp(-2 * z))
    return x1, x2, score, truth.astype(np.float64)


def reference_rows(
    n: int, seed: int = 0, start: float = 1.7e9, shifted: bool = False, version: str = "1"
) -> list[bytes]:
    """JSONL rows of the reference: features, the model's score and the label
    (``shifted``: drawn from the shifted inputs, the reference of a retrained version)."""
    rng = np.random.default_rng(seed)
    x1, x2, score, truth = _draw(rng, n, np.full(n, shifted, np.bool_))
    enc = msgspec.json.encode
    return [
        enc(
            {
                "request_id": f"ref-{i}",
                "ts": start + i,
                "model_version": version,
                "x1": round(float(x1[i]), 4),
                "x2": round(float(x2[i]), 4),
                "p_default": round(float(score[i]), 6),
                "defaulted": int(truth[i]),
            }
        )
        for i in range(n)
    ]


def generate_model_events(
    n: int,
    seed: int = 0,
    drift_at: int | None = None,
    start: float = 1.8e9,
    rate: float = 100.0,
    label_delay: float = 60.0,
    missing: float = 0.02,
    duplicated: float = 0.01,
    version: str = "1",
) -> ModelEvents:
    """``n`` predictions (``rate`` per second of event time) and their labels, the
    labels sorted by their event time."""
    rng = np.random.default_rng(seed)
    idx = np.arange(n)
    shifted = idx >= (n if drift_at is None else drift_at)
    x1, x2, score, truth = _draw(rng, n, shifted)
    ts = start + idx / rate
    enc = msgspec.json.encode
    ids = [f"req-{seed}-{i}" for i in range(n)]
    inference = [
        enc(
            {
                "request_id": ids[i],
                "ts": float(ts[i]),
                "model_version": version,
                "x1": float(x1[i]),
                "x2": float(x2[i]),
                "p_default": float(score[i]),
            }
        )
        for i in range(n)
    ]
    has = rng.uniform(0, 1, n) >= missing
    twice = rng.uniform(0, 1, n) < duplicated
    lab_idx = np.concatenate([idx[has], idx[has & twice]])
    lab_time = ts[lab_idx] + label_delay * rng.uniform(0.5, 1.5, lab_idx.size)
    order = np.argsort(lab_time, kind="stable")
    lab_idx, lab_time = lab_idx[order], lab_time[order]
    labels = [
        enc({"request_id": ids[i], "ts": float(t), "defaulted": int(truth[i])})
        for i, t in zip(lab_idx.tolist(), lab_time.tolist(), strict=True)
    ]
    return ModelEvents(
        inference=inference,
        inference_keys=[i.encode() for i in ids],
        labels=labels,
        label_keys=[ids[i].encode() for i in lab_idx.tolist()],
        label_time=lab_time,
        truth=truth.astype(np.bool_),
        score=score,
    )
