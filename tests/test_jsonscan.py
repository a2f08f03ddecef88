"""The compiled decoder gives exactly the msgspec decoder's batch, for every input."""

from __future__ import annotations

import copy
import json
import struct
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.config.schema import StreamSpec, parse_config
from monitor.dev.synthetic import DEMO_STREAM, generate_fleet, generate_wide, wide_stream
from monitor.pipeline.decode import Batch, StreamDecoder
from monitor.pipeline.jsonscan import CAUSES, CompiledDecoder, compiled_supported

CORPUS = Path(__file__).parent / "corpus" / "decode"


def _spec(stream: dict[str, Any]) -> StreamSpec:
    config = parse_config({"kafka": {"bootstrap.servers": "x:1"}, "streams": [stream]}, env={})
    return config.streams[0]


def _pair(stream: dict[str, Any]) -> tuple[CompiledDecoder, StreamDecoder]:
    spec = _spec(stream)
    return CompiledDecoder(StreamDecoder(spec)), StreamDecoder(spec)


def _bits(a: np.ndarray[Any, Any] | None) -> tuple[str, bytes] | None:
    return None if a is None else (a.dtype.str, np.ascontiguousarray(a).tobytes())


def assert_same(got: Batch, want: Batch) -> None:
    """Equal in every field (floats bit for bit) but the fallback count."""
    assert (got.stream, got.n_input) == (want.stream, want.n_input)
    assert _bits(got.rows) == _bits(want.rows)
    assert list(got.columns) == list(want.columns)
    assert list(got.valid) == list(want.valid)
    for name in want.columns:
        assert _bits(got.columns[name]) == _bits(want.columns[name]), name
        assert _bits(got.valid[name]) == _bits(want.valid[name]), name
    assert _bits(got.entity) == _bits(want.entity)
    assert _bits(got.event_time) == _bits(want.event_time)
    assert got.rejects == want.rejects
    assert got.violations == want.violations
    assert got.limit_hits == want.limit_hits
    assert (got.new_entities, got.entity_overflow) == (want.new_entities, want.entity_overflow)


def assert_same_vocabularies(a: StreamDecoder, b: StreamDecoder) -> None:
    assert a.vocabularies.keys() == b.vocabularies.keys()
    for name, vocab in a.vocabularies.items():
        assert list(vocab.codes.items()) == list(b.vocabularies[name].codes.items())
    if a.entities is not None and b.entities is not None:
        assert list(a.entities.codes.items()) == list(b.entities.codes.items())


def _run(stream: dict[str, Any], batches: list[list[bytes | None]]) -> list[Batch]:
    compiled, reference = _pair(stream)
    out = []
    for values in batches:
        got = compiled.decode(values)
        assert_same(got, reference.decode_msgspec(values))
        assert got.fallback_rows == int(np.count_nonzero(compiled.last_causes))
        out.append(got)
    assert_same_vocabularies(compiled.base, reference)
    return out


# ---------------------------------------------------------------- plain rows take the fast path


def test_plain_rows_are_decoded_by_the_kernel_bit_for_bit() -> None:
    payloads = generate_wide(2_000, fields=20)
    compiled, reference = _pair(wide_stream(20, "t"))
    got = compiled.decode(payloads)
    assert got.fallback_rows == 0
    assert_same(got, reference.decode_msgspec(payloads))


def test_demo_fleet_with_every_reject_reason() -> None:
    events = generate_fleet(3_000, seed=5, bad_rate=0.05)
    values: list[bytes | None] = list(events.values)
    first, then = _run(DEMO_STREAM, [values[:1000], values[1000:]])
    # New devices get their codes in the kernel until the first row that falls back
    # (it may hold new values too); after it they fall back. Then only the bad rows.
    bad = [r is not None for r in events.expected]
    assert sum(bad[:1000]) <= first.fallback_rows < 1000 - bad.index(True)
    assert then.fallback_rows == sum(bad[1000:])


