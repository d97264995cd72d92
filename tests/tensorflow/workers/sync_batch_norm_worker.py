"""Runs SyncBatchNormalization (Keras 3 and tf_keras) on this rank's share of a batch; reports
outputs, moving statistics and gradients for the test to check against one process."""

import sys

import numpy as np
import tensorflow as tf

import gradsync.tensorflow as gs
from gradsync.tensorflow.training.keras.flavors import KERAS_3, TF_KERAS
from gradsync.tensorflow.training.keras.sync_batch_norm import sync_batch_normalization_class

from support import report

out_dir = sys.argv[1]
gs.init()
rank, size = gs.rank(), gs.size()

MOMENTUM, GAMMA, BETA = 0.9, 1.5, -0.5


def share(case, r, rows, *tail, loc=0.0, scale=1.0):
    """Rank r's inputs and loss weights for ``case`` (the test builds the same)."""
    rng = np.random.default_rng([sum(map(ord, case)), r])
    x = rng.normal(loc, scale, (rows, *tail)).astype(np.float32)
    w = rng.normal(0.0, 1.0, (rows, *tail)).astype(np.float32)
    return x, w


def make_layer(flavor, momentum=MOMENTUM):
    initializers = flavor.module.initializers
    return sync_batch_normalization_class(flavor)(
        momentum=momentum,
        gamma_initializer=initializers.Constant(GAMMA),
        beta_initializer=initializers.Constant(BETA),
    )


def training_step(flavor, in_function):
    """One training-mode call on rows (rank + 2, 4); the gradients of sum(output * w)."""
    case = f"{flavor.package}_{'function' if in_function else 'eager'}"
    x, w = share(case, rank, rank + 2, 4)
    layer = make_layer(flavor)
    layer.build((None, 4))
    x, w = tf.constant(x), tf.constant(w)

    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = layer(x, training=True)
            loss = tf.reduce_sum(out * w)
        grad_x, grad_gamma, grad_beta = tape.gradient(loss, [x, layer.gamma, layer.beta])
        return out, grad_x, grad_gamma, grad_beta

    out, grad_x, grad_gamma, grad_beta = (tf.function(step) if in_function else step)()
    inference = layer(x, training=False)
    return case, {
        "output": out.numpy().tolist(),
        "moving_mean": np.asarray(layer.moving_mean).tolist(),
        "moving_variance": np.asarray(layer.moving_variance).tolist(),
        "grad_x": grad_x.numpy().tolist(),
        "grad_gamma": grad_gamma.numpy().tolist(),
        "grad_beta": grad_beta.numpy().tolist(),
        "inference": inference.numpy().tolist(),
    }


def forward(flavor, case, rows, *tail, masked=False, loc=0.0, momentum=MOMENTUM):
    """One training-mode call on ``rows`` rows of shape ``tail``; outputs and moving stats."""
    x, _ = share(case, rank, rows, *tail, loc=loc)
    layer = make_layer(flavor, momentum)
    kwargs = {}
    if masked:
        kwargs["mask"] = tf.constant(np.round(x[..., 0] * 10) % 3 != 0)
    out = layer(tf.constant(x), training=True, **kwargs)
    return case, {
        "output": out.numpy().tolist(),
        "moving_mean": np.asarray(layer.moving_mean).tolist(),
        "moving_variance": np.asarray(layer.moving_variance).tolist(),
    }


results = dict(
    [
        training_step(KERAS_3, in_function=False),
        training_step(KERAS_3, in_function=True),
        training_step(TF_KERAS, in_function=False),
        training_step(TF_KERAS, in_function=True),
        forward(KERAS_3, "keras_masked", rank + 2, 3, 4, masked=True),
        forward(TF_KERAS, "tf_keras_masked", rank + 2, 3, 4, masked=True),
        # momentum 0: moving_variance is the batch variance, with a mean 1000 times the spread.
        forward(KERAS_3, "keras_offset", rank + 2, 4, loc=1000.0, momentum=0.0),
        forward(KERAS_3, "keras_empty_rank0", 0 if rank == 0 else rank + 1, 4),
    ]
)

# Inference uses the moving statistics and communicates nothing: only the last rank calls it.
if rank == size - 1:
    for flavor in (KERAS_3, TF_KERAS):
        x, _ = share("inference", rank, 3, 4)
        results[f"{flavor.package}_inference_alone"] = {
            "output": make_layer(flavor)(tf.constant(x), training=False).numpy().tolist()
        }
gs.barrier()
report(out_dir, rank, results)
