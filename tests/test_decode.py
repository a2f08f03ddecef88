from __future__ import annotations

import copy
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.config.schema import parse_config
from monitor.dev.synthetic import BAD_KINDS, DEMO_STREAM, generate_fleet
from monitor.pipeline.decode import FIELD_REASONS, REASONS, StreamDecoder


def _decoder(**changes: Any) -> StreamDecoder:
    stream = copy.deepcopy(DEMO_STREAM) | changes
    config = parse_config({"kafka": {"bootstrap.servers": "x:1"}, "streams": [stream]}, env={})
    return StreamDecoder(config.streams[0])


GOOD = {
    "device_id": "d1",
    "ts": 1.5,
    "temperature": 21.0,
    "humidity": 40.0,
    "vibration": 2.0,
    "status": "warn",
}


def _enc(**changes: Any) -> bytes:
    return msgspec.json.encode({**GOOD, **changes})


def _raw(field: str, literal: bytes) -> bytes:
    """A good event whose ``field`` holds ``literal`` verbatim (not valid JSON maybe)."""
    return _enc(**{field: 0.0}).replace(f'"{field}":0.0'.encode(), f'"{field}":'.encode() + literal)


# Problems that exclude the whole event.
CASES: list[tuple[bytes | None, str]] = [
    (b"{not json", "invalid_json"),
    (b"", "invalid_json"),
    (None, "invalid_json"),
    # Was invalid_json: bytes that are not UTF-8 now say so.
    (b"\x00\xff\xfe binary", "invalid_utf8"),
    # Binary starting with a digit was not_an_object.
    (b"1\x00\xff\xfe binary", "invalid_utf8"),
    (b"12 trailing garbage", "invalid_json"),
    (_enc().replace(b"{", b"{\x00", 1), "invalid_json"),  # not UTF-16, whatever the NULs
    (b"[1, 2]", "not_an_object"),
    (b'"a string"', "not_an_object"),
    (msgspec.json.encode({k: v for k, v in GOOD.items() if k != "temperature"}), "missing_field"),
    (msgspec.json.encode({k: v for k, v in GOOD.items() if k != "device_id"}), "missing_field"),
    (_enc(device_id=1.5), "wrong_type"),
    (_enc(note="x" * 5000), "too_large"),
    (_enc(firmware="1.0"), "unknown_field"),
    (_raw("temperature", b"[" * 65 + b"]" * 65), "too_deep"),
    (_raw("temperature", msgspec.json.encode({f"k{i}": i for i in range(150)})), "too_many_fields"),
    (_enc(device_id="d" * 2000), "string_too_long"),
    (_enc(status="ok").replace(b'"ok"', b'"o\\udcff"'), "invalid_json"),  # a lone surrogate
    (_enc(status="ok").replace(b'"ok"', b'"o\xffk"'), "invalid_utf8"),
    (_enc(ts="yesterday"), "invalid_time"),
    (_enc(ts=True), "invalid_time"),
    (_raw("ts", b"NaN"), "invalid_time"),
]

# Problems that exclude one value: (payload, field, reason).
FIELD_CASES: list[tuple[bytes, str, str]] = [
    (_enc(temperature="hot"), "temperature", "wrong_type"),
    (_enc(temperature=True), "temperature", "wrong_type"),
    (_enc(status=3), "status", "wrong_type"),
    (_enc(vibration=None), "vibration", "null_not_allowed"),
    (_raw("temperature", b"NaN"), "temperature", "non_finite"),
    (_raw("temperature", b"-Infinity"), "temperature", "non_finite"),
    # Was non_finite: a literal too large for a float64 is not a NaN/Infinity.
    (_raw("temperature", b"1e999"), "temperature", "number_too_large"),
    (_raw("temperature", b"9" * 3000), "temperature", "number_too_large"),
    (_enc(temperature=126.0), "temperature", "out_of_range"),
    (_enc(humidity=-0.1), "humidity", "out_of_range"),
    (_enc(status="exploded"), "status", "unknown_category"),
]


@pytest.mark.parametrize(("payload", "reason"), CASES)
def test_each_bad_payload_gets_its_reason(payload: bytes | None, reason: str) -> None:
    d = _decoder(max_event_bytes=4096)
    batch = d.decode([_enc(), payload, _enc(temperature=22.0)])
    assert [(r.index, r.reason) for r in batch.rejects] == [(1, reason)]
    assert batch.rows.tolist() == [0, 2]
    assert batch.columns["temperature"].tolist() == [21.0, 22.0]
    assert not batch.violations
    assert reason in REASONS


