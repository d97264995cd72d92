"""Fusion buffers: many arrays of one dtype packed into one contiguous buffer and back.

One large MPI call moves data far faster than many small ones, so collectives on a list of
arrays pack each dtype's arrays into one buffer, communicate it once, and hand back views.

Each array starts at a 64-byte boundary of the buffer, so that TensorFlow adopts the views
it gets back as tensors without copying them. Buffers are kept and reused once nothing refers
to them any more (no view handed out is alive), which spares the page faults of fresh memory
on every call; a buffer still in use is never reused.
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Sequence

import numpy as np

ALIGNMENT = 64  # bytes: TensorFlow's alignment for adopting numpy memory without a copy
KEPT_PER_LAYOUT = 2  # buffers kept for reuse per (dtype, size)
KEPT_LAYOUTS = 8  # distinct (dtype, size) pairs whose buffers are kept

_kept: dict[tuple[np.dtype, int], list[tuple[np.ndarray, int]]] = {}
_lock = threading.Lock()


def group_by_dtype(arrays: Sequence[np.ndarray]) -> dict[np.dtype, list[int]]:
    """Positions of ``arrays`` grouped by dtype, in first-seen order of the dtypes."""
    groups: dict[np.dtype, list[int]] = {}
    for position, array in enumerate(arrays):
        groups.setdefault(array.dtype, []).append(position)
    return groups


def _offsets(counts: Sequence[int], itemsize: int) -> tuple[list[int], int]:
    """Element offsets of arrays of ``counts`` elements, each starting 64-byte aligned."""
    step = max(1, ALIGNMENT // itemsize) if ALIGNMENT % itemsize == 0 else 1
    offsets, end = [], 0
    for count in counts:
        offsets.append(end)
        end += -(-count // step) * step
    return offsets, end


def _references(owner: np.ndarray) -> int:
    return sys.getrefcount(owner)


def _aligned_view(owner: np.ndarray, count: int, dtype: np.dtype) -> np.ndarray:
    start = -owner.ctypes.data % ALIGNMENT
    return owner[start : start + count * dtype.itemsize].view(dtype)


def _buffer(count: int, dtype: np.dtype) -> np.ndarray:
    """A zeroed-gaps buffer of ``count`` elements: a kept one that nothing refers to (no view
    of it is alive), or a new one. Kept buffers are only ever handed out as new views, so
    every view in use counts as a reference to the memory's owner."""
    key = (dtype, count)
    with _lock:
        kept = _kept.get(key, [])
        for owner, idle in kept:
            if _references(owner) == idle:
                return _aligned_view(owner, count, dtype)
        owner = np.zeros(count * dtype.itemsize + ALIGNMENT, dtype=np.uint8)
        if len(kept) < KEPT_PER_LAYOUT and (key in _kept or len(_kept) < KEPT_LAYOUTS):
            _kept.setdefault(key, kept).append((owner, 0))
            idle = _references(owner)  # counted as in the loop above: local, tuple, argument
            kept[-1] = (owner, idle)
        return _aligned_view(owner, count, dtype)


def fuse(arrays: Sequence[np.ndarray], scale: float = 1.0, extra: int = 0) -> np.ndarray:
    """A 1-D buffer holding ``arrays`` (all of one dtype), each 64-byte aligned, times
    ``scale``, then ``extra`` elements for the caller; the gaps between them hold zeros.
    ``unfuse`` cuts it back."""
    dtype = arrays[0].dtype
    offsets, total = _offsets([a.size for a in arrays], dtype.itemsize)
    buffer = _buffer(total + extra, dtype)
    for array, offset in zip(arrays, offsets, strict=True):
        segment = buffer[offset : offset + array.size]
        if scale == 1.0:
            segment[...] = array.reshape(-1)
        else:
            np.multiply(array.reshape(-1), scale, out=segment, casting="unsafe")
    return buffer


def unfuse(buffer: np.ndarray, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """Views of ``buffer`` (made by ``fuse``) cut back into arrays of ``shapes``, in order."""
    counts = [math.prod(shape) for shape in shapes]
    offsets, _ = _offsets(counts, buffer.dtype.itemsize)
    return [
        buffer[offset : offset + count].reshape(shape)
        for offset, count, shape in zip(offsets, counts, shapes, strict=True)
    ]


def kept_buffer_count() -> int:
    """How many buffers are kept for reuse, over all layouts."""
    with _lock:
        return sum(len(kept) for kept in _kept.values())


def forget() -> None:
    """Drops the kept buffers (their memory is freed once no view of them is alive)."""
    with _lock:
        _kept.clear()
