"""What every decoded input must satisfy, for the property test, the corpus replay and
the coverage-guided fuzzer (``tests/fuzz_decode.py``).

``check_payload(data)`` decodes ``data`` alone and between two good events with
three decoders (a lenient stream with every field type, ISO/epoch event time and
an entity; the strict demo stream; a stream with tight limits) and checks that
nothing raises, that every input is accepted or rejected with a known reason and
a detail, and that the good neighbours are untouched.
"""

from __future__ import annotations

import copy
import time
from functools import cache
from typing import Any

import msgspec
import numpy as np

from monitor.config.schema import parse_config
from monitor.dev.synthetic import DEMO_STREAM
from monitor.pipeline.decode import FIELD_REASONS, REASONS, Batch, StreamDecoder

# A decode of one small batch taking longer than this is a hang.
MAX_SECONDS = 5.0

LENIENT: dict[str, Any] = {
    "name": "mixed",
    "topic": "t.mixed",
    "entity": "id",
    "event_time": "at",
    "max_event_bytes": 65_536,
    "fields": {
        "x": {"type": "float", "range": [-1e6, 1e6]},
        "n": {"type": "int", "required": False},
        "flag": {"type": "bool", "nullable": True},
        "kind": {"type": "category", "categories": ["a", "b"]},
        "tag": {"type": "category", "required": False},
        "note": {"type": "string", "required": False},
    },
}
TIGHT: dict[str, Any] = {
    **copy.deepcopy(LENIENT),
    "name": "tight",
    "topic": "t.tight",
    "strict": True,
    "max_event_bytes": 2_048,
    "max_depth": 4,
    "max_fields": 12,
    "max_string_length": 16,
    "max_categories": 4,
    "max_entities": 4,
}
GOOD_LENIENT = b'{"id":"e1","at":"2026-11-29T10:00:00Z","x":1.5,"flag":true,"kind":"a"}'
GOOD_DEMO = (
    b'{"device_id":"d1","ts":1.5,"temperature":21.0,"humidity":40.0,"vibration":2.0,"status":"ok"}'
)


@cache
def _specs() -> tuple[Any, ...]:
    raw = {"kafka": {"bootstrap.servers": "x:1"}, "streams": [LENIENT, DEMO_STREAM, TIGHT]}
    return parse_config(raw, env={}).streams


def decoders() -> list[tuple[StreamDecoder, bytes]]:
    """Fresh decoders (vocabularies grow) with a good payload for each."""
    lenient, demo, tight = _specs()
    return [
        (StreamDecoder(lenient), GOOD_LENIENT),
        (StreamDecoder(demo), GOOD_DEMO),
        (StreamDecoder(tight), GOOD_LENIENT),
    ]


def check_batch(batch: Batch, n: int) -> None:
    """The invariants of any decoded batch of ``n`` payloads."""
    assert batch.n_input == n
    rejected = [r.index for r in batch.rejects]
    assert sorted(rejected + batch.rows.tolist()) == list(range(n)), "each input exactly once"
    assert batch.rows.tolist() == sorted(batch.rows.tolist())
    assert all(r.reason in REASONS and r.detail for r in batch.rejects)
    accepted = set(batch.rows.tolist())
    for v in batch.violations:
        assert v.reason in FIELD_REASONS and v.detail and v.index in accepted
    for name, col in batch.columns.items():
        ok = batch.valid[name]
        assert len(col) == len(ok) == batch.n
        if col.dtype == np.float64:
            assert np.isfinite(col[ok]).all(), name
        else:
            assert (col[ok] >= -1).all(), name
    if batch.event_time is not None:
        assert len(batch.event_time) == batch.n and np.isfinite(batch.event_time).all()
    if batch.entity is not None:
        assert len(batch.entity) == batch.n


def check_payload(data: bytes) -> None:
    """Decode ``data`` alone and between two good events; check the invariants."""
    for decoder, good in decoders():
        started = time.monotonic()
        alone = decoder.decode([data])
        check_batch(alone, 1)
        mixed = decoder.decode([good, data, good])
        check_batch(mixed, 3)
        assert 0 in mixed.rows.tolist() and 2 in mixed.rows.tolist(), "good neighbours kept"
        assert not [v for v in mixed.violations if v.index != 1]
        # The verdict on a payload does not depend on its neighbours.
        assert [(r.reason) for r in alone.rejects] == [r.reason for r in mixed.rejects]
        assert [(v.field, v.reason) for v in alone.violations] == [
            (v.field, v.reason) for v in mixed.violations
        ]
        assert time.monotonic() - started < MAX_SECONDS, "decoding took too long"


def hostile_examples() -> dict[str, bytes]:
    """Hand-made hostile inputs of every kind the fuzzers start from (the seed corpus)."""
    good = msgspec.json.decode(GOOD_LENIENT)

    def enc(**changes: Any) -> bytes:
        return msgspec.json.encode({**good, **changes})

    return {
        "empty": b"",
        "binary": bytes(range(256)),
        "binary_digit": b"7\x00\x01\xff\xfe",
        "invalid_json": b'{"id": "e1", "x": ',
        "not_object": b"[1,2,3]",
        "wrong_type": enc(x="1.5"),
        "wrong_type_int": enc(n=1.5),
        "unknown_field": enc(extra={"a": [1, 2]}),
        "deep": b'{"id":"e","at":1,"x":1,"kind":"a","deep":' + b"[" * 300 + b"]" * 300 + b"}",
        "many_fields": msgspec.json.encode({**good, **{f"k{i}": i for i in range(40)}}),
        "huge_int": enc(x=0).replace(b'"x":0', b'"x":' + b"9" * 500),
        "huge_exp": enc(x=0).replace(b'"x":0', b'"x":1e400'),
        "int64_edge": enc(n=2**63),
        "nan": enc(x=0).replace(b'"x":0', b'"x":NaN'),
        "infinity": enc(x=0).replace(b'"x":0', b'"x":-Infinity'),
        "long_string": enc(tag="t" * 5000),
        "long_entity": enc(id="e" * 100),
        "invalid_utf8": enc(note="ok").replace(b'"ok"', b'"\xc3\x28"'),
        "lone_surrogate": enc(note="ok").replace(b'"ok"', b'"\\ud800"'),
        "null_bytes": enc(note="a\x00b"),
        "raw_nul": GOOD_LENIENT.replace(b"{", b"{\x00", 1),
        "duplicate_keys": GOOD_LENIENT[:-1] + b',"x":"dup","x":2.5}',
        "null_required": enc(x=None),
        "iso_offset": enc(at="2026-11-29T10:00:00+05:30"),
        "bad_time": enc(at="2026-13-45T99:99:99"),
        "time_words": enc(at="now"),
        "bool_time": enc(at=True),
        "out_of_range": enc(x=1e7),
        "unknown_category": enc(kind="zzz"),
        "oversized": enc(note="x" * 70_000),
        "whitespace": b" \n\t " + GOOD_LENIENT + b" \n",
        "trailing": GOOD_LENIENT + b"{}",
    }
