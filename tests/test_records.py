"""connectors.records: Kafka record batches (message format v2) read into columns.

A small encoder here writes batches as the Kafka protocol guide describes them
(https://kafka.apache.org/documentation/#recordbatch: a 61-byte header, then records
framed by zigzag varints); the CRC is left zero, as nothing here checks it. Every test
compares :func:`read_records` with what was encoded, exactly, and hostile framing must
only ever give :class:`CorruptRecordsError`.
"""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cramjam
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.fetch import DirectFetcher, _Part
from connectors.records import CorruptRecordsError, PackedValues, RecordColumns, read_records

ROOT = Path(__file__).resolve().parents[1]
GZIP, SNAPPY, LZ4, ZSTD = 1, 2, 3, 4
XERIAL = 5  # snappy in the Java client's (xerial) block framing; codec 2 on the wire
LOG_APPEND_TIME, TRANSACTIONAL, CONTROL = 0x08, 0x10, 0x20
ABORT, COMMIT = 0, 1

# -- the encoder ----------------------------------------------------------------------


def varint(n: int) -> bytes:
    """A signed integer as Kafka writes it: zigzag, then 7 bits a byte, low first."""
    z = ((n << 1) ^ (n >> 63)) & ((1 << 64) - 1)
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _sized(data: bytes | None) -> bytes:
    return varint(-1) if data is None else varint(len(data)) + data


@dataclass(frozen=True)
class Rec:
    """One record: its offset and timestamp deltas from the batch's base."""

    key: bytes | None
    value: bytes | None
    offset_delta: int = 0
    timestamp_delta: int = 0
    headers: tuple[tuple[bytes, bytes | None], ...] = ()

    def encode(self) -> bytes:
        body = b"\x00" + varint(self.timestamp_delta) + varint(self.offset_delta)
        body += _sized(self.key) + _sized(self.value) + varint(len(self.headers))
        for name, value in self.headers:
            body += _sized(name) + _sized(value)
        return varint(len(body)) + body


def compress(codec: int, data: bytes) -> bytes:
    if codec == GZIP:
        return gzip.compress(data, mtime=0)
    if codec == SNAPPY:
        return bytes(cramjam.snappy.compress_raw(data))
    if codec == XERIAL:  # magic, version 1, compatible version 1, then sized blocks
        out = b"\x82SNAPPY\x00" + struct.pack(">ii", 1, 1)
        for i in range(0, max(len(data), 1), 32):
            block = bytes(cramjam.snappy.compress_raw(data[i : i + 32]))
            out += struct.pack(">i", len(block)) + block
        return out
    if codec == LZ4:
        return bytes(cramjam.lz4.compress(data))
    if codec == ZSTD:
        return bytes(cramjam.zstd.compress(data))
    assert codec == 0
    return data


@dataclass(frozen=True)
class Batch:
    """A v2 record batch; ``encode`` gives its bytes on the wire."""

    base_offset: int
    records: tuple[Rec, ...]
    base_timestamp: int = 1_700_000_000_000
    codec: int = 0
    attributes: int = 0  # timestamp type, transactional, control bits
    producer_id: int = -1
    last_offset_delta: int | None = None  # default: the last record's offset delta
    max_timestamp: int | None = None  # default: the largest record timestamp
    count: int | None = None  # default: len(records)
    magic: int = 2
    raw_records: bytes | None = None  # instead of the encoded records (hostile framing)

    @property
    def lod(self) -> int:
        if self.last_offset_delta is not None:
            return self.last_offset_delta
        return max((r.offset_delta for r in self.records), default=0)

    @property
    def max_ts(self) -> int:
        if self.max_timestamp is not None:
            return self.max_timestamp
        deltas = [r.timestamp_delta for r in self.records]
        return self.base_timestamp + max(deltas, default=0)

    def encode(self) -> bytes:
        records = b"".join(r.encode() for r in self.records)
        if self.raw_records is not None:
            records = self.raw_records
        wire_codec = SNAPPY if self.codec == XERIAL else self.codec
        body = struct.pack(
            ">hiqqqhii",
            self.attributes | wire_codec,
            self.lod,
            self.base_timestamp,
            self.max_ts,
            self.producer_id,
            0 if self.producer_id >= 0 else -1,  # producer epoch
            0 if self.producer_id >= 0 else -1,  # base sequence
            len(self.records) if self.count is None else self.count,
        ) + compress(self.codec, records)
        after_length = struct.pack(">ibI", 0, self.magic, 0) + body  # leader epoch, magic, crc
        return struct.pack(">qi", self.base_offset, len(after_length)) + after_length

    def expected(self) -> list[tuple[int, int, bytes | None, bytes | None]]:
        """(offset, timestamp, key, value) of each record, as a consumer sees it."""
        log_append = self.attributes & LOG_APPEND_TIME
        return [
            (
                self.base_offset + r.offset_delta,
                self.max_ts if log_append else self.base_timestamp + r.timestamp_delta,
                r.key,
                r.value,
            )
            for r in self.records
        ]

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.lod + 1


