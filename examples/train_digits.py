"""Trains a small classifier on scikit-learn's bundled digits with gradsync.

    gradsyncrun -np 2 python examples/train_digits.py

Each rank takes micro-batches of 16 images and aggregates 4 backward passes locally before one
allreduce, so every update sees 4 x 2 x 16 = 128 images. At the end rank 0 trains the same model
in one process on the same 128-image batches and prints how far apart the two results are.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow announces oneDNN on stderr before its log level applies; the demo's lines come
# first without it (and oneDNN's reordered float sums cannot blur the comparison at the end).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import gradsync.tensorflow.keras as gs  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--micro-batch", type=int, default=16)
parser.add_argument("--backward-passes-per-step", type=int, default=4)
args = parser.parse_args()

gs.init()
tf.config.threading.set_intra_op_parallelism_threads(1)
rank, size = gs.rank(), gs.size()
passes, micro = args.backward_passes_per_step, args.micro_batch
global_batch = passes * size * micro

digits = load_digits()
x = (digits.data / 16.0).astype(np.float32)
y = digits.target.astype(np.int64)
order = np.random.default_rng(0).permutation(len(x))
x, y = x[order], y[order]
train_count = (1500 // global_batch) * global_batch
x_train, y_train, x_test, y_test = x[:train_count], y[:train_count], x[1500:], y[1500:]


def make_model():
    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


def epoch_order(epoch):
    return np.random.default_rng(100 + epoch).permutation(train_count)


def rank_stream(epoch):
    """This rank's micro-batches for one epoch: its share of each global batch, in order."""
    index = epoch_order(epoch).reshape(-1, passes, size, micro)[:, :, rank, :].reshape(-1)
    return x_train[index], y_train[index]


loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
model = make_model()
optimizer = gs.DistributedOptimizer(
    keras.optimizers.Adam(0.003),
    backward_passes_per_step=passes,
    average_aggregated_gradients=True,
    count_steps="updates",
)
# XLA cannot compile gradsync's collectives; Keras would pick it on a machine with a GPU.
model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"], jit_compile=False)
callbacks = [
    gs.callbacks.BroadcastGlobalVariablesCallback(0),
    gs.callbacks.MetricAverageCallback(),
]
if rank == 0:
    print(
        f"{size} workers x micro-batch {micro} x {passes} backward passes per step "
        f"= effective batch {global_batch}"
    )
for epoch in range(args.epochs):
    xs, ys = rank_stream(epoch)
    history = model.fit(
        xs, ys, batch_size=micro, shuffle=False, epochs=1, verbose=0, callbacks=callbacks
    )
    test_loss, test_accuracy = model.evaluate(x_test, y_test, verbose=0)
    if rank == 0:
        print(
            f"epoch {epoch + 1}: train loss {history.history['loss'][-1]:.4f}, "
            f"test loss {test_loss:.4f}, test accuracy {test_accuracy:.4f}"
        )

if rank == 0:
    reference = make_model()
    reference.compile(optimizer=keras.optimizers.Adam(0.003), loss=loss)
    for epoch in range(args.epochs):
        index = epoch_order(epoch)
        reference.fit(
            x_train[index], y_train[index], batch_size=global_batch, shuffle=False, verbose=0
        )
    difference = max(
        float(np.abs(a - b).max() / np.abs(b).max())
        for a, b in zip(model.get_weights(), reference.get_weights(), strict=True)
    )
    print(
        f"single process, batch {global_batch}, same data: max relative weight difference "
        f"{difference:.2e}"
    )
