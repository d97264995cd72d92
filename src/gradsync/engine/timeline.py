"""A timeline of collectives, written as a Chrome trace (open it in Perfetto or
``chrome://tracing``): one process per rank, one row per collective name, and for each call
its spans: ``queued`` (issued, waiting for the others), ``negotiation`` (header exchanges) and
``communication`` (the data moving).

Recording costs one clock read per span and nothing while no timeline is started. Every
rank records its own spans; ``stop`` gathers them to rank 0, which writes the file.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

_lock = threading.Lock()
_events: list[tuple[str, str, float, float]] | None = None
_path: str | None = None
_mark_cycles = False
_origin = 0.0


def recording() -> bool:
    """Whether a timeline is being recorded."""
    return _events is not None


def record(name: str, phase: str, start: float, end: float) -> None:
    """Adds a span (``time.perf_counter`` seconds) to the timeline, if one is recording."""
    events = _events
    if events is not None:
        with _lock:
            events.append((name, phase, start, end))


def start(file_path: str, mark_cycles: bool = False) -> None:
    """Starts recording (again, if it was): ``stop`` writes ``file_path``."""
    global _events, _path, _mark_cycles, _origin
    with _lock:
        _events, _path, _mark_cycles, _origin = [], str(file_path), mark_cycles, time.perf_counter()


def start_from_environment() -> None:
    """Starts recording to ``GRADSYNC_TIMELINE`` when it is set (read at ``init``)."""
    path = os.environ.get("GRADSYNC_TIMELINE")
    if path:
        start(path, os.environ.get("GRADSYNC_TIMELINE_MARK_CYCLES", "0") == "1")


def take() -> tuple[str | None, list[tuple[str, str, float, float]], float, bool]:
    """Stops recording; returns the path, the spans, their time origin and ``mark_cycles``."""
    global _events, _path
    with _lock:
        taken = (_path, _events or [], _origin, _mark_cycles)
        _events, _path = None, None
    return taken


def write(
    path: str,
    spans_by_rank: list[list[tuple[str, str, float, float]]],
    origins: list[float],
    mark_cycles: bool,
) -> None:
    """Writes every rank's spans as one Chrome trace."""
    rows: dict[str, int] = {}
    trace = []
    for rank, (spans, origin) in enumerate(zip(spans_by_rank, origins, strict=True)):
        trace.append(
            {"name": "process_name", "ph": "M", "pid": rank, "args": {"name": f"rank {rank}"}}
        )
        for name, phase, begin, end in spans:
            if phase == "cycle" and not mark_cycles:
                continue
            row = rows.setdefault(name, len(rows))
            trace.append(
                {
                    "name": phase,
                    "cat": name,
                    "ph": "X",
                    "pid": rank,
                    "tid": row,
                    "ts": round((begin - origin) * 1e6, 3),
                    "dur": round((end - begin) * 1e6, 3),
                }
            )
    for name, row in rows.items():
        for rank in range(len(spans_by_rank)):
            trace.append(
                {"name": "thread_name", "ph": "M", "pid": rank, "tid": row, "args": {"name": name}}
            )
    Path(path).write_text(json.dumps({"traceEvents": trace}))