def control(base_offset: int, producer_id: int, kind: int) -> Batch:
    """A transaction marker: key (version, type), value (version, coordinator epoch)."""
    marker = Rec(struct.pack(">hh", 0, kind), struct.pack(">hi", 0, 0))
    return Batch(
        base_offset, (marker,), attributes=TRANSACTIONAL | CONTROL, producer_id=producer_id
    )


def as_buf(*batches: Batch | bytes) -> npt.NDArray[np.uint8]:
    raw = b"".join(b.encode() if isinstance(b, Batch) else b for b in batches)
    return np.frombuffer(raw, np.uint8) if raw else np.zeros(0, np.uint8)


def read(
    buf: npt.NDArray[np.uint8], fetch_offset: int = 0, aborted: Sequence[tuple[int, int]] = ()
) -> RecordColumns:
    return read_records(buf, 0, len(buf), fetch_offset, aborted)


def rows(cols: RecordColumns) -> list[tuple[int, int, bytes | None, bytes | None]]:
    assert len(cols.values) == len(cols.keys) == len(cols.offsets) == len(cols.timestamps)
    return [
        (int(o), int(t), k, v)
        for o, t, k, v in zip(cols.offsets, cols.timestamps, cols.keys, cols.values, strict=True)
    ]


def simple(base: int, n: int, *, codec: int = 0, value: bytes = b"v") -> Batch:
    recs = tuple(
        Rec(b"k%d" % i, value + b"%d" % (base + i), offset_delta=i, timestamp_delta=i)
        for i in range(n)
    )
    return Batch(base, recs, codec=codec)


def expected_rows(
    batches: Sequence[Batch], fetch_offset: int = 0
) -> list[tuple[int, int, bytes | None, bytes | None]]:
    return [r for b in batches for r in b.expected() if r[0] >= fetch_offset]


# -- the encoder against the protocol guide -------------------------------------------


def test_varints_are_zigzag_as_the_protocol_guide_writes_them() -> None:
    assert [varint(v) for v in (0, -1, 1, -2, 2, 63, -64, 64)] == [
        b"\x00",
        b"\x01",
        b"\x02",
        b"\x03",
        b"\x04",
        b"\x7e",
        b"\x7f",
        b"\x80\x01",
    ]
    assert varint(150) == b"\xac\x02"  # zigzag 300
    assert varint(-(2**63)) == b"\xff" * 9 + b"\x01"
    raw = Batch(7, (Rec(b"k", b"v", 0, 0),), attributes=TRANSACTIONAL, producer_id=9).encode()
    assert struct.unpack_from(">qi", raw, 0) == (7, len(raw) - 12)  # length: after itself
    assert raw[16] == 2  # magic, after the leader epoch
    assert struct.unpack_from(">hi", raw, 21) == (TRANSACTIONAL, 0)  # attributes, lod
    assert struct.unpack_from(">q", raw, 43) == (9,)  # producer id
    assert struct.unpack_from(">i", raw, 57) == (1,)  # the record count ends the header
    # the record: length 8 (zigzag 16), attributes, timestamp 0, offset 0, key, value, headers
    assert raw[61:] == b"\x10\x00\x00\x00\x02k\x02v\x00"


@given(st.integers(-(2**63), 2**63 - 1))
def test_the_varint_kernel_reads_every_int64(value: int) -> None:
    from connectors.records import _varint

    raw = np.frombuffer(varint(value) + b"\xff", np.uint8)
    assert _varint(raw, 0, len(raw) - 1) == (value, len(raw) - 1)
    assert _varint(raw, 0, len(raw) - 2)[1] == -1  # one byte short: malformed


# -- exact reading ----------------------------------------------------------------------


def test_one_batch_with_null_and_empty_keys_values_and_headers() -> None:
    recs = (
        Rec(b"a", b'{"x": 1}', 0, 0, headers=((b"trace", b"1"), (b"none", None))),
        Rec(None, b"", 1, -5),
        Rec(b"", None, 2, 7),
        Rec(None, None, 4, 3, headers=((b"", b""),)),
    )
    batch = Batch(1000, recs, base_timestamp=50, last_offset_delta=6)
    cols = read(as_buf(batch), 1000)
    assert rows(cols) == [
        (1000, 50, b"a", b'{"x": 1}'),
        (1001, 45, None, b""),
        (1002, 57, b"", None),
        (1004, 53, None, None),
    ]
    assert cols.next_offset == 1007  # base + last offset delta + 1, past the compacted gap
    assert len(cols) == 4
    assert cols.values.sizes().tolist() == [8, 0, -1, -1]
    assert cols.keys.sizes().tolist() == [1, -1, 0, -1]
    assert cols.offsets.dtype == np.int64 and cols.timestamps.dtype == np.int64
    assert cols.values.data[cols.values.starts[0] : cols.values.starts[-1]].tobytes() == (
        b'{"x": 1}'
    )


