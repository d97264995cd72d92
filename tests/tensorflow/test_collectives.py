"""Every collective, in eager mode, in tf.function and in a v1 graph, checked against numpy."""

from pathlib import Path

import numpy as np
import pytest

from support import run_ranks

WORKER = Path(__file__).parent / "workers" / "collectives_worker.py"
DTYPES = ["float32", "float64", "float16", "int32"]


def per_rank(dtype, rank):
    return (np.arange(6).reshape(2, 3) * (rank + 1) + rank).astype(dtype)


@pytest.mark.parametrize(
    "mode, ranks", [("eager", 2), ("function", 2), ("graph", 2), ("eager", 3), ("graph", 3)]
)
def test_collectives_match_numpy(tmp_path, mode, ranks):
    reports = run_ranks(WORKER, ranks, tmp_path, mode)
    for _rank, result in enumerate(reports):
        values, dtypes = result["values"], result["dtypes"]
        for dtype in DTYPES:
            inputs = [per_rank(dtype, r) for r in range(ranks)]
            total = np.sum(inputs, axis=0)
            np.testing.assert_array_equal(values[f"sum_{dtype}"], total)
            assert dtypes[f"sum_{dtype}"] == dtype
            if dtype != "int32":
                np.testing.assert_allclose(
                    values[f"average_{dtype}"],
                    total / ranks,
                    rtol=1e-3 if dtype == "float16" else 1e-7,
                )
                np.testing.assert_array_equal(values[f"scaled_{dtype}"], total * 0.5 * 4.0)
            np.testing.assert_array_equal(values[f"broadcast_{dtype}"], inputs[-1])
            gathered = np.concatenate([np.full((r + 1, 2), r, dtype) for r in range(ranks)])
            np.testing.assert_array_equal(values[f"allgather_{dtype}"], gathered)
        float_total = np.sum([per_rank("float32", r) for r in range(ranks)], axis=0)
        np.testing.assert_allclose(values["fp16_compressed"], float_total / ranks, rtol=1e-3)
        assert dtypes["fp16_compressed"] == "float32"
        for i, dtype in enumerate(["float32", "float64", "float32"]):
            np.testing.assert_array_equal(
                values[f"grouped_{i}"], np.sum([per_rank(dtype, r) for r in range(ranks)], 0)
            )
            assert dtypes[f"grouped_{i}"] == dtype
        # IndexedSlices are gathered: every rank's row, in rank order.
        np.testing.assert_array_equal(
            values["slices_values"], [[r + 1.0] * 3 for r in range(ranks)]
        )
        np.testing.assert_array_equal(values["slices_indices"], list(range(ranks)))
        np.testing.assert_array_equal(values["variable"], per_rank("float32", 0))
        # d/dx sum(allreduce_sum(x) * w_rank) = sum over ranks of w_rank.
        np.testing.assert_array_equal(
            values["gradient"], np.full((2, 3), sum(r + 1.0 for r in range(ranks)))
        )
        # The same through a grouped allreduce whose small tensors travel packed: for
        # sum(y1 * y1 * w_rank), y1 = sum over ranks of x1, d/dx1 = 2 y1 sum(w_rank).
        weights = sum(r + 1.0 for r in range(ranks))
        first, second, unused = (values[f"grouped_gradient_{i}"] for i in range(3))
        np.testing.assert_array_equal(first, np.full((2, 3), weights))
        np.testing.assert_allclose(second, 2 * sum(range(ranks)) * weights * np.ones(4))
        np.testing.assert_array_equal(unused, np.zeros((2, 2)))
        assert values["object"] == {"from": ranks - 1, "items": [ranks - 1] * 3}
        if mode == "graph":
            np.testing.assert_array_equal(values["concurrent_sum_float32"], float_total)
            np.testing.assert_array_equal(
                values["concurrent_broadcast_float64"], per_rank("float64", ranks - 1)
            )
        errors = result["errors"]
        # Integer averages are computed, truncated toward zero, as Horovod computes them.
        assert errors["int_average"] is None
        assert f"root_rank={ranks} is out of range" in errors["root_out_of_range"]
        assert "NotImplementedError" in errors["adasum"]
        assert "op must be" in errors["bad_op"]
        assert "compression must be" in errors["bad_compression"]
