"""Gradients in buckets: every rank issues them in the same order, last layers first, and
the values are exact. Eagerly and in tf.function, with buckets of 4 KiB over variables of
1 to 6 KiB. Reports the weights after one SGD step (learning rate 1) and the order in which
this rank's engine ran the bucket allreduces. Usage: out_dir"""

import json
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import gradsync.tensorflow as gs

from support import report

out_dir = Path(sys.argv[1])
gs.init()
rank = gs.rank()
shapes = [(256,), (1024,), (512, 3), (64,), (1536,), (8,), (700,)]
initial = [np.full(shape, 0.5, np.float32) for shape in shapes]


def gradients_of(r: int) -> list[np.ndarray]:
    return [np.arange(np.prod(s), dtype=np.float32).reshape(s) * (r + 1) for s in shapes]


results = {}
for mode in ("eager", "function"):
    variables = [tf.Variable(value) for value in initial]
    optimizer = gs.DistributedOptimizer(keras.optimizers.SGD(1.0), bucket_bytes=4096)
    grads = [tf.constant(g) for g in gradients_of(rank)]

    def step(optimizer=optimizer, variables=variables, grads=grads):
        optimizer.apply(grads, variables)

    timeline = out_dir / f"timeline-{mode}.json"  # rank 0 writes every rank's spans
    gs.start_timeline(str(timeline))
    (tf.function(step) if mode == "function" else step)()
    gs.stop_timeline()
    gs.barrier()
    events = json.loads(timeline.read_text())
    events = events["traceEvents"] if isinstance(events, dict) else events
    spans = sorted(
        (e for e in events if e.get("name") == "communication" and e["pid"] == rank),
        key=lambda e: e["ts"],
    )
    order = [span["cat"].split("'")[1] for span in spans]
    results[mode] = {"weights": [v.numpy().tolist() for v in variables], "order": order}

mean = [np.mean([gradients_of(r)[i] for r in range(gs.size())], axis=0) for i in range(len(shapes))]
results["expected"] = [(w - g).tolist() for w, g in zip(initial, mean, strict=True)]
report(str(out_dir), rank, results)