def test_empty_record_sets() -> None:
    empty = read(np.zeros(0, np.uint8), 42)
    assert (len(empty), empty.next_offset, list(empty.values)) == (0, 42, [])
    short = read(np.zeros(60, np.uint8), 42)  # less than a batch header
    assert (len(short), short.next_offset) == (0, 42)


@st.composite
def batch_lists(draw: st.DrawFn, codecs: Sequence[int] = (0,)) -> list[Batch]:
    """Several batches in offset order: compacted gaps inside and between them,
    random keys and values (empty and null too), timestamp deltas of both signs."""
    payload = st.none() | st.binary(max_size=24)
    base = draw(st.integers(0, 2**40))
    out = []
    for _ in range(draw(st.integers(1, 4))):
        count = draw(st.integers(0, 5))
        deltas = sorted(draw(st.sets(st.integers(0, 12), min_size=count, max_size=count)))
        recs = tuple(
            Rec(
                draw(payload),
                draw(payload),
                od,
                draw(st.integers(-(2**40), 2**40)),
                headers=tuple(
                    draw(st.lists(st.tuples(st.binary(max_size=4), payload), max_size=2))
                ),
            )
            for od in deltas
        )
        lod = max(deltas, default=0) + draw(st.integers(0, 2))  # compaction drops the tail
        out.append(
            Batch(
                base,
                recs,
                base_timestamp=draw(st.integers(0, 2**42)),
                codec=draw(st.sampled_from(codecs)),
                attributes=draw(st.sampled_from([0, LOG_APPEND_TIME])),
                last_offset_delta=lod,
            )
        )
        base += lod + 1 + draw(st.integers(0, 3))
    return out


@settings(max_examples=200)
@given(batch_lists(), st.data())
def test_round_trip_is_exact(batches: list[Batch], data: st.DataObject) -> None:
    first, last = batches[0].base_offset, batches[-1].next_offset
    fetch_offset = data.draw(st.integers(max(0, first - 2), last + 1), "fetch offset")
    cols = read(as_buf(*batches), fetch_offset)
    assert rows(cols) == expected_rows(batches, fetch_offset)
    assert cols.next_offset == max(fetch_offset, last)
    want = expected_rows(batches, fetch_offset)
    assert (cols.values.sizes() == [-1 if r[3] is None else len(r[3]) for r in want]).all()
    assert (cols.keys.sizes() == [-1 if r[2] is None else len(r[2]) for r in want]).all()


@settings(max_examples=100)
@given(batch_lists(codecs=(0, GZIP, SNAPPY, XERIAL, LZ4, ZSTD)), st.data())
def test_round_trip_with_compressed_batches_among_plain_ones(
    batches: list[Batch], data: st.DataObject
) -> None:
    first, last = batches[0].base_offset, batches[-1].next_offset
    fetch_offset = data.draw(st.integers(max(0, first - 2), last + 1), "fetch offset")
    cols = read(as_buf(*batches), fetch_offset)
    assert rows(cols) == expected_rows(batches, fetch_offset)
    assert cols.next_offset == max(fetch_offset, last)


def test_the_fetch_offset_in_the_middle_of_a_batch_drops_the_records_before_it() -> None:
    batches = [simple(100, 5), simple(105, 3, codec=GZIP)]
    buf = as_buf(*batches)
    for fetch_offset in range(98, 110):
        cols = read(buf, fetch_offset)
        assert [int(o) for o in cols.offsets] == [o for o in range(100, 108) if o >= fetch_offset]
        assert rows(cols) == expected_rows(batches, fetch_offset)
        assert cols.next_offset == max(108, fetch_offset)


def test_next_offset_follows_the_last_offset_delta_past_compacted_records() -> None:
    gappy = Batch(10, (Rec(b"a", b"1", 0), Rec(b"b", b"2", 3)), last_offset_delta=9)
    emptied = Batch(25, (), last_offset_delta=4)  # compaction left no record in it
    cols = read(as_buf(gappy, emptied), 10)
    assert [int(o) for o in cols.offsets] == [10, 13]
    assert cols.next_offset == 30
    only_empty = read(as_buf(emptied), 25)
    assert (len(only_empty), only_empty.next_offset) == (0, 30)


