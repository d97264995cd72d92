"""``gradsyncrun``'s elastic mode: launches the world, watches it, and relaunches it on the
slots that remain when a worker dies or its host goes away, or on more slots when hosts come.

    gradsyncrun -np 3 --min-np 2 --max-np 4 --host-discovery-script ./hosts.sh python train.py

Hosts come from ``-H host:slots,...`` or from a script that prints one ``host:slots`` per line
(run every second). The slot of a worker that failed is left out until the script stops listing
its host and lists it again; the host's other slots stay on offer. Hosts that are this machine
(``localhost``, ``127.x.y.z``, its own name) run their workers here; so one machine can stand
for several hosts.

Every relaunch is logged on one line (why, which rank and host, the new world size, the commit
it resumes from), and counts against ``--max-restarts`` unless it only grows the world.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gradsync.elastic import storage, worker
from gradsync.roll_call import SOCKET_VARIABLE, Listener

#: Seconds a stopped world has to write its commits and exit before it is killed.
STOP_GRACE = 30.0
POLL = 0.1
DISCOVERY_PERIOD = 1.0


class ElasticError(RuntimeError):
    """The elastic job cannot go on (no slots, too many restarts, a bad discovery script)."""


@dataclasses.dataclass
class ElasticOptions:
    np: int
    min_np: int
    max_np: int
    command: list[str]
    mpiexec: str
    hosts: list[tuple[str, int]] | None = None
    discovery_script: str | None = None
    max_restarts: int = 3
    elastic_timeout: float = 600.0
    state_dir: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.min_np <= self.np <= self.max_np:
            raise ElasticError(
                f"need 1 <= --min-np ({self.min_np}) <= -np ({self.np}) <= --max-np "
                f"({self.max_np})."
            )
        if (self.hosts is None) == (self.discovery_script is None):
            raise ElasticError("elastic mode needs one of -H and --host-discovery-script.")
        if self.max_restarts < 0:
            raise ElasticError(f"--max-restarts must be >= 0, got {self.max_restarts}.")


def is_this_machine(host: str) -> bool:
    return host in ("localhost", socket.gethostname()) or host.startswith("127.")


class Hosts:
    """The slots on offer now: the discovery script's (or ``-H``'s), less the slots of
    workers that failed."""

    def __init__(self, options: ElasticOptions) -> None:
        self.options = options
        #: Host -> how many of its workers failed since the script last listed it anew.
        self.failed: dict[str, int] = {}

    def fail(self, host: str) -> None:
        """Leaves out the slot of a worker that failed on ``host``, not the host's other
        slots: ``-H`` never lists a host anew, so leaving out all of ``localhost:3`` for one
        worker's failure would leave no slot to relaunch on, ever."""
        self.failed[host] = self.failed.get(host, 0) + 1

    def left_out(self) -> str:
        """The failed slots, as ``host:count,...`` ("" when none)."""
        return ",".join(f"{h}:{n}" for h, n in sorted(self.failed.items()))

    def discover(self) -> dict[str, int]:
        if self.options.hosts is not None:
            seen = dict(self.options.hosts)
        else:
            seen = self._run_script()
        for host in list(self.failed):
            if host not in seen:  # gone from the list: it may come back as new
                del self.failed[host]
        offered = {h: s - self.failed.get(h, 0) for h, s in seen.items()}
        return {h: s for h, s in offered.items() if s > 0}

    def _run_script(self) -> dict[str, int]:
        script = self.options.discovery_script
        try:
            result = subprocess.run(
                [script], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise ElasticError(f"host discovery script {script} failed: {error}") from error
        if result.returncode != 0:
            raise ElasticError(
                f"host discovery script {script} exited {result.returncode}: "
                f"{result.stderr.strip()[-500:]}"
            )
        hosts: dict[str, int] = {}
        for line in result.stdout.split():
            name, _, slots = line.partition(":")
            if not name or (slots and not slots.isdigit()):
                raise ElasticError(
                    f"host discovery script {script} printed {line!r}: expected host:slots."
                )
            hosts[name] = int(slots or 1)
        return hosts


def _placement(hosts: dict[str, int], size: int) -> list[str]:
    """The host of each rank: slots filled host by host."""
    placement = []
    for host, slots in hosts.items():
        placement += [host] * slots
    return placement[:size]


def _mpiexec_command(options: ElasticOptions, placement: list[str]) -> list[str]:
    command = [options.mpiexec, "-n", str(len(placement)), "-disable-auto-cleanup"]
    if not all(is_this_machine(h) for h in placement):
        counts: dict[str, int] = {}
        for host in placement:
            counts[host] = counts.get(host, 0) + 1
        command += ["-hosts", ",".join(f"{h}:{n}" for h, n in counts.items())]
    return command + [sys.executable, "-m", "gradsync.elastic.guard", *options.command]


def _log(message: str) -> None:
    sys.stderr.write(f"gradsyncrun: {message}\n")
    sys.stderr.flush()


@dataclasses.dataclass
class _Outcome:
    code: int | None
    reason: str | None = None  # why the world was stopped, when it was
    grow: bool = False


class Supervisor:
    def __init__(self, options: ElasticOptions, folder: Path) -> None:
        self.options = options
        self.folder = folder
        self.hosts = Hosts(options)
        self.generation = 0
        self.restarts = 0

    def wait_for_slots(self) -> dict[str, int]:
        """The hosts on offer, once they have at least ``--min-np`` slots. Says once that it
        waits, so that a job short of slots is not silent until ``--elastic-timeout``."""
        deadline = time.monotonic() + self.options.elastic_timeout
        said = False
        while True:
            hosts = self.hosts.discover()
            if sum(hosts.values()) >= self.options.min_np:
                return hosts
            if time.monotonic() >= deadline:
                raise ElasticError(
                    f"--min-np {self.options.min_np} cannot be reached: {self._offer(hosts)} "
                    f"after waiting {self.options.elastic_timeout:.0f} s (--elastic-timeout)."
                )
            if not said:
                _log(
                    f"waiting up to {self.options.elastic_timeout:.0f} s (--elastic-timeout) "
                    f"for --min-np {self.options.min_np} slots: {self._offer(hosts)}"
                )
                said = True
            time.sleep(DISCOVERY_PERIOD)

    def _offer(self, hosts: dict[str, int]) -> str:
        """The slots on offer, and the failed ones left out, in words."""
        failed = self.hosts.left_out()
        return f"{sum(hosts.values())} slots on offer ({hosts or 'no hosts'})" + (
            f"; left out after failures: {failed}" * bool(failed)
        )

    def run(self) -> int:
        why = None  # why the world is relaunched (None for the first launch)
        while True:
            hosts = self.wait_for_slots()
            wanted = self.options.np if self.generation == 0 else self.options.max_np
            placement = _placement(hosts, min(wanted, sum(hosts.values()), self.options.max_np))
            if why is not None:
                newest = storage.newest_commit(self.folder)
                resume = f"commit {newest[0]}" if newest else "the start (no commit yet)"
                offered = ",".join(f"{h}:{s}" for h, s in hosts.items())
                _log(
                    f"restart {self.generation}: {why}; new world size {len(placement)} on "
                    f"{offered}; resuming from {resume}"
                )
            outcome = self._run_generation(placement)
            if outcome.code == 0 and outcome.reason is None:
                return 0
            if outcome.grow:
                why = "hosts were added"
            else:
                self.restarts += 1
                why = outcome.reason or f"the world exited with status {outcome.code}"
                if self.restarts > self.options.max_restarts:
                    raise ElasticError(
                        f"giving up after {self.options.max_restarts} restarts "
                        f"(--max-restarts): {why}."
                    )
            self.generation += 1

    def _run_generation(self, placement: list[str]) -> _Outcome:
        with tempfile.TemporaryDirectory(prefix="gradsyncrun-") as directory:
            listener = Listener(os.path.join(directory, "roll_call"))
            environment = {
                **os.environ,
                SOCKET_VARIABLE: listener.path,
                worker.STATE_VARIABLE: str(self.folder),
                worker.GENERATION_VARIABLE: str(self.generation),
                "GRADSYNC_ABORT_ON_ERROR": "0",
            }
            process = subprocess.Popen(
                _mpiexec_command(self.options, placement), env=environment, start_new_session=True
            )
            try:
                return self._watch(process, listener, placement)
            finally:
                self._end(process, listener)
                listener.close()

    def _watch(self, process: subprocess.Popen, listener: Listener, placement) -> _Outcome:
        next_discovery = time.monotonic() + DISCOVERY_PERIOD
        while True:
            code = process.poll()
            silent = listener.silent_ends()
            if silent:
                rank, pid = silent[0]
                host = placement[rank] if rank < len(placement) else "?"
                self.hosts.fail(host)
                reason = f"rank {rank} (pid {pid}, host {host}) ended without finishing"
                self._stop(process, listener)
                return _Outcome(process.poll(), reason)
            if code is not None:
                if code == worker.RESTART_EXIT_CODE:
                    return _Outcome(code, "hosts were added", grow=True)
                return _Outcome(code, None if code == 0 else f"the world exited {code}")
            if time.monotonic() >= next_discovery:
                next_discovery = time.monotonic() + DISCOVERY_PERIOD
                hosts = self.hosts.discover()
                gone = [h for h in set(placement) if hosts.get(h, 0) < placement.count(h)]
                if gone:
                    self._stop(process, listener)
                    return _Outcome(process.poll(), f"host {sorted(gone)[0]} left")
                more = min(sum(hosts.values()), self.options.max_np) > len(placement)
                if more and storage.hosts_update_generation(self.folder) < self.generation:
                    storage.mark_hosts_updated(self.folder, self.generation)
            time.sleep(POLL)

    def _stop(self, process: subprocess.Popen, listener: Listener) -> None:
        """Asks every live worker to write its commit and exit; waits for the world to end."""
        _send(signal.SIGTERM, listener.live_workers().values())
        try:
            process.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            pass

    def _end(self, process: subprocess.Popen, listener: Listener) -> None:
        """Leaves no process of this world behind."""
        if process.poll() is None:
            self._stop(process, listener)
        if process.poll() is None:
            _send(signal.SIGKILL, listener.live_workers().values())
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()


def _send(signum: int, pids) -> None:
    """Sends ``signum`` to each of ``pids`` that is still there."""
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def supervise(options: ElasticOptions) -> int:
    """Runs the elastic job; returns its exit status."""
    folder = Path(options.state_dir) if options.state_dir else None
    with tempfile.TemporaryDirectory(prefix="gradsync-elastic-") as default_folder:
        folder = folder or Path(default_folder)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            return Supervisor(options, folder).run()
        except ElasticError as error:
            _log(f"error: {error}")
            return 1
