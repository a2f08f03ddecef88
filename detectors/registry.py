"""Config names of detectors, mapped lazily to their classes.

A new detector is one file in ``detectors/`` plus one line in ``_REGISTRY``. Every
class is built as ``Cls(baseline=..., subject=..., **params)``, where ``baseline``
is the field's ``NumericBaseline`` / ``CategoricalBaseline`` (``None`` for detectors
that need none, such as ADWIN) and ``params`` are its thresholds and window.
"""

from __future__ import annotations

import importlib
from typing import Any

from detectors.base import Detector, DetectorError

__all__ = ["create", "detector_class", "import_target", "names"]

_REGISTRY: dict[str, str] = {
    "adwin": "detectors.adwin:ADWIN",
    "chi2": "detectors.categorical:ChiSquare",
    "data_quality": "detectors.data_quality:QualityRates",
    "ks": "detectors.ks:KS",
    "psi": "detectors.psi:PSI",
}


def names() -> list[str]:
    """The registered config names, sorted."""
    return sorted(_REGISTRY)


def detector_class(name: str) -> type[Any]:
    """The class registered under ``name`` (imported on first use)."""
    target = _REGISTRY.get(name)
    if target is None:
        raise DetectorError(f"unknown detector {name!r}; allowed: {', '.join(names())}")
    cls: type[Any] = import_target(target)
    return cls


def import_target(target: str) -> Any:
    """The object (a class) named by ``"module:Class"``, imported on first use."""
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def create(name: str, **params: Any) -> Detector:
    """Build the detector registered under ``name`` with ``params``."""
    det: Detector = detector_class(name)(**params)
    return det
