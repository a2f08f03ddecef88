"""Detection delay and false alarms of the drift detectors on river's synthetic streams.

Run: ``.venv/bin/python bench/river_synth.py`` (about 85 s on 2 cores, nearly all in
river's generators). Prints markdown for bench/RESULTS.md ("### River synthetic streams").

Each stream is ``N`` events from ``river.datasets.synth`` with a known drift (or none);
the first ``BASELINE`` events build the baseline as the service does
(``build_numeric(bins=1000, keep_sample=0)``, ``build_categorical``), and the rest
is fed in batches of ``STEP`` events to the service-like configuration:

* numeric feature: KS, PSI (window 10,000 events, step 1,000, default ``ert``) and
  ADWIN with ``SERVICE_DEFAULTS`` (raw values, as the service feeds it);
* categorical feature, ``label``, ``prediction``, ``error``: chi2 and PSI;
* ``family_size`` = the stream's binned (field, detector) pairs, as in
  ``monitor/pipeline/drift.py``.

``prediction`` is a river ``HoeffdingTreeClassifier`` trained on the baseline events
(frozen afterwards), ``error`` is ``prediction != label``: the fields a deployed
model's stream would carry once labels come back.

Drift positions: river's ``ConceptDriftStream`` draws event ``t`` (1-based) from the
new concept with probability ``1 / (1 + exp(-4 (t - P) / W))``: ``P`` is the
midpoint, and the drift "starts" at ``P - W / 2`` (12% new concept; 88% at
``P + W / 2``). Every event is tagged with the concept it came from (a wrapper
around the two generators), so the realised share of new-concept events is known.
``width=1`` is not usable: river computes ``math.exp(-4 (t - P) / W)`` in Python
floats, which raises ``OverflowError`` once ``4 (P - t) / W > 709``, i.e. for any
``W < 4 P / 709`` (339 events at ``P = 60,000``); "abrupt" here is ``W = 500``
(12% -> 88% within 500 events, inside one 1,000-event batch).

A detection's position is the number of stream events consumed when it is reported
(the end of the batch for the windowed detectors, the exact event for ADWIN);
delay = position - ``P`` ("from mid") or position - (``P - W / 2``) ("from start").
False alarms are drift verdicts at positions <= ``P - W / 2`` (any verdict on a
stream without drift); windowed detectors give a verdict per 1,000-event step, so a
false alarm episode can count several verdicts.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Run as a script, this file's folder comes first on sys.path and its name would
# shadow the `detectors` package: put the repository root there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import numpy as np  # noqa: E402
import river  # noqa: E402
import scipy  # noqa: E402
from river import tree  # noqa: E402
from river.datasets import base as river_base  # noqa: E402
from river.datasets import synth  # noqa: E402

from bench.common import cpu_model  # noqa: E402 - needs the path above
from detectors.adwin import ADWIN  # noqa: E402
from detectors.adwin_defaults import SERVICE_DEFAULTS  # noqa: E402
from detectors.baseline import (  # noqa: E402
    CategoricalBaseline,
    NumericBaseline,
    build_categorical,
    build_numeric,
)
from detectors.categorical import ChiSquare  # noqa: E402
from detectors.ks import KS  # noqa: E402
from detectors.psi import PSI  # noqa: E402

N = 100_000  # events per stream
BASELINE = 20_000  # first events: baseline and model training
STEP = 1_000  # batch = detector step
WINDOW = 10_000
POSITION = 60_000  # drift midpoint P
ABRUPT = 500  # narrowest width river can compute at P (see the docstring)
GRADUAL = 5_000
SEEDS = (1, 2, 3)
TAG = "__concept__"  # key the wrapper adds to each sample: 0 old concept, 1 new


class Tagged(river_base.SyntheticDataset):
    """A river dataset whose samples carry ``TAG`` = ``tag`` (which concept drew them)."""

    def __init__(self, inner: river_base.SyntheticDataset, tag: int) -> None:
        super().__init__(
            task=inner.task,
            n_features=inner.n_features,
            n_samples=inner.n_samples,
            n_classes=inner.n_classes,
            n_outputs=inner.n_outputs,
        )
        self.inner = inner
        self.tag = tag

    def __iter__(self) -> Iterator[tuple[dict[Any, Any], Any]]:
        for x, y in self.inner:
            yield {**x, TAG: self.tag}, y


def _drift(old: Any, new: Any, width: int, seed: int) -> Any:
    return synth.ConceptDriftStream(
        stream=Tagged(old, 0),
        drift_stream=Tagged(new, 1),
        position=POSITION,
        width=width,
        seed=seed,
    )


def _rbf(model: int, seed: int) -> Any:
    return synth.RandomRBF(seed_model=model, seed_sample=seed, n_features=10)


def _hyper(seed: int, mag: float = 0.0) -> Any:
    return synth.Hyperplane(seed=seed, n_features=10, mag_change=mag, noise_percentage=0.05)


def _agrawal(function: int, seed: int) -> Any:
    return synth.Agrawal(classification_function=function, seed=seed)


_XS = tuple(range(10))
_AGR_NUM = ("salary", "commission", "age", "hvalue", "hyears", "loan")
_AGR_CAT = ("elevel", "car", "zipcode")


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[int], Any]
    numeric: tuple[Any, ...]
    categorical: tuple[str, ...] = ()
    width: int | None = None  # None: no drift at a known position
    note: str = ""


CASES = (
    Case(
        "rbf-abrupt",
        lambda s: _drift(_rbf(1, s), _rbf(2, s + 1000), ABRUPT, s),
        _XS,
        width=ABRUPT,
        note="RandomRBF model 1 -> 2: features and label move",
    ),
    Case(
        "rbf-gradual",
        lambda s: _drift(_rbf(1, s), _rbf(2, s + 1000), GRADUAL, s),
        _XS,
        width=GRADUAL,
        note="same, gradual",
    ),
    Case("rbf-stationary", lambda s: Tagged(_rbf(1, s), 0), _XS, note="RandomRBF model 1"),
    Case(
        "hyperplane-concept",
        lambda s: _drift(_hyper(s), _hyper(s + 1000), ABRUPT, s),
        _XS,
        width=ABRUPT,
        note="Hyperplane weights jump: only P(y|x) moves",
    ),
    Case(
        "hyperplane-incremental",
        lambda s: Tagged(_hyper(s, 0.001), 0),
        _XS,
        note="Hyperplane mag_change=0.001 from event 0: P(y|x) rotates",
    ),
    Case(
        "agrawal-concept",
        lambda s: _drift(_agrawal(0, s), _agrawal(2, s + 1000), ABRUPT, s),
        _AGR_NUM,
        _AGR_CAT,
        width=ABRUPT,
        note="Agrawal function 0 -> 2: only P(y|x) moves",
    ),
    Case(
        "agrawal-stationary",
        lambda s: Tagged(_agrawal(0, s), 0),
        _AGR_NUM,
        _AGR_CAT,
        note="Agrawal function 0",
    ),
)


@dataclass
class Data:
    numeric: dict[str, np.ndarray]
    categorical: dict[str, np.ndarray]  # str arrays; label, prediction, error included
    concept: np.ndarray  # 0/1 per event
    gen_s: float


def generate(case: Case, seed: int) -> Data:
    """The stream as numpy columns, plus a frozen model's predictions (not timed)."""
    t0 = time.perf_counter()
    rows = list(itertools.islice(iter(case.make(seed)), N))
    concept = np.fromiter((x.pop(TAG) for x, _ in rows), dtype=np.int8, count=N)
    numeric = {
        f"x{k}" if isinstance(k, int) else k: np.fromiter(
            (x[k] for x, _ in rows), dtype=np.float64, count=N
        )
        for k in case.numeric
    }
    categorical = {k: np.array([str(x[k]) for x, _ in rows]) for k in case.categorical}
    model = tree.HoeffdingTreeClassifier(nominal_attributes=list(case.categorical) or None)
    for x, y in rows[:BASELINE]:
        model.learn_one(x, y)
    label = np.array([int(y) for _, y in rows])
    pred = np.array([int(model.predict_one(x)) for x, _ in rows])
    categorical["label"] = label.astype(str)
    categorical["prediction"] = pred.astype(str)
    categorical["error"] = (label != pred).astype(int).astype(str)
    return Data(numeric, categorical, concept, time.perf_counter() - t0)


