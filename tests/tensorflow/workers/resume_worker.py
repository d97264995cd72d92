"""Training stopped mid-window, checkpointed by every rank, and resumed in new processes.

phase "full": 12 micro-steps without a stop. "save": 6 micro-steps (half a window of N=4
into the second window), then each rank writes its checkpoint. "resume": restores this
rank's checkpoint and takes the last 6 micro-steps. "save_at_boundary" and
"resume_at_boundary": the same, stopped after 8 micro-steps, at the end of a window.
Reports the weights and the step counter, or the error a resume produced.
Usage: out_dir mode phase checkpoint_dir
"""

import os
import sys

import numpy as np
import tensorflow as tf

out_dir, mode, phase, checkpoint_dir = sys.argv[1:5]
if mode == "legacy_graph":
    tf.compat.v1.disable_eager_execution()

import keras  # noqa: E402

import gradsync.tensorflow as gs  # noqa: E402

from support import report  # noqa: E402

gs.init()
rank = gs.rank()
N, TOTAL, STOP = 4, 12, 6
rng = np.random.default_rng(7)
W0 = rng.normal(size=(5, 2)).astype(np.float32)
data = np.random.default_rng(100 + rank % 2).normal(size=(TOTAL, 3, 5)).astype(np.float32)
steps = {
    "full": range(TOTAL),
    "save": range(STOP),
    "resume": range(STOP, TOTAL),
    "save_at_boundary": range(2 * N),
    "resume_at_boundary": range(2 * N, TOTAL),
}[phase]
path = f"{checkpoint_dir}/rank{rank % 2}"


def loss_of(w, x):
    return tf.reduce_mean(tf.square(tf.matmul(x, w) - 1.0))


error = None
if mode == "legacy_graph":
    x = tf.compat.v1.placeholder(tf.float32, [3, 5])
    w = tf.compat.v1.Variable(W0)
    step_counter = tf.compat.v1.train.get_or_create_global_step()
    optimizer = gs.DistributedOptimizer(
        tf.compat.v1.train.AdamOptimizer(0.05), backward_passes_per_step=N
    )
    train = optimizer.minimize(loss_of(w, x), global_step=step_counter)
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session() as session:
        session.run(tf.compat.v1.global_variables_initializer())
        if phase.startswith("resume"):
            saver.restore(session, path)
        try:
            for k in steps:
                session.run(train, {x: data[k]})
        except tf.errors.InvalidArgumentError as raised:
            error = raised.message
        if phase.startswith("save"):
            saver.save(session, path)
        weights, iterations = session.run([w, step_counter])
else:
    from gradsync.tensorflow.keras import load_model

    if mode == "keras_file" and phase.startswith("resume"):
        model = load_model(f"{path}.keras")
        optimizer = model.optimizer
    else:
        model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(2, use_bias=False)])
        model.layers[0].set_weights([W0])
        optimizer = keras.optimizers.Adam(0.05)
        if mode != "tape_function":
            optimizer = gs.DistributedOptimizer(
                optimizer, backward_passes_per_step=N, count_steps="updates"
            )
        model.compile(optimizer=optimizer, loss="mse")
    w = model.layers[0].kernel
    # The tape's window lives in an aggregator made here, so that the checkpoint can hold it.
    aggregator = gs.LocalGradientAggregationHelperEager(
        N, lambda grads, _: gs.grouped_allreduce(grads), count_steps="updates"
    )
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, aggregator=aggregator)
    # Restored as the optimizer's and the aggregator's variables are created, on the first step.
    resuming = phase.startswith("resume") and mode != "keras_file"
    restored = checkpoint.read(path) if resuming else None

    @tf.function
    def train(x):
        with tf.GradientTape() as tape:
            loss = loss_of(w, x)
        if mode == "tape_function":
            tape = gs.DistributedGradientTape(tape, aggregator=aggregator)
            tape.apply_gradients(optimizer, [(tape.gradient(loss, w), w)])
        else:
            optimizer.apply_gradients([(tape.gradient(loss, w), w)])

    try:
        for k in steps:
            train(data[k])
    except tf.errors.InvalidArgumentError as raised:
        error = raised.message
    else:
        if restored is not None:
            restored.assert_consumed()
    if phase.startswith("save") and mode == "keras_file":
        os.makedirs(checkpoint_dir, exist_ok=True)
        model.save(f"{path}.keras")
    elif phase.startswith("save"):
        checkpoint.write(path)
    weights, iterations = w.numpy(), optimizer.iterations.numpy()

report(
    out_dir,
    rank,
    {"weights": np.asarray(weights).tolist(), "iterations": int(iterations), "error": error},
)
