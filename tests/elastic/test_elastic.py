"""Elastic training under ``gradsyncrun``: a worker that dies, raises or hangs costs one
relaunch from the last commit, and the job ends with the weights of one process taking every
step once (the program's data sharding makes the trajectory independent of the world size).
Hosts are simulated on this machine by loopback names with one slot each, in a discovery file
the tests (and the worker, to grow) rewrite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from support import worker_env

WORKER = Path(__file__).parent / "workers" / "elastic_worker.py"
GRADSYNCRUN = str(Path(sys.executable).parent / "gradsyncrun")
EPOCHS, BATCHES, GLOBAL, FEATURES, LEARNING_RATE = 3, 6, 12, 4, 0.05


def reference(passes: int, epochs: int = EPOCHS) -> list[np.ndarray]:
    """One process, every step once: SGD on the mean squared error of each window's
    ``passes`` global batches."""
    w, b = np.zeros((FEATURES, 1)), np.zeros(1)
    truth = np.arange(1, FEATURES + 1, dtype=np.float32)
    steps = [(e, s) for e in range(epochs) for s in range(BATCHES)]
    for start in range(0, len(steps), passes):
        xs, ys = [], []
        for epoch, batch in steps[start : start + passes]:
            rng = np.random.default_rng([epoch, batch])
            x = rng.normal(size=(GLOBAL, FEATURES)).astype(np.float32)
            xs.append(x.astype(np.float64))
            ys.append((x @ truth + 0.5).astype(np.float32).astype(np.float64)[:, None])
        x, y = np.concatenate(xs), np.concatenate(ys)
        residual = x @ w + b - y
        w = w - LEARNING_RATE * 2 * x.T @ residual / len(x)
        b = b - LEARNING_RATE * 2 * residual.mean(axis=0)
    return [w, b]


class Job:
    """One elastic run: its exit status, the supervisor's log, each launch's start, the result."""

    def __init__(
        self,
        tmp_path: Path,
        hosts: int,
        *args: str,
        mode="loop",
        passes=1,
        commit_every=2,
        faults=(),
        env=None,
        timeout=240,
    ):
        self.hosts_file = tmp_path / "hosts"
        self.hosts_file.write_text("".join(f"127.0.0.{i + 1}:1\n" for i in range(hosts)))
        script = tmp_path / "discover.sh"
        script.write_text(f"#!/bin/sh\ncat {self.hosts_file}\n")
        script.chmod(0o755)
        self.state = tmp_path / "state"
        out = tmp_path / "out"
        out.mkdir()
        environment = {**worker_env(), "HOSTS_FILE": str(self.hosts_file), **(env or {})}
        command = [
            GRADSYNCRUN,
            *args,
            "--host-discovery-script",
            str(script),
            "--state-dir",
            str(self.state),
            "--elastic-timeout",
            "3",
            sys.executable,
            str(WORKER),
            str(out),
            mode,
            str(passes),
            str(commit_every),
            *faults,
        ]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=environment
        )
        self.code, self.log = done.returncode, done.stderr
        self.restarts = [line for line in self.log.splitlines() if "gradsyncrun: restart" in line]
        history = out / "history.jsonl"
        lines = history.read_text().splitlines() if history.exists() else []
        self.history = [json.loads(line) for line in lines]
        result = out / "result.json"
        self.result = json.loads(result.read_text()) if result.exists() else None

    def assert_matches_reference(self, passes: int) -> None:
        assert self.code == 0, self.log[-6000:]
        for got, want in zip(self.result["weights"], reference(passes), strict=True):
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("passes", [1, 3])
def test_sigkilled_rank_costs_one_relaunch_on_the_ranks_left(tmp_path, passes):
    job = Job(
        tmp_path,
        3,
        "-np",
        "3",
        "--min-np",
        "1",
        "--max-np",
        "3",
        passes=passes,
        faults=["kill@0:5:1"],
    )
    job.assert_matches_reference(passes)
    assert [h["size"] for h in job.history] == [3, 2]
    # Killed after step 5; the commits were at 2 and 4 (N = 3: 4 is one micro-step into
    # the second window, so that commit recorded its start, step 3).
    assert job.history[1]["batch"] == (4 if passes == 1 else 3)
    assert len(job.restarts) == 1
    assert "rank 1 (pid" in job.restarts[0] and "host 127.0.0.2" in job.restarts[0]
    assert "new world size 2" in job.restarts[0] and "resuming from commit 2" in job.restarts[0]
