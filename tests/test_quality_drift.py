"""Data-quality drift through the drift stage: null and unseen-category rates against
the baseline's, silent on a stationary stream, flagged within one window of a rise."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chi2_contingency

from detectors.baseline import (
    Baseline,
    QualityBaseline,
    build_categorical,
    build_numeric,
    load_baseline,
    save_baseline,
)
from detectors.data_quality import rate_z
from monitor.pipeline.decode import Batch, StreamDecoder
from monitor.pipeline.drift import DriftStage
from tests.drift_utils import stream_spec

WINDOW, STEP = 10_000, 1_000


def _stage() -> DriftStage:
    spec = stream_spec(
        {
            "h": {"type": "float", "nullable": True, "detectors": ["ks", "data_quality"]},
            "c": {"type": "category", "detectors": ["chi2", "data_quality"]},
        },
        window={"events": WINDOW, "step": STEP},
    )
    rng = np.random.default_rng(0)
    baseline = Baseline(
        id="ref",
        created_at="2026-11-29",
        source="test",
        fields={
            "h": build_numeric(rng.normal(size=90_000)),
            "c": build_categorical({"a": 70_000, "b": 30_000}, categories=["a", "b"]),
        },
        quality={
            "h": QualityBaseline(np.array([90_000, 10_000, 0, 0, 0, 0])),
            "c": QualityBaseline(np.array([100_000, 0, 0, 0, 0, 0])),
        },
    )
    stage = DriftStage(spec, StreamDecoder(spec), baseline)
    stage.set_partition_count(2)
    return stage


def _run(
    stage: DriftStage, n: int, null_rate: float, unseen_rate: float, seed: int
) -> list[tuple[int, str, bool]]:
    """Feed ``n`` events (two partitions, batches of 2,500); (position, field, drift)."""
    rng = np.random.default_rng(seed)
    h = rng.normal(size=n)
    h_valid = rng.random(n) >= null_rate
    c = (rng.random(n) < 0.3).astype(np.int64)  # 0 = "a", 1 = "b"
    c[rng.random(n) < unseen_rate] = -1  # a category the baseline never saw
    out = []
    for a in range(0, n, 2_500):
        b = a + 2_500
        batch = Batch(
            stream="s",
            n_input=b - a,
            rows=np.arange(b - a, dtype=np.int64),
            columns={"h": np.where(h_valid[a:b], h[a:b], np.nan), "c": c[a:b]},
            valid={"h": h_valid[a:b], "c": np.ones(b - a, bool)},
        )
        parts = (np.arange(a, b) % 2).astype(np.int32)
        for f in stage.update(batch, parts, np.arange(a, b) // 2):
            if f.detector == "data_quality":
                out.append((b, f.subject, f.drift))
    return out


def test_silent_on_a_stationary_stream_with_ten_percent_nulls() -> None:
    found = _run(_stage(), 60_000, null_rate=0.10, unseen_rate=0.0, seed=1)
    assert len(found) >= 2 * 20  # both fields, a clean verdict per batch
    assert not [f for f in found if f[2]]


@pytest.mark.parametrize(
    ("null_rate", "unseen_rate", "field"), [(0.22, 0.0, "h"), (0.10, 0.02, "c")]
)
def test_a_rise_is_flagged_within_one_window(
    null_rate: float, unseen_rate: float, field: str
) -> None:
    stage = _stage()
    assert not [f for f in _run(stage, 20_000, 0.10, 0.0, seed=2) if f[2]]
    found = _run(stage, WINDOW, null_rate, unseen_rate, seed=3)
    flagged = {subject for _, subject, drift in found if drift}
    assert flagged == {field}


def test_rate_z_is_the_two_by_two_chi_square() -> None:
    for c, m, b, n in ((220, 1000, 1000, 10_000), (5, 10_000, 0, 100_000), (40, 900, 44, 1100)):
        table = [[c, m - c], [b, n - b]]
        chi2 = chi2_contingency(table, correction=False).statistic
        assert rate_z(c, m, b, n) ** 2 == pytest.approx(chi2, rel=1e-9)


def test_baselines_with_and_without_quality_load_and_keep_their_hash(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    rng = np.random.default_rng(4)
    fields = {"h": build_numeric(rng.normal(size=1_000))}
    old = Baseline(id="old", created_at="x", source="t", fields=fields)
    new = Baseline(
        id="new",
        created_at="x",
        source="t",
        fields=fields,
        quality={"h": QualityBaseline(np.array([9, 1, 0, 0, 0, 0]))},
    )
    assert old.content_hash != new.content_hash
    for b in (old, new):
        save_baseline(b, tmp_path / f"{b.id}.json")
        again = load_baseline(tmp_path / f"{b.id}.json")
        assert again.content_hash == b.content_hash
        assert set(again.quality) == set(b.quality)


def test_the_vectorised_rate_z_is_rate_z_bit_for_bit() -> None:
    from detectors.data_quality import _rate_z_many

    rng = np.random.default_rng(4)
    for _ in range(200):
        m, n = int(rng.integers(0, 20_000)), int(rng.integers(1, 200_000))
        counts = rng.multinomial(m, [0.8, 0.1, 0.04, 0.03, 0.02, 0.01]).astype(np.float64)
        base = rng.multinomial(n, [0.85, 0.1, 0.0, 0.03, 0.02, 0.0]).astype(np.float64)
        many = _rate_z_many(counts, float(m), base, float(n))
        one = [rate_z(float(c), m, float(b), n) for c, b in zip(counts, base, strict=True)]
        assert many.tolist() == one
