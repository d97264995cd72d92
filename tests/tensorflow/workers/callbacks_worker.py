"""model.fit with gradsync's callbacks, for Keras 3 and tf_keras (TF2 and the v1 session).

Each rank starts from its own random weights and trains on its own data. Reports the weights
each rank started from, the weights seen right after the broadcast callback, the epoch loss
before and after metric averaging, and the final weights. Then a model without an input shape
(built by fit on its first batch) trains with the broadcast, metric-average and warmup
callbacks: reports its weights at the end of the first batch before and after the broadcast,
and its final weights and optimizer state. Usage: out_dir flavour root_rank
"""

import sys

import numpy as np
import tensorflow as tf

out_dir, flavour, root_rank = sys.argv[1], sys.argv[2], int(sys.argv[3])
if flavour == "tf_keras_session":
    tf.compat.v1.disable_eager_execution()

if flavour == "keras":
    import keras

    import gradsync.tensorflow.keras as gs

    optimizer_family = keras.optimizers
else:
    import tf_keras as keras

    import gradsync.tensorflow.tf_keras as gs

    session = flavour == "tf_keras_session"
    optimizer_family = keras.optimizers.legacy if session else keras.optimizers

from support import report  # noqa: E402

gs.init()
rank = gs.rank()
rng = np.random.default_rng(100 + rank)
x = rng.normal(size=(32, 5)).astype(np.float32)
y = rng.normal(size=(32, 1)).astype(np.float32)
model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3), keras.layers.Dense(1)])
model.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in model.get_weights()])
initial = model.get_weights()
optimizer = gs.DistributedOptimizer(optimizer_family.Adam(0.01), backward_passes_per_step=2)
model.compile(optimizer=optimizer, loss="mse")
seen = {}


def learning_rate(model) -> float:
    rate = model.optimizer.learning_rate
    if flavour == "keras":
        return float(keras.ops.convert_to_numpy(rate))
    return float(keras.backend.get_value(rate))


class Record(keras.callbacks.Callback):
    def __init__(self, key):
        super().__init__()
        self.key = key

    def on_train_begin(self, logs=None):
        if self.key == "raw":
            seen["after_broadcast"] = self.model.get_weights()

    def on_train_batch_begin(self, batch, logs=None):
        if self.key == "raw":
            seen.setdefault("rates", []).append(learning_rate(self.model))

    def on_epoch_end(self, epoch, logs=None):
        seen[self.key] = float(logs["loss"])


extension = "keras" if flavour == "keras" else "h5"
callbacks = [
    gs.callbacks.BroadcastGlobalVariablesCallback(root_rank),
    # The rate halves every epoch, changing at every batch (staircase=False); 4 steps an epoch.
    gs.callbacks.LearningRateScheduleCallback(0.01, lambda epoch: 0.5**epoch, staircase=False),
    Record("raw"),
    gs.callbacks.MetricAverageCallback(),
    Record("averaged"),
    gs.callbacks.BestModelCheckpoint(monitor="loss", filepath=f"{out_dir}/best{rank}.{extension}"),
]
model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=callbacks)


def values(variables):
    if flavour == "tf_keras_session":
        variables = keras.backend.batch_get_value(variables)
    return [np.asarray(v).tolist() for v in variables]


def optimizer_variables(optimizer):
    found = optimizer.variables
    return list(found() if callable(found) else found)


class FirstBatchWeights(keras.callbacks.Callback):
    def __init__(self, key):
        super().__init__()
        self.key = key

    def on_train_batch_end(self, batch, logs=None):
        if self.key not in seen:
            seen[self.key] = values(self.model.weights)


# Each rank initializes its own way; fit builds the model on its first batch.
seed = 7 + 11 * rank
lazy = keras.Sequential(
    [
        keras.layers.Dense(3, kernel_initializer=keras.initializers.RandomNormal(seed=seed)),
        keras.layers.Dense(1, kernel_initializer=keras.initializers.RandomNormal(seed=seed + 1)),
    ]
)
lazy.compile(optimizer=gs.DistributedOptimizer(optimizer_family.Adam(0.01)), loss="mse")
lazy_rates = []


class LazyRates(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        lazy_rates.append(learning_rate(self.model))


lazy.fit(
    x,
    y,
    batch_size=8,
    epochs=2,
    shuffle=False,
    verbose=0,
    callbacks=[
        FirstBatchWeights("lazy_before_broadcast"),
        gs.callbacks.BroadcastGlobalVariablesCallback(root_rank),
        FirstBatchWeights("lazy_after_broadcast"),
        gs.callbacks.MetricAverageCallback(),
        gs.callbacks.LearningRateWarmupCallback(initial_lr=0.01, warmup_epochs=1),
        LazyRates(),
    ],
)
report(
    out_dir,
    rank,
    {
        "initial": [w.tolist() for w in initial],
        "after_broadcast": [w.tolist() for w in seen["after_broadcast"]],
        "final": [w.tolist() for w in model.get_weights()],
        "raw_loss": seen["raw"],
        "averaged_loss": seen["averaged"],
        "rates": seen["rates"],
        "lazy_before_broadcast": seen["lazy_before_broadcast"],
        "lazy_after_broadcast": seen["lazy_after_broadcast"],
        "lazy_final": values(lazy.weights),
        "lazy_optimizer": values(optimizer_variables(lazy.optimizer)),
        "lazy_rates": lazy_rates,
    },
)
