"""Baseline artifacts: binning rules and exact JSON round trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from detectors.base import DetectorError
from detectors.baseline import (
    Baseline,
    build_categorical,
    build_numeric,
    load_baseline,
    save_baseline,
)


def _baseline() -> Baseline:
    rng = np.random.default_rng(3)
    return Baseline(
        id="sensors-2024",
        created_at="2024-05-01T00:00:00Z",
        source="file:train.parquet",
        fields={
            "temperature": build_numeric(rng.normal(20, 5, 5000), bins=100, keep_sample=5000),
            "count": build_numeric(rng.poisson(3, 5000), bins=100),
            "status": build_categorical(rng.choice(["ok", "warn", "fail"], 1000)),
        },
    )


def test_json_round_trip_is_exact(tmp_path: Path) -> None:
    b = _baseline()
    save_baseline(b, tmp_path / "b.json")
    c = load_baseline(tmp_path / "b.json")
    assert c.content_hash == b.content_hash
    assert c.id == b.id
    assert c.source == b.source
    for name, fb in b.fields.items():
        assert c.fields[name].content() == fb.content()
    t = b.fields["temperature"]
    assert c.fields["temperature"].edges.tobytes() == t.edges.tobytes()  # type: ignore[union-attr]


def test_version_and_hash_are_checked() -> None:
    doc = json.loads(_baseline().to_json())
    bad_version = dict(doc, version=99)
    with pytest.raises(DetectorError, match="version 99"):
        Baseline.from_json(json.dumps(bad_version))
    doc["fields"]["count"]["mean"] = 1.0
    with pytest.raises(DetectorError, match="content hash"):
        Baseline.from_json(json.dumps(doc))


def test_discrete_data_gets_one_bin_per_atom() -> None:
    x = np.random.default_rng(0).poisson(3, 10_000).astype(float)
    b = build_numeric(x, bins=1000)
    atoms = np.unique(x)
    # Every atom below the top quantile is an edge, and each atom's ties share a bin.
    assert set(b.inner_edges.tolist()) <= set(atoms.tolist())
    idx = b.bin_index(x)
    for v in atoms:
        assert np.unique(idx[x == v]).size == 1
    assert b.counts.sum() == x.size
    assert np.all(np.diff(b.edges) > 0)


def test_constant_field_and_out_of_range_values() -> None:
    b = build_numeric(np.full(100, 5.0))
    assert b.bins == 2
    assert b.counts.tolist() == [0, 100]
    assert b.std == 0.0
    assert b.bin_index(np.array([-1e300, 4.9, 5.0, 1e300])).tolist() == [0, 0, 1, 1]
    n = build_numeric(np.arange(100.0), bins=10)
    assert n.bin_index(np.array([-5.0, 500.0])).tolist() == [0, n.bins - 1]


def test_categorical_codes_and_errors() -> None:
    c = build_categorical({"a": 3, "b": 0, "c": 5}, categories=["c", "a", "b"])
    assert c.counts.tolist() == [5, 3, 0]
    assert c.bins == 4
    assert c.bin_index(np.array([0, 2, 3, 17])).tolist() == [0, 2, 3, 3]
    with pytest.raises(DetectorError, match=">= 0"):
        c.bin_index(np.array([-1]))
    with pytest.raises(DetectorError, match="finite"):
        build_numeric(np.array([1.0, np.nan]))
    with pytest.raises(DetectorError, match="bins must be >= 2"):
        build_numeric(np.arange(3.0), bins=1)