@dataclass
class Field:
    name: str
    group: str  # "features" or the field's own name
    numeric: bool
    values: np.ndarray  # float64 values or int64 codes, whole stream
    baseline: NumericBaseline | CategoricalBaseline
    binned: list[Any] = field(default_factory=list)
    adwin: ADWIN | None = None


def _codes(names: np.ndarray, base: CategoricalBaseline) -> np.ndarray:
    uniq, inv = np.unique(names, return_inverse=True)
    lut = {c: i for i, c in enumerate(base.categories)}
    k = len(base.categories)
    return np.array([lut.get(str(u), k) for u in uniq], dtype=np.int64)[inv]


def build_fields(data: Data) -> list[Field]:
    fields: list[Field] = []
    for name, v in data.numeric.items():
        fields.append(Field(name, "features", True, v, build_numeric(v[:BASELINE], bins=1000)))
    for name, s in data.categorical.items():
        base = build_categorical(s[:BASELINE])
        group = name if name in ("label", "prediction", "error") else "features"
        fields.append(Field(name, group, False, _codes(s, base), base))
    family = 2 * len(fields)  # every field: two binned detectors (ks+psi or chi2+psi)
    window = {"window_events": WINDOW, "step_events": STEP, "family_size": family}
    for f in fields:
        if f.numeric:
            assert isinstance(f.baseline, NumericBaseline)
            f.binned = [KS(f.baseline, f.name, **window), PSI(f.baseline, f.name, **window)]
            f.adwin = ADWIN(subject=f.name, **SERVICE_DEFAULTS)  # type: ignore[arg-type]
        else:
            assert isinstance(f.baseline, CategoricalBaseline)
            f.binned = [
                ChiSquare(f.baseline, f.name, **window),
                PSI(f.baseline, f.name, **window),
            ]
    return fields


