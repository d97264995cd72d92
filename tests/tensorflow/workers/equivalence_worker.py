"""Distributed training with aggregation vs. one process on the whole batches.

Each rank takes micro-batches of b samples; N micro-batches per window; W ranks. The reference
is a plain optimizer, without gradsync, taking one step per window on all N*W*b samples with a
mean loss. Usage: out_dir mode optimizer N windows count_steps
"""

import sys

import numpy as np
import tensorflow as tf

out_dir, mode, optimizer_name = sys.argv[1], sys.argv[2], sys.argv[3]
passes, windows, count_steps = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
if mode in ("legacy_graph", "tf_keras_session_fit"):
    tf.compat.v1.disable_eager_execution()

import keras  # noqa: E402

import gradsync.tensorflow as gs  # noqa: E402

from support import report  # noqa: E402

gs.init()
rank, size = gs.rank(), gs.size()
MICRO, FEATURES, CLASSES = 4, 8, 3
GLOBAL = passes * size * MICRO
rng = np.random.default_rng(0)
x_all = rng.normal(size=(windows * GLOBAL, FEATURES)).astype(np.float32)
y_all = rng.integers(0, CLASSES, size=windows * GLOBAL)
W0 = rng.normal(scale=0.5, size=(FEATURES, CLASSES)).astype(np.float32)
B0 = np.zeros(CLASSES, np.float32)


OPTIONS = dict(
    backward_passes_per_step=passes, average_aggregated_gradients=True, count_steps=count_steps
)


def distributed_optimizer(optimizer):
    return gs.DistributedOptimizer(optimizer, **OPTIONS)


def micro_batch(window, k, r):
    start = window * GLOBAL + (k * size + r) * MICRO
    return x_all[start : start + MICRO], y_all[start : start + MICRO]


def rank_stream(r):
    """This rank's samples in the order it trains on them."""
    parts = [micro_batch(j, k, r) for j in range(windows) for k in range(passes)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def keras_optimizer():
    if optimizer_name == "sgd":
        return keras.optimizers.SGD(0.1)
    return keras.optimizers.Adam(0.01)


def keras_model():
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(CLASSES)])
    model.layers[0].set_weights([W0, B0])
    return model


LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def keras_reference():
    model, optimizer = keras_model(), keras_optimizer()
    for j in range(windows):
        x, y = x_all[j * GLOBAL : (j + 1) * GLOBAL], y_all[j * GLOBAL : (j + 1) * GLOBAL]
        with tf.GradientTape() as tape:
            loss = LOSS(y, model(x))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
    return [v.numpy() for v in model.trainable_variables]


def keras_distributed():
    model = keras_model()
    if mode == "keras_fit":
        optimizer = distributed_optimizer(keras_optimizer())
        model.compile(optimizer=optimizer, loss=LOSS, steps_per_execution=2)
        x, y = rank_stream(rank)
        model.fit(x, y, batch_size=MICRO, shuffle=False, epochs=1, verbose=0)
        return [v.numpy() for v in model.trainable_variables], int(optimizer.iterations.numpy())
    optimizer = (
        distributed_optimizer(keras_optimizer()) if mode == "keras_loop" else keras_optimizer()
    )

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = LOSS(y, model(x))
        variables = model.trainable_variables
        if mode == "keras_loop":
            grads = tape.gradient(loss, variables)
            optimizer.apply_gradients(zip(grads, variables, strict=True))
        else:
            tape = gs.DistributedGradientTape(tape, **OPTIONS)
            grads = tape.gradient(loss, variables)
            tape.apply_gradients(optimizer, zip(grads, variables, strict=True))

    for j in range(windows):
        for k in range(passes):
            step(*micro_batch(j, k, rank))
    return [v.numpy() for v in model.trainable_variables], int(optimizer.iterations.numpy())


def legacy_optimizer():
    if optimizer_name == "sgd":
        return tf.compat.v1.train.GradientDescentOptimizer(0.1)
    if optimizer_name == "momentum":
        return tf.compat.v1.train.MomentumOptimizer(0.1, 0.9)
    return tf.compat.v1.train.AdamOptimizer(0.01)


def legacy_run(distributed):
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, FEATURES])
        y = tf.compat.v1.placeholder(tf.int64, [None])
        w = tf.compat.v1.Variable(W0)
        b = tf.compat.v1.Variable(B0)
        loss = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=x @ w + b)
        )
        step = tf.compat.v1.train.get_or_create_global_step()
        optimizer = legacy_optimizer()
        if distributed:
            optimizer = distributed_optimizer(optimizer)
        train = optimizer.minimize(loss, global_step=step)
        hooks = [gs.BroadcastGlobalVariablesHook(0)] if distributed else []
        with tf.compat.v1.train.MonitoredTrainingSession(hooks=hooks) as session:
            if distributed:
                for j in range(windows):
                    for k in range(passes):
                        xs, ys = micro_batch(j, k, rank)
                        session.run(train, {x: xs, y: ys})
            else:
                for j in range(windows):
                    sl = slice(j * GLOBAL, (j + 1) * GLOBAL)
                    session.run(train, {x: x_all[sl], y: y_all[sl]})
            return session.run([w, b]), int(session.run(step))


def tf_keras_run(distributed):
    """model.fit with tf_keras: micro-batches on this rank, or whole batches for the reference.

    The v1 session takes only the legacy optimizer family, as in tf_keras itself.
    """
    import tf_keras

    family = tf_keras.optimizers if mode == "tf_keras_fit" else tf_keras.optimizers.legacy
    optimizer = family.SGD(0.1) if optimizer_name == "sgd" else family.Adam(0.01)
    if distributed:
        optimizer = distributed_optimizer(optimizer)
    model = tf_keras.Sequential([tf_keras.Input((FEATURES,)), tf_keras.layers.Dense(CLASSES)])
    model.layers[0].set_weights([W0, B0])
    loss = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=optimizer, loss=loss)
    if distributed:
        x, y = rank_stream(rank)
        batch = MICRO
    else:
        x, y, batch = x_all, y_all, GLOBAL
    model.fit(x, y, batch_size=batch, shuffle=False, epochs=1, verbose=0)
    weights = model.layers[0].get_weights()
    return weights, int(tf_keras.backend.get_value(optimizer.iterations))


if mode.startswith("tf_keras"):
    reference, _ = tf_keras_run(False)
    weights, iterations = tf_keras_run(True)
elif mode == "legacy_graph":
    reference, _ = legacy_run(False)
    (weights, iterations) = legacy_run(True)
else:
    reference = keras_reference()
    weights, iterations = keras_distributed()

report(
    out_dir,
    rank,
    {
        "weights": [np.asarray(v).tolist() for v in weights],
        "reference": [np.asarray(v).tolist() for v in reference],
        "iterations": iterations,
    },
)
