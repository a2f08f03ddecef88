"""Checkpoints: each (stream, partition)'s state and the offset it covers, in Kafka.

A checkpoint record holds everything that continues a partition exactly: the
detector windows, the per-partition event count and the next offset to read. It is
written to a compacted topic, keyed ``GROUP/STREAM/TOPIC/PARTITION``, after the
batch's outgoing messages are acknowledged. On assignment the owner loads the
latest checkpoint and seeks to its offset, so the events after it are folded into
the state exactly once; group offsets are committed too, for tooling, but the
checkpoint is the truth.

Records are msgpack (numpy arrays as raw bytes; large integer arrays in the narrowest
integer type that holds them), zstd-compressed (older records: zlib), and split into
chunks of at most ``CHUNK_BYTES``: chunk records ``KEY#i`` first, then the
manifest ``KEY`` naming the checkpoint id and chunk count, so a reader never
assembles chunks of two different checkpoints.

Stream-wide records sit beside them: ``GROUP/STREAM/baseline`` (a baseline built
from first events) and ``GROUP/STREAM/alerts`` (the stream's alert episodes and
pending webhook deliveries, written by whoever judges the stream). The key schema
is ``monitor.checkpoints.CheckpointKey``; records are the frozen values of that
module, and only this module turns them into bytes.
"""

from __future__ import annotations

import hashlib
import logging
import time
import zlib
from collections.abc import Mapping
from typing import Any

import cramjam
import msgspec
import numpy as np
import numpy.typing as npt

from connectors.compacted import CompactedTopic, KeyedLog, MemoryTopic
from monitor.checkpoints import (
    AlertState,
    BaselineCheckpoint,
    CheckpointKey,
    PartitionCheckpoint,
    StageDecoder,
    StreamCheckpoint,
)
from monitor.errors import DriftwardenError

__all__ = ["CHUNK_BYTES", "MemoryStateStore", "StateStore", "decode_state", "encode_state"]

log = logging.getLogger("driftwarden.state")

CHUNK_BYTES = 512 * 1024
_ND = "__nd__"


# Integer arrays of at least this many values are stored in the narrowest integer
# type that holds their values (``"as"``), and read back as their own type: window
# rings hold small counts in 32 or 64 bits, and compressing 2-8x fewer bytes is what
# keeps a checkpoint of a partition's windows cheap (the decoded state is the same).
_NARROW_MIN = 256
_NARROW = tuple(np.dtype(t) for t in ("u1", "i1", "<u2", "<i2", "<u4", "<i4"))


