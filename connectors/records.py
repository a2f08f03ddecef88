"""Kafka record batches (message format v2) read into columns, with no object per record.

A fetch response carries each partition's records as a run of record batches: a
61-byte header (base offset, length, attributes, base timestamp, record count, ...)
and then the records, each a varint-framed (attributes, timestamp delta, offset
delta, key, value, headers). :func:`read_records` walks them with compiled kernels
and packs the values end to end in one buffer, so a whole response becomes a few
numpy arrays: what the compiled JSON decoder scans directly.

Compressed batches (gzip, snappy, lz4, zstd) are inflated with ``cramjam``, one call
per batch, and walked by the same kernel. Control batches (transaction markers) are
skipped; with ``read_committed`` the records of aborted transactions are skipped as
the Kafka protocol describes (the fetch response lists them). Headers are not read:
nothing downstream uses a consumed record's headers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numba as nb
import numpy as np
import numpy.typing as npt
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["CorruptRecordsError", "PackedValues", "RecordColumns", "read_records"]

HEADER_BYTES = 61  # a v2 record batch's header, up to and including the record count
_COMPRESSION = 0x07
_LOG_APPEND_TIME = 0x08
_TRANSACTIONAL = 0x10
_CONTROL = 0x20
_MIN_RECORD_BYTES = 7  # length, attributes, timestamp, offset, key, value, headers


class CorruptRecordsError(ValueError):
    """A record batch that cannot be read (wrong magic, bad framing, bad compression):
    ``at`` is its base offset (-1 when unknown), ``after`` the offset past it (from
    :func:`read_records`, always past ``at`` and past the fetch offset)."""

    def __init__(self, message: str, at: int = -1, after: int = -1) -> None:
        super().__init__(message)
        self.at = at
        self.after = after


class PackedValues(Sequence[bytes | None]):
    """Byte strings packed end to end: row ``i`` is ``data[starts[i]:starts[i + 1]]``,
    or ``None`` where ``null[i]`` (a tombstone, or a record without a key).

    Reading a row makes a ``bytes``; consumers that scan the whole batch (the
    compiled decoder) read ``data`` and ``starts`` directly.

    >>> p = PackedValues(np.frombuffer(b"ab{}", np.uint8), np.array([0, 2, 2, 4]),
    ...                  np.array([False, True, False]))
    >>> list(p), len(p), p[1:]
    ([b'ab', None, b'{}'], 3, [None, b'{}'])
    """

    __slots__ = ("data", "null", "starts")

    def __init__(
        self,
        data: npt.NDArray[np.uint8],
        starts: npt.NDArray[np.int64],
        null: npt.NDArray[np.bool_] | None = None,
    ) -> None:
        self.data = data
        self.starts = starts
        self.null = null if null is not None and null.any() else None

    def __len__(self) -> int:
        return len(self.starts) - 1

    def _row(self, i: int) -> bytes | None:
        if self.null is not None and self.null[i]:
            return None
        return self.data[self.starts[i] : self.starts[i + 1]].tobytes()

    @overload
    def __getitem__(self, index: int) -> bytes | None: ...

    @overload
    def __getitem__(self, index: slice) -> list[bytes | None]: ...

    def __getitem__(self, index: int | slice) -> bytes | list[bytes | None] | None:
        n = len(self)
        if isinstance(index, slice):
            return [self._row(i) for i in range(*index.indices(n))]
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(index)
        return self._row(index)

    def __iter__(self) -> Iterator[bytes | None]:
        return (self._row(i) for i in range(len(self)))

    @staticmethod
    def concat(parts: Sequence[PackedValues]) -> PackedValues:
        """The rows of ``parts`` one after the other, in one new buffer."""
        data = np.concatenate(
            [np.zeros(0, np.uint8)] + [p.data[p.starts[0] : p.starts[-1]] for p in parts]
        )
        starts = np.zeros(sum(len(p) for p in parts) + 1, np.int64)
        at, base = 1, 0
        for p in parts:
            starts[at : at + len(p)] = p.starts[1:] - p.starts[0] + base
            base += int(p.starts[-1] - p.starts[0])
            at += len(p)
        null = None
        if any(p.null is not None for p in parts):
            null = np.concatenate(
                [p.null if p.null is not None else np.zeros(len(p), np.bool_) for p in parts]
            )
        return PackedValues(data, starts, null)

    def rows(self, lo: int, hi: int) -> PackedValues:
        """Rows ``lo`` to ``hi`` (exclusive), sharing this buffer."""
        null = None if self.null is None else self.null[lo:hi]
        return PackedValues(self.data, self.starts[lo : hi + 1], null)

    def sizes(self) -> npt.NDArray[np.int64]:
        """Each row's length in bytes, -1 for ``None``."""
        out: npt.NDArray[np.int64] = np.diff(self.starts)
        if self.null is not None:
            out[self.null] = -1
        return out


