"""The label join: either order, duplicates, missing and late labels, expiry, state."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.label_join import LabelJoin, hash_ids


def _ids(n: int, prefix: str = "req-") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def test_hash_ids_distinct_and_stable() -> None:
    h = hash_ids(_ids(100_000))
    assert np.unique(h).size == 100_000
    assert (hash_ids(["req-5"]) == h[5]).all()
    assert hash_ids([7, 8]).tolist() == hash_ids(["7", "8"]).tolist()
    assert hash_ids([]).size == 0


@pytest.mark.parametrize("seed", range(4))
def test_any_interleaving_joins_every_pair_once(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 5_000
    keys = hash_ids(_ids(n))
    ptime = np.arange(n, dtype=np.float64)
    score = rng.uniform(0, 1, n)
    label = (rng.uniform(0, 1, n) < score).astype(np.float64)
    # events of both topics shuffled, then cut into batches of random size
    kinds = np.concatenate([np.zeros(n, bool), np.ones(n, bool)])
    idx = np.concatenate([np.arange(n), np.arange(n)])
    order = rng.permutation(2 * n)
    join = LabelJoin(capacity=2 * n, max_delay=1e9)
    got_score, got_label = [], []
    cuts = np.sort(rng.choice(np.arange(1, 2 * n), 40, replace=False))
    for part in np.split(order, cuts):
        # within a batch, a topic's events keep their relative order
        p = idx[part[~kinds[part]]]
        lab = idx[part[kinds[part]]]
        for out in (
            join.add_predictions(keys[p], ptime[p], score=score[p]),
            join.add_labels(keys[lab], ptime[lab] + 10, label[lab]),
        ):
            got_score.append(out.score)
            got_label.append(out.label)
    s, lab_out = np.concatenate(got_score), np.concatenate(got_label)
    assert s.size == n and join.counts()["joined"] == n
    # every join pairs a prediction with its own label
    pairs = sorted(zip(s.tolist(), lab_out.tolist(), strict=True))
    assert pairs == sorted(zip(score.tolist(), label.tolist(), strict=True))
    assert join.pending == 0 and join.held_labels == 0


def test_duplicates_missing_late_and_expiry() -> None:
    join = LabelJoin(capacity=100, max_delay=100.0)
    k = hash_ids(_ids(6))
    join.add_predictions(k[:5], np.array([0.0, 1, 2, 3, 4]), score=np.full(5, 0.5))
    join.add_predictions(k[:1], np.array([9.0]), score=np.array([0.1]))  # duplicate prediction
    out = join.add_labels(k[[0, 0, 1]], np.array([10.0, 11, 500]), np.ones(3))
    assert out.n == 1  # label 0 joins, its repeat is a duplicate, label 1 is too late
    c = join.counts()
    assert (c["joined"], c["duplicate_labels"], c["late"], c["duplicate_predictions"]) == (
        1,
        1,
        1,
        1,
    )
    # label watermark 500: predictions 2, 3, 4 (time + 100 < 500) expire without label
    assert join.expire() == (3, 0)
    join.add_labels(k[[2]], np.array([501.0]), np.ones(1))  # after expiry: late
    join.add_labels(k[[5]], np.array([502.0]), np.ones(1))  # never predicted: held
    assert join.held_labels == 1
    join.add_predictions(hash_ids(["other"]), np.array([700.0]))  # prediction watermark 700
    assert join.expire() == (0, 1)  # the held label is an orphan now
    c = join.counts()
    assert (c["expired"], c["orphan"], c["late"]) == (3, 1, 2)


def test_label_before_prediction_and_bound() -> None:
    join = LabelJoin(capacity=3, max_delay=50.0)
    k = hash_ids(_ids(5))
    join.add_labels(k[:2], np.array([10.0, 11.0]), np.array([1.0, 0.0]))
    out = join.add_predictions(k[:2], np.array([5.0, 6.0]), klass=np.array([1, 1]))
    assert out.label.tolist() == [1.0, 0.0] and out.klass.tolist() == [1, 1]
    join.add_predictions(k[2:5], np.zeros(3))  # room for 3 live rows
    assert join.pending == 3
    join.add_predictions(hash_ids(["x"]), np.zeros(1))
    assert join.counts()["dropped"] == 1


def test_state_round_trip_continues_exactly() -> None:
    rng = np.random.default_rng(9)
    n = 4000
    keys = hash_ids(_ids(n))
    t = np.arange(n, dtype=np.float64)
    a = LabelJoin(capacity=n, max_delay=300.0)
    b = LabelJoin(capacity=n, max_delay=300.0)
    a.add_predictions(keys[:3000], t[:3000], score=rng.uniform(0, 1, 3000))
    a.add_labels(keys[1000:2000], t[1000:2000] + 5, np.ones(1000))
    b.restore(a.state())
    for j in (a, b):
        j.add_labels(keys[:1500], t[:1500] + 200, np.zeros(1500))
        j.expire()
    assert a.counts() == b.counts()
    assert a.pending == b.pending and a.held_labels == b.held_labels


def test_rehash_keeps_rows_under_churn() -> None:
    join = LabelJoin(capacity=1400, max_delay=10.0)
    total = 0
    for r in range(30):  # 30 x 900 keys through a table of 4096 rows
        k = hash_ids(_ids(900, f"r{r}-"))
        t = np.full(900, float(r * 100))
        join.add_predictions(k, t)
        total += join.add_labels(k[:450], t[:450] + 1, np.ones(450)).n
        join.expire()
    assert total == 30 * 450
    assert join.counts()["dropped"] == 0


def test_memory_per_pending_prediction() -> None:
    join = LabelJoin(capacity=100_000)
    # 53 bytes a row, 2^18 rows for 10^5 pending predictions
    assert join.bytes_per_pending == pytest.approx(53 * 2**18 / 100_000)
