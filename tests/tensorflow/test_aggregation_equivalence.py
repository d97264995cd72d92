"""N micro-batches on each of W ranks == one step on all N*W*b samples, in every mode."""

from pathlib import Path

import numpy as np
import pytest

from support import run_ranks

WORKER = Path(__file__).parent / "workers" / "equivalence_worker.py"
WINDOWS = 3
# Keras's Adam corrects its bias with optimizer.iterations, which must then count updates
# (count_steps="updates") for one window to equal one step, as must tf_keras's; v1 optimizers
# keep their own.

CASES = [
    ("tape_function", "sgd", 2, 4),
    ("tape_function", "adam", 2, 4),
    ("keras_loop", "sgd", 2, 3),
    ("keras_loop", "adam", 2, 1),
    ("keras_loop", "adam", 3, 4),
    ("keras_fit", "sgd", 2, 4),
    ("keras_fit", "adam", 2, 2),
    ("legacy_graph", "sgd", 2, 4),
    ("legacy_graph", "adam", 2, 4),
    ("legacy_graph", "momentum", 3, 2),
    ("tf_keras_fit", "sgd", 2, 4),
    ("tf_keras_fit", "adam", 3, 2),
    ("tf_keras_legacy_fit", "adam", 2, 4),
    ("tf_keras_session_fit", "sgd", 2, 4),
    ("tf_keras_session_fit", "adam", 3, 3),
]


@pytest.mark.parametrize("mode, optimizer, ranks, passes", CASES)
def test_matches_single_process_on_whole_batches(tmp_path, mode, optimizer, ranks, passes):
    count_steps = "calls" if mode == "legacy_graph" else "updates"
    reports = run_ranks(
        WORKER, ranks, tmp_path, mode, optimizer, str(passes), str(WINDOWS), count_steps
    )
    for report in reports:
        assert report["iterations"] == WINDOWS * (passes if count_steps == "calls" else 1)
        for got, want in zip(report["weights"], report["reference"], strict=True):
            got, want = np.asarray(got), np.asarray(want)
            relative = np.abs(got - want).max() / np.abs(want).max()
            assert relative <= 1e-5, f"relative error {relative:.2e}"
        # Training moved the weights: the comparison is not between two untouched copies.
        assert np.abs(np.asarray(report["weights"][1])).max() > 1e-3
    for report in reports[1:]:
        assert report["weights"] == reports[0]["weights"]
