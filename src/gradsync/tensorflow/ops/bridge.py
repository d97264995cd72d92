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

EngineCall = Callable[[list[np.ndarray], str, bool], Sequence[np.ndarray]]


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


def call_engine(
    engine_call: EngineCall,
    inputs: Sequence[tf.Tensor],
    kind: str,
    name: str | None,
    output_dtypes: Sequence[tf.DType] | None = None,
    output_shapes: Sequence[tf.TensorShape] | None = None,
) -> list[tf.Tensor]:
    """Runs ``engine_call(arrays, name, may_wait)`` on ``inputs``; returns tensors.

    The outputs have the inputs' dtypes and shapes unless ``output_dtypes`` and
    ``output_shapes`` say otherwise.
    """
    if output_dtypes is None:
        output_dtypes = [t.dtype for t in inputs]
    if output_shapes is None:
        output_shapes = [t.shape for t in inputs]
    if tf.executing_eagerly():
        outputs = engine_call([t.numpy() for t in inputs], name or kind, False)
        return [tf.convert_to_tensor(o) for o in outputs]

    may_wait = in_v1_graph()
    key = _v1_graph_key(kind) if may_wait else (name or kind)

    def run(*arrays: np.ndarray) -> list[np.ndarray]:
        return list(engine_call(list(arrays), key, may_wait))

    outputs = tf.numpy_function(
        run, list(inputs), list(output_dtypes), stateful=True, name=f"gradsync_{kind}"
    )
    if not isinstance(outputs, (list, tuple)):
        outputs = [outputs]
    for output, shape in zip(outputs, output_shapes, strict=True):
        output.set_shape(shape)
    return list(outputs)