@pytest.mark.parametrize(
    ("text", "cause"),
    [
        (b"0.1", ""),
        (b"-12.5e-3", ""),
        (b"1E22", ""),
        (b"9007199254740992", ""),  # 2**53
        (b"123456.789e-19", ""),
        (b"0", ""),
        (b"-0.0", "number"),
        (b"-0", "number"),
        (b"9007199254740993", ""),  # an integer: rounded once, to 2**53
        (b"9223372036854775807", ""),
        (b"-9223372036854775807", ""),
        (b"1700000000123456789", ""),
        (b"9223372036854775808", "number"),
        (b"-9223372036854775808", "number"),
        (b"9007199254740993.0", ""),  # an exact integer, rounded once
        (b"9007199254740993e0", ""),
        (b"0.10000000000000001", ""),  # 17 digits: Eisel-Lemire
        (b"0.30000000000000004", ""),
        (b"1.2345678901234567e-05", ""),
        (b"9999999999999999999.5", ""),  # 20 digits: both truncations round alike
        (b"1.7976931348623157e308", ""),
        (b"2.2250738585072014e-308", ""),  # the least normal double
        (b"1e23", "number"),  # exactly halfway between two doubles: undecided
        (b"2.2250738585072011e-308", "number"),  # subnormal
        (b"1.7976931348623159e308", "number"),  # rounds to infinity
        (b"1e400", "number"),
        (b"5e-324", "number"),
        (b"1.5e-400", "number"),
        (b"01", "syntax"),
        (b"1.", "syntax"),
        (b".5", "type"),
        (b"+1", "type"),
        (b"NaN", "type"),
        (b"-Infinity", "syntax"),
        (b'"1.0"', "type"),
        (b"true", "type"),
        (b"[1.0]", "type"),
        (b"null", "type"),
    ],
)
def test_numbers_on_and_off_the_exact_path(text: bytes, cause: str) -> None:
    stream = {"name": "s", "topic": "t", "fields": {"x": {"type": "float"}}}
    payload = b'{"x": ' + text + b"}"
    compiled, reference = _pair(stream)
    got = compiled.decode([payload])
    assert_same(got, reference.decode_msgspec([payload]))
    assert CAUSES[compiled.last_causes[0]] == cause


@pytest.mark.parametrize(
    ("payload", "cause"),
    [
        (b'{"x":1,"s":"plain","c":"a","b":true,"i":-7,"e":"d1","t":1.5}', ""),
        (b' \t\r\n{ "x" : 1 , "s":"p", "c":"b", "b":false, "i":0, "e":3, "t":2 } \n', ""),
        (b'{"x":1,"s":"\\u00e9","c":"a","b":true,"i":1,"e":"d1","t":1}', "string"),
        (b'{"x":1,"s":"\xc3\xa9","c":"a","b":true,"i":1,"e":"d1","t":1}', "string"),
        (b'{"x":1,"s":"\xff","c":"a","b":true,"i":1,"e":"d1","t":1}', "string"),
        (b'{"x":1,"s":"\x7f\x1f","c":"a","b":true,"i":1,"e":"d1","t":1}', "string"),
        (b'{"x":1,"s":"p","c":"zz","b":true,"i":1,"e":"d1","t":1}', ""),  # new values:
        (b'{"x":1,"s":"p","c":"a","b":true,"i":1,"e":"d9","t":1}', ""),  # coded in the
        (b'{"x":1,"s":"p","c":"a","b":true,"i":1,"e":99,"t":1}', ""),  # kernel
        (b'{"x":1,"s":"p","c":"a","b":true,"i":1,"e":"d123456789012","t":1}', "new_value"),
        (b'{"x":1,"s":"p","c":"a","b":true,"i":1,"e":"d1","t":"2026-11-30T01:02:03.5Z"}', ""),
        (b'{"x":1,"s":"p","c":"a","b":true,"i":1,"e":"d1","t":"2026-11-30T01:02"}', "time"),
        (b'{"x":1,"s":"p","c":"a","b":true,"i":1,"e":"d1","t":"2026-02-30T01:02:03"}', "time"),
        (b'{"x":1,"s":"p","c":"a","b":1,"i":1,"e":"d1","t":1}', "type"),
        (b'{"x":1,"s":"p","c":"a","b":true,"i":1.0,"e":"d1","t":1}', "type"),
        (b'{"x":1,"s":"p","c":"a","b":true,"i":1,"e":1.0,"t":1}', "type"),
        (b'{"x":1,"s":"p","c":"a","b":true,"i":1,"e":"d1","t":null}', "type"),
        (b'{"x":1,"s":"p","c":"a","b":true,"i":1,"e":"d1","t":1,"x":2}', "keys"),
        (b'{"x":1,"s":"p","c":"a","b":true,"i":1,"e":"d1"}', "keys"),
        (b'{"x":1,"s":"p","c":"a","b":true,"i":1,"e":"d1","t":1,"u":{"n":1}}', "type"),
        (b'{"x":1,"s":"p","c":"a","b":true,"i":1,"e":"d1","t":1,"u":[1]}', "type"),
        (b'{"x":1,"s":"p","c":"a","b":true,"i":1,"e":"d1","t":1,"u":"\xff"}', "string"),
        (b'{"x":1,"s":"p","c":"a","b":true,"i":1,"e":"d1","t":1,"u":1e999}', ""),
        (b'{"x":1,"s":"p","c":"a","b":true,"i":1,"e":"d1","t":1}\x00', "syntax"),
        (b'{"x":1,"s":"p","c":"a","b":true,"i":1,"e":"d1","t":1}{}', "syntax"),
        (b'\xef\xbb\xbf{"x":1,"s":"p","c":"a","b":true,"i":1,"e":"d1","t":1}', "syntax"),
        (b'{"x":1,\x0b"s":"p","c":"a","b":true,"i":1,"e":"d1","t":1}', "syntax"),
        (b'{"x":1,"s":"p","c":"a","b":true,"i":1,"e":"d1","t":1,}', "syntax"),
        (b'{"x":1,"s":"p","c":"a","b":true,"i":1,"e":"d1","t":1', "syntax"),
        (b'{"x":1,"s":"p","c":"a","b":true,"i":150,"e":"d1","t":1}', "schema"),
        (b'{"s":"p","c":"a","b":true,"i":1,"e":"d1","t":1}', ""),
        (b'{"x":null,"s":null,"c":null,"b":null,"i":null,"e":"d1","t":1}', ""),
        (None, "tombstone_or_too_large"),
        (b"{}" + b" " * 300, "tombstone_or_too_large"),
        (b"", "syntax"),
        (b"[]", "syntax"),
    ],
)
def test_each_fallback_cause(payload: bytes | None, cause: str) -> None:
    stream = {
        "name": "s",
        "topic": "t",
        "entity": "e",
        "event_time": "t",
        "event_time_unit": "ms",
        "max_event_bytes": 300,
        "max_string_length": 8,
        "fields": {
            "x": {"type": "float", "required": False},
            "s": {"type": "string", "nullable": True},
            "c": {"type": "category", "nullable": True},
            "b": {"type": "bool", "nullable": True},
            "i": {"type": "int", "nullable": True, "range": [-10, 100]},
        },
    }
    compiled, reference = _pair(stream)
    warm = [b'{"x":1,"s":"p","c":"%s","b":true,"i":1,"e":%s,"t":1}' % (c, e) for c, e in
            [(b"a", b'"d1"'), (b"b", b"3")]]  # fmt: skip
    assert_same(compiled.decode(warm), reference.decode_msgspec(warm))
    values = [payload, warm[0]]
    got = compiled.decode(values)
    assert_same(got, reference.decode_msgspec(values))
    assert [CAUSES[c] for c in compiled.last_causes] == [cause, ""]