def test_a_record_set_inside_a_larger_response_is_read_between_start_and_end() -> None:
    batches = [simple(0, 3), simple(3, 2, codec=LZ4)]
    inner = as_buf(*batches).tobytes()
    raw = b"\xff" * 13 + inner + Batch(5, (Rec(b"x", b"y"),)).encode() + b"\x00" * 7
    buf = np.frombuffer(raw, np.uint8)
    cols = read_records(buf, 13, 13 + len(inner), 0)
    assert rows(cols) == expected_rows(batches)
    assert cols.next_offset == 5


def test_a_trailing_partial_batch_is_left_for_the_next_fetch() -> None:
    batches = [simple(0, 3), simple(3, 4, codec=ZSTD), simple(7, 2)]
    raw = as_buf(*batches).tobytes()
    ends = np.cumsum([len(b.encode()) for b in batches])
    for cut in range(len(raw) + 1):
        whole = int(np.searchsorted(ends, cut, side="right"))  # batches entirely in raw[:cut]
        cols = read(np.frombuffer(raw[:cut], np.uint8), 1)
        assert rows(cols) == expected_rows(batches[:whole], 1)
        assert cols.next_offset == (batches[whole - 1].next_offset if whole else 1)


def test_an_end_past_the_buffer_reads_only_what_is_there() -> None:
    raw = as_buf(simple(0, 2), simple(2, 2)).tobytes()
    first = len(simple(0, 2).encode())
    cols = read_records(np.frombuffer(raw[: first + 20], np.uint8), -5, len(raw) * 4, 0)
    assert rows(cols) == expected_rows([simple(0, 2)])


def test_log_append_time_batches_stamp_every_record_with_the_max_timestamp() -> None:
    recs = (Rec(b"a", b"1", 0, 5), Rec(b"b", b"2", 1, -3))
    stamped = Batch(0, recs, base_timestamp=1000, attributes=LOG_APPEND_TIME, max_timestamp=9999)
    created = Batch(2, recs, base_timestamp=1000)
    packed = Batch(4, recs, base_timestamp=1000, attributes=LOG_APPEND_TIME, codec=SNAPPY,
                   max_timestamp=7777)  # fmt: skip
    cols = read(as_buf(stamped, created, packed))
    assert cols.timestamps.tolist() == [9999, 9999, 1005, 997, 7777, 7777]


# -- transactions ---------------------------------------------------------------------


def txn(base: int, producer: int, n: int, codec: int = 0) -> Batch:
    recs = tuple(Rec(b"p%d" % producer, b"%d" % (base + i), i, i) for i in range(n))
    return Batch(base, recs, codec=codec, attributes=TRANSACTIONAL, producer_id=producer)


# producer 7 aborts [0, 5], producer 8 commits [3, 8], producer 7 commits [9, 11],
# producer 7 aborts again [12, 14] (one compressed batch), plain records between
LOG = [
    txn(0, 7, 3),
    txn(3, 8, 2),
    control(5, 7, ABORT),
    simple(6, 2),
    control(8, 8, COMMIT),
    txn(9, 7, 2),
    control(11, 7, COMMIT),
    txn(12, 7, 2, codec=GZIP),
    control(14, 7, ABORT),
    simple(15, 1),
]
ABORTED = [(7, 12), (7, 0)]  # as the broker lists them (any order)


def test_read_committed_skips_aborted_transactions_and_control_batches() -> None:
    cols = read(as_buf(*LOG), 0, ABORTED)
    assert [int(o) for o in cols.offsets] == [3, 4, 6, 7, 9, 10, 15]
    assert list(cols.values) == [b"3", b"4", b"v6", b"v7", b"9", b"10", b"v15"]
    assert cols.next_offset == 16


def test_read_uncommitted_keeps_every_record_but_control_batches() -> None:
    cols = read(as_buf(*LOG), 0)
    assert [int(o) for o in cols.offsets] == [0, 1, 2, 3, 4, 6, 7, 9, 10, 12, 13, 15]
    assert cols.next_offset == 16


def test_an_aborted_transaction_begun_before_the_fetch_offset_is_still_skipped() -> None:
    # the response starts inside producer 7's aborted transaction [0, 5]
    cols = read(as_buf(*LOG[1:]), 3, ABORTED)
    assert [int(o) for o in cols.offsets] == [3, 4, 6, 7, 9, 10, 15]
    cols = read(as_buf(*LOG[:2]), 1, ABORTED)
    assert [int(o) for o in cols.offsets] == [3, 4]
    assert cols.next_offset == 5


def test_records_of_a_producer_before_its_aborted_transaction_are_kept() -> None:
    batches = [txn(0, 7, 2), control(2, 7, COMMIT), txn(3, 7, 2), control(5, 7, ABORT)]
    cols = read(as_buf(*batches), 0, [(7, 3)])
    assert [int(o) for o in cols.offsets] == [0, 1]
    assert cols.next_offset == 6


