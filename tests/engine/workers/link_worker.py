"""Times engine allreduces of 2 MB on 2 ranks without and then with a simulated link, both
in this launch (both ranks switch at the same call). Usage: out_dir link"""

import os
import statistics
import sys
import time

import numpy as np

from gradsync import engine
from gradsync.engine import link

from support import report

out_dir, setting = sys.argv[1], sys.argv[2]
engine.init()
array = np.ones(2 << 18, dtype=np.float32)  # 2 MiB, one message


def median_seconds(repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        engine.barrier()
        started = time.perf_counter()
        engine.allreduce([array], engine.ReduceOp.SUM, name="timed")
        times.append(time.perf_counter() - started)
    return statistics.median(times)


engine.allreduce([array], engine.ReduceOp.SUM, name="timed")  # negotiated once, then predicted
without = median_seconds()
os.environ[link.VARIABLE] = setting
link.simulated_link.cache_clear()
with_link = median_seconds()
model = link.parse_link(setting).ring_allreduce_seconds(array.nbytes, engine.size())
report(out_dir, engine.rank(), {"without": without, "with": with_link, "model": model})
