"""``gradsyncrun``: starts N copies of a training command, like ``horovodrun``, through MPI.

    gradsyncrun -np 4 python train.py --epochs 3
    gradsyncrun -np 8 -H node1:4,node2:4 python train.py

It runs the MPI's own ``mpiexec`` (the one installed beside this Python, else the first on
``PATH``, else ``--mpiexec``), passing the command as an argument list, never through a shell.
When any worker fails, the job is ended and ``gradsyncrun`` exits non-zero; a worker that
died without a word (killed by a signal, or crashed) is named by its rank.

With ``--min-np``, ``--max-np`` or ``--host-discovery-script`` the job is elastic: a failure
costs a relaunch from the last commit instead (see ``gradsync.elastic.supervisor``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from gradsync.roll_call import SOCKET_VARIABLE, Listener

_HOST = re.compile(r"^(?P<name>[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9])?)(?::(?P<slots>[0-9]+))?$")


class LaunchError(ValueError):
    """The command line cannot be turned into an MPI job."""


def parse_hosts(text: str) -> list[tuple[str, int]]:
    """Parses ``host1:slots,host2:slots`` (slots default to 1); rejects anything else."""
    hosts = []
    for item in text.split(","):
        match = _HOST.match(item.strip())
        if match is None:
            raise LaunchError(
                f"bad host {item!r} in -H {text!r}: expected name or name:slots, e.g. "
                "node1:4,node2:4 (letters, digits, dots and dashes only)."
            )
        slots = int(match["slots"] or 1)
        if slots < 1:
            raise LaunchError(f"host {item!r} has {slots} slots; slots must be >= 1.")
        hosts.append((match["name"], slots))
    return hosts


def find_mpiexec(explicit: str | None = None) -> str:
    """The ``mpiexec`` to use: ``explicit``, the one beside this Python, or the one on PATH."""
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.exists():
        return str(beside)
    found = shutil.which("mpiexec")
    if found is None:
        raise LaunchError(
            "no mpiexec found: install gradsync[mpich] (pip install mpich) or an MPI, "
            "or pass --mpiexec PATH."
        )
    return found


def mpi_flavor(mpiexec: str) -> str:
    """ "openmpi" for Open MPI's launcher, "hydra" for MPICH's and Intel MPI's."""
    try:
        version = subprocess.run(
            [mpiexec, "--version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as error:
        raise LaunchError(f"cannot run {mpiexec} --version: {error}") from error
    return "openmpi" if ("Open MPI" in version or "OpenRTE" in version) else "hydra"


def build_command(
    np: int, hosts: list[tuple[str, int]] | None, command: Sequence[str], mpiexec: str, flavor: str
) -> list[str]:
    """The mpiexec argument list for ``np`` copies of ``command`` on ``hosts``."""
    if np < 1:
        raise LaunchError(f"-np must be >= 1, got {np}.")
    if not command:
        raise LaunchError("no command given: gradsyncrun -np N python train.py ...")
    args = [mpiexec]
    if flavor == "openmpi":
        args += ["-np", str(np)]
        if hosts:
            args += ["--host", ",".join(f"{h}:{s}" for h, s in hosts)]
    else:
        args += ["-n", str(np)]
        if hosts:
            args += ["-hosts", ",".join(f"{h}:{s}" for h, s in hosts)]
    if hosts and sum(s for _, s in hosts) < np:
        raise LaunchError(
            f"-np {np} needs {np} slots but -H offers {sum(s for _, s in hosts)}; "
            "add slots (host:slots) or lower -np."
        )
    return args + with_abort_on_exit(list(command))


def with_abort_on_exit(command: list[str]) -> list[str]:
    """Runs a Python command through ``mpi4py``'s runner, which ends the whole job when a
    worker exits with a non-zero status (a plain ``sys.exit(1)`` would leave the others
    waiting in their next collective)."""
    if not re.fullmatch(r"python[0-9.]*", Path(command[0]).name):
        return command
    rest = command[1:]
    if rest[:2] == ["-m", "mpi4py"]:
        return command
    if rest and (not rest[0].startswith("-") or rest[0] in ("-m", "-c")):
        return [command[0], "-m", "mpi4py", *rest]
    return command


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gradsyncrun", description="Run a training command on N processes through MPI."
    )
    parser.add_argument("-np", "--num-proc", dest="np", type=int, required=True)
    parser.add_argument("-H", "--hosts", default=None, help="host1:slots,host2:slots")
    parser.add_argument("--mpiexec", default=None, help="path of the mpiexec to use")
    elastic = parser.add_argument_group("elastic training (a failure costs a relaunch)")
    elastic.add_argument("--min-np", type=int, default=None, help="fewest workers to run on")
    elastic.add_argument("--max-np", type=int, default=None, help="most workers to grow to")
    elastic.add_argument(
        "--host-discovery-script", default=None, help="prints the hosts on offer, host:slots"
    )
    elastic.add_argument("--max-restarts", type=int, default=3, help="relaunches after failures")
    elastic.add_argument(
        "--elastic-timeout", type=float, default=600.0, help="seconds to wait for --min-np slots"
    )
    elastic.add_argument("--state-dir", default=None, help="where stopped workers write commits")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    options = parser.parse_args(argv)
    if any(v is not None for v in (options.min_np, options.max_np, options.host_discovery_script)):
        return _run_elastic(parser, options)
    try:
        hosts = parse_hosts(options.hosts) if options.hosts else None
        mpiexec = find_mpiexec(options.mpiexec)
        args = build_command(options.np, hosts, options.command, mpiexec, mpi_flavor(mpiexec))
    except LaunchError as error:
        parser.error(str(error))
    with tempfile.TemporaryDirectory(prefix="gradsyncrun-") as directory:
        environment = dict(os.environ)
        try:
            roll_call: Listener | None = Listener(os.path.join(directory, "roll_call"))
            environment[SOCKET_VARIABLE] = roll_call.path
        except OSError:  # e.g. a temporary folder whose path is too long for a Unix socket
            roll_call = None
        process = subprocess.Popen(args, env=environment)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda s, _f: process.send_signal(s))
        code = process.wait()
        silent = roll_call.died_without_a_word() if roll_call is not None else None
    if code == 0:
        return 0
    if silent is not None:
        sys.stderr.write(
            f"gradsyncrun: {silent} ended first, without reporting an error: it was killed "
            "by a signal or crashed (for example out of memory, or a segmentation fault).\n"
        )
    sys.stderr.write(f"gradsyncrun: the job failed (exit status {code}).\n")
    return code if code > 0 else 128 - code


def _run_elastic(parser: argparse.ArgumentParser, options: argparse.Namespace) -> int:
    from gradsync.elastic.supervisor import ElasticError, ElasticOptions, supervise

    try:
        if not options.command:
            raise LaunchError("no command given: gradsyncrun -np N --min-np M python train.py")
        elastic = ElasticOptions(
            np=options.np,
            min_np=options.min_np if options.min_np is not None else options.np,
            max_np=options.max_np if options.max_np is not None else options.np,
            command=list(options.command),
            mpiexec=find_mpiexec(options.mpiexec),
            hosts=parse_hosts(options.hosts) if options.hosts else None,
            discovery_script=options.host_discovery_script,
            max_restarts=options.max_restarts,
            elastic_timeout=options.elastic_timeout,
            state_dir=options.state_dir,
        )
    except (LaunchError, ElasticError) as error:
        parser.error(str(error))
    if mpi_flavor(elastic.mpiexec) != "hydra":
        parser.error("elastic mode needs MPICH's mpiexec (hydra), as installed by gradsync[mpich].")
    return supervise(elastic)


if __name__ == "__main__":
    sys.exit(main())
