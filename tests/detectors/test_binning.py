from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from detectors.binning import EdgeIndex

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@pytest.mark.parametrize("dist", ["normal", "student_t1", "poisson", "lognormal"])
@pytest.mark.parametrize("n_edges", [1, 2, 7, 999, 4000])
def test_equals_searchsorted_right(dist: str, n_edges: int) -> None:
    rng = np.random.default_rng(n_edges)
    gen = {
        "normal": lambda n: rng.normal(50, 10, n),
        "student_t1": lambda n: rng.standard_t(1, n) * 1e6,
        "poisson": lambda n: rng.poisson(3, n).astype(float),
        "lognormal": lambda n: rng.lognormal(0, 2, n),
    }[dist]
    edges = np.unique(gen(n_edges * 3))[:n_edges]
    values = np.concatenate(
        [
            gen(20_000),
            edges,
            np.nextafter(edges, np.inf),
            np.nextafter(edges, -np.inf),
            [np.inf, -np.inf, np.nan, edges[0] - 1, edges[-1] + 1],
        ]
    )
    got = EdgeIndex(edges).count_at_or_below(values)
    assert np.array_equal(got, np.searchsorted(edges, values, side="right"))


@given(
    hnp.arrays(np.float64, st.integers(1, 50), elements=finite, unique=True),
    hnp.arrays(np.float64, st.integers(0, 50), elements=st.floats(width=64)),
)
def test_any_edges_and_values(edges: np.ndarray, values: np.ndarray) -> None:
    edges = np.sort(edges)
    got = EdgeIndex(edges).count_at_or_below(values)
    assert np.array_equal(got, np.searchsorted(edges, values, side="right"))


@pytest.mark.parametrize("n_edges", [1, 7, 999])
def test_count_into_a_column_with_shift_and_missing(n_edges: int) -> None:
    rng = np.random.default_rng(n_edges)
    edges = np.unique(rng.normal(size=n_edges * 3))[:n_edges]
    values = rng.normal(size=5_000)
    valid = rng.random(5_000) > 0.1
    out = np.zeros((3, 5_000), np.int64)
    EdgeIndex(edges).count_into(values, valid, out[1], 100, -7)
    want = np.where(valid, np.searchsorted(edges, values, side="right") + 100, -7)
    assert np.array_equal(out[1], want) and not out[0].any() and not out[2].any()


@given(
    hnp.arrays(np.float64, st.integers(1, 50), elements=finite, unique=True),
    hnp.arrays(np.float64, st.integers(0, 50), elements=st.floats(width=64)),
)
def test_count_into_any_edges_and_values(edges: np.ndarray, values: np.ndarray) -> None:
    edges = np.sort(edges)
    out = np.empty(values.size, np.int64)
    EdgeIndex(edges).count_into(values, np.ones(values.size, bool), out, 0, -1)
    assert np.array_equal(out, np.searchsorted(edges, values, side="right"))
