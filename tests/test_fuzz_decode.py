"""Hostile input never breaks the decoder: property test, corpus replay, brief fuzzing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.pipeline.decode import StreamDecoder
from tests.fuzz_targets import GOOD_LENIENT, check_payload, decoders, hostile_examples

CORPUS = Path(__file__).parent / "corpus" / "decode"
ROOT = Path(__file__).parent.parent


def test_the_corpus_replays_without_a_crash() -> None:
    files = sorted(CORPUS.iterdir())
    assert len(files) >= len(hostile_examples())
    for path in files:
        check_payload(path.read_bytes())


def test_the_seed_corpus_is_the_hand_made_examples() -> None:
    for name, data in hostile_examples().items():
        assert (CORPUS / f"seed-{name}").read_bytes() == data, name


@pytest.mark.parametrize("levels", [100, 1_000, 100_000])
def test_deep_nesting_is_too_deep_not_a_crash(levels: int) -> None:
    deep = b'{"id":"e","at":1,"x":1,"kind":"a","d":' + b"[" * levels + b"]" * levels + b"}"
    check_payload(deep)
    for decoder, good in decoders():
        batch = decoder.decode([good, deep, good])
        assert [r.reason for r in batch.rejects] in (["too_deep"], ["too_large"])
    objects = b'{"a":' * levels + b"1" + b"}" * levels
    check_payload(objects)
    # With the default limits (1 MiB events) every depth is caught before parsing.
    default = StreamDecoder(decoders()[0][0].spec.model_copy(update={"max_event_bytes": 1 << 20}))
    batch = default.decode([GOOD_LENIENT, deep])
    assert [(r.index, r.reason) for r in batch.rejects] == [(1, "too_deep")]


def test_the_parsers_recursion_error_is_caught_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the depth pre-check, msgspec's RecursionError still becomes a reject."""
    import monitor.pipeline.decode

    monkeypatch.setattr(monitor.pipeline.decode, "precheck", lambda *a, **k: [])
    deep = b'{"id":"e","at":1,"x":1,"kind":"a","d":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    spec = decoders()[0][0].spec.model_copy(update={"max_event_bytes": 1 << 20})
    batch = StreamDecoder(spec).decode([GOOD_LENIENT, deep, GOOD_LENIENT])
    assert [(r.index, r.reason) for r in batch.rejects] == [(1, "too_deep")]
    assert batch.rows.tolist() == [0, 2]


def test_huge_values_are_rejected_without_copies() -> None:
    for size in (2_000_000, 9_000_000):
        blob = GOOD_LENIENT[:-1] + b',"blob":"' + b"x" * size + b'"}'
        for decoder, good in decoders():
            batch = decoder.decode([good, blob])
            assert [(r.index, r.reason) for r in batch.rejects] == [(1, "too_large")]


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
KEYS = ["id", "at", "x", "n", "flag", "kind", "tag", "note", "device_id", "ts", "temperature"]


def _mutate(data: bytes, cut: int, insert: bytes) -> bytes:
    cut = cut % (len(data) + 1)
    return data[:cut] + insert + data[cut:]


hostile = st.one_of(
    st.binary(max_size=400),
    st.builds(
        msgspec.json.encode,
        st.dictionaries(st.sampled_from(KEYS), json_values, max_size=8),
    ),
    # Near-valid events: a good one with something spliced in.
    st.builds(
        _mutate,
        st.sampled_from([GOOD_LENIENT]),
        st.integers(min_value=0, max_value=200),
        st.sampled_from(
            [
                b"NaN",
                b"Infinity",
                b"-Infinity",
                b"1e999",
                b"9" * 400,
                b"\x00",
                b"\xff\xfe",
                b"\\ud800",
                b'"x":1,"x":"y",',
                b"[" * 70,
                b"{" * 70,
                b"}",
                b'"' + b"s" * 3000 + b'"',
                b",",
                b'"at":"2026-01-01T00:00:00+99:99",',
            ]
        ),
    ),
    st.sampled_from(list(hostile_examples().values())),
)


@settings(max_examples=300)
@given(hostile)
def test_any_input_is_accepted_or_rejected_with_a_reason(data: bytes) -> None:
    check_payload(data)


@pytest.mark.slow
def test_atheris_finds_nothing_in_a_brief_run(tmp_path: Path) -> None:
    """300 coverage-guided inputs after the corpus (longer runs: tests/fuzz_decode.py)."""
    pytest.importorskip("atheris")
    work = tmp_path / "corpus"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "fuzz_decode.py"),
            "-atheris_runs=300",
            "-max_len=4096",
            "-timeout=20",
            f"-artifact_prefix={tmp_path}/",
            str(work),
            str(CORPUS),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    crashes = [p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-"))]
    assert run.returncode == 0 and not crashes, (crashes, run.stderr[-3000:])


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(
            st.floats(allow_nan=True, allow_infinity=True),
            st.integers(min_value=-3, max_value=5),
            st.booleans(),
            st.booleans(),
        ),
        max_size=50,
    )
)
def test_field_reasons_agree_with_the_first_failing_rule(
    rows: list[tuple[float, int, bool, bool]],
) -> None:
    """Every field judged on its own (field_reasons) gives, per row, the same first
    failure as the row-level check, and nothing where a value is not valid."""
    import numpy as np

    from detectors.schema import ColumnRule, SchemaCheck

    check = SchemaCheck(
        [
            ColumnRule("x", numeric=True, low=-1.0, high=1.0),
            ColumnRule("c", numeric=False, n_categories=3),
        ]
    )
    columns = {
        "x": np.array([r[0] for r in rows], dtype=np.float64),
        "c": np.array([r[1] for r in rows], dtype=np.int64),
    }
    valid = {
        "x": np.array([r[2] for r in rows], dtype=np.bool_),
        "c": np.array([r[3] for r in rows], dtype=np.bool_),
    }
    first, _ = check.check(columns, valid)
    per_field = check.field_reasons(columns, valid)
    n = len(rows)
    x = per_field.get("x", np.zeros(n, dtype=np.int8))
    c = per_field.get("c", np.zeros(n, dtype=np.int8))
    assert np.array_equal(np.where(x > 0, x, c), first)
    assert not x[~valid["x"]].any() and not c[~valid["c"]].any()
