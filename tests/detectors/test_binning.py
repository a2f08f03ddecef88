from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from detectors.binning import EdgeIndex, EdgeIndexes

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


@pytest.mark.parametrize("cells", [1, 7, 4096])
def test_edges_on_cell_bounds_and_crowded_cells(cells: int) -> None:
    """Only a value's own cell is searched: edges exactly on cell bounds (where the
    cell computation rounds either way), repeated edges, and cells holding more
    edges than the fixed-count path takes (a binary search then) stay exact."""
    rng = np.random.default_rng(cells)
    lo, hi = -3.3, 7.1
    bounds = lo + np.arange(cells + 1) * ((hi - lo) / cells)
    crowded = 0.5 + rng.uniform(0, 1e-9, 40)  # more than _MAX_CANDIDATES in one cell
    edges = np.sort(np.concatenate([bounds, np.nextafter(bounds, np.inf), crowded, [1.0, 1.0]]))
    values = np.concatenate(
        [
            rng.uniform(lo - 1, hi + 1, 20_000),
            edges,
            np.nextafter(edges, np.inf),
            np.nextafter(edges, -np.inf),
        ]
    )
    for index in (EdgeIndex(edges, cells), EdgeIndex(edges[::3], cells)):
        got = index.count_at_or_below(values)
        assert np.array_equal(got, np.searchsorted(index.edges, values, side="right"))


@pytest.mark.parametrize(
    "edges",
    [
        [0.0, 5e-324],
        [0.0, 1e-320, 2e-320],
        [-1e308, 1e308],
        [1.0, float(np.nextafter(1.0, 2.0))],
        [-5e-324, 0.0, 5e-324],
    ],
)
def test_extreme_spans(edges: list[float]) -> None:
    """Spans of a few subnormals (the grid's scale overflows) or of the whole float
    range (the span overflows) fall back to searchsorted; tiny normal spans stay exact."""
    e = np.array(edges)
    values = np.concatenate(
        [e, np.nextafter(e, np.inf), np.nextafter(e, -np.inf), [0.0, -np.inf, np.inf, np.nan]]
    )
    got = EdgeIndex(e).count_at_or_below(values)
    assert np.array_equal(got, np.searchsorted(e, values, side="right"))


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


def _indexes(rng: np.random.Generator, fields: int) -> list[EdgeIndex]:
    out = []
    for f in range(fields):
        size = [2, 7, 999, 4000, 50][f % 5]
        spread = [1.0, 1e6, 1e-3, 10.0, 3.0][f % 5]
        edges = np.unique(rng.standard_t(2, size * 3) * spread + f)[:size]
        out.append(EdgeIndex(edges))
    return out


@pytest.mark.parametrize("gather", [False, True])
def test_indexes_in_one_call_equal_each_index(gather: bool) -> None:
    rng = np.random.default_rng(7)
    indexes = _indexes(rng, 9)
    together = EdgeIndexes(indexes)
    n = 3_000
    values = rng.standard_t(2, (9, n)) * 10
    values[:, :6] = [np.nan, np.inf, -np.inf, 1e308, -1e308, 0.0]
    valid = rng.random((4, n)) > 0.2
    rows = rng.permutation(9).astype(np.int64)
    valid_rows = np.array([-1, 0, 3, -1, 1, 2, -1, 0, 3], dtype=np.int64)
    positions = rng.permutation(n)[: n // 2].astype(np.int64) if gather else None
    m = n if positions is None else positions.size
    out = np.full((12, m), -99, dtype=np.int32)
    out_rows = np.array([11, 0, 2, 4, 6, 8, 10, 1, 3], dtype=np.int64)
    shifts = np.arange(9, dtype=np.int64) * 5_000
    together.count_into(values, rows, valid, valid_rows, positions, out, out_rows, shifts, -7)
    cols = np.arange(n) if positions is None else positions
    for f, index in enumerate(indexes):
        x = values[rows[f], cols]
        want = index.count_at_or_below(x) + shifts[f]
        if valid_rows[f] >= 0:
            want = np.where(valid[valid_rows[f], cols], want, -7)
        assert np.array_equal(out[out_rows[f]], want), f
    untouched = sorted(set(range(12)) - set(out_rows.tolist()))
    assert (out[untouched] == -99).all()


def test_indexes_need_usable_edges() -> None:
    with pytest.raises(ValueError, match="finite edges"):
        EdgeIndexes([EdgeIndex(np.array([1.0]))])
