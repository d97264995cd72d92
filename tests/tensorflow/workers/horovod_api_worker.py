"""Horovod's collectives beyond allreduce, in one TensorFlow mode (eager, function or graph):
reduce ops, reducescatter, alltoall, grouped allgather, gradients, process sets, queries, and
errors raised in step on every rank. Reports values for the test to check against numpy."""

import os
import sys
import time
import warnings

import numpy as np
import tensorflow as tf

out_dir, mode = sys.argv[1], sys.argv[2]
if mode == "graph":
    tf.compat.v1.disable_eager_execution()

import gradsync.tensorflow as gs  # noqa: E402

from support import report  # noqa: E402

members = gs.ProcessSet([0, int(sys.argv[3]) - 1])
gs.init(process_sets=[members])
rank, size = gs.rank(), gs.size()


def per_rank(dtype, r=None, rows=2):
    r = rank if r is None else r
    return (np.arange(rows * 3).reshape(rows, 3) * (r + 1) - 2 * r - 3).astype(dtype)


def evaluate(build):
    """Builds the tensors with ``build`` and returns their values, in the chosen mode."""
    if mode == "eager":
        return tf.nest.map_structure(lambda t: np.asarray(t), build())
    if mode == "function":
        return tf.nest.map_structure(lambda t: np.asarray(t), tf.function(build)())
    with tf.compat.v1.Session() as session:
        tensors = build()
        session.run(tf.compat.v1.global_variables_initializer())
        # One fetch per run, as a training step does (many independent collectives in one
        # run need as many inter-op threads: see the README).
        if isinstance(tensors, dict):
            return {key: session.run(tensor) for key, tensor in tensors.items()}
        return session.run(tensors)


def gradient(build_output, x):
    """d/dx sum(build_output(x) * weight) where weight is (rank + 1) at every element."""
    if mode == "graph":
        y = build_output(x)
        return tf.gradients(tf.reduce_sum(y * float(rank + 1)), x)[0]
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(build_output(x) * float(rank + 1))
    return tape.gradient(loss, x)


