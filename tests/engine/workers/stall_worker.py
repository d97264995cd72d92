"""One rank arrives late at a collective, in eager mode, in tf.function and in a v1 graph.

Usage: out_dir scenario [mode]. "late": the last rank sleeps 5 s before each collective while
the stall check time is 3 s; the others must warn, then finish with exact values. "stuck" (in
one mode): the last rank sleeps for a minute; the shutdown time must end the job first.
"""

import sys
import time

import numpy as np
import tensorflow as tf

import gradsync.tensorflow as gs

from support import report

out_dir, scenario = sys.argv[1], sys.argv[2]
gs.init()
rank, size = gs.rank(), gs.size()
late = rank == size - 1
delay = 5.0 if scenario == "late" else 60.0
x = np.full(3, rank + 1.0, np.float32)


def eager():
    return gs.allreduce(tf.constant(x), op=gs.Sum, name="late_sum").numpy()


function = tf.function(lambda t: gs.allreduce(t, op=gs.Sum, name="late_sum"))


def in_function():
    return function(tf.constant(x)).numpy()


def in_v1_graph():
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        return session.run(gs.allreduce(tf.constant(x), op=gs.Sum))


results, took = {}, {}
for mode, run in [("eager", eager), ("function", in_function), ("graph", in_v1_graph)]:
    if scenario == "stuck" and mode != sys.argv[3]:
        continue
    gs.barrier()
    started = time.monotonic()
    if late:
        time.sleep(delay)
    results[mode] = run().tolist()
    took[mode] = time.monotonic() - started
report(out_dir, rank, {"results": results, "took": took})