def test_a_response_of_control_batches_only_moves_the_offset_on() -> None:
    cols = read(as_buf(control(40, 3, COMMIT), control(41, 4, ABORT)), 40, [(4, 30)])
    assert (len(cols), cols.next_offset) == (0, 42)


# -- hostile framing --------------------------------------------------------------------


def framed(base: int, records: bytes, *, count: int = 1, lod: int = 0, codec: int = 0) -> Batch:
    return Batch(base, (), raw_records=records, count=count, last_offset_delta=lod, codec=codec)


def record_body(key: bytes, value: bytes) -> bytes:
    """A record after its length varint (attributes, deltas, key, value, headers)."""
    return b"\x00" + varint(0) + varint(0) + key + value + varint(0)


def corrupt(buf: npt.NDArray[np.uint8], fetch_offset: int = 0) -> CorruptRecordsError:
    with pytest.raises(CorruptRecordsError) as info:
        read(buf, fetch_offset)
    exc = info.value
    assert exc.after > exc.at and exc.after > fetch_offset
    return exc


HOSTILE_RECORDS = {
    "truncated length varint": b"\xff\xff\xff",
    "truncated timestamp varint": varint(4) + b"\x00\xff\xff\xff",
    "truncated key length varint": varint(5) + b"\x00\x00\x00\xff\xff",
    "length past the batch": varint(200) + record_body(varint(1) + b"k", varint(1) + b"v"),
    "negative length": varint(-3) + record_body(varint(1) + b"k", varint(1) + b"v"),
    "zero length": varint(0) + record_body(varint(1) + b"k", varint(1) + b"v"),
    "key past the record": varint(6) + record_body(varint(9) + b"k", varint(1) + b"v")[:6],
    "value past the record": varint(8) + record_body(varint(1) + b"k", varint(30) + b"v"),
    "key length near 2**63": varint(30) + record_body(varint(2**63 - 1) + b"k", b"") + b"\x00" * 20,
    "value length near 2**63": varint(30) + record_body(varint(0), varint(2**63 - 3)) + b"\0" * 20,
    "record length near 2**63": varint(2**63 - 1) + record_body(varint(0), varint(0)),
    "varint of eleven bytes": varint(12) + b"\x00" + b"\x80" * 10 + b"\x00",
    "fewer records than counted": varint(5) + record_body(varint(0), varint(0)),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_RECORDS))
def test_malformed_records_raise_with_the_batch_offsets(name: str) -> None:
    count = 2 if name == "fewer records than counted" else 1
    bad = framed(500, HOSTILE_RECORDS[name], count=count, lod=4)
    exc = corrupt(as_buf(bad), 500)
    assert (exc.at, exc.after) == (500, 505)
    assert "offset 500" in str(exc)
    # the same inside a compressed batch
    exc = corrupt(as_buf(framed(500, HOSTILE_RECORDS[name], count=count, lod=4, codec=LZ4)), 502)
    assert (exc.at, exc.after) == (500, 505)


def test_a_negative_key_length_other_than_minus_one_is_a_null_key_as_in_kafka() -> None:
    rec = record_body(varint(-7), varint(1) + b"v")
    cols = read(as_buf(framed(0, varint(len(rec)) + rec)))
    assert list(cols.keys) == [None] and list(cols.values) == [b"v"]


def test_a_huge_record_count_allocates_by_the_bytes_there_are() -> None:
    one = Rec(b"k", b"v").encode()
    exc = corrupt(as_buf(framed(9, one, count=2**31 - 1, lod=2**31 - 2)))
    assert (exc.at, exc.after) == (9, 9 + 2**31 - 1)
    exc = corrupt(as_buf(framed(9, one, count=2**31 - 1, codec=ZSTD)))
    assert exc.at == 9


@pytest.mark.parametrize(
    ("batch", "why"),
    [
        (Batch(70, (Rec(b"k", b"v"),), magic=1), "message format v1"),
        (Batch(70, (Rec(b"k", b"v"),), magic=0), "message format v0"),
        (Batch(70, (Rec(b"k", b"v"),), count=-1), "negative record count"),
        (Batch(70, (Rec(b"k", b"v"),), count=-9, codec=GZIP), "negative record count"),
    ],
)
def test_bad_headers_raise_with_the_batch_offsets(batch: Batch, why: str) -> None:
    exc = corrupt(as_buf(batch), 70)
    assert (exc.at, exc.after) == (70, 71)
    assert why in str(exc)


@pytest.mark.parametrize("length", [-1, -(2**31), 0, 48])
def test_a_batch_length_shorter_than_the_header_raises(length: int) -> None:
    raw = bytearray(Batch(70, (Rec(b"k", b"v"),), last_offset_delta=3).encode())
    raw[8:12] = struct.pack(">i", length)
    exc = corrupt(np.frombuffer(bytes(raw), np.uint8), 72)
    assert (exc.at, exc.after) == (70, 74)
    assert "bad length" in str(exc)


