"""Horovod's TensorFlow API in gradsync: every public name and parameter, and the collectives
beyond allreduce checked against numpy on 2 and 3 ranks."""

import inspect
import json
from pathlib import Path

import numpy as np
import pytest

from support import run_ranks

WORKER = Path(__file__).parent / "workers" / "horovod_api_worker.py"
HOROVOD_API = json.loads((Path(__file__).parent / "data" / "horovod_0_28_1_api.json").read_text())

#: Horovod names that are not part of this API, and why.
NOT_OFFERED = {
    "elastic": "elastic training is its own piece of work (gradsync.tensorflow.elastic)",
}
MODULES = {
    "horovod.tensorflow": "gradsync.tensorflow",
    "horovod.tensorflow.keras": "gradsync.tensorflow.keras",
    "horovod.tensorflow.keras.callbacks": "gradsync.tensorflow.keras.callbacks",
}


def _parameters(obj):
    target = obj.__init__ if inspect.isclass(obj) else obj
    names = list(inspect.signature(target).parameters)
    return [n for n in names if n != "self"]


@pytest.mark.parametrize("horovod_module", sorted(MODULES))
def test_every_horovod_name_exists_and_takes_horovods_parameters(horovod_module):
    import importlib

    module = importlib.import_module(MODULES[horovod_module])
    missing, wrong = [], []
    for name, entry in HOROVOD_API[horovod_module].items():
        if name in NOT_OFFERED:
            continue
        if not hasattr(module, name):
            missing.append(name)
            continue
        wanted = [p for p in entry["parameters"] if p not in ("args", "kwargs")]
        if entry["kind"] in ("function", "class") and wanted:
            ours = _parameters(getattr(module, name))
            if ours[: len(wanted)] != wanted and not set(wanted) <= set(ours):
                wrong.append(f"{name}: Horovod {wanted}, gradsync {ours}")
            elif ours[: len(wanted)] != wanted:
                wrong.append(f"{name}: order differs: Horovod {wanted}, gradsync {ours}")
    assert not missing, f"missing in {MODULES[horovod_module]}: {missing}"
    assert not wrong, "\n".join(wrong)


def test_wrapped_optimizer_and_tape_offer_horovods_extras():
    import keras
    import tensorflow as tf

    import gradsync.tensorflow as gs
    import gradsync.tensorflow.keras as gsk

    gs.init()  # a world of one process
    optimizer = gsk.DistributedOptimizer(keras.optimizers.SGD(0.1), backward_passes_per_step=2)
    for method in [*HOROVOD_API["keras_distributed_optimizer_methods"], "_compute_gradients"]:
        if method == "compute_gradients":
            continue  # a Keras 2 optimizer method; Keras 3 optimizers have none
        assert callable(getattr(optimizer, method)), method
    assert optimizer._agg_helper is not None
    variable = tf.Variable([0.0])
    optimizer.apply_gradients([(tf.constant([1.0]), variable)])
    assert int(optimizer._agg_helper.counter.numpy()) == 1  # one of 2 backward passes so far
    pairs = optimizer._compute_gradients(lambda: tf.reduce_sum(variable * 3.0), [variable])
    assert float(pairs[0][0].numpy()[0]) == 3.0
    tape = gs.DistributedGradientTape(tf.GradientTape())
    assert callable(tape.register_local_source)


def _per_rank(dtype, r, rows=2):
    return (np.arange(rows * 3).reshape(rows, 3) * (r + 1) - 2 * r - 3).astype(dtype)


def _block(rows, ranks, r):
    base, extra = divmod(rows, ranks)
    start = r * base + min(r, extra)
    return slice(start, start + base + (1 if r < extra else 0))


