"""Gradients reduced in buckets (N = 1): exact values, and the same order on every rank,
the last layers' bucket first."""

from pathlib import Path

import numpy as np
import pytest

from gradsync.tensorflow.training.reduction import gradient_buckets

from support import run_ranks

WORKER = Path(__file__).parent / "workers" / "bucket_worker.py"


@pytest.mark.parametrize("ranks", [2, 3])
def test_buckets_are_exact_and_issued_in_one_order_on_every_rank(tmp_path, ranks):
    reports = run_ranks(WORKER, ranks, tmp_path)
    # 4 KiB buckets over 1, 4, 6, 0.25, 6, 0.03 and 2.7 KiB, from the last: [5, 6], [4], [3],
    # [2], [1], [0].
    expected_order = [f"gradients.bucket{i}" for i in range(6)]
    for report in reports:
        for mode in ("eager", "function"):
            for got, want in zip(report[mode]["weights"], report["expected"], strict=True):
                np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
            assert report[mode]["order"] == expected_order
    assert all(r["function"]["order"] == reports[0]["function"]["order"] for r in reports)


def test_buckets_group_the_last_gradients_first():
    import tensorflow as tf

    gradients = [tf.zeros([n // 4]) for n in (1024, 4096, 6144, 256, 6144, 32, 2800)]
    assert gradient_buckets(gradients, 4096) == [[5, 6], [4], [3], [2], [1], [0]]
    assert gradient_buckets(gradients, None) == [list(range(7))]
    assert gradient_buckets(gradients, 1 << 30) == [list(range(7))]