@pytest.mark.parametrize(("payload", "name", "reason"), FIELD_CASES)
def test_a_bad_value_excludes_only_that_value(payload: bytes, name: str, reason: str) -> None:
    d = _decoder(max_event_bytes=4096)
    batch = d.decode([_enc(), payload, _enc(temperature=22.0)])
    assert batch.rejects == ()
    assert batch.rows.tolist() == [0, 1, 2]
    assert [(v.index, v.field, v.reason) for v in batch.violations] == [(1, name, reason)]
    assert batch.violations[0].detail
    assert batch.valid[name].tolist() == [True, False, True]
    assert batch.violation_mask(name).tolist() == [False, True, False]
    for other in ("temperature", "vibration", "status"):  # the rest of the event counts
        if other != name:
            assert batch.valid[other].tolist() == [True, True, True]
    temperature = batch.columns["temperature"][batch.valid["temperature"]]
    assert temperature.tolist() == ([21.0, 22.0] if name == "temperature" else [21.0, 21.0, 22.0])
    assert reason in FIELD_REASONS


def test_every_violation_of_an_event_is_listed_once() -> None:
    d = _decoder()
    payload = _enc(temperature=500.0, vibration=None, status="exploded")
    batch = d.decode([payload, _enc()])
    assert batch.rows.tolist() == [0, 1] and batch.rejects == ()
    assert [(v.index, v.field, v.reason) for v in batch.violations] == [
        (0, "temperature", "out_of_range"),
        (0, "vibration", "null_not_allowed"),
        (0, "status", "unknown_category"),
    ]
    assert batch.violated_events().keys() == {0}
    assert batch.violation_counts() == {
        ("temperature", "out_of_range"): 1,
        ("vibration", "null_not_allowed"): 1,
        ("status", "unknown_category"): 1,
    }
    assert batch.valid["humidity"].tolist() == [True, True]


def test_every_reason_code_is_reachable() -> None:
    reached = {reason for _, reason in CASES} | {reason for _, _, reason in FIELD_CASES}
    assert reached | {"undecodable"} == set(REASONS)
    assert set(BAD_KINDS) == set(REASONS) - {"undecodable"}
    assert set(REASONS) >= FIELD_REASONS


def test_a_failure_no_check_foresaw_is_isolated_to_its_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    d = _decoder()
    poison = _enc(device_id="poison")
    real = d.entities.encode if d.entities is not None else None
    assert real is not None

    def encode(values: list[Any]) -> Any:
        if "poison" in values:
            raise RuntimeError("unforeseen")
        return real(values)

    monkeypatch.setattr(d.entities, "encode", encode)
    values = [_enc(temperature=float(i)) for i in range(7)]
    values[4] = poison
    # the msgspec path (the compiled one codes new entity ids in its kernel)
    batch = d.decode_msgspec(values)
    assert [(r.index, r.reason) for r in batch.rejects] == [(4, "undecodable")]
    assert "RuntimeError" in batch.rejects[0].detail
    assert batch.rows.tolist() == [0, 1, 2, 3, 5, 6]
    assert batch.columns["temperature"].tolist() == [0.0, 1.0, 2.0, 3.0, 5.0, 6.0]


def test_iso_and_epoch_event_times() -> None:
    d = _decoder()
    batch = d.decode(
        [
            _enc(ts=1.5),
            _enc(ts="1970-01-01T00:00:02Z"),
            _enc(ts="1970-01-01T00:00:03"),
            _enc(ts="1970-01-01T01:00:04+01:00"),
            _enc(ts="1970-01-01 00:00:05.25"),
        ]
    )
    assert batch.event_time is not None
    assert batch.event_time.tolist() == [1.5, 2.0, 3.0, 4.0, 5.25]
    ms = _decoder(event_time_unit="ms").decode([_enc(ts=1500), _enc(ts="1970-01-01T00:00:02Z")])
    assert ms.event_time is not None and ms.event_time.tolist() == [1.5, 2.0]


def test_columns_masks_codes_and_entities() -> None:
    d = _decoder()
    batch = d.decode(
        [_enc(), _enc(humidity=None, status="fail", device_id="d2"), _enc(device_id=7)]
    )
    assert batch.columns["humidity"][0] == 40.0
    assert batch.valid["humidity"].tolist() == [True, False, True]
    assert batch.columns["status"].tolist() == [1, 2, 1]
    assert batch.entity is not None and batch.entity.tolist() == [0, 1, 2]
    assert batch.event_time is not None and batch.event_time.tolist() == [1.5, 1.5, 1.5]
    again = d.decode([_enc(device_id="d2")])
    assert again.entity is not None and again.entity.tolist() == [1]


