"""Trains variables whose gradients are per-rank constants; reports the state after every call.

Variables: ``w`` (gradient c_rank), ``unused`` (None gradient, in the middle of the list) and
``b`` (gradient 2 * c_rank). Usage: out_dir mode N average count_steps calls
"""

import sys

import numpy as np
import tensorflow as tf

out_dir, mode = sys.argv[1], sys.argv[2]
passes, average, count_steps, calls = (
    int(sys.argv[3]),
    sys.argv[4] == "1",
    sys.argv[5],
    int(sys.argv[6]),
)
if mode in ("legacy_graph", "tf_keras_session"):
    tf.compat.v1.disable_eager_execution()

import keras  # noqa: E402

import gradsync.tensorflow as gs  # noqa: E402
from gradsync import engine  # noqa: E402

from support import report  # noqa: E402

gs.init()
rank = gs.rank()
LR = 0.5
c = np.array([1.0, 2.0], np.float32) * (rank + 1)
states = []


def loss_fn(w, b):
    return tf.reduce_sum(w * c) + tf.reduce_sum(b * 2 * c)


def wrapped_sgd():
    """SGD(LR) of the mode's Keras flavour and family, wrapped by gradsync."""
    if mode.startswith("tf_keras"):
        import tf_keras

        # The v1 session takes only the legacy family, as in tf_keras itself.
        legacy = "legacy" in mode or mode == "tf_keras_session"
        family = tf_keras.optimizers.legacy if legacy else tf_keras.optimizers
        optimizer = family.SGD(LR)
    else:
        optimizer = keras.optimizers.SGD(LR)
    return gs.DistributedOptimizer(
        optimizer,
        backward_passes_per_step=passes,
        average_aggregated_gradients=average,
        count_steps=count_steps,
    )


if mode == "legacy_graph":
    w = tf.compat.v1.Variable(np.zeros(2, np.float32), name="w")
    unused = tf.compat.v1.Variable(np.ones(2, np.float32), name="unused")
    b = tf.compat.v1.Variable(np.zeros(2, np.float32), name="b")
    global_step = tf.compat.v1.train.get_or_create_global_step()
    opt = gs.DistributedOptimizer(
        tf.compat.v1.train.GradientDescentOptimizer(LR),
        backward_passes_per_step=passes,
        average_aggregated_gradients=average,
        count_steps=count_steps,
    )
    train = opt.minimize(loss_fn(w, b), global_step=global_step, var_list=[w, unused, b])
    with tf.compat.v1.Session() as session:
        session.run(tf.compat.v1.global_variables_initializer())
        session.run(gs.broadcast_global_variables(0))
        for _ in range(calls):
            session.run(train)
            wv, uv, bv, step = session.run([w, unused, b, global_step])
            states.append(
                {"w": wv.tolist(), "unused": uv.tolist(), "b": bv.tolist(), "step": int(step)}
            )
        accumulators = [v.name for v in tf.compat.v1.global_variables() if "accumulator" in v.name]
        broadcast_skips = all(
            v not in tf.compat.v1.trainable_variables()
            for v in tf.compat.v1.global_variables()
            if "accumulator" in v.name
        )
    extra = {"accumulators": len(accumulators), "not_trainable": broadcast_skips}
elif mode == "tf_keras_session":
    # tf_keras's v1 session refuses None gradients itself, so there is no unused variable here.
    import tf_keras

    class TwoVectors(tf_keras.layers.Layer):
        def build(self, input_shape):
            self.w = self.add_weight(name="w", shape=(2,), initializer="zeros")
            self.b = self.add_weight(name="b", shape=(2,), initializer="zeros")

        def call(self, x):
            return x * 0 + loss_fn(self.w, self.b)

    layer = TwoVectors()
    model = tf_keras.Sequential([tf_keras.Input((1,)), layer])
    opt = wrapped_sgd()
    model.compile(opt, loss=lambda y_true, y_pred: tf.reduce_mean(y_pred))

    class RecordStates(tf_keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            wv, bv = layer.get_weights()
            step = int(tf_keras.backend.get_value(opt.iterations))
            states.append({"w": wv.tolist(), "unused": [1.0, 1.0], "b": bv.tolist(), "step": step})

    zeros = np.zeros((calls, 1), np.float32)
    model.fit(zeros, zeros, batch_size=1, shuffle=False, verbose=0, callbacks=[RecordStates()])
    extra = {"optimizer_variables": [v.name for v in opt.weights]}
else:
    w = tf.Variable(np.zeros(2, np.float32), name="w")
    unused = tf.Variable(np.ones(2, np.float32), name="unused")
    b = tf.Variable(np.zeros(2, np.float32), name="b")
    variables = [w, unused, b]
    if not mode.startswith("tape"):
        opt = wrapped_sgd()

        def step():
            with tf.GradientTape() as tape:
                loss = loss_fn(w, b)
            grads = tape.gradient(loss, variables)
            opt.apply_gradients(zip(grads, variables, strict=False))

    else:
        opt = keras.optimizers.SGD(LR)

        def step():
            with tf.GradientTape() as tape:
                loss = loss_fn(w, b)
            tape = gs.DistributedGradientTape(
                tape,
                backward_passes_per_step=passes,
                average_aggregated_gradients=average,
                count_steps=count_steps,
            )
            grads = tape.gradient(loss, variables)
            tape.apply_gradients(opt, zip(grads, variables, strict=False))

    if mode.endswith("function"):
        step = tf.function(step)
    for _ in range(calls):
        step()
        states.append(
            {
                "w": w.numpy().tolist(),
                "unused": unused.numpy().tolist(),
                "b": b.numpy().tolist(),
                "step": int(opt.iterations.numpy()),
            }
        )
    optimizer_variables = opt.weights if "legacy" in mode else opt.variables
    extra = {"optimizer_variables": [v.name for v in optimizer_variables]}
report(
    out_dir,
    rank,
    {"states": states, "allreduces": engine.executed_counts().get("allreduce", 0), **extra},
)
