from __future__ import annotations

import copy
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.config import parse_config
from monitor.decode import REASONS, StreamDecoder
from monitor.synthetic import BAD_KINDS, DEMO_STREAM, generate_fleet


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


CASES: list[tuple[bytes | None, str]] = [
    (b"{not json", "invalid_json"),
    (b"", "invalid_json"),
    (None, "invalid_json"),
    (b"\x00\xff\xfe binary", "invalid_json"),
    (b"[1, 2]", "not_an_object"),
    (b'"a string"', "not_an_object"),
    (msgspec.json.encode({k: v for k, v in GOOD.items() if k != "temperature"}), "missing_field"),
    (msgspec.json.encode({k: v for k, v in GOOD.items() if k != "device_id"}), "missing_field"),
    (_enc(temperature="hot"), "wrong_type"),
    (_enc(temperature=True), "wrong_type"),
    (_enc(status=3), "wrong_type"),
    (_enc(vibration=None), "null_not_allowed"),
    (_enc(temperature=0.0).replace(b'"temperature":0.0', b'"temperature":NaN'), "non_finite"),
    (_enc(temperature=0.0).replace(b'"temperature":0.0', b'"temperature":-Infinity'), "non_finite"),
    (_enc(temperature=0.0).replace(b'"temperature":0.0', b'"temperature":1e999'), "non_finite"),
    (_enc(temperature=126.0), "out_of_range"),
    (_enc(humidity=-0.1), "out_of_range"),
    (_enc(status="exploded"), "unknown_category"),
    (_enc(note="x" * 5000), "too_large"),
    (_enc(firmware="1.0"), "unknown_field"),
]


@pytest.mark.parametrize(("payload", "reason"), CASES)
def test_each_bad_payload_gets_its_reason(payload: bytes | None, reason: str) -> None:
    d = _decoder()
    batch = d.decode([_enc(), payload, _enc(temperature=22.0)])
    assert [(r.index, r.reason) for r in batch.rejects] == [(1, reason)]
    assert batch.rows.tolist() == [0, 2]
    assert batch.columns["temperature"].tolist() == [21.0, 22.0]
    assert reason in REASONS


def test_every_reason_code_is_reachable() -> None:
    assert {reason for _, reason in CASES} == set(REASONS) == set(BAD_KINDS)


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
    want = {i: r for i, r in enumerate(events.expected) if r is not None}
    assert got == want
    assert batch.n == events.expected.count(None)
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
    assert np.isfinite(batch.columns["temperature"]).all()