def test_new_values_get_codes_in_the_msgspec_order_across_batches() -> None:
    stream = {
        "name": "s",
        "topic": "t",
        "entity": "dev",
        "max_entities": 4,
        "fields": {"c": {"type": "category"}, "x": {"type": "float", "range": [0, 10]}},
    }

    def ev(c: str, dev: Any, x: Any = 1) -> bytes:
        return json.dumps({"c": c, "dev": dev, "x": x}).encode()

    batches: list[list[bytes | None]] = [
        [ev("b", "d1"), ev("a", 2, 99), ev("b", "d1"), ev("\u00e9", "d3"), ev("a", 2)],
        [ev("a", 2), ev("q", "d\n"), ev("b", "d1"), ev("r", "d5"), ev("s", 7), ev("r", "d5")],
        [ev("s", 7), ev("q", "d\n"), ev("z", "d6"), ev("a", 2)],
    ]
    got = _run(stream, batches)
    assert got[1].entity_overflow == 2 and got[2].fallback_rows == 3


def test_seeded_and_replaced_vocabularies_are_followed() -> None:
    stream = {"name": "s", "topic": "t", "fields": {"c": {"type": "category"}}}
    compiled, reference = _pair(stream)
    for d in (compiled.base, reference):
        d.seed_categories("c", ["x", "y"])
    values: list[bytes | None] = [b'{"c":"y"}', b'{"c":"w"}', b'{"c":"x"}']
    assert_same(compiled.decode(values), reference.decode_msgspec(values))
    assert compiled.last_causes.tolist() == [0, 0, 0]  # "w" is coded in the kernel
    # a vocabulary swapped for another (as a restore would) is re-read
    for d in (compiled.base, reference):
        vocab = d.vocabularies["c"]
        vocab.codes = {None: -2, "w": 0, "y": 1}
    assert_same(compiled.decode(values), reference.decode_msgspec(values))
    assert compiled.last_causes.tolist() == [0, 0, 0]
    assert_same_vocabularies(compiled.base, reference)