def test_unknown_fields_pass_on_a_lenient_stream() -> None:
    d = _decoder(strict=False)
    batch = d.decode([_enc(firmware="1.0")])
    assert batch.n == 1 and not batch.rejects


def test_open_categories_get_stable_codes() -> None:
    stream_fields = copy.deepcopy(DEMO_STREAM["fields"])
    stream_fields["status"] = {"type": "category"}
    d = _decoder(fields=stream_fields)
    d.seed_categories("status", ["ok", "warn"])
    batch = d.decode([_enc(status="new"), _enc(status="ok"), _enc(status="new")])
    assert batch.columns["status"].tolist() == [2, 0, 2]
    assert not batch.rejects


def test_entity_cardinality_is_bounded_and_reported() -> None:
    d = _decoder(max_entities=2)
    batch = d.decode([_enc(device_id=f"d{i}") for i in range(4)])
    assert batch.entity is not None and batch.entity.tolist() == [0, 1, -1, -1]
    assert batch.entity_overflow == 2


def test_generated_fleet_decodes_to_exactly_the_expected_reasons() -> None:
    events = generate_fleet(5_000, seed=3, bad_rate=0.05)
    batch = _decoder().decode(events.values)
    got = {r.index: r.reason for r in batch.rejects}
    got.update({v.index: v.reason for v in batch.violations})
    want = {i: r for i, r in enumerate(events.expected) if r is not None}
    assert got == want
    assert len(batch.violations) == len(batch.violated_events())  # one problem per bad event
    assert batch.n == events.accepted()
    assert batch.n + len(batch.rejects) == len(events.values)
    assert set(want.values()) == set(BAD_KINDS)


def test_empty_batch() -> None:
    batch = _decoder().decode([])
    assert batch.n == 0 and batch.rejects == ()


payloads = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda d: msgspec.json.encode(d),
        st.dictionaries(
            st.sampled_from(
                ["device_id", "ts", "temperature", "humidity", "vibration", "status", "x"]
            ),
            st.one_of(
                st.none(),
                st.booleans(),
                st.integers(),
                st.floats(allow_nan=False),
                st.text(max_size=8),
            ),
        ),
    ),
    st.none(),
)


@given(st.lists(payloads, max_size=40))
def test_any_bytes_are_decoded_or_rejected_with_a_reason(batch_values: list[bytes | None]) -> None:
    batch = _decoder().decode(batch_values)
    rejected = [r.index for r in batch.rejects]
    assert sorted(rejected + batch.rows.tolist()) == list(range(len(batch_values)))
    assert all(r.reason in REASONS and r.detail for r in batch.rejects)
    for name, col in batch.columns.items():
        assert len(col) == batch.n == len(batch.valid[name])
    assert all(r.reason in FIELD_REASONS and r.detail for r in batch.violations)
    # Excluded values are masked: every value that counts is finite.
    assert np.isfinite(batch.columns["temperature"][batch.valid["temperature"]]).all()


def test_limits_are_counted_when_hit() -> None:
    stream_fields = copy.deepcopy(DEMO_STREAM["fields"])
    stream_fields["status"] = {"type": "category"}
    d = _decoder(
        fields=stream_fields, max_categories=3, max_entities=2, max_string_length=8, max_depth=3
    )
    batch = d.decode(
        [
            _enc(status="a", device_id="d1"),
            _enc(status="b", device_id="d2"),
            _enc(status="c", device_id="d3"),  # third entity: over max_entities
            _enc(status="d"),  # fourth category: over max_categories
            _enc(status="much-too-long"),  # value excluded: string_too_long
            _enc(device_id="much-too-long"),  # entity too long: event rejected
            _raw("temperature", b"[[[[1]]]]"),  # depth 5 > 3
        ]
    )
    assert [(r.index, r.reason) for r in batch.rejects] == [
        (5, "string_too_long"),
        (6, "too_deep"),
    ]
    assert [(v.index, v.field, v.reason) for v in batch.violations] == [
        (4, "status", "string_too_long")
    ]
    assert batch.columns["status"].tolist() == [0, 1, 2, -1, -3]
    assert batch.valid["status"].tolist() == [True, True, True, True, False]
    assert dict(batch.limit_hits) == {
        "max_categories": 1,
        "max_depth": 1,
        "max_entities": 1,
        "max_string_length": 2,
    }
