"""The stall inspector: ranks kept waiting by a late rank name it, and, when told to, end
the job instead of waiting forever (real MPI processes, TensorFlow's three modes)."""

import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from support import MPIEXEC, run_ranks, worker_env

WORKER = Path(__file__).parent / "workers" / "stall_worker.py"


@pytest.mark.parametrize("ranks", [2, 3])
def test_waiting_ranks_name_the_late_rank_then_finish_exactly(tmp_path, ranks, monkeypatch):
    # The late rank comes after the warning (3 s) and before the shutdown time (30 s).
    monkeypatch.setenv("GRADSYNC_STALL_CHECK_TIME", "3")
    monkeypatch.setenv("GRADSYNC_STALL_SHUTDOWN_TIME", "30")
    reports, stderr = run_ranks(WORKER, ranks, tmp_path, "late", with_stderr=True)
    late = ranks - 1
    for mode in ["eager", "function", "graph"]:
        for rank in range(ranks - 1):
            warnings = [
                line
                for line in stderr.splitlines()
                if line.startswith(f"gradsync: rank {rank} has waited")
            ]
            assert any(f"not reached by rank {late} (in no collective)" in w for w in warnings)
        for report in reports:
            np.testing.assert_array_equal(report["results"][mode], [ranks * (ranks + 1) / 2] * 3)
    names = {
        re.search(r"in (\w+ '[^']*')", w).group(1) for w in stderr.splitlines() if "has waited" in w
    }
    assert "allreduce 'late_sum'" in names  # eager and tf.function name it as the program did
    assert len([w for w in stderr.splitlines() if "has waited" in w]) == 3 * (ranks - 1)
    # The late rank itself waited for nobody, and says nothing.
    assert f"gradsync: rank {late} has waited" not in stderr


@pytest.mark.parametrize("ranks, mode", [(2, "eager"), (2, "function"), (3, "graph")])
def test_shutdown_time_ends_the_job_with_the_stall_named(tmp_path, ranks, mode):
    env = {**worker_env(), "GRADSYNC_STALL_CHECK_TIME": "3", "GRADSYNC_STALL_SHUTDOWN_TIME": "5"}
    command = [MPIEXEC, "-n", str(ranks), sys.executable, str(WORKER), str(tmp_path), "stuck", mode]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode != 0
    assert time.monotonic() - started < 45  # not the late rank's minute of sleep
    output = result.stdout + result.stderr
    assert "StallError" in output
    assert f"not reached by rank {ranks - 1}" in output
    assert "GRADSYNC_STALL_SHUTDOWN_TIME=5" in output
