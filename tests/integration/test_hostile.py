"""A hostile producer against the real broker, with the default configuration.

100,000 seeded records, 10% hostile of 24 kinds (empty, tombstone, binary, invalid
JSON and UTF-8, wrong types, unknown and missing fields, NaN, huge numbers and
strings, deep nesting, too many fields, bad times, 2 MB and 9 MB values, ...): the
service never stops; accepted + rejected = produced exactly; every rejected event
and every event with an excluded value has exactly one dead letter whose bytes are
the original's (or its first ``dead_letter_max_bytes`` with the original's size and
sha256 in headers); no good record is rejected.
"""

from __future__ import annotations

import hashlib
import resource
import time
from typing import Any

import msgspec
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from monitor.config.schema import parse_config
from monitor.runtime.service import Service
from tests.kafka_utils import create_topics, produce, read_topic

pytestmark = pytest.mark.integration

TOTAL = 100_000
HOSTILE_RATE = 0.10
STATUS = ("ok", "warn", "fail")
# What the service must do with each kind: "reject" (whole event), "field" (accepted,
# one value excluded, dead-lettered) or "accept" (a lenient stream takes it as is).
KINDS: dict[str, tuple[str, str]] = {
    "empty": ("reject", "invalid_json"),
    "tombstone": ("reject", "invalid_json"),
    "binary": ("reject", "invalid_utf8"),
    "binary_digit": ("reject", "invalid_utf8"),
    "invalid_json": ("reject", "invalid_json"),
    "raw_nul": ("reject", "invalid_json"),
    "not_an_object": ("reject", "not_an_object"),
    "missing_field": ("reject", "missing_field"),
    "entity_wrong_type": ("reject", "wrong_type"),
    "entity_too_long": ("reject", "string_too_long"),
    "invalid_utf8": ("reject", "invalid_utf8"),
    "invalid_time": ("reject", "invalid_time"),
    "too_deep": ("reject", "too_deep"),
    "too_many_fields": ("reject", "too_many_fields"),
    "value_2mb": ("reject", "too_large"),
    "value_9mb": ("reject", "too_large"),
    "big_invalid": ("reject", "invalid_json"),
    "wrong_type": ("field", "wrong_type"),
    "null_not_allowed": ("field", "null_not_allowed"),
    "nan": ("field", "non_finite"),
    "huge_integer": ("field", "number_too_large"),
    "out_of_range": ("field", "out_of_range"),
    "unknown_category": ("field", "unknown_category"),
    "unknown_fields": ("accept", ""),
    "duplicate_keys": ("accept", ""),
}
# Few of the heavy kinds, so the test stays within about a minute.
RARE = {"value_2mb": 20, "value_9mb": 3, "big_invalid": 10, "too_deep": 20}


def _good(rng: np.random.Generator, i: int) -> dict[str, Any]:
    ts: Any = 1_790_000_000.0 + i * 0.01
    if i % 7 == 0:  # some producers send ISO-8601 times
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(ts))) + "Z"
    return {
        "device_id": f"dev-{int(rng.integers(0, 200)):03d}",
        "ts": ts,
        "temperature": round(float(rng.normal(40.0, 5.0)), 3),
        "humidity": None if rng.random() < 0.02 else round(float(rng.normal(45.0, 8.0)), 2),
        "vibration": round(float(rng.gamma(4.0, 0.5)), 4),
        "status": STATUS[int(rng.choice(3, p=[0.9, 0.08, 0.02]))],
    }


