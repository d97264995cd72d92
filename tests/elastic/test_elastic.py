"""Elastic training under ``gradsyncrun``: a worker that dies, raises or hangs costs one
relaunch from the last commit, and the job ends with the weights of one process taking every
step once (the program's data sharding makes the trajectory independent of the world size).
Hosts are simulated on this machine by loopback names with one slot each, in a discovery file
the tests (and the worker, to grow) rewrite, or given as one host of several slots with ``-H``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gradsync.elastic.supervisor import ElasticOptions, Hosts

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
    """One elastic run: its exit status, the supervisor's log, each launch's start, the result.
    ``hosts``: how many loopback hosts of one slot the discovery file lists, or a fixed ``-H``
    list such as ``"localhost:3"``."""

    def __init__(
        self,
        tmp_path: Path,
        hosts: int | str,
        *args: str,
        mode="loop",
        passes=1,
        commit_every=2,
        faults=(),
        env=None,
        timeout=240,
    ):
        self.hosts_file = tmp_path / "hosts"
        self.state = tmp_path / "state"
        out = tmp_path / "out"
        out.mkdir()
        environment = {**worker_env(), "HOSTS_FILE": str(self.hosts_file), **(env or {})}
        command = [
            GRADSYNCRUN,
            *args,
            *self._host_arguments(tmp_path, hosts),
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

    def _host_arguments(self, tmp_path: Path, hosts: int | str) -> list[str]:
        if isinstance(hosts, str):
            return ["-H", hosts]
        self.hosts_file.write_text("".join(f"127.0.0.{i + 1}:1\n" for i in range(hosts)))
        script = tmp_path / "discover.sh"
        script.write_text(f"#!/bin/sh\ncat {self.hosts_file}\n")
        script.chmod(0o755)
        return ["--host-discovery-script", str(script)]

    def assert_matches_reference(self, passes: int, epochs: int = EPOCHS) -> None:
        assert self.code == 0, self.log[-6000:]
        for got, want in zip(self.result["weights"], reference(passes, epochs), strict=True):
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


def test_sigkill_on_a_host_of_three_slots_relaunches_on_its_other_two(tmp_path):
    """-H localhost:3 with TensorFlowState, commits at every step: the killed worker's slot is
    left out, not the whole host (which left no slot for --min-np 2: the job waited out
    --elastic-timeout without a word, then failed)."""
    job = Job(
        tmp_path,
        "localhost:3",
        "-np",
        "3",
        "--min-np",
        "2",
        "--max-np",
        "3",
        mode="variables",
        commit_every=1,
        faults=["kill@0:5:2"],
        env={"EPOCHS": "2"},
        timeout=120,
    )
    job.assert_matches_reference(1, epochs=2)
    assert [h["size"] for h in job.history] == [3, 2]
    # Killed after step 5, before its commit; the others committed step 5 and were stopped.
    assert [(h["commit"], h["batch"]) for h in job.history] == [(0, 0), (5, 5)]
    assert len(job.restarts) == 1 and "waiting up to" not in job.log
    assert "rank 2 (pid" in job.restarts[0] and "host localhost)" in job.restarts[0]
    assert "new world size 2 on localhost:2" in job.restarts[0]
    assert "resuming from commit 5" in job.restarts[0]


def test_a_failed_slot_is_left_out_until_its_host_is_listed_anew(tmp_path):
    listed = tmp_path / "hosts"
    script = tmp_path / "discover.sh"
    script.write_text(f"#!/bin/sh\ncat {listed}\n")
    script.chmod(0o755)
    options = ElasticOptions(2, 1, 4, ["true"], "mpiexec", discovery_script=str(script))
    hosts = Hosts(options)
    listed.write_text("node1:3\nnode2:1\n")
    hosts.fail("node1")
    hosts.fail("node2")
    assert hosts.discover() == {"node1": 2} and hosts.left_out() == "node1:1,node2:1"
    listed.write_text("node1:3\n")  # node2 gone: listed again, it is new
    assert hosts.discover() == {"node1": 2}
    listed.write_text("node1:3\nnode2:1\n")
    assert hosts.discover() == {"node1": 2, "node2": 1}


def test_rank_that_raises_costs_one_relaunch(tmp_path):
    job = Job(tmp_path, 3, "-np", "3", "--min-np", "1", passes=3, faults=["raise@0:7:2"])
    job.assert_matches_reference(3)
    assert [h["size"] for h in job.history] == [3, 2]
    assert "injected failure" in job.log
    # Raised after step 7: the commits were at steps 2, 4, 6 and the epoch's end (5).
    assert "rank 2 (pid" in job.restarts[0] and "resuming from commit 5" in job.restarts[0]


def test_rank_that_hangs_is_caught_by_the_stall_timeout(tmp_path):
    stall = {"GRADSYNC_STALL_CHECK_TIME": "1", "GRADSYNC_STALL_SHUTDOWN_TIME": "3"}
    job = Job(tmp_path, 3, "-np", "3", "--min-np", "1", faults=["hang@0:5:1"], env=stall)
    job.assert_matches_reference(1)
    assert [h["size"] for h in job.history] == [3, 2]
    assert "StallError" in job.log
    assert "resuming from commit 2" in job.restarts[0]


def test_kill_while_writing_resumes_from_the_previous_commit(tmp_path):
    # The first world loses rank 1 after step 5 (commit 2 is written). The second loses its
    # rank 0 after step 10, and its rank 1 dies while writing commit 5: the third world
    # resumes from commit 2, on the one slot left.
    faults = ["kill@0:5:1", "write-kill@1:9:1", "kill@1:10:0"]
    job = Job(tmp_path, 3, "-np", "3", "--min-np", "1", faults=faults)
    job.assert_matches_reference(1)
    assert [h["size"] for h in job.history] == [3, 2, 1]
    assert [h["commit"] for h in job.history] == [0, 2, 2]
    assert "resuming from commit 2" in job.restarts[1]
    assert list(job.state.glob("*.tmp")), "the half-written commit was left, unread"


def test_world_grows_at_the_next_commit_when_a_slot_appears(tmp_path):
    job = Job(
        tmp_path, 2, "-np", "2", "--min-np", "1", "--max-np", "3", passes=3, faults=["grow@3"]
    )
    job.assert_matches_reference(3)
    assert [h["size"] for h in job.history] == [2, 3]
    assert "hosts were added" in job.restarts[0] and "new world size 3" in job.restarts[0]
    # Grown at the commit after step 3 (step 4, one micro-step into a window: its start).
    assert (job.history[1]["epoch"], job.history[1]["batch"]) == (0, 3)


def test_world_shrinks_when_a_host_leaves_the_discovery_list(tmp_path):
    job = Job(tmp_path, 3, "-np", "3", "--min-np", "1", faults=["shrink@5"])
    job.assert_matches_reference(1)
    assert [h["size"] for h in job.history] == [3, 2]
    assert "host 127.0.0.3 left" in job.restarts[0] and "resuming from commit 2" in job.restarts[0]


def test_fit_with_keras_state_and_callbacks_survives_a_sigkill(tmp_path):
    job = Job(tmp_path, 3, "-np", "3", "--min-np", "1", mode="fit", passes=3, faults=["kill@0:8:0"])
    job.assert_matches_reference(3)
    assert [h["size"] for h in job.history] == [3, 2]
    assert (job.history[1]["epoch"], job.history[1]["batch"]) == (1, 0)


def _no_worker_left(tmp_path: Path) -> bool:
    found = subprocess.run(["pgrep", "-f", str(tmp_path / "out")], capture_output=True)
    return found.returncode == 1


def test_min_np_out_of_reach_is_a_clear_error_after_the_timeout(tmp_path):
    job = Job(tmp_path, 2, "-np", "2", "--min-np", "2", faults=["kill@0:5:1"])
    assert job.code != 0 and job.result is None
    assert "--min-np 2 cannot be reached: 1 slots on offer" in job.log
    assert "after waiting 3 s (--elastic-timeout)" in job.log
    assert _no_worker_left(tmp_path)


def test_max_restarts_exhausted_is_a_clear_error(tmp_path):
    job = Job(
        tmp_path, 3, "-np", "3", "--min-np", "1", "--max-restarts", "0", faults=["kill@0:5:1"]
    )
    assert job.code != 0 and job.result is None
    assert "giving up after 0 restarts (--max-restarts)" in job.log
    assert _no_worker_left(tmp_path)


def test_soak_of_ten_random_kills_keeps_every_committed_step(tmp_path):
    """10 SIGKILLs of random workers, each soon after a world starts; after each, the
    discovery file offers three fresh hosts (the failed one gone), so the world also grows
    back. The job ends with the weights of one process taking every step once."""
    import random
    import threading
    import time

    epochs, kills, rng = 40, 10, random.Random(7)
    out = tmp_path / "out"
    log: list[dict] = []

    def starts() -> int:
        history = out / "history.jsonl"
        return len(history.read_text().splitlines()) if history.exists() else 0

    def killer() -> None:
        seen = 0
        for kill in range(kills):
            while starts() <= seen:
                time.sleep(0.05)
            seen = starts()
            time.sleep(rng.uniform(0.5, 1.5))
            latest = max(int(p.name.split(".")[0]) for p in (out / "pids").iterdir())
            pids = [p.read_text() for p in (out / "pids").glob(f"{latest}.*")]
            if not pids:
                return
            victim = int(rng.choice(pids))
            hosts = "".join(f"127.0.1.{3 * kill + i}:1\n" for i in range(3))
            (tmp_path / "hosts").write_text(hosts)
            subprocess.run(["kill", "-9", str(victim)])
            log.append({"kill": kill, "at": time.monotonic()})

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    started = time.monotonic()
    job = Job(
        tmp_path,
        3,
        "-np",
        "3",
        "--min-np",
        "1",
        "--max-np",
        "3",
        "--max-restarts",
        "30",
        env={"EPOCHS": str(epochs), "STEP_SLEEP": "0.05"},
        timeout=600,
    )
    elapsed = time.monotonic() - started
    thread.join(timeout=5)
    job.assert_matches_reference(1, epochs)
    assert len(log) == kills
    failures = [r for r in job.restarts if "hosts were added" not in r]
    assert len(failures) >= kills
    steps = (out / "steps.log").read_text().splitlines()
    figures = {
        "kills": len(log),
        "restarts": len(job.restarts),
        "restarts_after_failures": len(failures),
        "seconds": round(elapsed, 1),
        "steps": epochs * BATCHES,
        "steps_run_by_rank_0": len(steps),
        "world_sizes": [h["size"] for h in job.history],
    }
    (tmp_path / "soak.json").write_text(json.dumps(figures))
    print(json.dumps(figures))