@dataclass(frozen=True, slots=True)
class RecordColumns:
    """One partition's records from one fetch: values and keys packed, offsets and
    timestamps (ms, as the broker stamped them) as arrays; ``next_offset`` is the
    offset to fetch next (past skipped control and aborted records too)."""

    values: PackedValues
    keys: PackedValues
    offsets: npt.NDArray[np.int64]
    timestamps: npt.NDArray[np.int64]
    next_offset: int

    def __len__(self) -> int:
        return len(self.offsets)


# -- kernels ------------------------------------------------------------------------


@nb.njit(cache=True, nogil=True, boundscheck=False)
def _int(buf: npt.NDArray[np.uint8], pos: int, width: int) -> int:
    v = 0
    for k in range(width):
        v = (v << 8) | int(buf[pos + k])
    if width < 8 and v >= (1 << (8 * width - 1)):
        v -= 1 << (8 * width)
    return v


@nb.njit(cache=True, nogil=True, boundscheck=False)
def _scan_batches(
    buf: npt.NDArray[np.uint8], start: int, end: int, out: npt.NDArray[np.int64]
) -> tuple[int, int]:
    """Fill ``out`` rows with the complete batches in ``buf[start:end]``: position,
    total length, base offset, last offset delta, attributes, producer id, record
    count, base timestamp, max timestamp, magic. Returns (batches, position of the
    first batch whose header is bad (magic, length or record count), or -1); a
    trailing partial batch (the broker cuts responses) is left out."""
    pos = start
    n = 0
    while pos + HEADER_BYTES <= end and n < out.shape[0]:
        length = _int(buf, pos + 8, 4)
        if buf[pos + 16] != 2 or length < HEADER_BYTES - 12 or _int(buf, pos + 57, 4) < 0:
            return n, pos
        total = 12 + length
        if total > end - pos:
            break
        out[n, 0] = pos
        out[n, 1] = total
        out[n, 2] = _int(buf, pos, 8)
        out[n, 3] = _int(buf, pos + 23, 4)
        out[n, 4] = _int(buf, pos + 21, 2)
        out[n, 5] = _int(buf, pos + 43, 8)
        out[n, 6] = _int(buf, pos + 57, 4)
        out[n, 7] = _int(buf, pos + 27, 8)
        out[n, 8] = _int(buf, pos + 35, 8)
        out[n, 9] = np.int64(buf[pos + 16])
        n += 1
        pos += total
    return n, -1


@nb.njit(cache=True, nogil=True, boundscheck=False)
def _varint(buf: npt.NDArray[np.uint8], pos: int, end: int) -> tuple[int, int]:
    """A zigzag varint at ``pos``: (value, next position); next = -1 when malformed."""
    shift = 0
    raw = np.uint64(0)
    while pos < end and shift < 70:
        b = buf[pos]
        pos += 1
        raw |= np.uint64(b & 0x7F) << np.uint64(shift)
        if b < 0x80:
            value = np.int64(raw >> np.uint64(1)) ^ -np.int64(raw & np.uint64(1))
            return int(value), pos
        shift += 7
    return 0, -1


def _copy_bytes_typed(
    typingctx: object, dst: Any, dst_at: Any, src: Any, src_at: Any, n: Any
) -> Any:
    """``dst[dst_at : dst_at + n] = src[src_at : src_at + n]`` as one ``memcpy`` (1-d
    contiguous uint8 arrays; the caller checks the bounds). A compiled slice assignment
    copies a record's few hundred bytes at about a tenth of ``memcpy``'s speed, and
    that copy was ~90% of reading a response."""
    sig = types.void(dst, types.intp, src, types.intp, types.intp)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        d, d_at, s, s_at, count = args
        d_arr = context.make_array(signature.args[0])(context, builder, d)
        s_arr = context.make_array(signature.args[2])(context, builder, s)
        memcpy: Any = cgutils.raw_memcpy
        memcpy(builder, builder.gep(d_arr.data, [d_at]), builder.gep(s_arr.data, [s_at]), count, 1)
        return context.get_dummy_value()

    return sig, codegen


