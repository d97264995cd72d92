"""The worker's side of elastic training: its last commit, kept in memory, written to the
state folder when the supervisor stops the world; and the exits the supervisor understands.

``gradsyncrun`` in elastic mode sets ``GRADSYNC_ELASTIC_STATE`` (the state folder) and
``GRADSYNC_ELASTIC_GENERATION`` (how many times the world was launched before). To stop the
world it sends SIGTERM: a thread of each worker then writes the last commit and ends the
process at once, even while the main thread waits in a collective for a rank that died.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from gradsync import roll_call
from gradsync.elastic import storage

STATE_VARIABLE = "GRADSYNC_ELASTIC_STATE"
GENERATION_VARIABLE = "GRADSYNC_ELASTIC_GENERATION"
#: Every rank exits with this when the hosts changed and the world should be relaunched.
RESTART_EXIT_CODE = 75
#: A worker that was stopped (SIGTERM) after writing its commit.
STOPPED_EXIT_CODE = 143
#: A worker whose training function raised.
FAILED_EXIT_CODE = 1

#: Held while a commit is taken and while the last one is written: a snapshot is never
#: written half-updated.
commit_lock = threading.RLock()
_last_commit: tuple[int, Any] | None = None
_started = False


def supervised() -> bool:
    """Whether this process was started by ``gradsyncrun`` in elastic mode."""
    return bool(os.environ.get(STATE_VARIABLE))


def state_folder() -> Path:
    return Path(os.environ[STATE_VARIABLE])


def generation() -> int:
    """How many times the world was launched before this one (0 for the first)."""
    return int(os.environ.get(GENERATION_VARIABLE, "0"))


def remember(commit_id: int, snapshot: Any) -> None:
    """Keeps ``snapshot`` as the commit to write if the world is stopped."""
    global _last_commit
    with commit_lock:
        _last_commit = (commit_id, snapshot)


def write_last_commit(rank: int) -> Path | None:
    """Writes the last commit to the state folder (if supervised and there is one)."""
    with commit_lock:
        last = _last_commit
        if last is None or not supervised():
            return None
        return storage.write_commit(state_folder(), last[0], rank, last[1])


def newest_commit() -> tuple[int, Any] | None:
    """The newest complete commit in the state folder, read: ``(id, snapshot)``, or None."""
    if not supervised():
        return None
    found = storage.newest_commit(state_folder())
    if found is None:
        return None
    return found[0], storage.read_commit(found[1])


def hosts_updated() -> bool:
    """Whether the supervisor has more slots to offer than this world uses."""
    return supervised() and storage.hosts_update_generation(state_folder()) >= generation()


def start(rank: int) -> None:
    """Arms the stop handler: on SIGTERM, write the last commit and end the process."""
    global _started
    if _started or not supervised():
        return
    _started = True
    os.environ["GRADSYNC_ELASTIC_RANK"] = str(rank)
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.signal(signal.SIGTERM, lambda *_: None)  # the thread below acts on it
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)

    def on_stop() -> None:
        while True:
            received = os.read(read_end, 64)
            if signal.SIGTERM in received:
                break
        try:
            write_last_commit(rank)
        finally:
            sys.stderr.flush()
            os._exit(STOPPED_EXIT_CODE)

    threading.Thread(target=on_stop, name="gradsync-elastic-stop", daemon=True).start()


def end(code: int, rank: int) -> None:
    """Writes the last commit and ends the process with ``code``, without MPI's abort (which
    would end the other ranks before they write theirs)."""
    try:
        write_last_commit(rank)
        if code == RESTART_EXIT_CODE:  # an end on purpose, not a failure
            roll_call.leaving()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