def _narrow(arr: npt.NDArray[Any]) -> npt.NDArray[Any] | None:
    """``arr`` in the narrowest integer type that holds it, or None (no gain)."""
    if arr.dtype.kind not in "iu" or arr.size < _NARROW_MIN or arr.dtype.itemsize == 1:
        return None
    lo, hi = int(arr.min()), int(arr.max())
    for dtype in _NARROW:
        if dtype.itemsize >= arr.dtype.itemsize:
            return None
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return arr.astype(dtype)
    return None


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        narrow = _narrow(arr)
        if narrow is not None:
            return {
                _ND: arr.dtype.str,
                "shape": list(arr.shape),
                "as": narrow.dtype.str,
                "data": narrow.tobytes(),
            }
        return {_ND: arr.dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {str(k): _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_plain(v) for v in obj]
    return obj


def _from_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        if _ND in obj:
            dtype = np.dtype(obj[_ND])
            if "as" in obj:  # stored narrower (see _narrow)
                narrow = np.frombuffer(obj["data"], dtype=np.dtype(obj["as"]))
                return narrow.astype(dtype).reshape(obj["shape"])
            arr = np.frombuffer(obj["data"], dtype=dtype)
            return arr.reshape(obj["shape"]).copy()
        return {k: _from_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_plain(v) for v in obj]
    return obj


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def encode_state(state: Mapping[str, Any]) -> bytes:
    """Plain values and numpy arrays to compressed bytes (round-trips exactly).

    >>> s = {"n": 3, "w": np.arange(4, dtype=np.int64), "x": [1.5, None]}
    >>> out = decode_state(encode_state(s))
    >>> out["n"], out["w"].tolist(), out["x"]
    (3, [0, 1, 2, 3], [1.5, None])
    >>> big = np.arange(-300, 300, dtype=np.int64)   # stored as int16, read as int64
    >>> back = decode_state(encode_state({"c": big}))["c"]
    >>> back.dtype, bool((back == big).all())
    (dtype('int64'), True)
    """
    # zstd level 1: a partition's windows compress ~3x faster than zlib's level 1
    # and ~10% smaller. Records written as zlib (before) still read.
    raw = msgspec.msgpack.encode(_to_plain(dict(state)))
    return bytes(cramjam.zstd.compress(raw, 1))


def decode_state(data: bytes) -> dict[str, Any]:
    # (written before zstd: zlib)
    zstd = data[:4] == _ZSTD_MAGIC
    raw = bytes(cramjam.zstd.decompress(data)) if zstd else zlib.decompress(data)
    value = _from_plain(msgspec.msgpack.decode(raw))
    if not isinstance(value, dict):
        raise DriftwardenError("a checkpoint record must hold a mapping")
    return value


class StateStore:
    """Reads and writes checkpoint records of one consumer group in a compacted topic
    (``connectors.compacted``); this class owns their encoding and key schema."""

    def __init__(
        self,
        options: Mapping[str, Any],
        topic: str,
        *,
        create: bool = True,
        log: KeyedLog | None = None,
    ) -> None:
        self.log: KeyedLog = (
            log
            if log is not None
            else CompactedTopic(options, topic, create=create, max_record_bytes=2 * CHUNK_BYTES)
        )
        self.topic = self.log.name

    @property
    def _records(self) -> dict[str, bytes]:
        return self.log.records

    def put_partition(self, key: CheckpointKey, checkpoint: PartitionCheckpoint) -> int:
        """Queue a partition's checkpoint; returns its size in bytes."""
        return self._put(key.format(), checkpoint.to_plain())

    def put_baseline(self, key: CheckpointKey, checkpoint: BaselineCheckpoint) -> int:
        return self._put(key.format(), checkpoint.to_plain())

    def put_stream(self, key: CheckpointKey, checkpoint: StreamCheckpoint) -> int:
        return self._put(key.format(), checkpoint.to_plain())

    def _put(self, key: str, state: Mapping[str, Any]) -> int:
        """Queue one checkpoint (chunks, then manifest); returns its size in bytes."""
        blob = encode_state(state)
        digest = hashlib.sha256(blob).hexdigest()[:16]
        chunks = [blob[i : i + CHUNK_BYTES] for i in range(0, len(blob), CHUNK_BYTES)] or [b""]
        for i, chunk in enumerate(chunks):
            self._produce(f"{key}#{i}", digest.encode() + b":" + chunk)
        manifest = msgspec.msgpack.encode({"id": digest, "chunks": len(chunks), "at": time.time()})
        self._produce(key, manifest)
        return len(blob)

    def _produce(self, key: str, value: bytes) -> None:
        self.log.produce(key, value)

    def flush(self, timeout: float = 30.0) -> None:
        """Block until every queued checkpoint is acknowledged (or raise ``SinkError``)."""
        self.log.flush(timeout)

    # -- reading -------------------------------------------------------------------
    def refresh(self, timeout: float = 30.0) -> None:
        """Read every record written since the last refresh (by any process).

        Raises ``DriftwardenError`` when the topic cannot be read to its end in time.
        """
        self.log.read_to_end(timeout)

    def partition(
        self,
        key: CheckpointKey,
        decoders: Mapping[str, StageDecoder] | tuple[StageDecoder, ...] | None = None,
    ) -> PartitionCheckpoint | None:
        """The latest partition checkpoint under ``key``; ``decoders`` type its stage states."""
        plain = self._get(key.format())
        return None if plain is None else PartitionCheckpoint.from_plain(plain, decoders)

    def baseline(self, key: CheckpointKey) -> BaselineCheckpoint | None:
        plain = self._get(key.format())
        return None if plain is None else BaselineCheckpoint.from_plain(plain)

    def stream(self, key: CheckpointKey) -> StreamCheckpoint | None:
        plain = self._get(key.format())
        return None if plain is None else StreamCheckpoint.from_plain(plain)

    def legacy_alerts(self, group: str) -> AlertState | None:
        """The alert state earlier versions kept for every stream under ``GROUP/alerts``
        (read once after an upgrade, until each stream's judge wrote its own)."""
        plain = self._get(f"{group}/alerts")
        return None if plain is None else AlertState.from_plain(plain)

    def partition_keys(self, group: str, stream: str) -> list[CheckpointKey]:
        """The keys of every partition checkpoint of ``stream`` (as last refreshed)."""
        prefix = CheckpointKey.stream_prefix(group, stream)
        found = []
        for text in self._records:
            if "#" in text or not text.startswith(prefix):
                continue
            key = CheckpointKey.parse(group, text)
            if key is not None and key.kind == "partition" and key.stream == stream:
                found.append(key)
        return sorted(found)

    def _get(self, key: str) -> dict[str, Any] | None:
        """The latest complete checkpoint under ``key`` (as last refreshed or written)."""
        manifest = self._records.get(key)
        if manifest is None:
            return None
        meta = msgspec.msgpack.decode(manifest)
        prefix = str(meta["id"]).encode() + b":"
        parts = []
        for i in range(int(meta["chunks"])):
            chunk = self._records.get(f"{key}#{i}")
            if chunk is None or not chunk.startswith(prefix):
                log.warning("checkpoint %s is incomplete (chunk %d); ignoring it", key, i)
                return None
            parts.append(chunk[len(prefix) :])
        return decode_state(b"".join(parts))

    def close(self) -> None:
        self.log.close()


class MemoryStateStore(StateStore):
    """A ``StateStore`` over a dict shared by its instances (the "topic"), for tests.

    Records are encoded, chunked and read back exactly as with Kafka; ``flush``
    publishes what was put, ``refresh`` reads what any instance published.

    >>> topic: dict[str, bytes] = {}
    >>> a, b = MemoryStateStore(topic), MemoryStateStore(topic)
    >>> key = CheckpointKey.for_baseline("g", "s")
    >>> _ = a.put_baseline(key, BaselineCheckpoint("{}")); a.flush(); b.refresh()
    >>> b.baseline(key)
    BaselineCheckpoint(json='{}')
    """

    def __init__(self, topic: dict[str, bytes] | None = None) -> None:
        super().__init__({}, "memory", log=MemoryTopic(topic))

    @property
    def shared(self) -> dict[str, bytes]:
        """The records every instance over the same dict has published."""
        memory = self.log
        assert isinstance(memory, MemoryTopic)
        return memory.shared
