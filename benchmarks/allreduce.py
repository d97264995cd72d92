"""Item 1: the allreduce path against raw mpi4py on one numpy buffer of the same bytes.

Run on 2 ranks (``mpiexec -n 2 python benchmarks/allreduce.py --out r.json``). For each total
size, about 60 float32 tensors of mixed sizes are summed across ranks by: the engine on numpy
arrays, ``grouped_allreduce`` eagerly, inside ``tf.function`` and in a v1 graph Session, and
Keras's SGD wrapped by ``DistributedOptimizer`` (sync step minus the same local step). The
same function and Session without the collective are timed too: the floor under those paths.
The reference, timed in the same repeats, is mpi4py's in-place ``Allreduce`` on one buffer; the
same buffer reduced in 4 MiB pieces (as the engine sends it) is timed as well.
"""

from __future__ import annotations

from collections.abc import Callable

import common  # noqa: I001 - pins threads before TensorFlow loads
import numpy as np
import tensorflow as tf
from mpi4py import MPI

import gradsync.tensorflow as gs
from gradsync import engine
from gradsync.tensorflow.ops import bridge
from gradsync.tensorflow.ops.packing import Packing

PIECE = (4 << 20) // 4  # float32 elements in the 4 MiB pieces the engine sends
#: Sizes (MB) up to which the fixed cost is broken down into its parts.
BREAKDOWN_MB = 1


def handoff(comm: MPI.Comm | None):
    """What any collective run through ``tf.numpy_function`` pays without gradsync's engine:
    the small tensors packed as gradsync packs them, handed to Python and back, and cut
    apart; with ``comm``, the Python side also copies the packed array and sums it with
    mpi4py (the hand-off plus a raw reduce, and the ranks' waiting for each other)."""

    def run(*arrays: np.ndarray) -> list[np.ndarray]:
        if comm is None:
            return list(arrays)
        results = [a.copy() for a in arrays]
        for result in results:
            comm.Allreduce(MPI.IN_PLACE, result, op=MPI.SUM)
        return results

    def reduce(values: list[tf.Tensor]) -> list[tf.Tensor]:
        packing = Packing.of(values)
        carried = packing.carried if packing is not None else values
        dtypes = [t.dtype for t in carried]
        if bridge.in_v1_graph():
            shapes = [t.shape for t in carried]
            outputs = bridge._run_without_holding_a_thread(run, carried, dtypes, shapes, "bench")
        else:
            outputs = tf.numpy_function(run, carried, dtypes, stateful=True)
        return packing.unpack(outputs) if packing is not None else outputs

    return reduce


def graph_allreduce(arrays: list[np.ndarray], communicate: bool | Callable = True):
    """A v1 graph and Session whose run reduces ``arrays`` (held in variables), or only reads
    them when not ``communicate``, or passes them through ``communicate`` when it is a
    function."""
    graph = tf.Graph()
    with graph.as_default():
        variables = [tf.compat.v1.Variable(a, use_resource=True) for a in arrays]
        values = [v.read_value() for v in variables]
        if callable(communicate):
            reduced = communicate(values)
        else:
            reduced = gs.grouped_allreduce(values, op=gs.Sum) if communicate else values
        target = tf.group(*reduced)
        session = tf.compat.v1.Session(graph=graph, config=common.session_config())
        session.run(tf.compat.v1.global_variables_initializer())
    return lambda: session.run(target)


def optimizer_steps(arrays: list[np.ndarray]):
    """Keras SGD steps on variables shaped like ``arrays``: local, and wrapped (syncing)."""
    import keras

    gradients = [tf.Variable(a) for a in arrays]

    def step_for(optimizer):
        weights = [tf.Variable(np.zeros_like(a)) for a in arrays]

        @tf.function
        def step():
            optimizer.apply([g.read_value() for g in gradients], weights)

        return step

    local = step_for(keras.optimizers.SGD(1e-3))
    synced = step_for(gs.DistributedOptimizer(keras.optimizers.SGD(1e-3)))
    return local, synced


