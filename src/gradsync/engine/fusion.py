"""Fusion buffers: many arrays of one dtype packed into one contiguous buffer and back.

One large MPI call moves data far faster than many small ones, so collectives on a list of
arrays pack each dtype's arrays into one buffer, communicate it once, and hand back views.

Each array starts at a 64-byte boundary of the buffer, so that TensorFlow adopts the views
it gets back as tensors without copying them. Buffers are kept and reused once no array made
from them is alive any more, which spares the page faults of fresh memory on every call; a
buffer still in use is never reused.

Whether a buffer is in use is observed directly, not counted: each time a buffer is lent, the
arrays handed out are made through a new ``memoryview`` of its memory, which every array
derived from them (views, slices, arrays TensorFlow adopted) keeps alive; the engine holds only
a weak reference to it, so the buffer is free exactly when that memoryview is gone. No
reference count is read, so this holds on any Python interpreter.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import weakref
from collections.abc import Sequence

import numpy as np

ALIGNMENT = 64  # bytes: TensorFlow's alignment for adopting numpy memory without a copy
KEPT_PER_LAYOUT = 2  # buffers kept for reuse per (dtype, size)
KEPT_LAYOUTS = 8  # distinct (dtype, size) pairs whose buffers are kept


@dataclasses.dataclass(eq=False)
class _Kept:
    """A buffer's memory, and a weak reference to the memoryview behind the arrays it last
    lent (dead once none of them is alive)."""

    memory: np.ndarray
    lease: weakref.ref | None = None

    def free(self) -> bool:
        return self.lease is None or self.lease() is None

    def lend(self, count: int, dtype: np.dtype) -> np.ndarray:
        whole = np.frombuffer(memoryview(self.memory), dtype=np.uint8)
        self.lease = weakref.ref(whole.base)
        start = -whole.ctypes.data % ALIGNMENT
        return whole[start : start + count * dtype.itemsize].view(dtype)


_kept: dict[tuple[np.dtype, int], list[_Kept]] = {}
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


def _buffer(count: int, dtype: np.dtype) -> np.ndarray:
    """A buffer of ``count`` elements: a kept one that no array uses any more, or
    a new one (kept for reuse while there are few)."""
    key = (dtype, count)
    with _lock:
        kept = _kept.get(key, [])
        for buffer in kept:
            if buffer.free():
                return buffer.lend(count, dtype)
        buffer = _Kept(np.zeros(count * dtype.itemsize + ALIGNMENT, dtype=np.uint8))
        if len(kept) < KEPT_PER_LAYOUT and (key in _kept or len(_kept) < KEPT_LAYOUTS):
            _kept.setdefault(key, kept).append(buffer)
        return buffer.lend(count, dtype)


def fuse(arrays: Sequence[np.ndarray], scale: float = 1.0, front: int = 0) -> np.ndarray:
    """A 1-D buffer of ``front`` elements for the caller, then ``arrays`` (all of one dtype)
    times ``scale``, each 64-byte aligned when ``front`` elements are a multiple of 64 bytes.
    ``unfuse`` cuts ``buffer[front:]`` back into the arrays."""
    dtype = arrays[0].dtype
    offsets, total = _offsets([a.size for a in arrays], dtype.itemsize)
    buffer = _buffer(front + total, dtype)
    for array, offset in zip(arrays, offsets, strict=True):
        segment = buffer[front + offset : front + offset + array.size]
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
