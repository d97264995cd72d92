"""gradsyncrun: strict parsing, no shell, and a failed worker ends the job within seconds."""

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gradsync.launcher import LaunchError, build_command, parse_hosts, with_abort_on_exit

from support import worker_env

GRADSYNCRUN = str(Path(sys.executable).parent / "gradsyncrun")
WORKER = Path(__file__).parent / "launcher_worker.py"


def test_hosts_are_parsed_strictly():
    assert parse_hosts("node1:4,node-2.example:2,solo") == [
        ("node1", 4),
        ("node-2.example", 2),
        ("solo", 1),
    ]
    for bad in ["node1:four", "node1;rm -rf /", "$(reboot)", "node1:0", "a b", ":3", "n1,,n2"]:
        with pytest.raises(LaunchError):
            parse_hosts(bad)


def test_command_is_an_argument_list_for_each_mpi():
    command = ["python", "train.py", "--name", "a b; echo x"]
    hydra = build_command(4, [("n1", 2), ("n2", 2)], command, "mpiexec", "hydra")
    assert hydra == ["mpiexec", "-n", "4", "-hosts", "n1:2,n2:2", "python", "-m", "mpi4py",
                     "train.py", "--name", "a b; echo x"]  # fmt: skip
    openmpi = build_command(2, None, ["./train.sh"], "mpirun", "openmpi")
    assert openmpi == ["mpirun", "-np", "2", "./train.sh"]
    with pytest.raises(LaunchError, match="needs 4 slots"):
        build_command(4, [("n1", 2)], command, "mpiexec", "hydra")
    with pytest.raises(LaunchError):
        build_command(0, None, command, "mpiexec", "hydra")
    already = ["python3", "-m", "mpi4py", "x.py"]
    assert with_abort_on_exit(already) == already


def test_successful_job_exits_zero(tmp_path):
    result = subprocess.run(
        [GRADSYNCRUN, "-np", "2", sys.executable, str(WORKER), "ok"],
        capture_output=True, text=True, timeout=120, env=worker_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # The ranks share one stdout, so their lines may arrive interleaved.
    assert sorted(re.findall(r"finished-\d", result.stdout)) == ["finished-0", "finished-1"]


@pytest.mark.parametrize("failure", ["raise", "exit", "kill"])
def test_failed_worker_ends_the_job(failure):
    started = time.monotonic()
    process = subprocess.Popen(
        [GRADSYNCRUN, "-np", "3", sys.executable, str(WORKER), failure],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=worker_env(),
    )  # fmt: skip
    out, err = process.communicate(timeout=60)
    elapsed = time.monotonic() - started
    assert process.returncode != 0
    assert elapsed < 30, f"the job took {elapsed:.0f}s to end"
    assert "finished" not in out
    # The failed rank is named: by its own last words, by the others, or by gradsyncrun.
    named = {
        "raise": r"gradsync: rank 1 failed with RuntimeError",
        "exit": r"rank 1 called shutdown 'world'|MPI_Abort\(MPI_COMM_WORLD, 3\) - process 1",
        "kill": r"gradsyncrun: rank 1 \(pid \d+\) ended first, without reporting an error",
    }[failure]
    assert re.search(named, err), err[-3000:]
    if failure == "raise":
        assert "boom on rank 1" in err
    leftover = subprocess.run(["pgrep", "-f", str(WORKER)], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", "worker processes were left behind"
