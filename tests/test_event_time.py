"""ISO-8601 and epoch event times against Python's datetime, fast and general paths alike."""

from __future__ import annotations

import datetime as dt

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from monitor.pipeline.event_time import _fixed_width_seconds, _general_seconds, parse_event_times

UTC = dt.UTC


def _reference(text: str) -> float:
    """Python's own reading (naive = UTC), to the microsecond."""
    parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


stamps = st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 12, 31))
zones = st.sampled_from(["", "Z", "+00:00", "+05:30", "-11:45", "+14:00"])
fractions = st.sampled_from([0, 1, 3, 6])


def _format(stamp: dt.datetime, digits: int, zone: str, sep: str = "T") -> str:
    text = stamp.strftime(f"%Y-%m-%d{sep}%H:%M:%S")
    if digits:
        text += "." + f"{stamp.microsecond:06d}"[:digits]
    return text + zone


@given(st.lists(stamps, min_size=1, max_size=30), fractions, zones, st.sampled_from("T "))
def test_iso_times_match_python(
    values: list[dt.datetime], digits: int, zone: str, sep: str
) -> None:
    texts = [_format(v, digits, zone, sep) for v in values]
    want = np.array([_reference(t) for t in texts])
    fast = _fixed_width_seconds(texts)
    assert fast is not None
    general = _general_seconds(texts)
    assert np.array_equal(fast, general)
    np.testing.assert_allclose(fast, want, rtol=0, atol=1e-6)
    seconds, bad = parse_event_times(texts, 1.0)
    assert not bad.any() and np.array_equal(seconds, fast)


def test_mixed_shapes_and_bad_texts() -> None:
    texts = [
        "2026-11-29T21:13:48Z",
        "2026-11-29",
        "2026-11-29T21:13:48.5+01:00",
        "2023-02-29T00:00:00Z",  # no such day
        "29/11/2026",
        "now",
        "2026-11-29T25:00:00",
        "",
    ]
    seconds, bad = parse_event_times(texts, 1.0)
    assert bad.tolist() == [False, False, False, True, True, True, True, True]
    assert seconds[0] == _reference(texts[0])
    assert seconds[1] == _reference("2026-11-29T00:00:00")
    assert seconds[2] == _reference(texts[2])


def test_epoch_units_and_mixed_batches() -> None:
    seconds, bad = parse_event_times([1_500, 2_500.5], 1e-3)
    assert seconds.tolist() == [1.5, 2.5005] and not bad.any()
    seconds, bad = parse_event_times([1.0, "1970-01-01T00:00:02Z", True, None, float("nan")], 1.0)
    assert seconds[:2].tolist() == [1.0, 2.0]
    assert bad.tolist() == [False, False, True, True, True]


def test_a_value_verdict_does_not_depend_on_the_rest_of_the_batch() -> None:
    # Numeric text and bools are not event times, alone or next to valid ones.
    for odd in ("20250", True):
        _, alone = parse_event_times([odd], scale=1.0)
        _, mixed = parse_event_times([odd, "2025-01-01T00:00:00Z"], scale=1.0)
        _, with_number = parse_event_times([odd, 1.5], scale=1.0)
        assert alone.tolist() == [True]
        assert mixed.tolist() == [True, False]
        assert with_number.tolist() == [True, False]
