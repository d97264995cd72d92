"""Runs one worker of an elastic world as a child process and reports its end as an exit
status: MPICH's launcher ends the whole world when a process dies by a signal, even with
``-disable-auto-cleanup``, which would leave the other workers no time to write their
commits. Signals the guard receives (SIGTERM, SIGINT) are passed on to the worker.

    python -m gradsync.elastic.guard python train.py ...
"""

from __future__ import annotations

import signal
import subprocess
import sys


def main(command: list[str]) -> int:
    # MPICH's launcher sends SIGUSR1 to the others when a process fails: ignored here and, as
    # ignored signals stay ignored in a child, in the worker, which the supervisor stops.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    # The worker inherits every descriptor, MPICH's process-manager socket included.
    worker = subprocess.Popen(command, close_fds=False)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda s, _frame: worker.send_signal(s))
    code = worker.wait()
    return code if code >= 0 else 128 - code  # a signal's death as a plain exit status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
