"""Which arrays of a batch are views into one matrix.

The decoder hands out a batch's columns (and validity masks) as rows of one matrix.
Kernels that take many columns at once read them there, by offset, instead of
copying them end to end first.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.base import IntArray

__all__ = ["views_of_one"]


def views_of_one(arrays: list[npt.NDArray[Any]]) -> tuple[npt.NDArray[Any], IntArray] | None:
    """``(base, at)`` when every array is a 1-D contiguous view into one C-contiguous
    array ``base`` of the same dtype (rows, or parts of rows, of a batch's matrix):
    ``arrays[i]`` is ``base.reshape(-1)[at[i] : at[i] + arrays[i].size]``. Else None.

    >>> m = np.arange(6.0).reshape(2, 3).copy()  # owns its data
    >>> base, at = views_of_one([m[1], m[0, 1:]])
    >>> base is m, at.tolist()
    (True, [3, 1])
    >>> views_of_one([m[1], np.zeros(3)]) is None
    True
    """
    base = arrays[0].base if arrays else None
    if not isinstance(base, np.ndarray) or not base.flags.c_contiguous or base.size == 0:
        return None
    item = base.itemsize
    start = base.__array_interface__["data"][0]
    at = []
    for x in arrays:
        if x.base is not base or x.dtype != base.dtype or x.ndim != 1:
            return None
        if x.size > 1 and x.strides[0] != item:
            return None
        off = x.__array_interface__["data"][0] - start
        if off < 0 or off % item or off // item + x.size > base.size:
            return None
        at.append(off // item)
    return base, np.asarray(at, dtype=np.int64)
