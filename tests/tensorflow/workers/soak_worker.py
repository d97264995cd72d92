"""Many micro-steps of a small model on every rank: resident memory and tf.function traces.

Reports the resident set size after warm-up and at the end, and how many times the training
step was traced. Usage: out_dir micro_steps
"""

import sys

import keras
import numpy as np
import tensorflow as tf

import gradsync.tensorflow as gs

from support import report

out_dir, micro_steps = sys.argv[1], int(sys.argv[2])
WARM_UP = max(50, micro_steps // 10)


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


gs.init()
rng = np.random.default_rng(gs.rank())
x = tf.constant(rng.normal(size=(16, 32)).astype(np.float32))
y = tf.constant(rng.normal(size=(16, 1)).astype(np.float32))
# About 1.1M parameters: a gradient set of 4.4 MB, so that keeping one per step would show.
model = keras.Sequential(
    [keras.Input((32,)), keras.layers.Dense(1024), keras.layers.Dense(1024), keras.layers.Dense(1)]
)
optimizer = gs.DistributedOptimizer(keras.optimizers.Adam(1e-3), backward_passes_per_step=4)


@tf.function
def step():
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x) - y))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
    return loss


for _ in range(WARM_UP):
    step()
after_warm_up = resident_bytes()
traces_after_warm_up = step.experimental_get_tracing_count()
for _ in range(micro_steps - WARM_UP):
    step()
report(
    out_dir,
    gs.rank(),
    {
        "after_warm_up": after_warm_up,
        "at_end": resident_bytes(),
        "traces_after_warm_up": traces_after_warm_up,
        "traces": step.experimental_get_tracing_count(),
        "iterations": int(optimizer.iterations.numpy()),
    },
)
