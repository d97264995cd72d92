"""An inf or NaN in one micro-step on one rank: the window is skipped alike on every rank
(with a LossScaleOptimizer), or every rank raises an error naming the variable."""

from pathlib import Path

import numpy as np
import pytest

from support import run_ranks

WORKER = Path(__file__).parent / "workers" / "nonfinite_worker.py"
LR = 0.5


def window_update(ranks):
    """One applied window: lr times the rank average of c, averaged over the window."""
    return LR * np.array([1.0, 2.0]) * np.mean(np.arange(1, ranks + 1))


@pytest.mark.parametrize("ranks", [2, 3])
def test_loss_scaled_window_with_inf_is_skipped_on_every_rank(tmp_path, ranks):
    reports = run_ranks(WORKER, ranks, tmp_path, "loss_scale")
    step = window_update(ranks)
    for report in reports:
        first, skipped, third = report["windows"]
        np.testing.assert_array_equal(first["w"], -step)
        np.testing.assert_array_equal(skipped["w"], -step)  # no weight moved
        np.testing.assert_array_equal(third["w"], -2 * step)  # training went on
        assert (first["scale"], skipped["scale"], third["scale"]) == (1024.0, 512.0, 512.0)
        assert report["error"] is None


def test_non_finite_gradient_raises_naming_variable_on_every_rank(tmp_path):
    reports = run_ranks(WORKER, 2, tmp_path, "raise")
    step = window_update(2)
    for report in reports:
        assert "The gradient of variable w:0, reduced over ranks, is not finite" in report["error"]
        np.testing.assert_array_equal(report["windows"][-1]["w"], -step)  # nothing applied