@pytest.mark.parametrize("codec", [GZIP, SNAPPY, LZ4, ZSTD, 5, 6, 7])
def test_batches_that_do_not_inflate_raise(codec: int) -> None:
    raw = bytearray(framed(30, b"\x00\x01garbage that inflates to nothing" * 3, lod=1).encode())
    raw[22] = codec  # the attributes' low byte
    exc = corrupt(np.frombuffer(bytes(raw), np.uint8), 30)
    assert (exc.at, exc.after) == (30, 32)
    assert "does not inflate" in str(exc)


def test_xerial_snappy_with_a_cut_block_raises() -> None:
    raw = compress(XERIAL, Rec(b"k", b"v" * 100).encode())
    assert raw.count(b"\x00\x00\x00") >= 4  # several blocks
    batch = bytearray(framed(0, raw[:-3]).encode())
    batch[22] = SNAPPY
    exc = corrupt(np.frombuffer(bytes(batch), np.uint8))
    assert exc.at == 0


def test_records_before_a_bad_batch_are_returned_and_the_next_fetch_raises() -> None:
    good = [simple(0, 3), simple(3, 2, codec=GZIP)]
    bad = framed(5, HOSTILE_RECORDS["negative length"], lod=2)
    tail = simple(8, 2)
    buf = as_buf(*good, bad, tail)
    cols = read(buf, 1)
    assert rows(cols) == expected_rows(good, 1)
    assert cols.next_offset == 5  # the next fetch starts at the bad batch
    exc = corrupt(as_buf(bad, tail), 5)
    assert (exc.at, exc.after) == (5, 8)
    assert rows(read(as_buf(tail), 8)) == expected_rows([tail])


def test_a_bad_header_after_good_batches_ends_the_record_set() -> None:
    good = [simple(0, 3)]
    for bad in (Batch(3, (Rec(b"k", b"v"),), magic=1), Batch(3, (), count=-5)):
        cols = read(as_buf(*good, bad, simple(4, 1)), 0)
        assert rows(cols) == expected_rows(good)
        assert cols.next_offset == 3


def test_a_bad_batch_after_records_before_the_fetch_offset_raises() -> None:
    # nothing before the bad batch moves past the fetch offset: returning nothing with
    # the same offset would fetch the same response for ever
    bad = framed(5, HOSTILE_RECORDS["negative length"], lod=2)
    exc = corrupt(as_buf(simple(0, 5), bad), 5)
    assert (exc.at, exc.after) == (5, 8)


def test_garbage_lengths_after_a_good_batch_never_read_past_the_end() -> None:
    good = simple(0, 2)
    tail = bytearray(Batch(2, (Rec(b"k", b"v"),)).encode())
    tail[8:12] = struct.pack(">i", 2**31 - 1)  # points far past the end: a partial batch
    cols = read(as_buf(good, bytes(tail)))
    assert rows(cols) == expected_rows([good])
    assert cols.next_offset == 2


# -- random damage ------------------------------------------------------------------------

HEADER_FIELDS = (0, 8, 16, 21, 22, 23, 57)  # base offset, length, magic, attributes, lod, count
INTERESTING = (0, 1, 2, 0x7F, 0x80, 0xFF)


@st.composite
def damaged(draw: st.DrawFn) -> tuple[bytes, int]:
    """A valid buffer (plain and compressed batches) with a few bytes changed, cut,
    inserted or deleted, often in a header field or a record's framing."""
    batches = draw(batch_lists(codecs=(0, 0, GZIP, SNAPPY, LZ4, ZSTD)))
    raw = bytearray(as_buf(*batches).tobytes())
    starts = np.cumsum([0] + [len(b.encode()) for b in batches])[:-1].tolist()
    for _ in range(draw(st.integers(1, 4))):
        if not raw:
            break
        kind = draw(st.sampled_from(["byte", "byte", "field", "insert", "delete", "cut"]))
        at = draw(st.integers(0, len(raw) - 1))
        if kind == "field":
            at = min(
                len(raw) - 1, draw(st.sampled_from(starts)) + draw(st.sampled_from(HEADER_FIELDS))
            )
            width = draw(st.sampled_from([1, 4, 8]))
            raw[at : at + width] = draw(st.binary(min_size=width, max_size=width))[: len(raw) - at]
        elif kind == "byte":
            raw[at] = draw(st.sampled_from(INTERESTING) | st.integers(0, 255))
        elif kind == "insert":
            raw[at:at] = draw(st.binary(min_size=1, max_size=12))
        elif kind == "delete":
            del raw[at : at + draw(st.integers(1, 12))]
        else:
            del raw[at:]
    first = batches[0].base_offset
    return bytes(raw), draw(st.integers(max(0, first - 1), batches[-1].next_offset))


