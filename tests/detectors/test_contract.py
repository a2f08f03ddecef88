"""One contract over every registered detector (STYLE.md point 3).

State round trip, merge of two halves, seeded determinism, silence on a stationary
stream, firing on a shift. "Halves" are two partitions of one stream: for an
event-time window each partition gets its share of every batch and the merged
window must equal the window of one instance fed both shares (exact); for a count
window each partition gets the same number of events per batch, a multiple of the
step, and the whole is an instance with twice the window, step and ert.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from detectors import registry
from detectors.base import Detector, DetectorError, Finding, Mergeable
from detectors.baseline import QualityBaseline, build_categorical, build_numeric

_RNG = np.random.default_rng(20240501)
_NUMERIC = build_numeric(_RNG.normal(0.0, 1.0, 50_000))
_CATS = build_categorical(
    {"ok": 8000, "warn": 1500, "fail": 500}, categories=["ok", "warn", "fail"]
)


@dataclass(frozen=True)
class Case:
    params: dict[str, Any]
    calm: Callable[[np.random.Generator, int], np.ndarray]
    shifted: Callable[[np.random.Generator, int], np.ndarray]


def _numeric(**params: Any) -> Case:
    return Case(
        params={"baseline": _NUMERIC, "subject": "x", **params},
        calm=lambda r, n: r.normal(0.0, 1.0, n),
        shifted=lambda r, n: r.normal(1.0, 1.0, n),
    )


CASES: dict[str, Case] = {
    "ks": _numeric(window_events=2_000, step_events=500),
    "psi": _numeric(window_events=2_000, step_events=500),
    "chi2": Case(
        params={"baseline": _CATS, "subject": "status", "window_events": 2_000, "step_events": 500},
        calm=lambda r, n: r.choice(3, n, p=[0.8, 0.15, 0.05]),
        shifted=lambda r, n: r.choice(3, n, p=[0.6, 0.25, 0.15]),
    ),
    "data_quality": Case(
        params={
            "baseline": QualityBaseline(np.array([9000, 1000, 0, 0, 0, 0])),
            "subject": "x",
            "window_events": 2_000,
            "step_events": 500,
        },
        calm=lambda r, n: (r.random(n) < 0.10).astype(np.int64),  # 10% nulls
        shifted=lambda r, n: np.where(r.random(n) < 0.22, 1, np.where(r.random(n) < 0.03, 2, 0)),
    ),
    "adwin": Case(
        params={"baseline": None, "subject": "x", "mode": "subwindow", "delta": 1e-6},
        calm=lambda r, n: r.normal(0.0, 1.0, n),
        shifted=lambda r, n: r.normal(1.0, 1.0, n),
    ),
}


def _make(name: str, **over: Any) -> Detector:
    if name == "adwin" and importlib.util.find_spec("detectors.adwin") is None:
        pytest.skip("detectors/adwin.py is not there yet")
    return registry.create(name, **{**CASES[name].params, **over})


def _stream(name: str, seed: int, n_batches: int = 12, size: int = 700) -> list[np.ndarray]:
    r = np.random.default_rng(seed)
    case = CASES[name]
    return [
        case.calm(r, size) if i < n_batches // 2 else case.shifted(r, size)
        for i in range(n_batches)
    ]


def _run(det: Detector, batches: list[np.ndarray]) -> list[Finding]:
    return [f for b in batches for f in det.update(b)]


def test_every_name_is_covered_and_unknown_names_list_the_allowed() -> None:
    assert sorted(CASES) == registry.names()
    with pytest.raises(DetectorError, match="allowed: adwin, chi2, data_quality, ks, psi"):
        registry.detector_class("kswin")


@pytest.mark.parametrize("name", registry.names())
def test_state_round_trip(name: str) -> None:
    batches = _stream(name, 1)
    whole = _make(name)
    expected = [_run(whole, [b]) for b in batches]
    for k in (1, 5, 9):
        first = _make(name)
        _run(first, batches[:k])
        second = _make(name)
        second.restore(first.state())
        got = [_run(second, [b]) for b in batches[k:]]
        assert got == expected[k:]


@pytest.mark.parametrize("name", registry.names())
def test_seeded_determinism(name: str) -> None:
    assert _run(_make(name), _stream(name, 2)) == _run(_make(name), _stream(name, 2))


@pytest.mark.parametrize("name", registry.names())
def test_silent_on_stationary_and_fires_on_shift(name: str) -> None:
    r = np.random.default_rng(3)
    case = CASES[name]
    det = _make(name)
    calm = _run(det, [case.calm(r, 500) for _ in range(200)])
    assert calm
    assert not any(f.drift for f in calm)
    shifted = _run(det, [case.shifted(r, 500) for _ in range(8)])
    assert any(f.drift for f in shifted)


@pytest.mark.parametrize("name", registry.names())
def test_merge_of_two_time_partitions_equals_the_whole(name: str) -> None:
    if not isinstance(_make(name), Mergeable):
        pytest.skip(f"{name} is not Mergeable")
    timed = {"window_seconds": 20.0, "step_seconds": 5.0}
    a, b, whole = _make(name, **timed), _make(name, **timed), _make(name, **timed)
    r = np.random.default_rng(4)
    case = CASES[name]
    t0 = 1.7e9
    for i in range(12):
        gen = case.calm if i < 6 else case.shifted
        xa, xb = gen(r, 300), gen(r, 200)
        ta = np.sort(r.uniform(t0 + 3 * i, t0 + 3 * i + 3, 300))
        tb = np.sort(r.uniform(t0 + 3 * i, t0 + 3 * i + 3, 200))
        a.update(xa, ta)
        b.update(xb, tb)
        whole.update(np.concatenate([xa, xb]), np.concatenate([ta, tb]))
    merged = _make(name, **timed)
    merged.restore(a.state())
    assert isinstance(merged, Mergeable)
    merged.merge(b)
    fm, fw = merged.evaluate(), whole.evaluate()  # type: ignore[attr-defined]
    assert fw is not None
    assert fm == fw


@pytest.mark.parametrize("name", registry.names())
def test_merge_of_two_count_partitions_equals_the_whole(name: str) -> None:
    if not isinstance(_make(name), Mergeable):
        pytest.skip(f"{name} is not Mergeable")
    a, b = _make(name), _make(name)
    whole = _make(name, window_events=4_000, step_events=1_000, ert=2e10)
    r = np.random.default_rng(5)
    case = CASES[name]
    for i in range(10):
        gen = case.calm if i < 5 else case.shifted
        xa, xb = gen(r, 1_000), gen(r, 1_000)
        a.update(xa)
        b.update(xb)
        whole.update(np.concatenate([xa, xb]))
    assert isinstance(a, Mergeable)
    a.merge(b)
    assert a.evaluate() == whole.evaluate()  # type: ignore[attr-defined]
