"""Grouped collectives on many small tensors and a few large ones, which travel packed in
graphs, in one TensorFlow mode (function or graph); then a shape disagreement hidden inside a
packed tensor. Reports values and the error.

Usage: out_dir mode
"""

import sys

import numpy as np
import tensorflow as tf

out_dir, mode = sys.argv[1], sys.argv[2]
if mode == "graph":
    tf.compat.v1.disable_eager_execution()

import gradsync.tensorflow as gs  # noqa: E402
from gradsync.tensorflow.ops.packing import SMALL_BYTES  # noqa: E402

from support import report  # noqa: E402

gs.init()
rank, size = gs.rank(), gs.size()
LARGE = SMALL_BYTES // 4 + 3  # float32 elements of a tensor that travels on its own
SPECS = [
    ("float32", (3, 4)),
    ("float32", (LARGE,)),
    ("float64", (5,)),
    ("float32", ()),
    ("int32", (2, 2)),
    ("float32", (7, 1, 2)),
    ("float64", (2, 3)),
    ("float16", (4,)),
    ("int32", (3,)),
    ("float32", (LARGE // 2, 2)),
    ("float32", (1,)),
]


def per_rank(r, specs=SPECS):
    """Rank r's tensors: small integers, exact in every dtype and in any order of sums."""
    return [
        ((np.arange(int(np.prod(shape))) % 13 + r * (i + 1)).reshape(shape)).astype(dtype)
        for i, (dtype, shape) in enumerate(specs)
    ]


def build(arrays, only_sum=False):
    tensors = [tf.constant(a) for a in arrays]
    summed = gs.grouped_allreduce(tensors, op=gs.Sum)
    if only_sum:
        return {"sum": summed}
    averaged = gs.grouped_allreduce([t for t in tensors if t.dtype.is_floating], op=gs.Average)
    with tf.GradientTape() as tape:
        tape.watch(tensors[0])
        tape.watch(tensors[2])
        reduced = gs.grouped_allreduce([tensors[0], tensors[2]], op=gs.Sum)
        second = tf.cast(tf.reduce_sum(reduced[1]), tf.float32)
        loss = tf.reduce_sum(reduced[0]) * (rank + 1) + second
    gradients = tape.gradient(loss, [tensors[0], tensors[2]])
    return {"sum": summed, "average": averaged, "grad": gradients}


def run(arrays, repeats, only_sum=False):
    """``repeats`` runs of ``build``, then a broadcast of variables holding ``arrays``."""
    if mode == "function":
        step = tf.function(lambda: build(arrays, only_sum))
        runs = [tf.nest.map_structure(lambda t: t.numpy(), step()) for _ in range(repeats)]
        variables = [tf.Variable(a) for a in arrays]
        tf.function(lambda: gs.broadcast_variables(variables, root_rank=size - 1) and None)()
        runs[-1]["broadcast"] = [v.numpy() for v in variables]
        return runs
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        built = build(arrays, only_sum)
        variables = [tf.compat.v1.Variable(a, use_resource=True) for a in arrays]
        session.run(tf.compat.v1.global_variables_initializer())
        runs = [session.run(built) for _ in range(repeats)]
        session.run(gs.broadcast_variables(variables, root_rank=size - 1))
        runs[-1]["broadcast"] = session.run(variables)
        return runs


results = run(per_rank(rank), repeats=4)
last = results[-1]

error = None
swapped = list(SPECS)
if rank == size - 1:
    swapped[0] = ("float32", (4, 3))
try:
    run(per_rank(rank, swapped), repeats=1, only_sum=True)
except Exception as raised:  # noqa: BLE001 - the test reads the message
    error = f"{type(raised).__name__}: {raised}"

report(
    out_dir,
    rank,
    {
        "all_runs_equal": all(
            np.array_equal(a, b)
            for r in results
            for k in ("sum", "average", "grad")
            for a, b in zip(r[k], last[k], strict=True)
        ),
        "values": tf.nest.map_structure(lambda v: np.asarray(v).tolist(), last),
        "dtypes": tf.nest.map_structure(lambda v: str(np.asarray(v).dtype), last),
        "error": error,
        "specs": SPECS,
    },
)