def run(fields: list[Field]) -> tuple[dict[tuple[str, str, str], list[int]], float]:
    """Feed the post-baseline events in batches; detection positions per field/detector."""
    hits: dict[tuple[str, str, str], list[int]] = {}
    for f in fields:
        for d in f.binned:
            hits[(f.group, f.name, d.name)] = []
        if f.adwin is not None:
            hits[(f.group, f.name, "adwin")] = []
    t0 = time.perf_counter()
    for start in range(BASELINE, N, STEP):
        stop = start + STEP
        for f in fields:
            v = f.values[start:stop]
            bins = f.baseline.bin_index(v)  # one binning per field per batch
            for d in f.binned:
                if any(x.drift for x in d.update_bins(bins)):
                    hits[(f.group, f.name, d.name)].append(stop)
            if f.adwin is not None:
                f.adwin.update(v)
                hits[(f.group, f.name, "adwin")].extend(
                    start + int(i) + 1 for i in f.adwin.last_detections
                )
    return hits, time.perf_counter() - t0


@dataclass
class Row:
    fields: int = 0
    fired: int = 0  # (field, seed) pairs with a detection after the drift's start
    pairs: int = 0
    false: int = 0  # verdicts at or before the drift's start (any, without drift)
    after: int = 0  # verdicts after the drift's start
    first: list[int | None] = field(default_factory=list)  # per seed: earliest field
    delays: list[int] = field(default_factory=list)  # per fired (field, seed)
    share: list[float] = field(default_factory=list)  # new-concept share, last 10k
    silent: set[str] = field(default_factory=set)  # fields without a detection (any seed)


_ORDER = [
    ("features", "ks"),
    ("features", "psi"),
    ("features", "adwin"),
    ("features", "chi2"),
    ("label", "chi2"),
    ("label", "psi"),
    ("prediction", "chi2"),
    ("prediction", "psi"),
    ("error", "chi2"),
    ("error", "psi"),
]


def summarise(
    case: Case, runs: list[tuple[dict[tuple[str, str, str], list[int]], Data]]
) -> dict[tuple[str, str], Row]:
    """Per (group, detector): counts over fields and seeds, first detection per seed.

    With a known drift, ``first`` and ``delays`` are relative to ``P``; for the
    incremental stream (drift from event 0) they are absolute positions; a
    stationary stream only counts false verdicts.
    """
    rows: dict[tuple[str, str], Row] = {}
    start = POSITION - case.width // 2 if case.width else None
    stationary = case.name.endswith("stationary")
    ref = POSITION if case.width else 0
    for hits, data in runs:
        firsts: dict[tuple[str, str], list[int]] = {}
        for (group, name, det), pos in hits.items():
            r = rows.setdefault((group, det), Row())
            r.pairs += 1
            f = firsts.setdefault((group, det), [])
            if stationary:
                r.false += len(pos)
                continue
            cut = start if start is not None else 0
            r.false += sum(p <= cut for p in pos)
            late = [p for p in pos if p > cut]
            r.after += len(late)
            if not late:
                r.silent.add(name)
            else:
                r.fired += 1
                r.delays.append(late[0] - ref)
                f.append(late[0])
        for key, f in firsts.items():
            r = rows[key]
            if stationary:
                continue
            r.first.append(min(f) - ref if f else None)
            if f:
                r.share.append(float(data.concept[min(f) - WINDOW : min(f)].mean()))
    for r in rows.values():
        r.fields = r.pairs // len(runs)
    return rows


