"""Runs a worker script on N real MPI processes and collects what each rank reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

MPIEXEC = str(Path(sys.executable).parent / "mpiexec")


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(Path(__file__).parent), env.get("PYTHONPATH")])
    )
    env["GRADSYNC_STALL_TIMEOUT"] = env.get("GRADSYNC_STALL_TIMEOUT", "30")
    return env


def run_ranks(
    script: Path,
    ranks: int,
    out_dir: Path,
    *args: str,
    timeout: float = 300,
    with_stderr: bool = False,
):
    """Runs ``script out_dir args...`` on ``ranks`` MPI processes; returns each rank's report
    (and, ``with_stderr``, what the ranks wrote to stderr).

    A worker reports by writing ``out_dir/rank{r}.json`` (see ``report`` below).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [MPIEXEC, "-n", str(ranks), sys.executable, str(script), str(out_dir), *args]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=worker_env()
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{script.name} on {ranks} ranks exited {result.returncode}\n"
            f"stdout:\n{result.stdout[-5000:]}\nstderr:\n{result.stderr[-8000:]}"
        )
    reports = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(ranks)]
    return (reports, result.stderr) if with_stderr else reports


def report(out_dir: str, rank: int, data: dict) -> None:
    """Called by a worker: saves this rank's results for the test to read."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(data))
