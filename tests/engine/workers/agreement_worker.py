"""Repeated allreduces on the engine alone (no TensorFlow), then one fault after warm-up.

Each rank reports the negotiation counts, whether its sums were exact, and the error each
fault produced. Usage: out_dir fault   (fault: none, shape, dtype, count, other_collective,
leaves)
"""

import sys

import numpy as np

from gradsync import engine

from support import report

out_dir, fault = sys.argv[1], sys.argv[2]
engine.init()
rank, size = engine.rank(), engine.size()
WARM_UP = 10


def arrays(step, r, shape=(3, 4), dtype=np.float32, count=3):
    """Rank r's tensors at ``step``: floats, halves and integers."""
    made = [
        np.full(shape, step + r, dtype),
        np.arange(5, dtype=np.float16) * (r + 1),
        np.array([step, r, 7], np.int32),
    ]
    return made[:count]


def allreduce_exact(step):
    got = engine.allreduce(arrays(step, rank), engine.ReduceOp.SUM, name="grads")
    want = [sum(parts) for parts in zip(*(arrays(step, r) for r in range(size)), strict=True)]
    return all(np.array_equal(g, w) and g.dtype == w.dtype for g, w in zip(got, want, strict=True))


exact = [allreduce_exact(step) for step in range(WARM_UP)]
warm = engine.executed_counts().get("negotiation", 0)
exact += [allreduce_exact(step) for step in range(WARM_UP, 3 * WARM_UP)]
steady = engine.executed_counts().get("negotiation", 0)

# Epochs of training steps, each ending with another collective (a metric): the prediction
# after the steps misses once per epoch and must keep working after many epochs.
epoch_negotiations = []
if fault == "none":
    for _epoch in range(14):
        before = engine.executed_counts().get("negotiation", 0)
        exact += [allreduce_exact(step) for step in range(5)]
        engine.allreduce([np.ones(2, np.float64)], engine.ReduceOp.SUM, name="metric")
        epoch_negotiations.append(engine.executed_counts().get("negotiation", 0) - before)

error = None
if fault != "none":
    faulty = rank == size - 1
    try:
        if fault == "leaves" and faulty:
            engine.shutdown()
        elif fault == "other_collective" and faulty:
            engine.broadcast([np.zeros(3, np.float32)], 0, name="weights")
        else:
            options = {}
            if faulty:
                options = {
                    "shape": {"shape": (3, 5)},
                    "dtype": {"dtype": np.float64},
                    "count": {"count": 2},
                }.get(fault, {})
            engine.allreduce(arrays(0, rank, **options), engine.ReduceOp.SUM, name="grads")
    except engine.CollectiveMismatchError as raised:
        error = str(raised)
    if fault != "leaves":  # the ranks go on together after the error
        exact.append(allreduce_exact(99))

report(
    out_dir,
    rank,
    {
        "exact": exact,
        "warm": warm,
        "steady": steady,
        "epoch_negotiations": epoch_negotiations,
        "error": error,
    },
)
