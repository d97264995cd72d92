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
    # A model that fit builds on its first batch: rank `root`'s state after that batch reaches
    # every rank, and the ranks stay in step, optimizer state included. (In the v1 session
    # tf_keras builds the model before training begins, and the broadcast comes then.)
    lazy_root = reports[root]["lazy_before_broadcast"]
    if flavour != "tf_keras_session":
        assert reports[(root + 1) % ranks]["lazy_before_broadcast"] != lazy_root
    # Warmup from 0.01 / size to 0.01 over the first epoch's 4 batches, as Horovod.
    warmup = [0.01 / ranks * ((b + 1) / 4 * (ranks - 1) + 1) for b in range(4)] + [0.01] * 4
    for report in reports:
        assert report["lazy_after_broadcast"] == lazy_root
        assert report["lazy_final"] == reports[root]["lazy_final"]
        assert report["lazy_optimizer"] == reports[root]["lazy_optimizer"]
        assert report["lazy_final"] != lazy_root  # it went on training
        np.testing.assert_allclose(report["lazy_rates"], warmup, rtol=1e-6)
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