def measure(total_mb: int, repeats: int, comm: MPI.Comm) -> dict:
    arrays = common.gradient_arrays(total_mb * common.MB, seed=comm.Get_rank())
    nbytes = sum(a.nbytes for a in arrays)
    raw_buffer = np.zeros(nbytes // 4, dtype=np.float32)
    header = np.zeros(5, dtype=np.int64)
    tensors = [tf.constant(a) for a in arrays]
    variables = [tf.Variable(a) for a in arrays]
    in_function = tf.function(
        lambda: gs.grouped_allreduce([v.read_value() for v in variables], op=gs.Sum)
    )
    reads_only = tf.function(lambda: [v.read_value() for v in variables])
    local_step, synced_step = optimizer_steps(arrays)
    cases = {
        "raw_mpi4py": lambda: comm.Allreduce(MPI.IN_PLACE, raw_buffer, op=MPI.SUM),
        "raw_mpi4py_4mib_pieces": lambda: [
            comm.Allreduce(MPI.IN_PLACE, raw_buffer[i : i + PIECE], op=MPI.SUM)
            for i in range(0, raw_buffer.size, PIECE)
        ],
        "header": lambda: comm.Allreduce(MPI.IN_PLACE, header, op=MPI.MAX),
        "engine": lambda: engine.allreduce(arrays, engine.ReduceOp.SUM, name="bench"),
        "eager": lambda: gs.grouped_allreduce(tensors, op=gs.Sum),
        "tf_function": in_function,
        "v1_graph": graph_allreduce(arrays),
        # What calling the same function or Session costs with no collective in it: the floor
        # under the two cases above.
        "tf_function_no_communication": reads_only,
        "v1_graph_no_communication": graph_allreduce(arrays, communicate=False),
        "optimizer_local_step": local_step,
        "optimizer_sync_step": synced_step,
    }
    if total_mb <= BREAKDOWN_MB:
        for name, comm_or_none in (("handoff", None), ("handoff_raw_reduce", comm)):
            function = handoff(comm_or_none)
            cases[f"tf_function_{name}"] = tf.function(
                lambda function=function: function([v.read_value() for v in variables])
            )
            cases[f"v1_graph_{name}"] = graph_allreduce(arrays, function)
    iterations = max(3, min(50, 400 // total_mb))
    before = engine.executed_counts().get("allreduce", 0)
    synced_step()
    calls_per_sync_step = engine.executed_counts().get("allreduce", 0) - before
    times = common.interleaved(cases, repeats, iterations, sync=comm.Barrier)
    synced, local = times["optimizer_sync_step"], times["optimizer_local_step"]
    sync_overhead = [s - t for s, t in zip(synced, local, strict=True)]
    raw = times["raw_mpi4py"]
    result = {
        "mb": nbytes / common.MB,
        "tensors": len(arrays),
        "engine_calls_per_sync_step": calls_per_sync_step,
        "seconds": {name: common.summary(values) for name, values in times.items()},
        "ratio_to_raw": {
            name: common.ratios(values, raw)
            for name, values in times.items()
            if name not in ("raw_mpi4py", "optimizer_local_step", "optimizer_sync_step")
        },
    }
    result["seconds"]["optimizer_sync_overhead"] = common.summary(sync_overhead)
    result["ratio_to_raw"]["optimizer_sync_overhead"] = common.ratios(sync_overhead, raw)
    if total_mb <= BREAKDOWN_MB:
        result["fixed_cost_ms"] = {path: fixed_cost(times, path) for path in PATHS}
    return result


PATHS = ("tf_function", "v1_graph")


def fixed_cost(times: dict[str, list[float]], path: str) -> dict[str, dict[str, float]]:
    """The parts of a sync on ``path`` in milliseconds, each a difference of two cases timed
    back to back in every repeat: the collective's own work (the sync minus the same call
    with no collective minus the raw reduce), and what it is made of: the hand-off to Python
    and back, the raw reduce as it runs inside that hand-off, and gradsync's engine and bridge.
    """

    def minus(a: str, b: str | list[float]) -> list[float]:
        subtracted = times[b] if isinstance(b, str) else b
        return [(x - y) * 1e3 for x, y in zip(times[a], subtracted, strict=True)]

    floor, sync = f"{path}_no_communication", path
    floor_and_raw = [f + r for f, r in zip(times[floor], times["raw_mpi4py"], strict=True)]
    return {
        name: common.summary(values)
        for name, values in {
            "floor": [t * 1e3 for t in times[floor]],
            "own_work": minus(sync, floor_and_raw),
            "handoff": minus(f"{path}_handoff", floor),
            "reduce_in_handoff": minus(f"{path}_handoff_raw_reduce", f"{path}_handoff"),
            "engine_and_bridge": minus(sync, f"{path}_handoff_raw_reduce"),
        }.items()
    }


def main() -> None:
    parser = common.worker_arguments(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 16, 64])
    args = parser.parse_args()
    common.pin_threads()
    gs.init()
    comm = MPI.COMM_WORLD
    results = [measure(size, args.repeats, comm) for size in args.sizes]
    if gs.rank() == 0:
        common.write_result(args.out, {"ranks": gs.size(), "sizes": results})


if __name__ == "__main__":
    main()