def check_columns(cols: RecordColumns, fetch_offset: int) -> None:
    n = len(cols)
    assert len(cols.values) == len(cols.keys) == len(cols.timestamps) == n
    for packed in (cols.values, cols.keys):
        starts = packed.starts
        assert len(starts) == n + 1 and (np.diff(starts) >= 0).all()
        assert starts[0] >= 0 and starts[-1] <= len(packed.data)
        assert packed.null is None or len(packed.null) == n
        assert len(list(packed)) == n
    assert cols.next_offset >= fetch_offset


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(damaged(), st.data())
def test_damaged_buffers_give_records_or_corrupt_records_error(
    case: tuple[bytes, int], data: st.DataObject
) -> None:
    raw, fetch_offset = case
    buf = np.frombuffer(raw, np.uint8) if raw else np.zeros(0, np.uint8)
    end = data.draw(st.integers(0, len(raw) + 100), "end")
    aborted = data.draw(st.sampled_from([(), ((-1, 0),), ((0, 0), (5, 2**40))]), "aborted")
    for stop in (len(raw), end):
        got = outcome(buf, stop, fetch_offset, aborted)
        if isinstance(got, CorruptRecordsError):
            assert got.after > got.at and got.after > fetch_offset
        else:
            check_columns(got, fetch_offset)


def outcome(
    buf: npt.NDArray[np.uint8], end: int, fetch_offset: int, aborted: Sequence[tuple[int, int]]
) -> RecordColumns | CorruptRecordsError:
    try:
        return read_records(buf, 0, end, fetch_offset, aborted)
    except CorruptRecordsError as exc:
        return exc


@pytest.mark.slow
def test_the_kernels_never_index_out_of_bounds(tmp_path: Path) -> None:
    """The kernels skip numba's bounds checks for speed: run the damage and round-trip
    tests again with every check compiled in (a fresh cache), where a read past an
    array is an IndexError instead of a silent read."""
    code = (
        "from tests import test_records as t\n"
        "t.test_damaged_buffers_give_records_or_corrupt_records_error()\n"
        "for name in sorted(t.HOSTILE_RECORDS):\n"
        "    t.test_malformed_records_raise_with_the_batch_offsets(name)\n"
        "t.test_a_trailing_partial_batch_is_left_for_the_next_fetch()\n"
        "t.test_an_end_past_the_buffer_reads_only_what_is_there()\n"
        "t.test_read_committed_skips_aborted_transactions_and_control_batches()\n"
    )
    env = {
        **os.environ,
        "NUMBA_BOUNDSCHECK": "1",
        "NUMBA_CACHE_DIR": str(tmp_path),
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]


# -- the fetcher's answer to a bad batch --------------------------------------------------

KEY = ("events", 0)


def idle_fetcher(position: int) -> tuple[DirectFetcher, _Part]:
    """A fetcher's partition bookkeeping, with no thread and no broker."""
    fetcher = DirectFetcher.__new__(DirectFetcher)
    fetcher._lock = threading.Condition()
    fetcher._on_error = None
    part = _Part(generation=1, position=position)
    fetcher._parts = {KEY: part}
    return fetcher, part


def test_the_fetcher_moves_to_a_bad_batch_after_the_fetch_offset() -> None:
    fetcher, part = idle_fetcher(10)
    fetcher._corrupt(KEY, 1, 10, CorruptRecordsError("bad", 14, 20))
    assert (part.position, part.corrupt_tries) == (14, 0)
    fetcher._corrupt(KEY, 2, 14, CorruptRecordsError("bad", 30, 40))  # an old generation
    assert part.position == 14


def test_the_fetcher_skips_a_bad_batch_after_three_tries_and_always_moves_forward() -> None:
    fetcher, part = idle_fetcher(14)
    for tries in (1, 2):
        fetcher._corrupt(KEY, 1, 14, CorruptRecordsError("bad", 14, 20))
        assert (part.position, part.corrupt_tries) == (14, tries)
        assert part.retry_at > 0
    fetcher._corrupt(KEY, 1, 14, CorruptRecordsError("bad", 14, 20))
    assert (part.position, part.corrupt_tries) == (20, 0)
    for _ in range(3):  # offsets unknown: one past the position, never a stall
        fetcher._corrupt(KEY, 1, 20, CorruptRecordsError("bad"))
    assert part.position == 21


