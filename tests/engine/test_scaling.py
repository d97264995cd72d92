"""Averages and scale factors are exact on buffers the engine sends in several pieces, on the
negotiated and the predicted path, a call other than the predicted one costs one piece more,
and a zero postscale hides no disagreement."""

from pathlib import Path

import pytest

from gradsync.engine.collectives import CHUNK_BYTES

from support import run_ranks

WORKER = Path(__file__).parent / "workers" / "scaling_worker.py"


@pytest.mark.parametrize("ranks", [2, 3])
def test_scaled_average_of_multi_piece_buffers_is_exact(tmp_path, ranks):
    reports = run_ranks(WORKER, ranks, tmp_path, timeout=180)
    for report in reports:
        assert all(report["exact"]), report["exact"]
        assert report["negotiations"] <= 2  # later calls took the predicted path
        # 2.4 pieces predicted; a misprediction adds its first piece and a header, no more.
        assert report["predicted_bytes"] > 2 * CHUNK_BYTES
        extra = report["mispredicted_bytes"] - report["predicted_bytes"]
        assert 0 < extra <= CHUNK_BYTES + 256, report
        assert all(report["zeroed"])
        assert report["error"] is not None and "tensor 3" in report["error"], report["error"]
