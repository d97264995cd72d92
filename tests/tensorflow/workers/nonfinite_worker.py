"""An inf in one micro-step on the last rank, in the second of three windows of N=3.

Variables ``w`` with gradient c_rank (times the loss scale). mode "loss_scale": a
LossScaleOptimizer inside DistributedOptimizer; reports ``w`` and the loss scale after each
window. mode "raise": raise_on_non_finite=True; reports the error and ``w``.
Usage: out_dir mode
"""

import sys

import keras
import numpy as np
import tensorflow as tf

import gradsync.tensorflow as gs

from support import report

out_dir, mode = sys.argv[1], sys.argv[2]
gs.init()
rank, size = gs.rank(), gs.size()
N, LR = 3, 0.5
w = tf.Variable([0.0, 0.0], name="w")
base = keras.optimizers.SGD(LR)
if mode == "loss_scale":
    optimizer = gs.DistributedOptimizer(
        keras.optimizers.LossScaleOptimizer(base, initial_scale=1024.0),
        backward_passes_per_step=N,
        average_aggregated_gradients=True,
    )
else:
    optimizer = gs.DistributedOptimizer(
        base,
        backward_passes_per_step=N,
        average_aggregated_gradients=True,
        raise_on_non_finite=True,
    )


@tf.function
def step(c):
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(w * c)
        if mode == "loss_scale":
            loss = optimizer.scale_loss(loss)
    optimizer.apply_gradients([(tape.gradient(loss, w), w)])


windows, error = [], None
for window in range(3):
    for micro in range(N):
        c = np.array([1.0, 2.0], np.float32) * (rank + 1)
        if window == 1 and micro == 1 and rank == size - 1:
            c[0] = np.inf
        try:
            step(tf.constant(c))
        except tf.errors.InvalidArgumentError as raised:
            error = raised.message
    scale = float(optimizer.dynamic_scale.numpy()) if mode == "loss_scale" else None
    windows.append({"w": w.numpy().tolist(), "scale": scale})
    if error is not None:
        break

report(out_dir, rank, {"windows": windows, "error": error})