def collectives():
    out = {}
    for dtype in ["float32", "int32"]:
        x = tf.constant(per_rank(dtype))
        for op in ["Min", "Max", "Product"]:
            out[f"{op}_{dtype}"] = gs.allreduce(x, op=getattr(gs, op))
        out[f"average_{dtype}"] = gs.allreduce(x, op=gs.Average)
        out[f"scaled_{dtype}"] = gs.allreduce(
            x, op=gs.Sum, prescale_factor=0.5, postscale_factor=1.5
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        out["average_true"] = gs.allreduce(tf.constant(per_rank("float64")), average=True)
        out["average_false"] = gs.allreduce(tf.constant(per_rank("float64")), average=False)
    grouped = gs.grouped_allreduce(
        [tf.constant(per_rank("float32")), tf.constant(per_rank("int64"))], op=gs.Max
    )
    out["grouped_max_0"], out["grouped_max_1"] = grouped
    for rows in [7, 2]:
        x = tf.constant(per_rank("float32", rows=rows))
        out[f"reducescatter_sum_{rows}"] = gs.reducescatter(x, op=gs.Sum)
        out[f"reducescatter_average_{rows}"] = gs.reducescatter(x, op=gs.Average)
    pair = gs.grouped_reducescatter(
        [tf.constant(per_rank("float64", rows=5)), tf.constant(per_rank("float32", rows=4))],
        op=gs.Sum,
        postscale_factor=2.0,
    )
    out["grouped_reducescatter_0"], out["grouped_reducescatter_1"] = pair
    even = tf.constant(np.arange(size * 2 * 2).reshape(size * 2, 2) + 100 * rank, tf.float32)
    out["alltoall_even"] = gs.alltoall(even)  # without splits, only the tensor (as Horovod)
    # Rank r sends r + 1 rows to the last rank and none to the others but rank 0 (one row).
    splits = [1] + [0] * (size - 2) + [rank + 1]
    uneven = tf.constant(np.arange(rank + 2) + 10 * rank, tf.int64)
    out["alltoall_splits"], out["alltoall_splits_received"] = gs.alltoall(uneven, splits=splits)
    gathered = gs.grouped_allgather(
        [tf.constant(np.full((rank + 1, 2), rank, np.float32)), tf.constant([rank * 10])]
    )
    out["grouped_allgather_0"], out["grouped_allgather_1"] = gathered
    x = tf.constant(per_rank("float32"))
    out["gradient_allgather"] = gradient(lambda t: gs.allgather(t), x)
    out["gradient_broadcast"] = gradient(lambda t: gs.broadcast(t, root_rank=size - 1), x)
    rows7 = tf.constant(per_rank("float32", rows=7))
    out["gradient_reducescatter"] = gradient(lambda t: gs.reducescatter(t, op=gs.Sum), rows7)
    out["gradient_alltoall"] = gradient(lambda t: gs.alltoall(t), even)
    out["rank_op"] = gs.rank_op()
    out["size_op"] = gs.size_op()
    out["size_op_members"] = gs.size_op(process_set_id=members.process_set_id)
    out["included_op"] = gs.process_set_included_op(process_set_id=members.process_set_id)
    if members.included():
        out["members_sum"] = gs.allreduce(
            tf.constant([float(rank)]), op=gs.Sum, process_set=members
        )
    return out


values = evaluate(collectives)

variable = tf.Variable(per_rank("float32"))
if mode == "graph":
    with tf.compat.v1.Session() as session:
        session.run(variable.initializer)
        session.run(gs.broadcast_(variable, root_rank=size - 1))
        values["broadcast_in_place"] = session.run(variable)
else:
    gs.broadcast_([variable], root_rank=size - 1)
    values["broadcast_in_place"] = variable.numpy()
values["allgather_object"] = gs.allgather_object({"rank": rank})
values["broadcast_object_fn"] = gs.broadcast_object_fn(root_rank=size - 1)([rank] * 2)
values["homogeneous"] = gs.is_homogeneous()


def error_of(build):
    try:
        evaluate(build)
        return None
    except Exception as error:  # noqa: BLE001 - the class and text are what is checked
        return {
            "class": type(error).__name__,
            "failed_precondition": isinstance(error, tf.errors.FailedPreconditionError),
            "message": str(error),
        }


errors = {
    "shape_mismatch": error_of(
        lambda: gs.allreduce(tf.zeros([rank + 2], tf.float32), op=gs.Sum, name="mismatched")
    ),
    "dtype_mismatch": error_of(
        lambda: gs.allgather(tf.zeros([2, 2], tf.float64 if rank == 1 else tf.float32))
    ),
    "root_mismatch": error_of(lambda: gs.broadcast(tf.ones([2]), root_rank=min(rank, 1))),
    # Only rank 1's splits are wrong: every rank must fail in this collective, in step.
    "rank_dependent_splits": error_of(
        lambda: gs.alltoall(tf.zeros([size, 1]), splits=[size + rank % 2] + [0] * (size - 1))
    ),
    "root_out_of_range": error_of(lambda: gs.broadcast(tf.constant(1.0), root_rank=size)),
    "slices_with_max": error_of(
        lambda: (
            gs.allreduce(
                tf.IndexedSlices(tf.ones([1, 2]), tf.constant([0]), tf.constant([2, 2])), op=gs.Max
            ).values
        )
    ),
}
# After those errors the ranks are still in step: the next collective is exact.
values["after_errors"] = evaluate(lambda: gs.allreduce(tf.constant([rank + 1.0]), op=gs.Sum))
if not members.included():
    errors["excluded"] = error_of(lambda: gs.allreduce(tf.ones([1]), process_set=members))
try:
    gs.allreduce(tf.ones([1]), average=True, op=gs.Sum)
    errors["average_and_op"] = None
except ValueError as error:
    errors["average_and_op"] = {"class": "ValueError", "message": str(error)}

if mode == "graph":
    # 21 independent collectives in one Session.run with 2 inter-op threads: all complete.
    config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=2)
    with tf.Graph().as_default(), tf.compat.v1.Session(config=config) as session:
        dtypes = [tf.float16, tf.float32, tf.float64, tf.int8, tf.uint8, tf.int32, tf.int64]
        sums = [
            gs.allreduce(tf.ones(shape, dtype) * tf.cast(rank + 1, dtype), op=gs.Sum)
            for dtype in dtypes
            for shape in [(), (5,), (3, 4)]
        ]
        values["many_in_one_run"] = [
            [float(np.mean(a)) for a in session.run(sums)] for _ in range(2)
        ]
    # A collective that the other ranks never issue: an error on every rank within the stall
    # timeout, not a hang.
    os.environ["GRADSYNC_STALL_TIMEOUT"] = "3"
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        extra = gs.allreduce(tf.ones([2]))
        common = gs.allreduce(tf.ones([3]))
        started = time.monotonic()
        try:
            if rank == 1:
                session.run(extra)
            session.run(common)
            errors["stall"] = None
        except tf.errors.OpError as error:
            errors["stall"] = {"message": str(error), "seconds": time.monotonic() - started}
    os.environ["GRADSYNC_STALL_TIMEOUT"] = "30"
    values["after_stall"] = evaluate(lambda: gs.allreduce(tf.constant([1.0]), op=gs.Sum))

if mode == "eager":
    # The last rank runs out of data first and joins; the others go on with two allreduces.
    if rank == size - 1:
        values["join"] = gs.join()
    else:
        contribution = tf.constant([rank + 1.0, 2.0])
        values["joined_sum"] = gs.allreduce(contribution, op=gs.Sum).numpy()
        values["joined_average"] = gs.allreduce(contribution, op=gs.Average).numpy()
        values["join"] = gs.join()
    values["after_join"] = gs.allreduce(tf.constant([1.0]), op=gs.Sum).numpy()
    timeline = f"{out_dir}/timeline.json"
    gs.start_timeline(timeline)
    gs.allreduce(tf.ones([4]), name="timed")
    gs.stop_timeline()

report(
    out_dir,
    rank,
    {
        "values": {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in values.items()},
        "dtypes": {k: str(v.dtype) for k, v in values.items() if hasattr(v, "dtype")},
        "errors": errors,
    },
)
