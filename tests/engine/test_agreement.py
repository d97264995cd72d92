"""Ranks agree on each collective: without a header exchange per call once a program's
collectives are known, and with a clear error on every rank when they disagree."""

from pathlib import Path

import pytest

from support import run_ranks

WORKER = Path(__file__).parent / "workers" / "agreement_worker.py"


@pytest.mark.parametrize("ranks", [2, 3])
def test_repeated_collectives_are_negotiated_once(tmp_path, ranks):
    reports = run_ranks(WORKER, ranks, tmp_path, "none")
    for report in reports:
        assert all(report["exact"])
        assert report["warm"] <= 2  # the first call, and the first repetition
        assert report["steady"] == report["warm"]  # 20 more calls, no header exchange
        # Only the epoch's ends take header exchanges (the metric, which the prediction after
        # a step misses, and the step after it, predicted to be a metric), however many
        # epochs there are.
        assert max(report["epoch_negotiations"][2:]) <= 2, report["epoch_negotiations"]


@pytest.mark.parametrize(
    "fault, ranks, message",
    [
        ("shape", 2, "allreduce 'grads': tensor 0: rank 1 sent shape (3, 5), rank 0 sent (3, 4)"),
        ("dtype", 3, "allreduce 'grads': tensor 0: rank 2 sent dtype float64, rank 0 sent float32"),
        ("count", 2, "allreduce 'grads': rank 1 sent 2 tensors, rank 0 sent 3"),
        (
            "other_collective",
            3,
            "rank 2 called broadcast 'weights', rank 0 called allreduce 'grads'",
        ),
        ("leaves", 2, "rank 1 called shutdown 'world', rank 0 called allreduce 'grads'"),
    ],
)
def test_disagreement_after_warm_up_fails_on_every_rank(tmp_path, fault, ranks, message):
    reports = run_ranks(WORKER, ranks, tmp_path, fault, timeout=120)
    for report in reports:
        assert all(report["exact"]), "sums before and after the error are exact"
    # A rank that leaves is not in error: the ones still calling collectives are.
    in_error = reports[:-1] if fault == "leaves" else reports
    for report in in_error:
        assert report["error"] is not None and message in report["error"]
