"""The job's state folder: commits written atomically, found again after a relaunch.

A commit is written as ``commit-<id>.rank<r>`` through a temporary file that is renamed only
once complete, so a file with that name is always whole; a writer killed half-way leaves only
a ``.tmp`` file, which is never read. Every rank holds the same committed state, so any one
rank's file of the newest commit is enough.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

_COMMIT = re.compile(r"^commit-(?P<id>[0-9]+)\.rank(?P<rank>[0-9]+)$")
#: Written by the supervisor when the hosts changed: the generation that should stop and grow.
HOSTS_UPDATED = "hosts-updated"


def commit_path(folder: str | Path, commit_id: int, rank: int) -> Path:
    return Path(folder) / f"commit-{commit_id:09d}.rank{rank}"


def write_commit(folder: str | Path, commit_id: int, rank: int, snapshot: Any) -> Path:
    """Writes ``snapshot`` as commit ``commit_id`` of ``rank``, atomically."""
    final = commit_path(folder, commit_id, rank)
    temporary = final.with_name(final.name + f".{os.getpid()}.tmp")
    data = pickle.dumps(snapshot, protocol=pickle.HIGHEST_PROTOCOL)
    with open(temporary, "wb") as file:
        half = len(data) // 2
        file.write(data[:half])
        _maybe_fail_while_writing()
        file.write(data[half:])
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, final)
    return final


def _maybe_fail_while_writing() -> None:
    """Fault injection for the test suite: ``GRADSYNC_ELASTIC_KILL_WHILE_WRITING=<rank>``
    makes that rank die half-way through writing a commit."""
    target = os.environ.get("GRADSYNC_ELASTIC_KILL_WHILE_WRITING")
    if target is not None and target == os.environ.get("GRADSYNC_ELASTIC_RANK"):
        os.kill(os.getpid(), 9)


def newest_commit(folder: str | Path) -> tuple[int, Path] | None:
    """The id and a file of the newest complete commit in ``folder``, or None."""
    best: tuple[int, Path] | None = None
    if not Path(folder).is_dir():
        return None
    for entry in Path(folder).iterdir():
        match = _COMMIT.match(entry.name)
        if match and (best is None or int(match["id"]) > best[0]):
            best = (int(match["id"]), entry)
    return best


def read_commit(path: Path) -> Any:
    with open(path, "rb") as file:
        return pickle.load(file)


def hosts_update_generation(folder: str | Path) -> int:
    """The generation the supervisor asked to grow (-1 when it has not)."""
    try:
        return int((Path(folder) / HOSTS_UPDATED).read_text().strip() or -1)
    except (OSError, ValueError):
        return -1


def mark_hosts_updated(folder: str | Path, generation: int) -> None:
    path = Path(folder) / HOSTS_UPDATED
    temporary = path.with_suffix(".tmp")
    temporary.write_text(str(generation))
    os.replace(temporary, path)
