"""Fusion buffers: many arrays of one dtype packed into one contiguous buffer and back.

One large MPI call moves data far faster than many small ones, so collectives on a list of
arrays pack each dtype's arrays into one buffer, communicate it once, and hand back views.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def group_by_dtype(arrays: Sequence[np.ndarray]) -> dict[np.dtype, list[int]]:
    """Positions of ``arrays`` grouped by dtype, in first-seen order of the dtypes."""
    groups: dict[np.dtype, list[int]] = {}
    for position, array in enumerate(arrays):
        groups.setdefault(array.dtype, []).append(position)
    return groups


def fuse(arrays: Sequence[np.ndarray], scale: float = 1.0, extra: int = 0) -> np.ndarray:
    """A new 1-D buffer holding ``arrays`` (all of one dtype) end to end, times ``scale``,
    then ``extra`` uninitialized elements for the caller."""
    dtype = arrays[0].dtype
    buffer = np.empty(sum(a.size for a in arrays) + extra, dtype=dtype)
    offset = 0
    for array in arrays:
        segment = buffer[offset : offset + array.size]
        if scale == 1.0:
            segment[...] = array.reshape(-1)
        else:
            np.multiply(array.reshape(-1), scale, out=segment, casting="unsafe")
        offset += array.size
    return buffer


def unfuse(buffer: np.ndarray, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """Views of ``buffer`` cut back into arrays of ``shapes``, in order."""
    views = []
    offset = 0
    for shape in shapes:
        count = int(np.prod(shape, dtype=np.int64))
        views.append(buffer[offset : offset + count].reshape(shape))
        offset += count
    return views