@pytest.mark.parametrize(
    "mode, ranks", [("eager", 2), ("function", 2), ("graph", 2), ("eager", 3), ("graph", 3)]
)
def test_horovod_collectives_match_numpy(tmp_path, mode, ranks):
    reports = run_ranks(WORKER, ranks, tmp_path, mode, str(ranks))
    for r, result in enumerate(reports):
        values, errors = result["values"], result["errors"]
        for dtype in ["float32", "int32"]:
            stack = np.stack([_per_rank(dtype, q) for q in range(ranks)])
            np.testing.assert_array_equal(values[f"Min_{dtype}"], stack.min(0))
            np.testing.assert_array_equal(values[f"Max_{dtype}"], stack.max(0))
            np.testing.assert_array_equal(values[f"Product_{dtype}"], stack.prod(0))
            scaled_inputs = (stack * 0.5).astype(dtype) if dtype == "int32" else stack * 0.5
            scaled = scaled_inputs.sum(0) * 1.5
            if dtype == "int32":  # truncated toward zero, as C (and Horovod) convert
                np.testing.assert_array_equal(values[f"scaled_{dtype}"], np.trunc(scaled))
                np.testing.assert_array_equal(
                    values[f"average_{dtype}"], np.trunc(stack.sum(0) / ranks)
                )
                assert result["dtypes"][f"average_{dtype}"] == "int32"
            else:
                np.testing.assert_allclose(values[f"scaled_{dtype}"], scaled, rtol=1e-6)
        total64 = np.sum([_per_rank("float64", q) for q in range(ranks)], 0)
        np.testing.assert_allclose(values["average_true"], total64 / ranks)
        np.testing.assert_array_equal(values["average_false"], total64)
        np.testing.assert_array_equal(
            values["grouped_max_1"], np.max([_per_rank("int64", q) for q in range(ranks)], 0)
        )
        for rows in [7, 2]:
            total = np.sum([_per_rank("float32", q, rows) for q in range(ranks)], 0)
            mine = total[_block(rows, ranks, r)]
            np.testing.assert_allclose(
                np.reshape(values[f"reducescatter_sum_{rows}"], (-1, 3)), mine
            )
            np.testing.assert_allclose(
                np.reshape(values[f"reducescatter_average_{rows}"], (-1, 3)),
                mine / ranks,
                rtol=1e-6,
            )
        for index, rows in enumerate([5, 4]):
            total = np.sum([_per_rank("float64", q, rows) for q in range(ranks)], 0) * 2.0
            np.testing.assert_allclose(
                np.reshape(values[f"grouped_reducescatter_{index}"], (-1, 3)),
                total[_block(rows, ranks, r)],
            )
        even_rows = [np.arange(ranks * 2 * 2).reshape(ranks * 2, 2) + 100 * q for q in range(ranks)]
        np.testing.assert_array_equal(
            values["alltoall_even"], np.concatenate([e[2 * r : 2 * r + 2] for e in even_rows])
        )
        sent = {q: np.arange(q + 2) + 10 * q for q in range(ranks)}
        if r == 0:
            expected = [sent[q][0] for q in range(ranks)]
        elif r == ranks - 1:
            expected = np.concatenate([sent[q][1:] for q in range(ranks)]).tolist()
        else:
            expected = []
        assert values["alltoall_splits"] == expected
        received = (
            [1] * ranks
            if r == 0
            else ([q + 1 for q in range(ranks)] if r == ranks - 1 else [0] * ranks)
        )
        assert values["alltoall_splits_received"] == received
        np.testing.assert_array_equal(
            values["grouped_allgather_0"],
            np.concatenate([np.full((q + 1, 2), q) for q in range(ranks)]),
        )
        assert values["grouped_allgather_1"] == [10 * q for q in range(ranks)]
        # Gradients as Horovod's (measured on Horovod 0.28.1): allgather's and broadcast's
        # average the upstream gradients over ranks; reducescatter's (Sum) gathers them and
        # multiplies by the number of ranks.
        weight_mean = sum(q + 1.0 for q in range(ranks)) / ranks
        np.testing.assert_allclose(values["gradient_allgather"], np.full((2, 3), weight_mean))
        np.testing.assert_allclose(
            values["gradient_broadcast"], np.full((2, 3), weight_mean if r == ranks - 1 else 0.0)
        )
        owners = np.concatenate([[q] * len(range(7)[_block(7, ranks, q)]) for q in range(ranks)])
        np.testing.assert_array_equal(
            values["gradient_reducescatter"],
            np.repeat((owners + 1.0)[:, None] * ranks, 3, axis=1),
        )
        np.testing.assert_array_equal(
            values["gradient_alltoall"],
            np.repeat(np.repeat(np.arange(1.0, ranks + 1), 2)[:, None], 2, axis=1),
        )
        assert (values["rank_op"], values["size_op"], values["size_op_members"]) == (r, ranks, 2)
        assert values["included_op"] == int(r in (0, ranks - 1))
        if r in (0, ranks - 1):
            assert values["members_sum"] == [float(ranks - 1)]
        else:
            # A ValueError; raised inside a graph's op, TensorFlow reports InvalidArgumentError.
            assert errors["excluded"]["class"] in ("ValueError", "InvalidArgumentError")
            assert f"rank {r} is not in ProcessSet" in errors["excluded"]["message"]
        np.testing.assert_array_equal(values["broadcast_in_place"], _per_rank("float32", ranks - 1))
        assert values["allgather_object"] == [{"rank": q} for q in range(ranks)]
        assert values["broadcast_object_fn"] == [ranks - 1] * 2
        assert values["homogeneous"] is True

        mismatch = errors["shape_mismatch"]
        assert "rank 1 sent shape (3,), rank 0 sent (2,)" in mismatch["message"]
        # Horovod raises tf.errors.FailedPreconditionError; TensorFlow reports an error raised
        # inside a graph's op as UnknownError, keeping the message.
        assert mismatch["failed_precondition"] == (mode == "eager")
        for label, text in [
            ("dtype_mismatch", "rank 1 sent dtype float64, rank 0 sent float32"),
            ("root_mismatch", "rank 1 sent root_rank 1, rank 0 sent 0"),
        ]:
            assert text in errors[label]["message"], errors[label]
            assert errors[label]["failed_precondition"] == (mode == "eager")
        refused = errors["rank_dependent_splits"]
        assert "rank 1 refused its arguments: ValueError: alltoall splits" in refused["message"]
        assert refused["failed_precondition"] == (mode == "eager")
        assert "root_rank=" in errors["root_out_of_range"]["message"]
        assert errors["slices_with_max"]["class"] == "NotImplementedError"
        assert "supersedes average" in errors["average_and_op"]["message"]
        assert values["after_errors"] == [sum(q + 1.0 for q in range(ranks))]

        if mode == "graph":
            total = sum(q + 1.0 for q in range(ranks))
            assert values["many_in_one_run"] == [[total] * 21] * 2
            stall = errors["stall"]
            assert "ranks issued different collectives" in stall["message"]
            assert stall["seconds"] < 20
            assert values["after_stall"] == [float(ranks)]
        if mode == "eager":
            active = range(ranks - 1)
            # The joined rank contributes zeros; Average still divides by the world's size.
            if r != ranks - 1:
                np.testing.assert_allclose(
                    values["joined_sum"], [sum(q + 1.0 for q in active), 2.0 * len(active)]
                )
                np.testing.assert_allclose(
                    values["joined_average"],
                    [sum(q + 1.0 for q in active) / ranks, 2.0 * len(active) / ranks],
                    rtol=1e-6,
                )
            assert values["join"] == ranks - 2  # the highest of the ranks that joined last
            assert values["after_join"] == [float(ranks)]
    if mode == "eager":
        trace = json.loads((tmp_path / "timeline.json").read_text())["traceEvents"]
        spans = [e for e in trace if e.get("cat") == "allreduce 'timed'"]
        assert {e["pid"] for e in spans} == set(range(ranks))
        assert {"queued", "communication"} <= {e["name"] for e in spans}


def test_keras_modules_serve_their_keras():
    """horovod.keras programs get Keras 3 callbacks from gradsync.keras; tf_keras programs get
    tf_keras callbacks from gradsync.tensorflow.tf_keras; gradsync.tensorflow.keras follows
    tf.keras (Keras 3 here, as TF_USE_LEGACY_KERAS is not set)."""
    import keras
    import tf_keras

    import gradsync.keras
    import gradsync.tensorflow.keras
    import gradsync.tensorflow.tf_keras

    for module, base in [
        (gradsync.keras, keras.callbacks.Callback),
        (gradsync.tensorflow.keras, keras.callbacks.Callback),
        (gradsync.tensorflow.tf_keras, tf_keras.callbacks.Callback),
    ]:
        for name in HOROVOD_API["horovod.tensorflow.keras.callbacks"]:
            callback = getattr(module.callbacks, name)
            if isinstance(callback, type):
                assert issubclass(callback, base), (module.__name__, name)
        wrapped = module.DistributedOptimizer(
            (tf_keras if module is gradsync.tensorflow.tf_keras else keras).optimizers.SGD(0.1)
        )
        assert callable(wrapped.register_local_var)
