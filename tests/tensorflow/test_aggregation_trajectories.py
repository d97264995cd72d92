"""backward_passes_per_step: exact per-call trajectories of variables and step counters."""

from pathlib import Path

import numpy as np
import pytest

from support import run_ranks

WORKER = Path(__file__).parent / "workers" / "trajectory_worker.py"
LR = 0.5
MODES = [
    "keras_eager",
    "keras_function",
    "tape_eager",
    "tape_function",
    "legacy_graph",
    "tf_keras_function",
    "tf_keras_legacy_eager",
    "tf_keras_session",
]


def expected_states(ranks, passes, average, count_steps, calls):
    """Worked out by hand: the update moves by lr * mean_rank(c) * (N, or 1 when averaging),
    on sync calls only; the None-gradient variable never moves."""
    mean_c = np.array([1.0, 2.0]) * np.mean([r + 1 for r in range(ranks)])
    per_sync = LR * mean_c * (1 if average else passes)
    states = []
    for call in range(1, calls + 1):
        syncs = call // passes
        states.append(
            {
                "w": (-syncs * per_sync).tolist(),
                "unused": [1.0, 1.0],
                "b": (-syncs * 2 * per_sync).tolist(),
                "step": call if count_steps == "calls" else syncs,
            }
        )
    return states


CASES = [
    # (mode, ranks, N, average, count_steps)
    *[(mode, 2, 3, False, "calls") for mode in MODES],
    *[(mode, 3, 4, True, "updates") for mode in MODES],
    ("keras_function", 2, 1, False, "calls"),
    ("legacy_graph", 3, 1, False, "calls"),
    ("tape_function", 3, 3, False, "updates"),
    ("keras_eager", 2, 4, True, "calls"),
    ("legacy_graph", 2, 4, False, "updates"),
    ("tf_keras_eager", 2, 3, False, "updates"),
    ("tf_keras_legacy_function", 3, 4, False, "calls"),
    ("tf_keras_session", 3, 1, False, "calls"),
]


@pytest.mark.parametrize("mode, ranks, passes, average, count_steps", CASES)
def test_trajectory_follows_worked_values(tmp_path, mode, ranks, passes, average, count_steps):
    calls = 3 * passes + 1 if passes > 1 else 4
    reports = run_ranks(
        WORKER, ranks, tmp_path, mode, str(passes), str(int(average)), count_steps, str(calls)
    )
    expected = expected_states(ranks, passes, average, count_steps, calls)
    for report in reports:
        for call, (got, want) in enumerate(zip(report["states"], expected, strict=True), 1):
            for key in ("w", "unused", "b"):
                np.testing.assert_array_equal(
                    got[key], want[key], err_msg=f"{key} after call {call}"
                )
            assert got["step"] == want["step"], f"step counter after call {call}"
        # Exactly one communication per window, none on the other calls.
        assert report["allreduces"] == calls // passes
        if mode == "legacy_graph":
            assert report["accumulators"] == (2 if passes > 1 else 0)
            assert report["not_trainable"]
        else:
            assert not any("accumulator" in name for name in report["optimizer_variables"])
    assert reports[0]["states"] == reports[-1]["states"]
