"""A worker that fails on rank 1 (raises, exits non-zero, or is killed) while the others wait
in a collective."""

import os
import signal
import sys
import time

import numpy as np

from gradsync import engine

engine.init()
failure = sys.argv[1]
if engine.rank() == 1 and failure != "ok":
    time.sleep(0.5)
    if failure == "raise":
        raise RuntimeError("boom on rank 1")
    if failure == "exit":
        sys.exit(3)
    if failure == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
engine.allreduce([np.ones(3)])
print(f"finished-{engine.rank()}", flush=True)