def test_many_new_entities_grow_the_tables() -> None:
    stream = {"name": "s", "topic": "t", "entity": "e", "fields": {"x": {"type": "float"}}}
    values: list[bytes | None] = [b'{"e":"d%d","x":%d}' % (i % 3000, i) for i in range(6000)]
    ints: list[bytes | None] = [b'{"e":%d,"x":1}' % (i * 7919 - 10**6) for i in range(3000)]
    got = _run(stream, [values, values, ints, ints])
    assert [b.fallback_rows for b in got] == [0, 0, 0, 0]  # new ids coded in the kernel


def test_empty_batch_and_all_strings() -> None:
    _run({"name": "s", "topic": "t", "fields": {"s": {"type": "string"}}}, [[], [b'{"s":"a"}']])


def test_known_settings_keep_the_compiled_path() -> None:
    spec = _spec({"name": "s", "topic": "t", "fields": {"x": {"type": "float"}}})
    assert compiled_supported(spec)


def test_floats_bit_for_bit_on_many_short_decimals() -> None:
    rng = np.random.default_rng(7)
    values = rng.normal(0, 1e3, 5_000) * 10.0 ** rng.integers(-12, 12, 5_000)
    texts = [np.format_float_positional(v, precision=int(p), unique=False, trim="-")
             for v, p in zip(values, rng.integers(0, 9, 5_000), strict=True)]  # fmt: skip
    texts += [f"{v:.{int(p)}e}" for v, p in zip(values, rng.integers(0, 14, 5_000), strict=True)]
    payloads: list[bytes | None] = [b'{"x":%s}' % t.encode() for t in texts]
    [got] = _run({"name": "s", "topic": "t", "fields": {"x": {"type": "float"}}}, [payloads])
    assert got.fallback_rows < len(payloads) // 3
    # correctly rounded, as Python's float() (msgspec reads the integer "-0" as 0)
    reference = np.array([float(t) for t in texts])
    nonzero = reference != 0
    assert (got.columns["x"][~nonzero] == 0).all()
    assert got.columns["x"][nonzero].tobytes() == reference[nonzero].tobytes()


# ---------------------------------------------------------------- generated streams and events

EDGE_NUMBERS = st.sampled_from(
    [
        "-0", "-0.0", "0e0", "-0e5", "0.000", "1e22", "1e23", "-1E-22", "1e-23",
        "9007199254740992", "9007199254740993", "-9007199254740993", "123456789012345678",
        "0.1e-21", "4.9e-324", "2.5e-324", "1.7976931348623157e308", "1e309", "1.5e-400",
        "100000000000000000000000", "0.30000000000000004", "12.50000", "7e0", "3E+2",
    ]
)  # fmt: skip
NUMBER_TOKENS = st.one_of(
    EDGE_NUMBERS,
    st.from_regex(r"\A-?(0|[1-9][0-9]{0,19})(\.[0-9]{1,19})?([eE][+-]?[0-9]{1,3})?\Z"),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(min_value=-(10**25), max_value=10**25).map(str),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "01", "1.", ".5", "+1", "-", "1e", "0x10"]),
)
STRING_TOKENS = st.one_of(
    st.sampled_from(["a", "b", "c", "d1", "d2", "\u00e9", "", "x y", "ok"]).map(json.dumps),
    st.text(max_size=6).map(lambda s: json.dumps(s, ensure_ascii=False)),
    st.text(max_size=6).map(json.dumps),
    st.sampled_from(['"\\u0061"', '"a\\q"', '"\\"', '"unterminated']),
)
ANY_TOKENS = st.one_of(
    NUMBER_TOKENS,
    STRING_TOKENS,
    st.sampled_from(["true", "false", "null", "{}", "[]", '{"n": 1}', "[1, [2]]", "tru", "nul"]),
)
WHITESPACE = st.sampled_from(["", "", "", " ", "\n\t ", "\r\n", "\x0b", "\u00a0", "\x00"])


PLAIN_NUMBERS = st.one_of(
    st.from_regex(r"\A-?[1-9][0-9]{0,5}(\.[0-9]{1,5})?\Z"), st.integers(-200, 200).map(str)
)