_copy_bytes: Any = intrinsic(_copy_bytes_typed)


@nb.njit(cache=True, nogil=True, boundscheck=False)
def _bytes_field(
    buf: npt.NDArray[np.uint8],
    p: int,
    rend: int,
    out: npt.NDArray[np.uint8],
    starts: npt.NDArray[np.int64],
    null: npt.NDArray[np.bool_],
    n: int,
    used: int,
) -> tuple[int, int]:
    """Copy a record's key or value (a varint length, -1 for null, then the bytes) at
    ``p`` to ``out`` as row ``n``: (next position or -1 when malformed, bytes used)."""
    length, p = _varint(buf, p, rend)
    if p < 0 or length > rend - p:
        return -1, used
    if length >= 0:
        if length > out.shape[0] - used:
            return -1, used
        _copy_bytes(out, used, buf, p, length)
        used += length
        p += length
        null[n] = False
    else:
        null[n] = True
    starts[n + 1] = used
    return p, used


@nb.njit(cache=True, nogil=True, boundscheck=False)
def _walk(
    buf: npt.NDArray[np.uint8],
    sections: npt.NDArray[np.int64],
    vbuf: npt.NDArray[np.uint8],
    vstarts: npt.NDArray[np.int64],
    vnull: npt.NDArray[np.bool_],
    kbuf: npt.NDArray[np.uint8],
    kstarts: npt.NDArray[np.int64],
    knull: npt.NDArray[np.bool_],
    offsets: npt.NDArray[np.int64],
    times: npt.NDArray[np.int64],
    state: npt.NDArray[np.int64],
) -> int:
    """Append the records of each section (rows: records start, end, count, base
    offset, base timestamp, log-append time flag, max timestamp) to the outputs;
    ``state`` holds (records, value bytes, key bytes) so far. Returns -1, or the
    index of the section that is malformed."""
    n = state[0]
    vused = state[1]
    kused = state[2]
    cap = offsets.shape[0]
    for s in range(sections.shape[0]):
        p = sections[s, 0]
        end = sections[s, 1]
        count = sections[s, 2]
        base = sections[s, 3]
        bts = sections[s, 4]
        log_append = sections[s, 5]
        mts = sections[s, 6]
        for _ in range(count):
            length, p = _varint(buf, p, end)
            if p < 0 or length < 0 or length > end - p or n >= cap:
                return s
            rend = p + length
            p += 1  # attributes
            td, p = _varint(buf, p, rend)
            if p < 0:
                return s
            od, p = _varint(buf, p, rend)
            if p < 0:
                return s
            p, kused = _bytes_field(buf, p, rend, kbuf, kstarts, knull, n, kused)
            if p < 0:
                return s
            p, vused = _bytes_field(buf, p, rend, vbuf, vstarts, vnull, n, vused)
            if p < 0:
                return s
            offsets[n] = base + od
            times[n] = mts if log_append else bts + td
            n += 1
            p = rend
    state[0] = n
    state[1] = vused
    state[2] = kused
    return -1


# -- decompression ------------------------------------------------------------------

_XERIAL = b"\x82SNAPPY\x00"


def _inflate(codec: int, data: bytes) -> bytes:
    import cramjam

    if codec == 1:
        return bytes(cramjam.gzip.decompress(data))
    if codec == 2:
        if data.startswith(_XERIAL):  # Java clients frame snappy blocks (xerial)
            out, pos = bytearray(), 16
            while pos + 4 <= len(data):
                size = int.from_bytes(data[pos : pos + 4], "big")
                out += bytes(cramjam.snappy.decompress_raw(data[pos + 4 : pos + 4 + size]))
                pos += 4 + size
            return bytes(out)
        return bytes(cramjam.snappy.decompress_raw(data))
    if codec == 3:
        return bytes(cramjam.lz4.decompress(data))
    if codec == 4:
        return bytes(cramjam.zstd.decompress(data))
    raise CorruptRecordsError(f"unknown compression codec {codec}")


