"""Runs an engine call on TensorFlow tensors, in eager mode, in ``tf.function`` and in v1 graphs.

Eagerly, the engine is called at once on the tensors' numpy values. In a graph, the call becomes
one stateful ``tf.numpy_function`` op. Inside ``tf.function``, TensorFlow runs stateful ops in
program order, so every rank issues its collectives in the order the program wrote them. A v1
graph gives no such order within one ``Session.run``; its ops are named after their place in the
graph (the same on every rank) and marked ``may_wait``, so the engine's coordinator settles their
order between ranks at run time.
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
) -> list[tf.Tensor]:
    """Runs ``engine_call`` on ``inputs``; returns tensors.

    The outputs have the inputs' dtypes and shapes unless ``output_dtypes`` and
    ``output_shapes`` say otherwise. ``elementwise`` says the engine call treats its arrays
    element by element (allreduce, broadcast), so that in a graph small tensors may travel
    packed (see ``packing``).
    """
    if output_dtypes is None:
        output_dtypes = [t.dtype for t in inputs]
    if output_shapes is None:
        output_shapes = [t.shape for t in inputs]
    if tf.executing_eagerly():
        outputs = _translating_errors(engine_call)(
            [t.numpy() for t in inputs], name or kind, False, None
        )
        return [tf.convert_to_tensor(o) for o in outputs]

    _refuse_xla(kind)
    may_wait = in_v1_graph()
    key = _v1_graph_key(kind) if may_wait else (name or kind)
    packing = Packing.of(inputs) if elementwise else None
    carried = list(inputs) if packing is None else packing.carried
    if packing is not None:
        output_dtypes = [t.dtype for t in carried]
        output_shapes = [t.shape for t in carried]

    def run(*arrays: np.ndarray) -> list[np.ndarray]:
        _release_adopted_arrays()
        specs = packing.tensor_specs(arrays) if packing is not None else None
        return list(_translating_errors(engine_call)(list(arrays), key, may_wait, specs))

    outputs = tf.numpy_function(
        run, carried, list(output_dtypes), stateful=True, name=f"gradsync_{kind}"
    )
    if not isinstance(outputs, (list, tuple)):
        outputs = [outputs]
    for output, shape in zip(outputs, output_shapes, strict=True):
        output.set_shape(shape)
    return packing.unpack(outputs) if packing is not None else list(outputs)
