"""Fusion buffers: arrays come back intact, and a buffer is reused only once nothing uses it."""

import numpy as np

from gradsync.engine import fusion


def test_unfuse_returns_what_fuse_packed_scaled_and_aligned():
    arrays = [np.arange(n, dtype=np.float32) for n in (3, 17, 1, 64)]
    front = fusion.ALIGNMENT // 4
    buffer = fusion.fuse(arrays, scale=2.0, front=front)
    views = fusion.unfuse(buffer[front:], [a.shape for a in arrays])
    for array, view in zip(arrays, views, strict=True):
        np.testing.assert_array_equal(view, 2 * array)
        assert view.ctypes.data % fusion.ALIGNMENT == 0


def test_buffer_in_use_is_never_reused():
    fusion.forget()
    arrays = [np.ones(1000, np.float32), np.ones(10, np.float32)]
    first = fusion.fuse(arrays)
    first_address = first.ctypes.data
    kept_view = fusion.unfuse(first, [(1000,), (10,)])[0]
    del first
    second = fusion.fuse([a * 3 for a in arrays])
    assert not np.shares_memory(second, kept_view)
    np.testing.assert_array_equal(kept_view, 1.0)  # untouched by the second fuse
    del second, kept_view
    third = fusion.fuse(arrays)  # nothing refers to the kept buffers now: the first is reused
    assert third.ctypes.data == first_address
    np.testing.assert_array_equal(third[:1000], 1.0)


def test_slices_of_results_keep_their_buffer_from_reuse(monkeypatch):
    """A slice made from a result, kept after the result itself is gone, still keeps its
    buffer from being lent again; no reference count is read to know it."""
    import sys

    def no_reference_counts(obj):
        raise AssertionError("fusion must not read reference counts")

    monkeypatch.setattr(sys, "getrefcount", no_reference_counts)
    fusion.forget()
    arrays = [np.arange(1000, dtype=np.float32)]
    result = fusion.unfuse(fusion.fuse(arrays), [(1000,)])[0]
    kept_slice = result[10:20][::2]
    del result
    for step in range(1, 4):
        again = fusion.fuse([np.full(1000, -step, np.float32)])
        assert not np.shares_memory(again, kept_slice)
        del again
    np.testing.assert_array_equal(kept_slice, np.arange(10, 20, 2, dtype=np.float32))
    del kept_slice
    assert fusion.fuse(arrays).base is not None  # the first buffer is free again
