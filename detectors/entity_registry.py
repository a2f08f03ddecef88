"""Config names of entity (device) detectors, mapped lazily to their classes.

A new entity detector is one file in ``detectors/`` plus one line here. Every class
is built as ``Cls(budget=AlarmBudget(...), **params)``. The order of this mapping
is the order of the condition bits in an entity's status.
"""

from __future__ import annotations

from typing import Any

from detectors.base import DetectorError
from detectors.entity_base import AlarmBudget, EntityDetector
from detectors.registry import import_target

__all__ = ["create", "detector_class", "names"]

_REGISTRY: dict[str, str] = {
    "silent": "detectors.entity_silent:Silent",
    "stuck": "detectors.entity_stuck:Stuck",
    "out_of_range": "detectors.entity_range:OutOfRange",
    "spike": "detectors.entity_spike:Spike",
    "fleet_drift": "detectors.entity_fleet:FleetDrift",
}


def names() -> list[str]:
    """The registered names, in status-bit order."""
    return list(_REGISTRY)


def detector_class(name: str) -> type[Any]:
    """The class registered under ``name`` (imported on first use)."""
    target = _REGISTRY.get(name)
    if target is None:
        raise DetectorError(f"unknown entity detector {name!r}; allowed: {', '.join(names())}")
    cls: type[Any] = import_target(target)
    return cls


def create(name: str, budget: AlarmBudget, **params: Any) -> EntityDetector:
    """Build the entity detector registered under ``name``."""
    det: EntityDetector = detector_class(name)(budget=budget, **params)
    return det