# -- one partition's records ---------------------------------------------------------

_EMPTY = np.zeros(0, np.uint8)


class _BadBatchError(Exception):
    """Batch ``row`` of the table cannot be read (internal: read_records decides)."""

    def __init__(self, row: int, why: str) -> None:
        super().__init__(why)
        self.row = row
        self.why = why


def read_records(
    buf: npt.NDArray[np.uint8],
    start: int,
    end: int,
    fetch_offset: int,
    aborted: Sequence[tuple[int, int]] = (),
) -> RecordColumns:
    """The records of ``buf[start:end]`` (one partition's record set in a fetch
    response) at or after ``fetch_offset``, in offset order.

    ``aborted``: the response's aborted transactions (producer id, first offset);
    given only to ``read_committed`` consumers. A batch that cannot be read ends the
    record set: the records before it are returned (``next_offset`` is then the
    offset past them, so the next fetch starts at the bad batch); when nothing
    before it moves past ``fetch_offset``, ``CorruptRecordsError`` is raised with the
    bad batch's base offset (``at``) and the offset past it (``after``, always past
    both ``at`` and ``fetch_offset``)."""
    start = max(0, int(start))
    end = min(int(end), buf.shape[0])
    table = np.empty((max(1, (end - start) // HEADER_BYTES), 10), np.int64)
    nb_, bad = _scan_batches(buf, start, end, table)
    table = table[:nb_]
    if bad >= 0:  # a header that cannot be read: the batches before it are all we have
        base = int.from_bytes(buf[bad : bad + 8].tobytes(), "big", signed=True)
        lod = int.from_bytes(buf[bad + 23 : bad + 27].tobytes(), "big", signed=True)
        magic = int(buf[bad + 16])
        why = (
            f"has message format v{magic} (only v2 is read)"
            if magic != 2
            else "has a bad length"
            if int.from_bytes(buf[bad + 8 : bad + 12].tobytes(), "big", signed=True)
            < HEADER_BYTES - 12
            else "has a negative record count"
        )
        if not nb_ or _past(table, nb_ - 1) <= fetch_offset:
            raise _corrupt_error(base, lod, fetch_offset, why)
    while True:  # each round reads fewer batches: it ends
        try:
            return _read(buf, table, fetch_offset, aborted)
        except _BadBatchError as exc:
            if exc.row == 0 or _past(table, exc.row - 1) <= fetch_offset:
                raise _corrupt_error(
                    int(table[exc.row, 2]), int(table[exc.row, 3]), fetch_offset, exc.why
                ) from exc.__cause__
            table = table[: exc.row]  # the batches before it (an earlier one may be bad too)


def _past(table: npt.NDArray[np.int64], row: int) -> int:
    """The offset past batch ``row``: its base offset + last offset delta + 1."""
    return int(table[row, 2]) + int(table[row, 3]) + 1


def _corrupt_error(base: int, lod: int, fetch_offset: int, why: str) -> CorruptRecordsError:
    after = max(base + lod + 1, base + 1, fetch_offset + 1)
    return CorruptRecordsError(f"record batch at offset {base} {why}", base, after)


def _read(
    buf: npt.NDArray[np.uint8],
    table: npt.NDArray[np.int64],
    fetch_offset: int,
    aborted: Sequence[tuple[int, int]],
) -> RecordColumns:
    """The records of the batches in ``table`` (all with good headers); raises
    ``_BadBatchError`` for the first batch whose records cannot be read."""
    nb_ = len(table)
    next_offset = max(fetch_offset, _past(table, nb_ - 1)) if nb_ else fetch_offset
    special = (table[:, 4] & (_COMPRESSION | _CONTROL)) != 0
    if aborted:
        special |= (table[:, 4] & _TRANSACTIONAL) != 0
    # sections over buf (plain batches) and over inflated buffers (compressed ones)
    runs: list[tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]] = []
    if not special.any():
        runs.append((buf, _sections(table, np.arange(nb_))))
    else:
        runs = _special_runs(buf, table, special, aborted)
    records = int(sum(int(s[:, 2].sum()) for _, s in runs))
    vbytes = int(sum(int((s[:, 1] - s[:, 0]).sum()) for _, s in runs))
    vbuf = np.empty(vbytes, np.uint8)
    kbuf = np.empty(vbytes, np.uint8)
    vstarts = np.zeros(records + 1, np.int64)
    kstarts = np.zeros(records + 1, np.int64)
    vnull = np.zeros(records, np.bool_)
    knull = np.zeros(records, np.bool_)
    offsets = np.empty(records, np.int64)
    times = np.empty(records, np.int64)
    state = np.zeros(3, np.int64)
    for data, sections in runs:
        if len(sections):
            failed = _walk(
                data, sections, vbuf, vstarts, vnull, kbuf, kstarts, knull, offsets, times, state
            )
            if failed >= 0:
                raise _BadBatchError(int(sections[failed, 7]), "has malformed records")
    n = int(state[0])
    keep = slice(0, n)
    if n and offsets[0] < fetch_offset:  # a batch starts before the fetch offset
        first = int(np.searchsorted(offsets[:n], fetch_offset))
        keep = slice(first, n)
    values = PackedValues(vbuf, vstarts[keep.start : keep.stop + 1], vnull[keep])
    keys = PackedValues(kbuf, kstarts[keep.start : keep.stop + 1], knull[keep])
    return RecordColumns(values, keys, offsets[keep], times[keep], next_offset)


def _sections(table: npt.NDArray[np.int64], rows: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Rows for ``_walk`` (records start, end, count, base offset, base timestamp,
    log-append time flag, max timestamp) and the batch's table row."""
    t = table[rows]
    out = np.empty((len(t), 8), np.int64)
    out[:, 0] = t[:, 0] + HEADER_BYTES
    out[:, 1] = t[:, 0] + t[:, 1]
    out[:, 2] = np.minimum(t[:, 6], (t[:, 1] - HEADER_BYTES) // _MIN_RECORD_BYTES + 1)
    out[:, 2] = np.maximum(out[:, 2], 0)
    out[:, 3] = t[:, 2]
    out[:, 4] = t[:, 7]
    out[:, 5] = (t[:, 4] & _LOG_APPEND_TIME) != 0
    out[:, 6] = t[:, 8]
    out[:, 7] = rows
    return out


def _special_runs(
    buf: npt.NDArray[np.uint8],
    table: npt.NDArray[np.int64],
    special: npt.NDArray[np.bool_],
    aborted: Sequence[tuple[int, int]],
) -> list[tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]]:
    """Sections in offset order when some batches are compressed, control batches or
    transactional with aborted transactions about: Python walks the batches (not the
    records), plain runs stay one kernel section list."""
    pending = sorted(aborted, key=lambda a: a[1])  # by first offset
    aborting: set[int] = set()
    runs: list[tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]] = []
    plain: list[int] = []

    def flush() -> None:
        if plain:
            runs.append((buf, _sections(table, np.array(plain, np.int64))))
            plain.clear()

    for i in range(len(table)):
        attrs, producer = int(table[i, 4]), int(table[i, 5])
        while pending and pending[0][1] < _past(table, i):  # first offset <= last offset
            aborting.add(pending.pop(0)[0])
        if attrs & _CONTROL:
            if attrs & _TRANSACTIONAL:
                aborting.discard(producer)  # the end of that transaction (commit or abort)
            continue
        if attrs & _TRANSACTIONAL and producer in aborting:
            continue
        if not attrs & _COMPRESSION:
            plain.append(i)
            continue
        flush()
        pos, total = int(table[i, 0]), int(table[i, 1])
        try:
            inner = _inflate(attrs & _COMPRESSION, buf[pos + HEADER_BYTES : pos + total].tobytes())
        except Exception as exc:  # the codec's own error, or an unknown codec
            raise _BadBatchError(i, f"does not inflate: {exc}") from exc
        data = np.frombuffer(inner, np.uint8) if inner else _EMPTY
        sec = _sections(table, np.array([i], np.int64))
        sec[0, 0], sec[0, 1] = 0, len(data)
        sec[0, 2] = max(0, min(int(table[i, 6]), len(data) // _MIN_RECORD_BYTES + 1))
        runs.append((data, sec))
    flush()
    return runs
