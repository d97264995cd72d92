"""A Keras 2 style program (tf_keras under TF_USE_LEGACY_KERAS=1) written for
horovod.tensorflow.keras, with only its import changed: fit with Horovod's callbacks."""

import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import gradsync.tensorflow.keras as hvd  # noqa: E402

from support import report  # noqa: E402

out_dir = sys.argv[1]
hvd.init()
rank = hvd.rank()


class RecordLearningRate(tf.keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.rates = []

    def on_train_batch_begin(self, batch, logs=None):
        self.rates.append(float(tf.keras.backend.get_value(self.model.optimizer.lr)))


tf.random.set_seed(rank)  # different initial weights: the broadcast must make them equal
model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(2)])
optimizer = hvd.DistributedOptimizer(tf.keras.optimizers.SGD(0.1, momentum=0.9))
model.compile(optimizer=optimizer, loss="mse")
x = np.random.default_rng(rank).normal(size=(12, 4)).astype(np.float32)
y = np.ones((12, 2), np.float32) * rank
recorder = RecordLearningRate()
callbacks = [
    hvd.callbacks.BroadcastGlobalVariablesCallback(0),
    hvd.callbacks.MetricAverageCallback(),
    hvd.callbacks.LearningRateWarmupCallback(initial_lr=0.1, warmup_epochs=2, steps_per_epoch=3),
    recorder,
]
history = model.fit(x, y, batch_size=4, epochs=3, callbacks=callbacks, verbose=0)
report(
    out_dir,
    rank,
    {
        "callback_module": type(callbacks[0]).__mro__[1].__module__,
        "keras_base": [
            c.__module__ for c in type(callbacks[0]).__mro__ if c.__name__ == "Callback"
        ],
        "rates": recorder.rates,
        "loss": history.history["loss"],
        "weights": [w.tolist() for w in model.get_weights()],
    },
)
