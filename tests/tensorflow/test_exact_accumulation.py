"""Exact accumulation: item-weighted windows, partial-window flushes, N changed mid-training
and checkpoints mid-window, each equal to one process taking one step per window on the
concatenated big batch with the mean loss over all its items.

One launch per world size runs every case (see ``workers/exact_worker.py``)."""

from pathlib import Path

import numpy as np
import pytest

from support import run_ranks

WORKER = Path(__file__).parent / "workers" / "exact_worker.py"


@pytest.fixture(scope="module", params=[2, 3], ids=["2 ranks", "3 ranks"])
def reports(request, tmp_path_factory):
    ranks = request.param
    return run_ranks(WORKER, ranks, tmp_path_factory.mktemp(f"exact{ranks}"), timeout=900)


def relative_error(got, want) -> float:
    errors = [
        np.abs(np.asarray(g) - np.asarray(w)).max() / np.abs(np.asarray(w)).max()
        for g, w in zip(got, want, strict=True)
    ]
    return max(errors)


def assert_matches_reference(reports, case):
    for report in reports:
        result = report[case]
        assert relative_error(result["weights"], result["reference"]) <= 1e-5
        assert result["weights"] == reports[0][case]["weights"]
    # Training moved the weights far from where they started.
    assert np.abs(np.asarray(reports[0][case]["weights"][1])).max() > 1e-2


@pytest.mark.parametrize("case", ["tape_sgd", "tape_adam"])
def test_item_weighted_tape_with_uneven_micro_batches_and_flush_matches_big_batch(reports, case):
    assert_matches_reference(reports, case)
    for report in reports:
        assert report[case]["flush_updates"] == 1  # the partial windows, applied once
        assert report[case]["iterations"] == 4  # three windows and the flushed one


def test_without_item_weights_the_same_run_differs_from_the_big_batch(reports):
    for report in reports:
        result = report["tape_adam_unweighted"]
        assert relative_error(result["weights"], result["reference"]) > 1e-2


def test_changing_passes_mid_training_matches_big_batches_without_retracing(reports):
    assert_matches_reference(reports, "keras_changing_passes")
    for report in reports:
        result = report["keras_changing_passes"]
        assert result["traces"] == result["traces_before_change"]
        assert result["passes"] == 4
        assert result["iterations"] == 4


def test_resume_mid_window_with_item_weights_matches_uninterrupted_run(reports):
    assert_matches_reference(reports, "resume")
    for report in reports:
        result = report["resume"]
        np.testing.assert_array_equal(result["weights"][0], result["uninterrupted"][0])
        np.testing.assert_array_equal(result["weights"][1], result["uninterrupted"][1])
        assert result["restored_counter"] == 1  # the stop was one micro-step into a window
        assert result["restored_passes"] == 2  # and after N changed


@pytest.mark.parametrize("case", ["fit_keras", "fit_tf_keras"])
def test_fit_with_aggregation_callback_and_unequal_batches_matches_big_batches(reports, case):
    assert_matches_reference(reports, case)
    for report in reports:
        # Every rank applied every round's update, however many batches it had.
        assert report[case]["iterations"] == report[case]["rounds"]


GRAPH_WORKER = Path(__file__).parent / "workers" / "exact_graph_worker.py"


@pytest.mark.parametrize("ranks", [2, 3])
def test_v1_graph_item_weights_changed_passes_and_flush_match_big_batches(tmp_path, ranks):
    reports = run_ranks(GRAPH_WORKER, ranks, tmp_path)
    for case in ("sgd", "adam"):
        assert_matches_reference(reports, case)
        for report in reports:
            assert report[case]["flush_updates"] == 1
            # Five windows and the flushed one, counted as updates.
            assert report[case]["global_step"] == 6
