"""A run stopped mid-window and resumed from checkpoints ends with the weights of a run that
never stopped; resuming in a world of another size is refused on every rank."""

from pathlib import Path

import numpy as np
import pytest

from support import run_ranks

WORKER = Path(__file__).parent / "workers" / "resume_worker.py"


@pytest.mark.parametrize("mode", ["keras_function", "keras_file", "tape_function", "legacy_graph"])
def test_resume_mid_window_matches_uninterrupted_run(tmp_path, mode):
    checkpoints = tmp_path / "checkpoints"
    full = run_ranks(WORKER, 2, tmp_path / "full", mode, "full", str(checkpoints))
    run_ranks(WORKER, 2, tmp_path / "save", mode, "save", str(checkpoints))
    resumed = run_ranks(WORKER, 2, tmp_path / "resume", mode, "resume", str(checkpoints))
    for got, want in zip(resumed, full, strict=True):
        assert got["error"] is None
        np.testing.assert_array_equal(got["weights"], want["weights"])
        assert got["iterations"] == want["iterations"]
    # The stop came half-way into a window: weights equal only if its accumulated half was
    # restored, since the window's update is applied after the resume.


@pytest.mark.parametrize("mode", ["keras_function", "keras_file", "legacy_graph"])
def test_resume_mid_window_in_another_world_size_is_refused(tmp_path, mode):
    checkpoints = tmp_path / "checkpoints"
    run_ranks(WORKER, 2, tmp_path / "save", mode, "save", str(checkpoints))
    resumed = run_ranks(WORKER, 3, tmp_path / "resume", mode, "resume", str(checkpoints))
    for report in resumed:
        assert report["error"] is not None
        assert "was begun by [rank, world size] =" in report["error"]
        assert "Restore on every rank the checkpoint that it saved" in report["error"]


@pytest.mark.parametrize("mode", ["keras_function", "legacy_graph"])
def test_resume_at_window_end_in_another_world_size_works(tmp_path, mode):
    checkpoints = tmp_path / "checkpoints"
    run_ranks(WORKER, 2, tmp_path / "save", mode, "save_at_boundary", str(checkpoints))
    resumed = run_ranks(
        WORKER, 3, tmp_path / "resume", mode, "resume_at_boundary", str(checkpoints)
    )
    for report in resumed:
        assert report["error"] is None
        assert report["weights"] == resumed[0]["weights"]
