"""Predictions waiting for their labels: a bounded open-addressing hash table in numpy.

Each pending prediction (or a label that came before its prediction) is one row of
dense columns, never a Python object: ``key`` (uint64 hash of the request id),
``status`` (int8), ``time`` (float64 event time), ``score`` (float64), ``klass``
(int64 predicted class code, or -1), ``value`` (float64 label value or regression
prediction), ``label`` (float64) and ``version`` (int32 model version code).
That is 8+1+8+8+8+8+8+4 = 53 bytes per row; the table has the power of two
rows at or above twice ``capacity``, so 106-212 bytes per pending prediction at
capacity (139 for ``capacity`` 10^5: 2^18 rows; ``bytes_per_pending``).
Probing is linear; inserts and lookups run in a numba kernel over a whole batch.

The request id is hashed to 64 bits (FNV-1a over the id's code points): two ids
collide with probability ~n^2 / 2^65, about 3e-10 for 10^5 pending predictions.

Row life cycle and counters (all cumulative):

* prediction, no row: insert ``PENDING``; a row already ``PENDING`` or done:
  ``duplicate_predictions``;
* label, ``PENDING`` row: a join if ``label time - prediction time <= max_delay``
  (``joined``), else ``late``; the row becomes ``DONE`` (kept to recognise
  duplicates); label, ``LABEL`` or ``DONE`` row: ``duplicate_labels``; label,
  ``EXPIRED`` row: ``late``; label, no row: held as ``LABEL`` (labels may come
  first);
* prediction, ``LABEL`` row: the join as above, from the other side;
* ``expire(prediction_watermark, label_watermark)``: a ``PENDING`` row whose time +
  ``max_delay`` is before the label topic's watermark is ``expired`` (no label can
  join it any more if labels come in time order); a ``LABEL`` row whose time +
  ``max_delay`` is before the prediction topic's watermark is an ``orphan``;
  ``DONE`` and ``EXPIRED`` rows are dropped one more ``max_delay`` later.
* a batch row that finds the table full (``capacity`` live rows) is ``dropped``.

Join decisions depend on event times only, so replaying the same events gives the
same joins; expiry uses each topic's own watermark (the maximum event time seen),
so it does not depend on how the two topics' batches interleave.

>>> join = LabelJoin(capacity=8, max_delay=100.0)
>>> ids = hash_ids(["a", "b", "c"])
>>> _ = join.add_predictions(ids, np.array([0.0, 1.0, 2.0]), score=np.array([0.9, 0.2, 0.7]))
>>> out = join.add_labels(hash_ids(["b", "a", "a", "z"]), np.array([5.0, 6.0, 7.0, 8.0]),
...                       np.array([0.0, 1.0, 1.0, 0.0]))
>>> out.score.tolist(), out.label.tolist(), join.counts()["duplicate_labels"]
([0.2, 0.9], [0.0, 1.0], 1)
>>> join.pending, join.held_labels
(1, 1)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit

__all__ = ["COUNTERS", "Joined", "LabelJoin", "hash_ids"]

EMPTY, PENDING, LABEL, DONE, EXPIRED, TOMB = 0, 1, 2, 3, 4, 5
COUNTERS = (
    "joined",
    "expired",
    "orphan",
    "late",
    "duplicate_labels",
    "duplicate_predictions",
    "dropped",
)
_J, _EX, _OR, _LATE, _DUPL, _DUPP, _DROP = range(7)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)


@njit(cache=True)
def _fnv(codes: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint64]:
    n, width = codes.shape
    out = np.empty(n, np.uint64)
    prime = np.uint64(0x100000001B3)
    for i in range(n):
        h = np.uint64(0xCBF29CE484222325)
        for j in range(width):
            c = codes[i, j]
            if c == 0:
                break
            h = (h ^ np.uint64(c)) * prime
        # 0 marks an empty row: never hand it out as a key
        out[i] = h if h != 0 else np.uint64(1)
    return out


def hash_ids(ids: list[str] | list[Any]) -> npt.NDArray[np.uint64]:
    """64-bit FNV-1a hashes of request ids (anything else is hashed as its ``str``).

    >>> hash_ids(["a", "a", "b"]).tolist()[0] == hash_ids(["a"]).tolist()[0]
    True
    """
    if not ids:
        return np.empty(0, np.uint64)
    texts = ids if all(type(i) is str for i in ids) else list(map(str, ids))
    # The ids' code points end to end (no padding to the longest id: one huge id in a
    # batch must not cost its length times the batch size).
    codes = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), np.uint32)
    ends = np.cumsum(np.fromiter(map(len, texts), np.int64, len(texts)))
    out: npt.NDArray[np.uint64] = _fnv_ragged(codes, ends)
    return out


@njit(cache=True)
def _fnv_ragged(
    codes: npt.NDArray[np.uint32], ends: npt.NDArray[np.int64]
) -> npt.NDArray[np.uint64]:
    """``_fnv`` of the ids ``codes[ends[i-1]:ends[i]]`` (each up to its first 0)."""
    out = np.empty(ends.size, np.uint64)
    prime = np.uint64(0x100000001B3)
    start = 0
    for i in range(ends.size):
        h = np.uint64(0xCBF29CE484222325)
        for j in range(start, ends[i]):
            c = codes[j]
            if c == 0:
                break
            h = (h ^ np.uint64(c)) * prime
        out[i] = h if h != 0 else np.uint64(1)
        start = ends[i]
    return out


@njit(cache=True)
def _find(keys: npt.NDArray[np.uint64], status: npt.NDArray[np.int8], key: np.uint64) -> np.int64:
    """Row of ``key``; else -(first free row) - 2; -1 when there is neither."""
    mask = np.int64(keys.size - 1)
    i = np.int64(key & np.uint64(mask))
    free = np.int64(-1)
    for _ in range(keys.size):
        s = status[i]
        if s == EMPTY:
            return -(i if free < 0 else free) - 2
        if s == TOMB:
            if free < 0:
                free = i
        elif keys[i] == key:
            return i
        i = (i + 1) & mask
    return np.int64(-1) if free < 0 else -free - 2


@njit(cache=True)
def _merge_batch(
    keys: npt.NDArray[np.uint64],
    status: npt.NDArray[np.int8],
    time: npt.NDArray[np.float64],
    score: npt.NDArray[np.float64],
    klass: npt.NDArray[np.int64],
    value: npt.NDArray[np.float64],
    label: npt.NDArray[np.float64],
    version: npt.NDArray[np.int32],
    live: npt.NDArray[np.int64],  # [live rows, used rows (live + done + tombstones)]
    capacity: int,
    max_delay: float,
    is_label: bool,
    b_key: npt.NDArray[np.uint64],
    b_time: npt.NDArray[np.float64],
    b_score: npt.NDArray[np.float64],
    b_klass: npt.NDArray[np.int64],
    b_value: npt.NDArray[np.float64],
    b_version: npt.NDArray[np.int32],
    counts: npt.NDArray[np.int64],
    out_row: npt.NDArray[np.int64],
    out_score: npt.NDArray[np.float64],
    out_klass: npt.NDArray[np.int64],
    out_value: npt.NDArray[np.float64],
    out_label: npt.NDArray[np.float64],
    out_version: npt.NDArray[np.int32],
    out_ptime: npt.NDArray[np.float64],
    out_ltime: npt.NDArray[np.float64],
) -> int:
    joined = 0
    for j in range(b_key.size):
        r = _find(keys, status, b_key[j])
        if r >= 0:
            s = status[r]
            if s == PENDING and is_label:
                delay = b_time[j] - time[r]
                if delay <= max_delay:
                    out_row[joined] = j
                    out_score[joined] = score[r]
                    out_klass[joined] = klass[r]
                    out_value[joined] = value[r]
                    out_label[joined] = b_value[j]
                    out_version[joined] = version[r]
                    out_ptime[joined] = time[r]
                    out_ltime[joined] = b_time[j]
                    joined += 1
                    counts[_J] += 1
                else:
                    counts[_LATE] += 1
                status[r] = DONE
                live[0] -= 1
            elif s == LABEL and not is_label:
                delay = time[r] - b_time[j]
                if delay <= max_delay:
                    out_row[joined] = j
                    out_score[joined] = b_score[j]
                    out_klass[joined] = b_klass[j]
                    out_value[joined] = b_value[j]
                    out_label[joined] = label[r]
                    out_version[joined] = b_version[j]
                    out_ptime[joined] = b_time[j]
                    out_ltime[joined] = time[r]
                    joined += 1
                    counts[_J] += 1
                else:
                    counts[_LATE] += 1
                status[r] = DONE
                time[r] = b_time[j]  # a done row ages from its prediction's time
                live[0] -= 1
            elif is_label:
                if s == EXPIRED:
                    counts[_LATE] += 1
                else:
                    counts[_DUPL] += 1
            else:
                counts[_DUPP] += 1
            continue
        if live[0] >= capacity or r == -1:
            counts[_DROP] += 1
            continue
        r = -r - 2
        if status[r] == EMPTY:
            live[1] += 1
        keys[r] = b_key[j]
        time[r] = b_time[j]
        if is_label:
            status[r] = LABEL
            label[r] = b_value[j]
            score[r] = math.nan
            klass[r] = -1
            value[r] = math.nan
            version[r] = -1
        else:
            status[r] = PENDING
            score[r] = b_score[j]
            klass[r] = b_klass[j]
            value[r] = b_value[j]
            label[r] = math.nan
            version[r] = b_version[j]
        live[0] += 1
    return joined


@dataclass(frozen=True, slots=True)
class Joined:
    """The joins of one batch, in batch order (arrays of equal length).

    ``row`` is the index, in the batch just added, of the event that completed
    the join; ``score``/``klass``/``value``/``version`` are the prediction's,
    ``label`` the label's value, ``prediction_time``/``label_time`` event times.
    """

    row: npt.NDArray[np.int64]
    score: npt.NDArray[np.float64]
    klass: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    label: npt.NDArray[np.float64]
    version: npt.NDArray[np.int32]
    prediction_time: npt.NDArray[np.float64]
    label_time: npt.NDArray[np.float64]

    @property
    def n(self) -> int:
        return int(self.row.size)


_COLUMNS = (
    ("keys", np.uint64),
    ("status", np.int8),
    ("time", np.float64),
    ("score", np.float64),
    ("klass", np.int64),
    ("value", np.float64),
    ("label", np.float64),
    ("version", np.int32),
)


class LabelJoin:
    """Bounded pending predictions and early labels, joined by request-id hash.

    ``capacity``: the most rows (pending predictions + held labels) kept at once;
    ``max_delay``: seconds of event time a label may come after its prediction.
    """

    def __init__(self, capacity: int = 100_000, max_delay: float = 86_400.0) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be > 0, got {capacity}")
        if not max_delay > 0:
            raise ValueError(f"max_delay must be > 0 seconds, got {max_delay}")
        self.capacity = capacity
        self.max_delay = max_delay
        self._reset()

    def _reset(self) -> None:
        size = 1 << max(3, math.ceil(math.log2(2 * self.capacity)))
        self._size = size
        self._clear()
        self._live = np.zeros(2, np.int64)
        self._counts = np.zeros(len(COUNTERS), np.int64)
        self.prediction_watermark = -math.inf
        self.label_watermark = -math.inf

    def _clear(self) -> None:
        size = self._size
        self._keys = np.zeros(size, np.uint64)
        self._status = np.zeros(size, np.int8)
        self._time = np.zeros(size, np.float64)
        self._score = np.zeros(size, np.float64)
        self._klass = np.zeros(size, np.int64)
        self._value = np.zeros(size, np.float64)
        self._label = np.zeros(size, np.float64)
        self._version = np.zeros(size, np.int32)

    # -- sizes ---------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Predictions waiting for a label."""
        return int(np.count_nonzero(self._status == PENDING))

    @property
    def held_labels(self) -> int:
        """Labels waiting for their prediction."""
        return int(np.count_nonzero(self._status == LABEL))

    @property
    def nbytes(self) -> int:
        return sum(int(getattr(self, f"_{n}").nbytes) for n, _ in _COLUMNS)

    @property
    def bytes_per_pending(self) -> float:
        """Table bytes per pending prediction the table can hold (at capacity)."""
        return self.nbytes / self.capacity

    def settled_before(self) -> float:
        """The event time below which no join can still complete (event times in order
        within each topic): a future label joins at its own time, at least the label
        watermark; a future prediction joins a held label at the later of the two
        times, at least the prediction watermark and the oldest held label's time.

        >>> join = LabelJoin(capacity=8, max_delay=100.0)
        >>> _ = join.add_labels(hash_ids(["a", "b"]), np.array([5.0, 9.0]), np.zeros(2))
        >>> _ = join.add_predictions(hash_ids(["a"]), np.array([3.0]), score=np.ones(1))
        >>> join.settled_before()  # b's label waits for its prediction: a join at 9 or later
        9.0
        """
        held = self._status == LABEL
        oldest = float(self._time[held].min()) if held.any() else math.inf
        return min(self.label_watermark, max(self.prediction_watermark, oldest))

    def counts(self) -> dict[str, int]:
        """Cumulative counters (see the module docstring)."""
        return dict(zip(COUNTERS, (int(c) for c in self._counts), strict=True))

    # -- batches -------------------------------------------------------------------
    def _merge(
        self,
        is_label: bool,
        key: npt.NDArray[np.uint64],
        time: npt.NDArray[np.float64],
        score: npt.NDArray[np.float64],
        klass: npt.NDArray[np.int64],
        value: npt.NDArray[np.float64],
        version: npt.NDArray[np.int32],
    ) -> Joined:
        n = key.size
        if self._live[1] + n > self._size * 3 // 4:
            self._rehash()
        out = Joined(
            np.empty(n, np.int64),
            np.empty(n),
            np.empty(n, np.int64),
            np.empty(n),
            np.empty(n),
            np.empty(n, np.int32),
            np.empty(n),
            np.empty(n),
        )
        k = _merge_batch(
            self._keys,
            self._status,
            self._time,
            self._score,
            self._klass,
            self._value,
            self._label,
            self._version,
            self._live,
            self.capacity,
            self.max_delay,
            is_label,
            key,
            time,
            score,
            klass,
            value,
            version,
            self._counts,
            out.row,
            out.score,
            out.klass,
            out.value,
            out.label,
            out.version,
            out.prediction_time,
            out.label_time,
        )
        if n:
            mark = float(time.max())
            if is_label:
                self.label_watermark = max(self.label_watermark, mark)
            else:
                self.prediction_watermark = max(self.prediction_watermark, mark)
        return Joined(
            out.row[:k],
            out.score[:k],
            out.klass[:k],
            out.value[:k],
            out.label[:k],
            out.version[:k],
            out.prediction_time[:k],
            out.label_time[:k],
        )

    def add_predictions(
        self,
        key: npt.NDArray[np.uint64],
        time: npt.NDArray[np.float64],
        score: npt.NDArray[np.float64] | None = None,
        klass: npt.NDArray[np.int64] | None = None,
        value: npt.NDArray[np.float64] | None = None,
        version: npt.NDArray[np.int32] | None = None,
    ) -> Joined:
        """Add a batch of predictions; return those that joined a held label."""
        n = key.size
        nan = np.full(n, math.nan)
        return self._merge(
            False,
            np.ascontiguousarray(key, np.uint64),
            np.ascontiguousarray(time, np.float64),
            nan if score is None else np.ascontiguousarray(score, np.float64),
            np.full(n, -1, np.int64) if klass is None else np.ascontiguousarray(klass, np.int64),
            nan if value is None else np.ascontiguousarray(value, np.float64),
            np.zeros(n, np.int32) if version is None else np.ascontiguousarray(version, np.int32),
        )

    def add_labels(
        self,
        key: npt.NDArray[np.uint64],
        time: npt.NDArray[np.float64],
        label: npt.NDArray[np.float64],
    ) -> Joined:
        """Add a batch of labels (numeric values or class codes); return the joins."""
        n = key.size
        return self._merge(
            True,
            np.ascontiguousarray(key, np.uint64),
            np.ascontiguousarray(time, np.float64),
            np.full(n, math.nan),
            np.full(n, -1, np.int64),
            np.ascontiguousarray(label, np.float64),
            np.zeros(n, np.int32),
        )

    def expire(self) -> tuple[int, int]:
        """Expire by the watermarks; return (expired predictions, orphan labels)."""
        st, t, d = self._status, self._time, self.max_delay
        stale_pred = (st == PENDING) & (t + d < self.label_watermark)
        stale_label = (st == LABEL) & (t + d < self.prediction_watermark)
        newest = max(self.label_watermark, self.prediction_watermark)
        done = ((st == DONE) | (st == EXPIRED)) & (t + 2 * d < newest)
        expired = int(np.count_nonzero(stale_pred))
        orphans = int(np.count_nonzero(stale_label))
        if expired:
            st[stale_pred] = EXPIRED
        if orphans:
            st[stale_label] = TOMB
        if done.any():
            st[done] = TOMB
        self._live[0] -= expired + orphans
        self._counts[_EX] += expired
        self._counts[_OR] += orphans
        return expired, orphans

    def _rehash(self) -> None:
        """Rebuild without tombstones (rows keep their status and columns)."""
        keep = (self._status != EMPTY) & (self._status != TOMB)
        cols = {n: getattr(self, f"_{n}")[keep] for n, _ in _COLUMNS}
        self._clear()
        _place(self._keys, cols["keys"], out_rows := np.empty(cols["keys"].size, np.int64))
        for name, _ in _COLUMNS:
            getattr(self, f"_{name}")[out_rows] = cols[name]
        self._live[1] = int(keep.sum())

    # -- state ---------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The used rows, counters and watermarks (msgpack-friendly arrays)."""
        keep = (self._status != EMPTY) & (self._status != TOMB)
        out: dict[str, Any] = {n: getattr(self, f"_{n}")[keep] for n, _ in _COLUMNS}
        out["counts"] = self._counts.copy()
        out["watermarks"] = np.array([self.prediction_watermark, self.label_watermark])
        return out

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a ``state()`` (of a table with any capacity; rows must fit)."""
        self._reset()
        keys = np.asarray(state["keys"], np.uint64)
        status = np.asarray(state["status"], np.int8)
        if keys.size > self._size * 3 // 4:
            raise ValueError(f"{keys.size} checkpointed rows do not fit capacity {self.capacity}")
        rows = np.empty(keys.size, np.int64)
        _place(self._keys, keys, rows)
        for name, dtype in _COLUMNS:
            getattr(self, f"_{name}")[rows] = np.asarray(state[name], dtype)
        self._live[0] = int(np.count_nonzero((status == PENDING) | (status == LABEL)))
        self._live[1] = keys.size
        self._counts[:] = np.asarray(state["counts"], np.int64)
        wm = np.asarray(state["watermarks"], np.float64)
        self.prediction_watermark, self.label_watermark = float(wm[0]), float(wm[1])


@njit(cache=True)
def _place(
    table_keys: npt.NDArray[np.uint64], keys: npt.NDArray[np.uint64], rows: npt.NDArray[np.int64]
) -> None:
    """Rows for distinct ``keys`` in an empty table (marks them by writing the key)."""
    mask = np.int64(table_keys.size - 1)
    for j in range(keys.size):
        i = np.int64(keys[j] & np.uint64(mask))
        while table_keys[i] != 0:
            i = (i + 1) & mask
        table_keys[i] = keys[j]
        rows[j] = i
