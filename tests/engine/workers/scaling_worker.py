"""Averaged and scaled allreduces of buffers larger than one of the engine's pieces, exact
against numpy, then a disagreement under a zero postscale (the mismatch flag must survive it).

Usage: out_dir
"""

import sys

import numpy as np

from gradsync import engine
from gradsync.engine import link
from gradsync.engine.collectives import CHUNK_BYTES

from support import report

out_dir = sys.argv[1]
engine.init()
rank, size = engine.rank(), engine.size()
FLOATS = 12 * (CHUNK_BYTES // 20)  # float32 elements: 2.4 pieces
PRESCALE, POSTSCALE = 0.5, 3.0


def arrays(step, r, tail=7):
    """Rank r's tensors: small integers, so every sum is exact in any order."""
    ramp = np.arange(FLOATS, dtype=np.int64) % 11
    return [
        (ramp[: FLOATS // 3] + step + r).astype(np.float32).reshape(-1, 4),
        (ramp[FLOATS // 3 :] * (r + 1)).astype(np.float32),
        np.arange(9, dtype=np.float16) + r,
        np.full(tail, step - r, np.float64),
    ]


def expected(step):
    """Average of the prescaled arrays, times the postscale, in each array's own dtype."""
    want = []
    for parts in zip(*(arrays(step, r) for r in range(size)), strict=True):
        dtype = parts[0].dtype.type
        total = sum(p * dtype(PRESCALE) for p in parts)
        want.append(total * dtype(POSTSCALE / size))
    return want


def scaled_allreduce_exact(step):
    got = engine.allreduce(
        arrays(step, rank), engine.ReduceOp.AVERAGE, PRESCALE, POSTSCALE, name="grads"
    )
    return all(
        g.dtype == w.dtype and np.array_equal(g, w)
        for g, w in zip(got, expected(step), strict=True)
    )


# The first calls negotiate; later ones take the predicted path with the flag element.
exact = [scaled_allreduce_exact(step) for step in range(12)]
negotiations = engine.executed_counts().get("negotiation", 0)

# A call other than the predicted one is found out in the first piece: it costs one piece
# more than the call itself, not its whole buffer again. What each message carries is read
# where the engine hands it to the (here absent) simulated link.
sent: list[int] = []
wait_as_on_link = link.wait_as_on_link
link.wait_as_on_link = lambda nbytes, workers: sent.append(nbytes)
engine.allreduce(arrays(0, rank), engine.ReduceOp.AVERAGE, PRESCALE, POSTSCALE, name="grads")
predicted_bytes = sum(sent)
sent.clear()
engine.allreduce(arrays(0, rank), engine.ReduceOp.AVERAGE, PRESCALE, POSTSCALE, name="other")
mispredicted_bytes = sum(sent)
link.wait_as_on_link = wait_as_on_link

zeroed = []
for step in range(4):
    got = engine.allreduce(arrays(step, rank), engine.ReduceOp.SUM, postscale_factor=0.0, name="z")
    zeroed.append(all(not g.any() for g in got))

error = None
tail = 8 if rank == size - 1 else 7
try:
    engine.allreduce(arrays(0, rank, tail), engine.ReduceOp.SUM, postscale_factor=0.0, name="z")
except engine.CollectiveMismatchError as raised:
    error = str(raised)

report(
    out_dir,
    rank,
    {
        "exact": exact,
        "negotiations": negotiations,
        "predicted_bytes": predicted_bytes,
        "mispredicted_bytes": mispredicted_bytes,
        "zeroed": zeroed,
        "error": error,
    },
)
