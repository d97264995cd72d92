"""Runs every collective in one TensorFlow mode (eager, function or graph); reports values."""

import sys

import numpy as np
import tensorflow as tf

out_dir, mode = sys.argv[1], sys.argv[2]
if mode == "graph":
    tf.compat.v1.disable_eager_execution()

import gradsync.tensorflow as gs  # noqa: E402

from support import report  # noqa: E402

gs.init()
rank, size = gs.rank(), gs.size()
DTYPES = ["float32", "float64", "float16", "int32"]


def per_rank(dtype, r=None):
    r = rank if r is None else r
    return (np.arange(6).reshape(2, 3) * (r + 1) + r).astype(dtype)


def evaluate(build):
    """Builds the tensors with ``build`` and returns their values, in the chosen mode."""
    if mode == "eager":
        return tf.nest.map_structure(lambda t: t.numpy(), build())
    if mode == "function":
        return tf.nest.map_structure(lambda t: t.numpy(), tf.function(build)())
    with tf.compat.v1.Session() as session:
        tensors = build()
        session.run(tf.compat.v1.global_variables_initializer())
        return session.run(tensors)


VARIABLE = tf.Variable(per_rank("float32")) if mode != "graph" else None


def collectives():
    variable = VARIABLE if VARIABLE is not None else tf.Variable(per_rank("float32"))
    out = {}
    for dtype in DTYPES:
        x = tf.constant(per_rank(dtype))
        out[f"sum_{dtype}"] = gs.allreduce(x, op=gs.Sum)
        if dtype != "int32":
            out[f"average_{dtype}"] = gs.allreduce(x, op=gs.Average)
            out[f"scaled_{dtype}"] = gs.allreduce(
                x, op=gs.Sum, prescale_factor=0.5, postscale_factor=4.0
            )
        out[f"broadcast_{dtype}"] = gs.broadcast(x, root_rank=size - 1)
        rows = tf.constant(np.full((rank + 1, 2), rank, dtype))
        out[f"allgather_{dtype}"] = gs.allgather(rows)
    out["fp16_compressed"] = gs.allreduce(
        tf.constant(per_rank("float32")), compression=gs.Compression.fp16
    )
    grouped = gs.grouped_allreduce(
        [tf.constant(per_rank(d)) for d in ["float32", "float64", "float32"]], op=gs.Sum
    )
    for i, tensor in enumerate(grouped):
        out[f"grouped_{i}"] = tensor
    slices = tf.IndexedSlices(
        tf.constant(np.full((1, 3), rank + 1.0, np.float32)),
        tf.constant([rank], tf.int64),
        dense_shape=tf.constant([size, 3], tf.int64),
    )
    reduced_slices = gs.allreduce(slices, op=gs.Sum)
    out["slices_values"] = reduced_slices.values
    out["slices_indices"] = reduced_slices.indices
    barrier = gs.barrier()
    deps = [barrier] if barrier is not None else []
    with tf.control_dependencies(deps):
        out["after_barrier"] = tf.constant(1)
    if mode == "graph":
        out["variable"] = variable.value()
    return out, variable


def gradient_of_allreduce():
    x = tf.constant(per_rank("float32"))
    weight = float(rank + 1)
    if mode == "graph":
        y = gs.allreduce(x, op=gs.Sum)
        return tf.gradients(tf.reduce_sum(y * weight), x)[0]
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = gs.allreduce(x, op=gs.Sum)
        loss = tf.reduce_sum(y * weight)
    return tape.gradient(loss, x)


def gradient_of_grouped_allreduce():
    """Small tensors travel packed; the gradient flows back through the packing, also to a
    result that the loss does not use (zeros)."""
    xs = [tf.constant(per_rank("float32")), tf.constant(np.ones(4, "float32") * rank)]
    xs.append(tf.constant(np.ones((2, 2), "float32")))
    weight = float(rank + 1)

    def loss_of(ys):
        return tf.reduce_sum(ys[0] * weight) + tf.reduce_sum(ys[1] * ys[1] * weight)

    if mode == "graph":
        ys = gs.grouped_allreduce(xs, op=gs.Sum)
        return tf.gradients(loss_of(ys), xs)
    with tf.GradientTape() as tape:
        tape.watch(xs)
        ys = gs.grouped_allreduce(xs, op=gs.Sum)
        loss = loss_of(ys)
    return tape.gradient(loss, xs)


values = {}
if mode == "graph":
    with tf.compat.v1.Session() as session:
        tensors, variable = collectives()
        session.run(tf.compat.v1.global_variables_initializer())
        session.run(gs.broadcast_variables([variable], root_rank=0))
        # One collective per run, as a training loop does, then two concurrent ones, which the
        # coordinator orders between the ranks at run time.
        values = {key: session.run(tensor) for key, tensor in tensors.items()}
        pair = session.run([tensors["sum_float32"], tensors["broadcast_float64"]])
        values["concurrent_sum_float32"], values["concurrent_broadcast_float64"] = pair
        values["variable"] = session.run(variable)
else:

    def build():
        return collectives()[0]

    values = evaluate(build)
    variable = VARIABLE
    if mode == "eager":
        gs.broadcast_variables([variable], root_rank=0)
    else:
        tf.function(lambda: [gs.broadcast_variables([variable], root_rank=0)] and None)()
    values["variable"] = variable.numpy()
values["gradient"] = evaluate(gradient_of_allreduce)
for index, gradient in enumerate(evaluate(gradient_of_grouped_allreduce)):
    values[f"grouped_gradient_{index}"] = gradient
values["object"] = gs.broadcast_object({"from": rank, "items": [rank] * 3}, root_rank=size - 1)

errors = {}
for label, call in {
    "int_average": lambda: gs.allreduce(tf.constant(per_rank("int32")), op=gs.Average),
    "root_out_of_range": lambda: gs.broadcast(tf.constant(1.0), root_rank=size),
    "adasum": lambda: gs.allreduce(tf.constant(1.0), op=gs.Adasum),
    "bad_op": lambda: gs.allreduce(tf.constant(1.0), op="max"),
    "bad_compression": lambda: gs.allreduce(tf.constant(1.0), compression="gzip"),
}.items():
    try:
        evaluate(call)  # in a graph, errors found by the ranks together arise when it runs
        errors[label] = None
    except (ValueError, NotImplementedError, tf.errors.OpError) as error:
        errors[label] = f"{type(error).__name__}: {error}"

report(
    out_dir,
    rank,
    {
        "values": {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in values.items()},
        "dtypes": {k: str(v.dtype) for k, v in values.items() if hasattr(v, "dtype")},
        "errors": errors,
    },
)