def _n(x: int | None) -> str:
    return "-" if x is None else f"{x:,}"


def machine() -> str:
    model = cpu_model()
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f'{dt.date.today().isoformat()}, nproc={nproc}, CPU "{model}", '
        f"Python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
        f"river {river.__version__}"
    )


def main() -> None:
    t_all = time.perf_counter()
    print(f"`bench/river_synth.py`, {machine()}\n")
    print(
        f"{N:,} events per stream, baseline = first {BASELINE:,}, batches of {STEP:,}; "
        f"drift midpoint P = {POSITION:,}; seeds {', '.join(map(str, SEEDS))}.\n"
    )
    print(
        "| stream | field · detector | fields | fired (field·seed) | first delay from P, "
        "per seed | median delay | false verdicts before drift | verdicts after |"
    )
    print("|---|---|---:|---:|---|---:|---:|---:|")
    gen_s = det_s = 0.0
    notes: list[str] = []
    for case in CASES:
        runs = []
        for seed in SEEDS:
            data = generate(case, seed)
            gen_s += data.gen_s
            fields = build_fields(data)
            hits, secs = run(fields)
            det_s += secs
            runs.append((hits, data))
        rows = summarise(case, runs)
        stationary = case.name.endswith("stationary")
        incremental = case.width is None and not stationary
        label = f"{case.name} (W={case.width:,})" if case.width else case.name
        for key in _ORDER:
            if key not in rows:
                continue
            r = rows[key]
            fired, first, med, false, after = (
                f"{r.fired}/{r.pairs}",
                " · ".join(_n(x) for x in r.first),
                _n(int(np.median(r.delays))) if r.delays else "-",
                str(r.false),
                str(r.after),
            )
            if stationary:
                fired, first, med, after = "-", "-", "-", "-"
            elif incremental:
                false = "-"
                if r.delays:
                    first, med = f"at {first}", f"at {med}"
            elif case.width == GRADUAL and r.delays:
                from_start = (_n(None if x is None else x + GRADUAL // 2) for x in r.first)
                first += f" (from start: {' · '.join(from_start)})"
            print(
                f"| {label} | {key[0]} · {key[1]} | {r.fields} | {fired} | {first} | {med} | "
                f"{false} | {after} |"
            )
            if 0 < r.fired < r.pairs and key[0] == "features":
                notes.append(
                    f"{case.name}: features · {key[1]} silent on "
                    f"{', '.join(sorted(r.silent))} (in at least one seed)"
                )
            if r.share and case.width and key == ("features", "ks"):
                notes.append(
                    f"{case.name}: new-concept share of the {WINDOW:,} events before the "
                    f"first features · ks detection, per seed: "
                    f"{', '.join(f'{s:.2f}' for s in r.share)}"
                )
        if not stationary:
            cut = POSITION + (case.width or 0) // 2 if case.width else N - 20_000
            stats = []
            for _, d in runs:
                y = d.categorical["label"] == "1"
                e = d.categorical["error"] == "1"
                stats.append(
                    f"P(y=1) {y[BASELINE:POSITION].mean():.2f} -> {y[cut:].mean():.2f}, "
                    f"error {e[BASELINE:POSITION].mean():.2f} -> {e[cut:].mean():.2f}"
                )
            where = "after P + W/2" if case.width else "last 20k events"
            notes.append(
                f"{case.name}: events {BASELINE:,}-{POSITION:,} vs {where}, per seed: "
                + "; ".join(stats)
            )
        shares = [float(d.concept[POSITION - 1 :].mean()) for _, d in runs]
        if case.width:
            notes.append(
                f"{case.name}: share of new-concept events after P: "
                f"{', '.join(f'{s:.3f}' for s in shares)}"
            )
    print()
    for n in notes:
        print(f"- {n}")
    print(
        f"\nTime: generation + model {gen_s:.0f} s (not timed part), detectors {det_s:.1f} s "
        f"({det_s / (len(CASES) * len(SEEDS) * (N - BASELINE)) * 1e6:.1f} µs per event, "
        f"all fields), total {time.perf_counter() - t_all:.0f} s."
    )


if __name__ == "__main__":
    main()
