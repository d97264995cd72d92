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