def _hostile(kind: str, good: dict[str, Any], rng: np.random.Generator) -> bytes | None:
    enc = msgspec.json.encode

    def raw(field: str, literal: bytes) -> bytes:
        return enc({**good, field: 0}).replace(
            f'"{field}":0'.encode(), f'"{field}":'.encode() + literal
        )

    if kind == "empty":
        return b""
    if kind == "tombstone":
        return None
    if kind == "binary":
        return b"\xff" + rng.bytes(int(rng.integers(8, 200)))
    if kind == "binary_digit":
        return b"7\x00\xfe" + rng.bytes(16)
    if kind == "invalid_json":
        return enc(good)[: -int(rng.integers(1, 10))]
    if kind == "raw_nul":
        return enc(good).replace(b"{", b"{\x00", 1)
    if kind == "not_an_object":
        return enc([good["device_id"], good["temperature"]])
    if kind == "missing_field":
        return enc({k: v for k, v in good.items() if k != "vibration"})
    if kind == "entity_wrong_type":
        return enc({**good, "device_id": [1, 2]})
    if kind == "entity_too_long":
        return enc({**good, "device_id": "d" * 5000})
    if kind == "invalid_utf8":
        return enc({**good, "note": "ok"}).replace(b'"ok"', b'"\xc3\x28"')
    if kind == "invalid_time":
        return enc({**good, "ts": "yesterday"})
    if kind == "too_deep":
        return raw("extra", b"[" * 100_000 + b"]" * 100_000)
    if kind == "too_many_fields":
        return enc({**good, "extra": {f"k{i}": i for i in range(2_000)}})
    if kind == "value_2mb":
        return enc({**good, "blob": "x" * 2_000_000})
    if kind == "value_9mb":
        return enc({**good, "blob": "y" * 9_000_000})
    if kind == "big_invalid":
        return b'{"blob": "' + b"z" * 950_000
    if kind == "wrong_type":
        return enc({**good, "temperature": "hot"})
    if kind == "null_not_allowed":
        return enc({**good, "vibration": None})
    if kind == "nan":
        return raw("temperature", b"NaN")
    if kind == "huge_integer":
        return raw("temperature", b"9" * 5_000)
    if kind == "out_of_range":
        return enc({**good, "temperature": 900.0})
    if kind == "unknown_category":
        return enc({**good, "status": "exploded"})
    if kind == "unknown_fields":
        return enc({**good, "firmware": "1.2.3", "meta": {"a": [1, {"b": None}]}})
    if kind == "duplicate_keys":  # the last value wins, as in every JSON parser here
        return enc(good)[:-1] + b',"temperature":"dup","temperature":21.5}'
    raise ValueError(kind)


def _peak_rss_mb() -> float:
    """This process's peak RSS since the last reset (VmHWM), else ru_maxrss."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss() -> float:
    """Reset the peak to the current RSS (Linux: clear_refs 5); return the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
    except OSError:
        pass
    return _peak_rss_mb()


def _records(seed: int = 8) -> tuple[list[bytes | None], list[str | None]]:
    rng = np.random.default_rng(seed)
    hostile = rng.random(TOTAL) < HOSTILE_RATE
    common = [k for k in KINDS if k not in RARE]
    slots = np.flatnonzero(hostile)
    kinds: list[str] = []
    for kind, count in RARE.items():
        kinds += [kind] * count
    kinds += [common[i % len(common)] for i in range(len(slots) - len(kinds))]
    order = rng.permutation(len(kinds))
    by_slot = {int(s): kinds[int(o)] for s, o in zip(slots, order, strict=True)}
    values: list[bytes | None] = []
    labels: list[str | None] = []
    enc = msgspec.json.encode
    for i in range(TOTAL):  # the producer side
        good = _good(rng, i)
        kind = by_slot.get(i)
        values.append(enc(good) if kind is None else _hostile(kind, good, rng))
        labels.append(kind)
    return values, labels


