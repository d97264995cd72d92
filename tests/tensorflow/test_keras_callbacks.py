"""BroadcastGlobalVariablesCallback and MetricAverageCallback in model.fit, for each Keras."""

from pathlib import Path

import numpy as np
import pytest

from support import run_ranks

WORKER = Path(__file__).parent / "workers" / "callbacks_worker.py"


@pytest.mark.parametrize("flavour, ranks", [("keras", 3), ("tf_keras", 2), ("tf_keras_session", 2)])
def test_ranks_start_from_root_and_average_metrics(tmp_path, flavour, ranks):
    root = ranks - 1
    reports = run_ranks(WORKER, ranks, tmp_path, flavour, str(root))
    root_initial = reports[root]["initial"]
    assert reports[0]["initial"] != root_initial  # the ranks did start apart
    mean_loss = np.mean([r["raw_loss"] for r in reports])
    assert len({r["raw_loss"] for r in reports}) == ranks  # each rank saw its own data
    for report in reports:
        assert report["after_broadcast"] == root_initial
        assert report["final"] == reports[0]["final"]
        np.testing.assert_allclose(report["averaged_loss"], mean_loss, rtol=1e-12)
        # LearningRateScheduleCallback: 0.01 * 0.5 ** (epoch + batch / 4), at every batch.
        expected = [0.01 * 0.5 ** (epoch + batch / 4) for epoch in range(2) for batch in range(4)]
        np.testing.assert_allclose(report["rates"], expected, rtol=1e-6)
    # BestModelCheckpoint: rank 0 alone writes the model.
    assert [p.name.split(".")[0] for p in tmp_path.glob("best*")] == ["best0"]


LEGACY_WORKER = Path(__file__).parent / "workers" / "legacy_keras_worker.py"


def test_keras_2_program_runs_with_horovods_callbacks(tmp_path):
    """tf_keras under TF_USE_LEGACY_KERAS=1: the callbacks are tf_keras callbacks, the ranks
    end with the same weights, and the warmup gives the learning rates Horovod 0.28.1 gave
    for the same program (2 ranks, initial_lr 0.1, 2 warmup epochs of 3 steps)."""
    reports = run_ranks(LEGACY_WORKER, 2, tmp_path)
    horovod_rates = [0.058333, 0.066667, 0.075, 0.083333, 0.091667, 0.1, 0.1, 0.1, 0.1]
    for result in reports:
        assert all(base.startswith("tf_keras") for base in result["keras_base"])
        np.testing.assert_allclose(result["rates"], horovod_rates, rtol=1e-4)
        # Metrics are averaged over ranks: every rank logs the same losses.
        np.testing.assert_allclose(result["loss"], reports[0]["loss"], rtol=1e-6)
        for ours, theirs in zip(result["weights"], reports[0]["weights"], strict=True):
            np.testing.assert_allclose(ours, theirs, rtol=1e-6)
