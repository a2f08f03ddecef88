"""Checkpoint records: integer arrays stored narrow read back exactly as they were."""

from __future__ import annotations

import zlib

import msgspec
import numpy as np
import pytest

from monitor.runtime.state import decode_state, encode_state


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.int64, np.uint16, np.uint32, np.uint64])
@pytest.mark.parametrize("span", [(0, 200), (-100, 100), (0, 60_000), (-40_000, 40_000)])
def test_integer_arrays_round_trip_with_their_type(dtype: type, span: tuple[int, int]) -> None:
    info = np.iinfo(dtype)
    lo, hi = max(span[0], int(info.min)), min(span[1], int(info.max))
    rng = np.random.default_rng(0)
    arr = rng.integers(lo, hi, size=(7, 300), endpoint=True).astype(dtype)
    back = decode_state(encode_state({"a": arr, "n": [arr[0, :3]]}))
    assert back["a"].dtype == arr.dtype and back["a"].shape == arr.shape
    assert np.array_equal(back["a"], arr)
    assert back["a"].flags.writeable
    assert np.array_equal(back["n"][0], arr[0, :3])


def test_extremes_and_small_arrays_are_exact() -> None:
    ext = np.array([np.iinfo(np.int64).min, 0, np.iinfo(np.int64).max] * 100, dtype=np.int64)
    floats = np.linspace(-1, 1, 1000)
    empty = np.zeros((0, 4), dtype=np.int32)
    back = decode_state(encode_state({"e": ext, "f": floats, "z": empty}))
    assert np.array_equal(back["e"], ext) and back["e"].dtype == np.int64
    assert np.array_equal(back["f"], floats)
    assert back["z"].shape == (0, 4) and back["z"].dtype == np.int32


def test_records_written_before_narrowing_still_decode() -> None:
    arr = np.arange(1000, dtype=np.int64) % 7
    old = {"w": {"__nd__": arr.dtype.str, "shape": [1000], "data": arr.tobytes()}}
    back = decode_state(zlib.compress(msgspec.msgpack.encode(old), 3))
    assert back["w"].dtype == np.int64 and np.array_equal(back["w"], arr)


def test_window_counts_are_stored_narrow() -> None:
    ring = np.zeros((10, 20_000), dtype=np.int32)
    ring[:, ::3] = 2
    wide = len(zlib.compress(msgspec.msgpack.encode({"d": ring.tobytes()}), 1))
    assert len(encode_state({"r": ring})) < wide


def test_records_written_with_zlib_still_read() -> None:
    """Checkpoints are zstd now; records of earlier versions (zlib) read the same."""
    from monitor.runtime.state import _to_plain

    state = {"ring": np.arange(600, dtype=np.int64).reshape(20, 30), "n": 7, "x": [1.5, None]}
    old = zlib.compress(msgspec.msgpack.encode(_to_plain(dict(state))), 1)
    for blob in (old, encode_state(state)):
        back = decode_state(blob)
        assert back["n"] == 7 and back["x"] == [1.5, None]
        assert np.array_equal(back["ring"], state["ring"])
    assert encode_state(state)[:4] == b"\x28\xb5\x2f\xfd"
