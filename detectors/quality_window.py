"""A deterministic window of joined events (or predictions) of one partition and version.

The events a quality window holds, and the moments it is judged, must not depend on
how the broker interleaves the prediction topic and the label topic, nor on batch
sizes, restarts or rebalances. A join completes when the later of its two events is
read, so the *arrival* order of joins depends on the interleaving. The window uses
a canonical order instead:

* every joined event has the key ``max(prediction time, label time)``, the event time
  at which the join became possible, ties broken by the prediction time, the label
  time and then the row's values (rows equal in all of them are interchangeable);
* joins are *held* until no join with a smaller key can still come: below the join
  table's frontier (``LabelJoin.settled_before``: the label topic's watermark, or
  the prediction topic's when a held label waits for its prediction). Then they are
  *released* into the ring in key order.

With event times in order within each topic partition, the released sequence is
therefore the same whatever the interleaving and batch sizes; a join that comes with
a key below the frontier already passed (out-of-order event times) is released at
the next release, after the ones already released.

The ring keeps each released row's key with it, so the rings of several partitions
merge into the stream's released sequence (``ordered``: in release order, with the
keys; the model stage merges them by key and judges the stream's window, see
``monitor.pipeline.model``). ``settle`` releases without verdict boundaries;
``release``/``push`` yield at every ``step`` events released into this window, each
time with exactly the last ``size`` events up to that point in the ring (a batch
that crosses several boundaries gives several, as many as small batches would).
Prediction windows (the estimate before labels) need no holding: one partition's
predictions come in offset order; they are ``push``-ed (their key is their time).

The state (``state``/``from_state``) is the ring with its keys, the count and the
held joins, as msgpack-friendly arrays.

>>> w = QualityWindow.empty(4)
>>> ev = lambda *c: tuple(np.array(x, float) for x in c)  # score, klass, label, value, time, key
>>> w.hold(*ev([.9, .8], [1, 1], [1, 0], [0, 0], [5, 1], [7, 6]))
>>> [w.count for _ in w.release(frontier=6.5, step=1)]  # the key 6 only
[1]
>>> w.hold(*ev([.1], [0], [0], [0], [2], [3]))  # key 3 came late: after the frontier
>>> [w.count for _ in w.release(frontier=10.0, step=1)], w.rows()[0].tolist()
([2, 3], [0.8, 0.1, 0.9])
>>> w.ordered()[1].tolist(), w.released_below(6.5)  # keys in release order
([6.0, 3.0, 7.0], 2)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["QualityWindow"]

_F64 = npt.NDArray[np.float64]
_COLUMNS = ("score", "klass", "label", "value", "time")


def _empty() -> _F64:
    return np.empty(0)


@dataclass
class QualityWindow:
    """The last ``size`` rows of (score, class, label, value, prediction time) with their
    keys, ``count`` rows ever released into it, and the joins held until the frontier
    passes them.

    Classes and labels are float64 codes in the held columns and int64 in the ring's
    ``klass`` (see ``rows``)."""

    size: int
    score: _F64
    klass: npt.NDArray[np.int64]
    label: _F64
    value: _F64
    time: _F64
    count: int = 0
    held: dict[str, _F64] = field(default_factory=dict)
    key: _F64 = field(default_factory=_empty)
    # the canonical order of ``held``, for the key array it was computed on
    _sorted: tuple[_F64, npt.NDArray[np.intp]] | None = field(
        default=None, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.key.size != self.size:
            self.key = np.full(self.size, -np.inf)

    @classmethod
    def empty(cls, size: int) -> QualityWindow:
        return cls(
            size,
            np.zeros(size),
            np.zeros(size, np.int64),
            np.zeros(size),
            np.zeros(size),
            np.zeros(size),
        )

    # -- the ring ------------------------------------------------------------------
    def add(
        self,
        score: _F64,
        klass: npt.NDArray[np.int64],
        label: _F64,
        value: _F64,
        time: _F64,
        key: _F64 | None = None,
    ) -> None:
        """Append rows to the ring (no holding, no verdict boundaries); ``key``
        defaults to ``time``."""
        n = score.size
        if n == 0:
            return
        take = min(n, self.size)
        idx = (self.count + (n - take) + np.arange(take)) % self.size
        for ring, new in (
            (self.score, score),
            (self.klass, klass),
            (self.label, label),
            (self.value, value),
            (self.time, time),
            (self.key, time if key is None else key),
        ):
            ring[idx] = new[n - take :]
        self.count += n

    def push(
        self,
        score: _F64,
        klass: npt.NDArray[np.int64],
        label: _F64,
        value: _F64,
        time: _F64,
        step: int,
        key: _F64 | None = None,
    ) -> Iterator[int]:
        """Append rows in order, yielding the count at every multiple of ``step`` that
        is reached (the ring then holds exactly the window ending there)."""
        n = score.size
        keys = time if key is None else key
        done = 0
        while done < n:
            to_boundary = step - self.count % step
            take = min(to_boundary, n - done)
            part = slice(done, done + take)
            self.add(score[part], klass[part], label[part], value[part], time[part], keys[part])
            done += take
            if self.count % step == 0:
                yield self.count

    def rows(self) -> tuple[_F64, ...]:
        """The ring's rows (score, class, label, value, time), not in ring order."""
        k = min(self.count, self.size)
        return (
            self.score[:k],
            self.klass[:k].astype(np.float64),
            self.label[:k],
            self.value[:k],
            self.time[:k],
        )

    def ordered(self) -> tuple[tuple[_F64, ...], _F64]:
        """The ring's rows in release order, oldest first, and their keys."""
        k = min(self.count, self.size)
        idx = (self.count - k + np.arange(k)) % self.size
        cols = (
            self.score[idx],
            self.klass[idx].astype(np.float64),
            self.label[idx],
            self.value[idx],
            self.time[idx],
        )
        return cols, self.key[idx]

    def released_below(self, frontier: float) -> int:
        """Rows released into this window with a key below ``frontier`` (exact while the
        ring still holds every row released with a larger key)."""
        k = min(self.count, self.size)
        return self.count - int(np.count_nonzero(self.key[:k] >= frontier))

    # -- held joins ----------------------------------------------------------------
    @property
    def n_held(self) -> int:
        return int(self.held["key"].size) if self.held else 0

    def hold(
        self,
        score: _F64,
        klass: _F64,
        label: _F64,
        value: _F64,
        time: _F64,
        key: _F64,
    ) -> None:
        """Hold joins (columns as in the ring, ``time`` the prediction's; ``key`` the
        join's canonical key) until ``release``."""
        if key.size == 0:
            return
        new = dict(zip((*_COLUMNS, "key"), (score, klass, label, value, time, key), strict=True))
        if not self.held:
            self.held = {k: np.asarray(v, np.float64).copy() for k, v in new.items()}
        else:
            self.held = {k: np.concatenate([self.held[k], new[k]]) for k in self.held}

    def _order(self) -> npt.NDArray[np.intp]:
        h = self.held
        if self._sorted is not None and self._sorted[0] is h["key"]:
            return self._sorted[1]
        order: npt.NDArray[np.intp] = np.argsort(h["key"], kind="stable")
        keys = h["key"][order]
        if keys.size > 1 and bool(np.any(keys[1:] == keys[:-1])):
            # ties: break them by the other columns (lexsort's last key is the primary)
            order = np.lexsort(
                (h["value"], h["label"], h["klass"], h["score"], h["time"], h["key"])
            )
        self._sorted = (h["key"], order)
        return order

    def held_rows(self) -> tuple[_F64, ...]:
        """The held joins in canonical order (score, class, label, value, time)."""
        if not self.n_held:
            return tuple(_empty() for _ in _COLUMNS)
        order = self._order()
        return tuple(self.held[c][order] for c in _COLUMNS)

    def n_held_below(self, frontier: float) -> int:
        """How many held joins ``settle(frontier)`` would release."""
        if not self.n_held or not float(self.held["key"].min()) < frontier:
            return 0
        return int(np.count_nonzero(self.held["key"] < frontier))

    def held_below(self, frontier: float) -> tuple[tuple[_F64, ...], _F64]:
        """The held joins ``settle(frontier)`` would release, in the order it would
        (columns as ``ordered``), and their keys; nothing is moved."""
        if not self.n_held or not float(self.held["key"].min()) < frontier:
            return tuple(_empty() for _ in _COLUMNS), _empty()
        order = self._order()
        cut = int(np.searchsorted(self.held["key"][order], frontier, side="left"))
        take = order[:cut]
        return tuple(self.held[c][take] for c in _COLUMNS), self.held["key"][take]

    def _take(self, frontier: float) -> dict[str, _F64]:
        """Remove and return the held joins with a key below ``frontier``, in order."""
        if not self.n_held or not float(self.held["key"].min()) < frontier:
            return {}
        order = self._order()
        keys = self.held["key"][order]
        cut = int(np.searchsorted(keys, frontier, side="left"))
        if cut == 0:
            return {}
        out = {c: self.held[c][order[:cut]] for c in (*_COLUMNS, "key")}
        rest = order[cut:]
        self.held = {k: v[rest] for k, v in self.held.items()} if rest.size else {}
        return out

    def release(self, frontier: float, step: int) -> Iterator[int]:
        """Move the held joins with a key below ``frontier`` into the ring in canonical
        order, yielding at every multiple of ``step`` reached (see ``push``)."""
        out = self._take(frontier)
        if out:
            yield from self.push(
                out["score"],
                out["klass"].astype(np.int64),
                out["label"],
                out["value"],
                out["time"],
                step,
                out["key"],
            )

    def settle(self, frontier: float) -> int:
        """``release`` without verdict boundaries; the number of rows released."""
        out = self._take(frontier)
        if not out:
            return 0
        self.add(
            out["score"],
            out["klass"].astype(np.int64),
            out["label"],
            out["value"],
            out["time"],
            out["key"],
        )
        return int(out["key"].size)

    # -- classes -------------------------------------------------------------------
    def remap_classes(self, class_map: npt.NDArray[np.int64], labels_coded: bool) -> None:
        """Map class codes (and, for a classifier, label codes) of a checkpoint to ours."""
        k = min(self.count, self.size)
        ok = self.klass >= 0
        self.klass[ok] = class_map[self.klass[ok]]
        columns = [self.label[:k]] if labels_coded else []
        if self.n_held:
            columns.append(self.held["klass"])
            if labels_coded:
                columns.append(self.held["label"])
        for col in columns:
            coded = col >= 0
            col[coded] = class_map[col[coded].astype(np.int64)]

    # -- state ---------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "score": self.score,
            "klass": self.klass,
            "label": self.label,
            "value": self.value,
            "time": self.time,
            "key": self.key,
            "count": self.count,
        }
        if self.n_held:
            out["held"] = dict(self.held)
        return out

    @classmethod
    def from_state(cls, size: int, s: dict[str, Any]) -> QualityWindow:
        ring = cls.empty(size)
        if np.asarray(s["score"]).size != size:
            raise ValueError("checkpointed quality window does not match window.events")
        ring.score[:] = s["score"]
        ring.klass[:] = s["klass"]
        ring.label[:] = s["label"]
        ring.value[:] = s["value"]
        ring.time[:] = s["time"]
        if "key" in s:  # checkpoints before keys were kept: their rows count as old
            ring.key[:] = s["key"]
        ring.count = int(s["count"])
        held = s.get("held")
        if held:
            ring.held = {k: np.array(held[k], np.float64).reshape(-1) for k in (*_COLUMNS, "key")}
            if len({v.size for v in ring.held.values()}) != 1:
                raise ValueError("checkpointed held joins have columns of unequal length")
        return ring