def _good_token(kind: str, draw: st.DrawFn, clean: bool) -> str:
    """A value of the field's JSON type; ``clean``: a plain one (no escapes, short)."""
    if kind in ("float", "time"):
        return draw(PLAIN_NUMBERS if clean else st.one_of(PLAIN_NUMBERS, NUMBER_TOKENS))
    if kind == "int":
        integers = st.integers(-200, 200).map(str)
        return draw(integers if clean else st.one_of(integers, NUMBER_TOKENS))
    if kind == "bool":
        return draw(st.sampled_from(["true", "false"]))
    if kind in ("category", "string"):
        plain = st.sampled_from(['"a"', '"b"', '"c"', '"d"'])
        return draw(plain if clean else st.one_of(plain, STRING_TOKENS))
    plain = st.sampled_from(['"d1"', '"d2"', '"d3"', "1", "2", "-3"])  # entity
    return draw(plain if clean else st.one_of(plain, STRING_TOKENS))


@st.composite
def streams(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(
        st.lists(
            st.sampled_from(["x", "y", "temp", "a.b", "s p", "z", "x", "y", "temp", "t\u00e9"]),
            min_size=1,
            max_size=5,
            unique=True,
        )
    )
    fields: dict[str, Any] = {}
    for name in names:
        kind = draw(st.sampled_from(["float", "int", "bool", "category", "string"]))
        spec: dict[str, Any] = {
            "type": kind,
            "required": draw(st.booleans()),
            "nullable": draw(st.booleans()),
        }
        if kind in ("float", "int") and draw(st.booleans()):
            spec["range"] = draw(st.sampled_from([[-100, 100], [0, 1], [0.5, 1e6]]))
        if kind == "category" and draw(st.booleans()):
            spec["categories"] = draw(st.sampled_from([["a", "b"], ["c", "\u00e9", "a"]]))
        fields[name] = spec
    return {
        "name": "gen",
        "topic": "t",
        "fields": fields,
        "entity": draw(st.sampled_from([None, "dev"])),
        "event_time": draw(st.sampled_from([None, "ts"])),
        "event_time_unit": draw(st.sampled_from(["s", "ms", "us", "ns"])),
        "strict": draw(st.booleans()),
        "max_event_bytes": draw(st.sampled_from([1_048_576, 1_048_576, 1_048_576, 90])),
        "max_entities": draw(st.sampled_from([100_000, 3])),
        "max_fields": draw(st.sampled_from([1_000, 1_000, 3])),
        "max_depth": draw(st.sampled_from([64, 64, 1])),
        "max_string_length": draw(st.sampled_from([1_024, 1_024, 1])),
        "max_categories": draw(st.sampled_from([10_000, 10_000, 2])),
    }


DEFECTS = (
    "value",  # another JSON value or an odd number, string or literal
    "value",
    "value",
    "raw_byte",  # a control, non-ASCII or invalid UTF-8 byte right inside a string
    "null",
    "missing",
    "duplicate",
    "extra",  # an unknown key
    "byte",  # a whitespace-like byte put anywhere
    "escaped_key",
    "cut",  # cut and spliced bytes
    "not_an_object",
)


def _payload(draw: st.DrawFn, stream: dict[str, Any]) -> bytes | None:
    """A plain valid-looking event, then none, one or a few defects put into it."""
    keys: list[tuple[str, str]] = [(n, f["type"]) for n, f in stream["fields"].items()]
    if stream["entity"]:
        keys.append((stream["entity"], "entity"))
    if stream["event_time"]:
        keys.append((stream["event_time"], "time"))
    members: list[tuple[str, str]] = []
    for name, kind in keys:
        if not stream["fields"].get(name, {}).get("required", True) and draw(st.booleans()):
            continue  # an optional field left out
        members.append((json.dumps(name), _good_token(kind, draw, clean=True)))
    if draw(st.booleans()):
        members = draw(st.permutations(members))
    defects = draw(st.sampled_from([0, 0, 0, 1, 1, 1, 1, 2, 3]))
    tail = ""
    chosen = draw(st.lists(st.sampled_from(DEFECTS), min_size=defects, max_size=defects))
    for defect in chosen:
        at = draw(st.integers(0, max(len(members) - 1, 0)))
        if defect == "not_an_object":
            return draw(st.one_of(st.none(), st.binary(max_size=30), ANY_TOKENS.map(str.encode)))
        if defect in ("extra", "duplicate") or not members:
            key = draw(
                st.sampled_from(['"extra"', '"x"', '"dev"', '"q"', *(k for k, _ in members)])
            )
            members.insert(at, (key, draw(ANY_TOKENS)))
        elif defect == "value":
            kind = dict((json.dumps(n), k) for n, k in keys).get(members[at][0], "float")
            numeric = kind in ("float", "int", "time", "entity")
            token = draw(
                st.one_of(NUMBER_TOKENS, EDGE_NUMBERS)
                if numeric and draw(st.booleans())
                else st.one_of(ANY_TOKENS, st.just(_good_token(kind, draw, False)))
            )
            members[at] = (members[at][0], token)
        elif defect == "null":
            members[at] = (members[at][0], "null")
        elif defect == "missing":
            del members[at]
        elif defect == "escaped_key":
            key = members[at][0]
            members[at] = (f'"\\u{ord(key[1]):04x}{key[2:]}', members[at][1])
        elif defect == "byte":
            tail = draw(WHITESPACE)
    text = "{" + ",".join(f"{k}:{v}" for k, v in members) + "}"
    if tail:  # between two tokens
        gaps = [0, len(text), *(i + 1 for i, c in enumerate(text) if c in ",:{}")]
        at = draw(st.sampled_from(gaps))
        text = text[:at] + tail + text[at:]
    raw = text.encode("utf-8", "surrogatepass")
    if "raw_byte" in chosen:
        quotes = [i + 1 for i, c in enumerate(raw) if c == 0x22]
        at = draw(st.sampled_from(quotes)) if quotes else 0
        byte = draw(st.sampled_from([b"\x00", b"\x1f", b"\x7f", b"\x80", b"\xc3", b"\xff"]))
        raw = raw[:at] + byte + raw[at:]
    if "cut" in chosen:
        cut = draw(st.integers(0, len(raw)))
        raw = raw[:cut] + draw(st.binary(max_size=3))
    return raw


@st.composite
def workloads(draw: st.DrawFn) -> tuple[dict[str, Any], list[list[bytes | None]]]:
    stream = draw(streams())
    batches = [
        [_payload(draw, stream) for _ in range(draw(st.integers(0, 40)))]
        for _ in range(draw(st.integers(1, 2)))
    ]
    # once more, all together: values now in the vocabularies take the compiled path
    return stream, [*batches, [p for b in batches for p in b]]


_SETTINGS = {
    "deadline": None,
    "derandomize": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


@settings(max_examples=60, **_SETTINGS)  # type: ignore[arg-type]
@given(workloads())
def test_generated_streams_and_events_decode_identically(
    workload: tuple[dict[str, Any], list[list[bytes | None]]],
) -> None:
    stream, batches = workload
    _run(stream, batches)


@pytest.mark.slow
@settings(max_examples=200, **_SETTINGS)  # type: ignore[arg-type]
@given(workloads())
def test_more_generated_streams_and_events_decode_identically(
    workload: tuple[dict[str, Any], list[list[bytes | None]]],
) -> None:
    stream, batches = workload
    _run(stream, batches)


def test_generated_events_mostly_take_the_compiled_path() -> None:
    """The identity test above is not vacuous: plain generated rows are compiled."""
    stream = {
        "name": "gen",
        "topic": "t",
        "entity": "dev",
        "event_time": "ts",
        "fields": {
            "x": {"type": "float", "nullable": True},
            "n": {"type": "int"},
            "b": {"type": "bool"},
            "c": {"type": "category"},
        },
    }
    rng = np.random.default_rng(3)
    values: list[bytes | None] = [
        msgspec.json.encode(
            {
                "x": round(float(rng.normal()), 3) if i % 7 else None,
                "n": int(rng.integers(-5, 5)),
                "b": bool(i % 2),
                "c": "abc"[i % 3],
                "dev": f"d{i % 5}",
                "ts": 1.7e9 + i,
            }
        )
        for i in range(500)
    ]
    got = _run(stream, [values, values])
    assert got[1].fallback_rows == 0


# ---------------------------------------------------------------- the hostile-input corpus


def _corpus() -> list[bytes | None]:
    payloads: list[bytes | None] = []
    for path in sorted(CORPUS.rglob("*")) if CORPUS.is_dir() else []:
        if path.is_file():
            data = path.read_bytes()
            payloads.extend(data.splitlines() if path.suffix == ".jsonl" else [data])
    return payloads


@pytest.mark.skipif(not CORPUS.is_dir(), reason="no tests/corpus/decode directory")
@pytest.mark.parametrize("strict", [True, False])
def test_corpus_decodes_identically(strict: bool) -> None:
    payloads = _corpus()
    stream = copy.deepcopy(DEMO_STREAM) | {"strict": strict}
    for start in range(0, len(payloads), 500):
        _run(stream, [payloads[start : start + 500]])


def test_nan_of_a_null_has_the_same_bits() -> None:
    stream = {"name": "s", "topic": "t", "fields": {"x": {"type": "float", "nullable": True}}}
    [got] = _run(stream, [[b'{"x":null}', b'{"x":1}']])
    assert struct.pack("<d", got.columns["x"][0]) == struct.pack("<d", np.nan)


# ---------------------------------------------------------------- the switch and the metric


def test_the_stream_switch_picks_the_path() -> None:
    wide = wide_stream(5, "t")
    payloads: list[bytes | None] = [*generate_wide(50, fields=5), b'{"f00": "\\u0031"}']
    compiled = StreamDecoder(_spec(wide))
    plain = StreamDecoder(_spec({**wide, "decoder": "msgspec"}))
    got, want = compiled.decode(payloads), plain.decode(payloads)
    assert_same(got, want)
    assert (got.fallback_rows, want.fallback_rows) == (1, 0)
    assert compiled_supported(_spec(wide))


def test_pipeline_counts_fallback_rows_per_stream() -> None:
    from prometheus_client import CollectorRegistry

    from monitor.metrics import Metrics
    from monitor.pipeline.stream import StreamPipeline
    from tests.test_metrics import _raw

    registry = CollectorRegistry()
    spec = _spec(DEMO_STREAM)
    pipeline = StreamPipeline(spec, Metrics(registry), "dlq")
    labels = {"stream": "sensors"}
    assert registry.get_sample_value("driftwarden_decode_fallback_total", labels) == 0
    events = generate_fleet(2_000, seed=9, bad_rate=0.05)
    pipeline.process(_raw(events.values[:1000], events.keys[:1000]))
    pipeline.process(_raw(events.values[1000:], events.keys[1000:]))
    bad_later = sum(r is not None for r in events.expected[1000:])
    # the rows the compiled decoder hands to msgspec: in the first batch the bad rows
    # and the rows with devices new after the first bad row, then only the bad rows
    same = StreamDecoder(spec)
    first = same.decode(list(events.values[:1000])).fallback_rows
    assert same.decode(list(events.values[1000:])).fallback_rows == bad_later
    want = first + bad_later
    assert registry.get_sample_value("driftwarden_decode_fallback_total", labels) == want


def test_a_setting_the_kernel_does_not_know_leaves_the_stream_to_msgspec(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import monitor.pipeline.jsonscan as js

    stream = {"name": "s", "topic": "t", "fields": {"x": {"type": "float"}}}
    monkeypatch.setattr(js, "_KNOWN_STREAM_SETTINGS", js._KNOWN_STREAM_SETTINGS - {"strict"})
    monkeypatch.setattr(js, "_KNOWN_FIELD_SETTINGS", js._KNOWN_FIELD_SETTINGS - {"range"})
    assert compiled_supported(_spec(stream))  # both at their defaults
    assert not compiled_supported(_spec({**stream, "strict": True}))
    ranged = {**stream, "fields": {"x": {"type": "float", "range": [0, 1]}}}
    assert not compiled_supported(_spec(ranged))
    decoder = StreamDecoder(_spec(ranged))
    assert decoder.decode([b'{"x": 0.5}']).fallback_rows == 0  # msgspec alone: none counted


def test_a_stream_that_defeats_the_kernel_is_probed_one_batch_in_sixteen() -> None:
    stream = {"name": "s", "topic": "t", "fields": {"x": {"type": "float"}}}
    compiled, reference = _pair(stream)
    escaped: list[bytes | None] = [b'{"x":1, "\\u0078":%d}' % i for i in range(200)]
    plain: list[bytes | None] = [b'{"x":%d}' % i for i in range(200)]
    counts = []
    for values in [escaped, plain, *[plain] * 14, plain, plain]:
        got = compiled.decode(values)
        assert_same(got, reference.decode_msgspec(values))
        counts.append(got.fallback_rows)
    assert counts == [200] * 16 + [0, 0]
    assert CAUSES[compiled.last_causes[0]] == ""


def test_nanosecond_times_and_large_integers_stay_on_the_compiled_path() -> None:
    stream = {
        "name": "s",
        "topic": "t",
        "entity": "id",
        "event_time": "ts",
        "event_time_unit": "ns",
        "fields": {"n": {"type": "int"}, "x": {"type": "float"}},
    }
    rng = np.random.default_rng(1)
    big = rng.integers(-(2**62), 2**62, 300).tolist()
    values: list[bytes | None] = [
        b'{"id":%d,"ts":%d,"n":%d,"x":%d}' % (b % 5 * 10**17, 1_790_000_000 * 10**9 + b, b, -b)
        for b in big
    ]
    first, then = _run(stream, [values, values])
    assert first.fallback_rows == 0 and then.fallback_rows == 0


def test_limits_of_the_hostile_input_path_hold_on_the_compiled_path() -> None:
    stream = {
        "name": "s",
        "topic": "t",
        "entity": "e",
        "max_fields": 3,
        "max_string_length": 4,
        "max_categories": 2,
        "fields": {"x": {"type": "float", "range": [0, 10]}, "c": {"type": "category"}},
    }
    values: list[bytes | None] = [
        b'{"e":"d1","x":1,"c":"a"}',
        b'{"e":"d1","x":1,"c":"a","u":1}',  # too many fields
        b'{"e":"d1","x":11,"c":"a"}',  # out of range: a violation, the row stays
        b'{"e":"d1","x":1,"c":"longer"}',  # a new category over max_string_length
        b'{"e":"d1","x":1,"c":"b"}',
        b'{"e":"d1","x":1,"c":"z"}',  # over max_categories
        b'{"e":"d12345","x":1,"c":"a"}',  # entity over max_string_length
    ]
    compiled, reference = _pair(stream)
    for _ in range(2):
        got = compiled.decode(values)
        assert_same(got, reference.decode_msgspec(values))
    assert [CAUSES[c] for c in compiled.last_causes] == [
        "", "keys", "schema", "new_value", "", "new_value", "new_value"
    ]  # fmt: skip
    assert got.violations and got.limit_hits


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_released_entity_codes_are_handed_out_again_identically(seed: int) -> None:
    """Releases between batches (as the fleet stage makes them): both paths give the
    same codes, the kernel's tables follow (released entries revived or compacted)."""
    stream = {
        "name": "s",
        "topic": "t",
        "entity": "e",
        "event_time": "ts",
        "max_entities": 300,
        "fields": {"x": {"type": "float"}, "c": {"type": "category"}},
    }
    rng = np.random.default_rng(seed)
    compiled, reference = _pair(stream)
    for step in range(40):
        n = int(rng.integers(1, 400))
        ids = rng.integers(0, 3000, n)
        rows: list[bytes | None] = []
        for i, k in enumerate(ids.tolist()):
            dev: Any = k if k % 3 == 0 else f"d{k}"
            ts: Any = 1e9 + i if k % 5 else f"2026-11-30T00:00:{i % 60:02d}Z"
            cat = "\\u00e9" if rng.random() < 0.01 else f"c{k % 7}"
            rows.append(b'{"e":%s,"ts":%s,"x":%d,"c":"%s"}' % (
                json.dumps(dev).encode(), json.dumps(ts).encode(), k, cat.encode()))  # fmt: skip
        got = compiled.decode(rows)
        assert_same(got, reference.decode_msgspec(rows))
        assert_same_vocabularies(compiled.base, reference)
        vocab = reference.entities
        assert vocab is not None
        live = np.array([c for c in vocab.codes.values() if c >= 0], dtype=np.int64)
        gone = rng.choice(live, size=int(rng.integers(0, len(live) + 1)), replace=False)
        if step % 7 == 6:
            gone = live  # everything at once (the tables compact)
        assert compiled.base.release_entities(gone) == reference.release_entities(gone)
        assert_same_vocabularies(compiled.base, reference)
    assert compiled._vocab.strings.meta[2] < 1024 + 3000  # released entries are compacted


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.integers(1, 9999),
            st.integers(0, 13),
            st.integers(0, 31),
            st.integers(0, 24),
            st.integers(0, 60),
            st.integers(0, 60),
            st.sampled_from(["", ".5", ".25", ".123", ".123456", ".1234567", "."]),
            st.sampled_from(["", "Z", "+01:00", "-05:30", "+23:59", "+24:00", "z", "+0100"]),
            st.sampled_from(["T", " ", "t"]),
        ),
        min_size=1,
        max_size=12,
    ),
    st.booleans(),
)
def test_iso_times_in_the_kernel_are_the_msgspec_paths(
    parts: list[tuple[int, int, int, int, int, int, str, str, str]], numbers: bool
) -> None:
    """ISO-8601 texts of every width and validity, alone or mixed with epoch numbers
    (so the msgspec path takes its fixed-width or its general numpy path)."""
    stream = {"name": "s", "topic": "t", "event_time": "ts", "fields": {"x": {"type": "float"}}}
    values: list[bytes | None] = []
    for i, (y, mo, d, h, mi, s, frac, zone, sep) in enumerate(parts):
        text = f"{y:04d}-{mo:02d}-{d:02d}{sep}{h:02d}:{mi:02d}:{s:02d}{frac}{zone}"
        values.append(json.dumps({"ts": text, "x": i}).encode())
        if numbers:
            values.append(json.dumps({"ts": 1.7e9 + i, "x": i}).encode())
    _run(stream, [values])
