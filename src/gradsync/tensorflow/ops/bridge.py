"""Runs an engine call on TensorFlow tensors, in eager mode, in ``tf.function`` and in v1 graphs.

Eagerly, the engine is called at once on the tensors' numpy values. Inside ``tf.function``, the
call becomes one stateful ``tf.numpy_function`` op; TensorFlow runs stateful ops in program
order, so every rank issues its collectives in the order the program wrote them.

A v1 graph gives no such order within one ``Session.run``: its ops are named after their place
in the graph (the same on every rank) and marked ``may_wait``, so the engine's coordinator
settles their order between ranks at run time. For that, every collective of the run must be
issued even while others wait, whatever the size of TensorFlow's thread pool; so in a v1 graph
the engine call runs in the map function of a one-element dataset read by
``DatasetToSingleElement``, an asynchronous kernel: it waits on a tf.data thread of its own and
holds none of TensorFlow's inter-op threads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.python.ops import control_flow_util

from gradsync.engine import CollectiveMismatchError, TensorSpec
from gradsync.tensorflow.ops.errors import as_tensorflow_error
from gradsync.tensorflow.ops.packing import Packing

#: ``engine_call(arrays, name, may_wait, tensor_specs)``: ``tensor_specs`` is None, or the
#: dtype and shape of each tensor the arrays hold when small ones travel packed.
EngineCall = Callable[
    [list[np.ndarray], str, bool, "list[TensorSpec] | None"], Sequence[np.ndarray]
]


def in_v1_graph() -> bool:
    """Whether ops are being built into a v1 graph (run later by a Session)."""
    return not tf.executing_eagerly() and not tf.compat.v1.executing_eagerly_outside_functions()


def _v1_graph_key(kind: str) -> str:
    """A name for a new op that is unique in its graph and the same on every rank."""
    graph = tf.compat.v1.get_default_graph()
    path = [graph.unique_name(f"gradsync_{kind}", mark_as_used=True)]
    while getattr(graph, "outer_graph", None) is not None:
        path.append(graph.name)
        graph = graph.outer_graph
    return "/".join(reversed(path))


def _refuse_xla(kind: str) -> None:
    """Collectives call MPI through ``tf.numpy_function``, which XLA cannot compile: say so while
    the function is traced, on every rank alike, instead of failing later inside XLA."""
    graph = tf.compat.v1.get_default_graph()
    if control_flow_util.GraphOrParentsInXlaContext(graph):
        raise ValueError(
            f"gradsync's {kind} cannot run inside a function compiled with XLA: it calls MPI "
            "through tf.numpy_function, which XLA cannot compile. Keras compiles the train step "
            "with XLA by default on machines with a GPU: pass jit_compile=False to "
            "model.compile(). For your own tf.function, leave jit_compile off for the function "
            "that reduces the gradients."
        )


def _release_adopted_arrays() -> None:
    """Lets TensorFlow drop the engine's arrays that it adopted as tensors and is done with.

    TensorFlow gives those references back only at certain points, one of them the deletion of
    an eager tensor; until then the engine sees its fusion buffers as still in use and takes
    new ones (one more gradient's worth of memory). A throwaway eager tensor brings that point
    forward. A v1 Session does the same at the start of every run.
    """
    if tf.executing_eagerly():
        tf.constant(0)


def _translating_errors(engine_call: EngineCall) -> EngineCall:
    def call(*args):
        try:
            return engine_call(*args)
        except CollectiveMismatchError as error:
            raise as_tensorflow_error(error) from None

    return call


def call_engine(
    engine_call: EngineCall,
    inputs: Sequence[tf.Tensor],
    kind: str,
    name: str | None,
    output_dtypes: Sequence[tf.DType] | None = None,
    output_shapes: Sequence[tf.TensorShape] | None = None,
    elementwise: bool = False,
    gradient: Callable[[list[tf.Tensor]], list[tf.Tensor]] | None = None,
) -> list[tf.Tensor]:
    """Runs ``engine_call`` on ``inputs``; returns tensors.

    The outputs have the inputs' dtypes and shapes unless ``output_dtypes`` and
    ``output_shapes`` say otherwise. ``elementwise`` says the engine call treats its arrays
    element by element (allreduce, broadcast), so that small tensors may travel packed (see
    ``packing``). Such a call may be made differentiable by ``gradient``, which maps the
    gradients of its outputs to those of its inputs, element by element too: it is then
    applied to the packed tensors, so that a model's many small gradients cost one op.
    """
    # Packed alike in every mode, so that an eager call and a graph's meet with one layout.
    packing = Packing.of(inputs) if elementwise else None
    carried = packing.carried if packing is not None else list(inputs)
    if packing is not None or output_dtypes is None:
        output_dtypes = [t.dtype for t in carried]
    if packing is not None or output_shapes is None:
        output_shapes = [t.shape for t in carried]

    def communicate(tensors: list[tf.Tensor]) -> list[tf.Tensor]:
        return _communicate(engine_call, tensors, kind, name, packing, output_dtypes, output_shapes)

    if gradient is not None:

        @tf.custom_gradient
        def differentiable(*tensors):
            return communicate(list(tensors)), lambda *upstream: gradient(list(upstream))

        outputs = list(differentiable(*carried))
    else:
        outputs = communicate(carried)
    return packing.unpack(outputs) if packing is not None else outputs


def _communicate(
    engine_call: EngineCall,
    carried: list[tf.Tensor],
    kind: str,
    name: str | None,
    packing: Packing | None,
    output_dtypes: Sequence[tf.DType],
    output_shapes: Sequence[tf.TensorShape],
) -> list[tf.Tensor]:
    """``engine_call`` on the tensors that cross to the engine, in the current mode."""
    if tf.executing_eagerly():
        arrays = [t.numpy() for t in carried]
        specs = packing.tensor_specs(arrays) if packing is not None else None
        outputs = _translating_errors(engine_call)(arrays, name or kind, False, specs)
        return [tf.convert_to_tensor(o) for o in outputs]

    _refuse_xla(kind)
    may_wait = in_v1_graph()
    key = _v1_graph_key(kind) if may_wait else (name or kind)

    def run(*arrays: np.ndarray) -> list[np.ndarray]:
        _release_adopted_arrays()
        specs = packing.tensor_specs(arrays) if packing is not None else None
        return list(_translating_errors(engine_call)(list(arrays), key, may_wait, specs))

    if may_wait:
        outputs = _run_without_holding_a_thread(run, carried, output_dtypes, output_shapes, kind)
    else:
        outputs = tf.numpy_function(
            run, carried, list(output_dtypes), stateful=True, name=f"gradsync_{kind}"
        )
        if not isinstance(outputs, (list, tuple)):
            outputs = [outputs]
    for output, shape in zip(outputs, output_shapes, strict=True):
        output.set_shape(shape)
    return list(outputs)


def _run_without_holding_a_thread(
    run: Callable[..., list[np.ndarray]],
    carried: Sequence[tf.Tensor],
    output_dtypes: Sequence[tf.DType],
    output_shapes: Sequence[tf.TensorShape],
    kind: str,
) -> list[tf.Tensor]:
    """``run`` on ``carried`` in a v1 graph, inside the map function of a one-element dataset
    read by ``DatasetToSingleElement``: an asynchronous kernel, which hands the work to
    tf.data's thread and frees TensorFlow's inter-op thread at once."""
    dtypes = list(output_dtypes)
    shapes = [tf.TensorShape(shape) for shape in output_shapes]

    # A dataset element needs a component: a collective without inputs (barrier) gets one.
    components = list(carried) or [tf.zeros([], tf.int32)]

    def call(*tensors):
        results = tf.numpy_function(run, list(tensors[: len(carried)]), dtypes, stateful=True)
        results = results if isinstance(results, (list, tuple)) else [results]
        for result, shape in zip(results, shapes, strict=True):
            result.set_shape(shape)
        return results

    specs = [tf.TensorSpec(t.shape, t.dtype) for t in components]
    function = tf.function(call).get_concrete_function(*specs)
    dataset = tf.raw_ops.TensorDataset(
        components=components, output_shapes=[t.shape for t in components]
    )
    dataset = tf.raw_ops.MapDataset(
        input_dataset=dataset,
        other_arguments=[],
        f=function,
        output_types=dtypes,
        output_shapes=shapes,
        use_inter_op_parallelism=False,
    )
    return list(
        tf.raw_ops.DatasetToSingleElement(
            dataset=dataset, output_types=dtypes, output_shapes=shapes, name=f"gradsync_{kind}"
        )
    )
