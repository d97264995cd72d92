"""Small tensors travel to the engine packed together in graphs: the results are those of
numpy, and the ranks still compare every tensor's shape."""

from pathlib import Path

import numpy as np
import pytest

from support import run_ranks

WORKER = Path(__file__).parent / "workers" / "packing_worker.py"


def per_rank(specs, r):
    return [
        ((np.arange(int(np.prod(shape))) % 13 + r * (i + 1)).reshape(shape)).astype(dtype)
        for i, (dtype, shape) in enumerate(specs)
    ]


@pytest.mark.parametrize("mode, ranks", [("function", 2), ("graph", 3)])
def test_packed_collectives_match_numpy_and_compare_every_shape(tmp_path, mode, ranks):
    reports = run_ranks(WORKER, ranks, tmp_path, mode, timeout=240)
    specs = [(dtype, tuple(shape)) for dtype, shape in reports[0]["specs"]]
    inputs = [per_rank(specs, r) for r in range(ranks)]
    totals = [np.sum(parts, axis=0) for parts in zip(*inputs, strict=True)]
    floating = [i for i, (dtype, _) in enumerate(specs) if dtype != "int32"]
    for report in reports:
        values, dtypes = report["values"], report["dtypes"]
        assert report["all_runs_equal"]
        for i, (dtype, shape) in enumerate(specs):
            assert np.shape(values["sum"][i]) == shape and dtypes["sum"][i] == dtype
            np.testing.assert_array_equal(values["sum"][i], totals[i])
            np.testing.assert_array_equal(values["broadcast"][i], inputs[-1][i])
        for got, i in zip(values["average"], floating, strict=True):
            dtype = np.dtype(specs[i][0]).type
            np.testing.assert_array_equal(got, totals[i] * dtype(1 / ranks))
        # d/dx of sum(allreduce(x)) * w_rank is the sum of every rank's w.
        np.testing.assert_array_equal(values["grad"][0], np.full((3, 4), ranks * (ranks + 1) / 2))
        np.testing.assert_array_equal(values["grad"][1], np.full((5,), ranks))
        swapped = f"tensor 0: rank {ranks - 1} sent shape (4, 3), rank 0 sent (3, 4)"
        assert swapped in report["error"], report["error"]