def test_a_partition_with_bad_batches_delivers_every_good_record_once() -> None:
    """The fetch loop against a log with broken batches, the responses cut after a
    few batches as a broker cuts them: every good record arrives once, in order; each
    broken batch is fetched three times, then skipped with exactly its offsets."""
    bad_records = framed(5, HOSTILE_RECORDS["negative length"], count=1, lod=2)
    bad_inflate = bytearray(framed(13, b"not zstd at all", lod=1).encode())
    bad_inflate[22] = ZSTD
    old_format = Batch(18, (Rec(b"k", b"v"),), magic=1)
    good = [simple(0, 3), simple(3, 2, codec=GZIP), simple(8, 2), simple(10, 3, codec=SNAPPY)]
    good += [simple(15, 3), simple(19, 2)]
    log: list[tuple[int, bytes]] = [(b.next_offset, b.encode()) for b in good]
    log += [(8, bad_records.encode()), (15, bytes(bad_inflate)), (19, old_format.encode())]
    log.sort()
    fetcher, part = idle_fetcher(0)
    delivered: list[int] = []
    fetches = 0
    while part.position is not None and part.position < 21 and fetches < 50:
        position = part.position
        fetches += 1
        response = b"".join(raw for past, raw in log if past > position)[:400]
        buf = np.frombuffer(response, np.uint8)
        try:
            cols = read_records(buf, 0, len(buf), position)
        except CorruptRecordsError as exc:
            fetcher._corrupt(KEY, 1, position, exc)
            continue
        assert cols.next_offset > position or len(cols) == 0
        delivered += [int(o) for o in cols.offsets]
        part.position = cols.next_offset
    assert delivered == [int(o) for o in read(as_buf(*good)).offsets]
    assert fetches <= 3 * 3 + len(good) + 2


# -- PackedValues ---------------------------------------------------------------------------


def packed(items: Sequence[bytes | None]) -> PackedValues:
    data = b"".join(x or b"" for x in items)
    starts = np.cumsum([0] + [len(x or b"") for x in items]).astype(np.int64)
    null = np.array([x is None for x in items], np.bool_)
    return PackedValues(np.frombuffer(data, np.uint8) if data else np.zeros(0, np.uint8),
                        starts, null)  # fmt: skip


ITEMS: list[bytes | None] = [b"ab", None, b"", b"{}", None, b"xyz"]


def test_packed_values_index_slice_and_iterate_like_a_list() -> None:
    p = packed(ITEMS)
    assert len(p) == 6 and list(p) == ITEMS
    assert [p[i] for i in range(-6, 6)] == ITEMS + ITEMS
    assert p[np.int64(3)] == b"{}"  # type: ignore[call-overload]  # numpy ints index too
    for s in (slice(None), slice(1, 4), slice(None, None, -1), slice(-2, None), slice(0, 6, 2),
              slice(4, 1, -2), slice(7, 9)):  # fmt: skip
        assert p[s] == ITEMS[s]
    for bad in (6, -7, 100):
        with pytest.raises(IndexError):
            p[bad]
    assert p.sizes().tolist() == [2, -1, 0, 2, -1, 3]
    assert isinstance(p, Sequence) and p.index(b"{}") == 3 and None in p


def test_packed_values_without_nulls_keep_no_mask() -> None:
    p = packed([b"a", b"", b"bc"])
    assert p.null is None
    assert p.sizes().tolist() == [1, 0, 2]
    assert PackedValues(p.data, p.starts).null is None


def test_rows_share_the_buffer_and_concat_packs_them_anew() -> None:
    p = packed(ITEMS)
    mid = p.rows(1, 5)
    assert mid.data is p.data and list(mid) == ITEMS[1:5]
    assert list(mid.rows(1, 3)) == ITEMS[2:4]
    assert mid.sizes().tolist() == [-1, 0, 2, -1]
    tail = p.rows(3, 6)
    plain = packed([b"q", b"rs"])
    joined = PackedValues.concat([mid, plain, tail, p.rows(2, 2)])
    assert list(joined) == [*ITEMS[1:5], b"q", b"rs", *ITEMS[3:6]]
    assert joined.starts[0] == 0 and joined.starts[-1] == len(joined.data)
    assert joined.data.tobytes() == b"{}" + b"qrs" + b"{}xyz"
    assert list(PackedValues.concat([plain, plain])) == [b"q", b"rs", b"q", b"rs"]
    assert PackedValues.concat([plain, plain]).null is None
    assert list(PackedValues.concat([p])) == ITEMS
    assert list(PackedValues.concat([])) == []


def test_record_columns_split_at_any_row() -> None:
    from connectors.fetch import _split

    batches = [simple(0, 3), simple(3, 3, codec=GZIP)]
    cols = read(as_buf(*batches), 1)
    for n in range(1, len(cols)):
        head, tail = _split(cols, n)
        assert rows(head) + rows(tail) == rows(cols)
        assert (head.next_offset, tail.next_offset) == (int(cols.offsets[n]), cols.next_offset)
        both = PackedValues.concat([head.values, tail.values])
        assert list(both) == list(cols.values)