@pytest.mark.parametrize("fetch", ["librdkafka", "direct"])
def test_hostile_mix_never_stops_the_stream(kafka_bootstrap: str, unique: str, fetch: str) -> None:
    """Both fetch paths (``source.fetch``): the direct one reads the same lz4 batches,
    tombstones and 9 MB records itself."""
    unique = f"{unique}{fetch[0]}"
    started = time.monotonic()
    values, labels = _records()
    topic, dlq = f"hostile.{unique}", f"hostile.dlq.{unique}"
    create_topics(kafka_bootstrap, {topic: 1}, {"max.message.bytes": "10485760"})
    create_topics(kafka_bootstrap, {dlq: 1})
    produce(
        kafka_bootstrap,
        topic,
        values,
        options={"message.max.bytes": 10_000_000, "compression.type": "lz4"},
    )
    produced_at = time.monotonic()

    config = parse_config(
        {
            "kafka": {"bootstrap.servers": kafka_bootstrap, "session.timeout.ms": 6000},
            "group": f"dw-{unique}",
            "metrics": {"listen": "127.0.0.1:0"},
            "dead_letter_topic": dlq,
            "state": {"topic": f"state.{unique}"},
            "source": {"fetch": fetch},
            "streams": [
                {
                    "name": "sensors",
                    "topic": topic,
                    "entity": "device_id",
                    "event_time": "ts",
                    "fields": {
                        "temperature": {"type": "float", "range": [-40, 125]},
                        "humidity": {"type": "float", "range": [0, 100], "nullable": True},
                        "vibration": {"type": "float", "range": [0, 50]},
                        "status": {"type": "category", "categories": list(STATUS)},
                    },
                }
            ],
        },
        env={},
    )
    registry = CollectorRegistry()
    service = Service(config, registry=registry)
    before_mb = _reset_peak_rss()  # the producer's peak is not the service's
    stats = service.run(max_seconds=90, until=lambda s: s.events >= TOTAL)
    processed_at = time.monotonic()
    peak_mb = _peak_rss_mb()

    expect_reject = {i: KINDS[k][1] for i, k in enumerate(labels) if k and KINDS[k][0] == "reject"}
    expect_field = {i: KINDS[k][1] for i, k in enumerate(labels) if k and KINDS[k][0] == "field"}
    assert len({k for k in labels if k}) >= 14
    assert stats.events == TOTAL
    assert stats.accepted + stats.invalid == TOTAL  # accepted + rejected = produced
    assert stats.invalid == len(expect_reject)
    assert sum(stats.violated.values()) == len(expect_field)
    assert stats.accepted == TOTAL - len(expect_reject)

    def sample(name: str, **labels_: str) -> float:
        return registry.get_sample_value(name, labels_) or 0.0

    dead_count = len(expect_reject) + len(expect_field)
    assert sample("driftwarden_dead_letters_total", stream="sensors") == dead_count
    huge = sum(1 for v in values if v is not None and len(v) > config.dead_letter_max_bytes)
    assert sample("driftwarden_dead_letters_truncated_total", stream="sensors") == huge
    assert (
        sample("driftwarden_limit_hits_total", stream="sensors", limit="max_depth")
        == RARE["too_deep"]
    )

    dead = read_topic(kafka_bootstrap, dlq, dead_count, timeout=30, settle=0.5)
    assert len(dead) == dead_count
    seen: dict[int, str] = {}
    for msg in dead:
        headers = dict(msg.headers() or [])
        offset = int(headers["driftwarden.offset"])
        assert offset not in seen, "one dead letter per event"
        seen[offset] = headers["driftwarden.reason"].decode()
        original = values[offset] or b""
        if "driftwarden.truncated" in headers:
            assert msg.value() == original[: config.dead_letter_max_bytes]
            assert int(headers["driftwarden.original_size"]) == len(original)
            digest = hashlib.sha256(original).hexdigest().encode()
            assert headers["driftwarden.original_sha256"] == digest
        else:
            assert (msg.value() or b"") == original
    assert seen == {**expect_reject, **expect_field}  # no good record dead-lettered
    print(
        f"\nhostile e2e: {TOTAL:,} records ({len(expect_reject):,} rejected, "
        f"{len(expect_field):,} with an excluded value), produce "
        f"{produced_at - started:.1f}s, process {processed_at - produced_at:.1f}s, "
        f"peak RSS while the service ran {peak_mb:.0f} MB ({before_mb:.0f} MB before it, "
        "the produced values included)"
    )
