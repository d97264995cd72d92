"""Item 10: real models, gradsync against Horovod, in Horovod's own environment.

Run in ``build/venv-horovod`` (``make bench-horovod``: TensorFlow 2.16, Horovod 0.28.1 on
Gloo, gradsync installed beside it) with ``TF_USE_LEGACY_KERAS=1``, since Horovod 0.28.1 has
no Keras 3 support: ``tf.keras`` is then tf_keras. A ``tf.keras.applications`` model on
random 64x64 images, 2 ranks, one launch per framework, model, mode and N; in each launch
every rank times, taking turns, the plain local step (the no-communication ideal) and the
distributed step, over whole windows of N micro-batches. Modes: ``tape``
(``DistributedGradientTape`` in ``tf.function``), ``fit`` (Keras ``fit`` with the Keras
``DistributedOptimizer``; each timed call is one ``fit`` of several windows) and ``graph`` (a
v1 graph with ``tf.compat.v1.train`` SGD wrapped in ``DistributedOptimizer``).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import common  # noqa: E402, I001 - pins threads before TensorFlow loads
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

IMAGE, CLASSES, LEARNING_RATE = 64, 10, 1e-3
MODELS = {"mobilenet_v2": ("MobileNetV2", 16), "resnet50": ("ResNet50", 8)}


def framework_module(name: str):
    if name == "horovod":
        import horovod.tensorflow as module
    else:
        import gradsync.tensorflow as module
    module.init()
    return module


def batch(model_name: str, rank: int):
    size = MODELS[model_name][1]
    rng = np.random.default_rng(rank)
    x = rng.random((size, IMAGE, IMAGE, 3), dtype=np.float32)
    y = rng.integers(0, CLASSES, size).astype(np.int64)
    return x, y


def build_model(model_name: str):
    constructor = getattr(tf.keras.applications, MODELS[model_name][0])
    return constructor(weights=None, input_shape=(IMAGE, IMAGE, 3), classes=CLASSES)


def tape_steps(hvd, model_name: str, n: int) -> dict:
    x, y = batch(model_name, hvd.rank())
    model = build_model(model_name)
    variables = model.trainable_variables
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy()
    plain_optimizer = tf.keras.optimizers.SGD(LEARNING_RATE)
    optimizer = tf.keras.optimizers.SGD(LEARNING_RATE)

    @tf.function
    def plain():
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        plain_optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))

    @tf.function
    def distributed():
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        # Horovod 0.28.1's tape takes no backward_passes_per_step: N > 1 is gradsync's only.
        options = {"backward_passes_per_step": n, "average_aggregated_gradients": True}
        tape = hvd.DistributedGradientTape(tape, **(options if n > 1 else {}))
        grads_and_vars = list(zip(tape.gradient(loss, variables), variables, strict=True))
        if n == 1:
            optimizer.apply_gradients(grads_and_vars)
        else:
            tape.apply_gradients(optimizer, grads_and_vars)

    return {"plain": plain, "distributed": distributed}


#: Windows of N steps in each timed ``fit`` call, so that the call's own setup is a small part.
FIT_WINDOWS = 4


def fit_steps(hvd, model_name: str, n: int) -> dict:
    if hvd.__name__.startswith("horovod"):
        import horovod.tensorflow.keras as hvd_keras
    else:
        import gradsync.tensorflow.keras as hvd_keras
    x, y = batch(model_name, hvd.rank())
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    steps = FIT_WINDOWS * n

    def fit_with(optimizer):
        model = build_model(model_name)
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
        return lambda: model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)

    optimizer = hvd_keras.DistributedOptimizer(
        tf.keras.optimizers.SGD(LEARNING_RATE),
        backward_passes_per_step=n,
        average_aggregated_gradients=True,
    )
    return {
        "plain": fit_with(tf.keras.optimizers.SGD(LEARNING_RATE)),
        "distributed": fit_with(optimizer),
    }


def graph_steps(hvd, model_name: str, n: int) -> dict:
    tf.compat.v1.disable_eager_execution()
    x, y = batch(model_name, hvd.rank())
    model = build_model(model_name)
    loss = tf.reduce_mean(
        tf.keras.losses.sparse_categorical_crossentropy(tf.constant(y), model(tf.constant(x)))
    )
    plain_op = tf.compat.v1.train.GradientDescentOptimizer(LEARNING_RATE).minimize(loss)
    optimizer = hvd.DistributedOptimizer(
        tf.compat.v1.train.GradientDescentOptimizer(LEARNING_RATE),
        backward_passes_per_step=n,
        average_aggregated_gradients=True,
    )
    train_op = optimizer.minimize(loss)
    session = tf.compat.v1.Session(config=common.session_config())
    session.run(tf.compat.v1.global_variables_initializer())
    session.run(tf.compat.v1.local_variables_initializer())  # Horovod keeps its accumulators there
    return {"plain": lambda: session.run(plain_op), "distributed": lambda: session.run(train_op)}


def main() -> None:
    parser = common.worker_arguments(__doc__)
    parser.add_argument("--framework", choices=["gradsync", "horovod"], required=True)
    parser.add_argument("--model", choices=sorted(MODELS), default="mobilenet_v2")
    parser.add_argument("--mode", choices=["tape", "fit", "graph"], default="tape")
    parser.add_argument("--passes", type=int, default=1, help="backward passes per step")
    parser.add_argument("--windows", type=int, default=2, help="windows of N per repeat")
    args = parser.parse_args()
    common.pin_threads()
    hvd = framework_module(args.framework)
    build = {"tape": tape_steps, "fit": fit_steps, "graph": graph_steps}[args.mode]
    steps = build(hvd, args.model, args.passes)
    from mpi4py import MPI

    # A timed call is one step, or for fit one fit of FIT_WINDOWS windows.
    count, warmup = args.windows * args.passes, 2 * args.passes
    steps_per_call = 1
    if args.mode == "fit":
        count, warmup, steps_per_call = 1, 1, FIT_WINDOWS * args.passes
    sync = MPI.COMM_WORLD.Barrier if args.framework == "gradsync" else None
    times = common.interleaved(steps, args.repeats, count, sync=sync, warmup=warmup)
    images = MODELS[args.model][1] * hvd.size() * steps_per_call
    rates = {name: [images / t for t in values] for name, values in times.items()}
    if hvd.rank() == 0:
        common.write_result(
            args.out,
            {
                "framework": args.framework,
                "model": args.model,
                "mode": args.mode,
                "n": args.passes,
                "images_per_second": {k: common.summary(v) for k, v in rates.items()},
                "fraction_of_ideal": common.ratios(rates["distributed"], rates["plain"]),
            },
        )


if __name__ == "__main__":
    main()
