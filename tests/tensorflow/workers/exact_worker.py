"""Exact accumulation: every case of one launch, each against a single-process reference.

A case is a schedule of *rounds*: in each round every rank contributes a list of
micro-batches (a full window, the partial window it flushes, or nothing once its data ran
out). The distributed run trains on this rank's micro-batches in order; the reference, in
this same process, takes one plain optimizer step per round on the concatenation of every
rank's micro-batches of that round, with the mean loss over all their items. Micro-batches
have different sizes per step and per rank, and a token mask whose count differs too.
Reports, per case, the distributed weights and the reference's (and the case's extra facts).
Usage: out_dir
"""

import sys

import keras
import numpy as np
import tensorflow as tf
from exact_worker_data import B0, CLASSES, FEATURES, TOKENS, W0, concatenated, micro_batch

import gradsync.tensorflow as gs
import gradsync.tensorflow.keras as gs_keras
import gradsync.tensorflow.tf_keras as gs_tf_keras

from support import report

gs.init()
RANK, SIZE = gs.rank(), gs.size()


def summed_loss(w, b, x, y, mask):
    logits = tf.einsum("ntf,fc->ntc", x, w) + b
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
    return tf.reduce_sum(losses * mask)


def make_optimizer(name: str):
    return keras.optimizers.SGD(0.5) if name == "sgd" else keras.optimizers.Adam(0.05)


def reference(rounds, optimizer_name: str):
    """One plain step per round on every rank's micro-batches of the round, mean loss."""
    w, b = tf.Variable(W0), tf.Variable(B0)
    optimizer = make_optimizer(optimizer_name)
    for contributions in rounds:
        batches = [batch for per_rank in contributions for batch in per_rank]
        if not batches:
            continue
        x, y, mask = concatenated(batches)
        with tf.GradientTape() as tape:
            loss = summed_loss(w, b, x, y, mask) / max(mask.sum(), 1e-30)
        optimizer.apply_gradients(zip(tape.gradient(loss, [w, b]), [w, b], strict=True))
    return [w.numpy(), b.numpy()]


def windows(case: int, passes: list[int], extra: list[int] | None = None):
    """Rounds of full windows with the given N each, then (``extra[r]`` micro-batches on
    rank r) one round of partial windows."""
    rounds, index = [], 0
    for n in passes:
        rounds.append([[micro_batch(case, index + k, r) for k in range(n)] for r in range(SIZE)])
        index += n
    if extra is not None:
        rounds.append(
            [[micro_batch(case, index + k, r) for k in range(extra[r])] for r in range(SIZE)]
        )
    return rounds


SIGNATURE = [
    tf.TensorSpec([None, TOKENS, FEATURES], tf.float32),
    tf.TensorSpec([None, TOKENS], tf.int64),
    tf.TensorSpec([None, TOKENS], tf.float32),
]
results = {}


def tape_case(case: int, optimizer_name: str, item_weighted: bool):
    """DistributedGradientTape in a tf.function, N = 3: three windows, then a partial one
    that each rank fills differently (rank r holds r % 3 micro-batches) and flushes."""
    extra = [r % 3 for r in range(SIZE)]
    rounds = windows(case, [3, 3, 3], extra)
    w, b = tf.Variable(W0), tf.Variable(B0)
    optimizer = make_optimizer(optimizer_name)
    options = dict(
        backward_passes_per_step=3,
        average_aggregated_gradients=True,
        count_steps="updates",
        item_weighted=item_weighted,
    )

    @tf.function(input_signature=SIGNATURE)
    def step(x, y, mask):
        with tf.GradientTape() as plain:
            loss = summed_loss(w, b, x, y, mask)
            if not item_weighted:  # the usual mean loss of each micro-batch
                loss = loss / tf.maximum(tf.reduce_sum(mask), 1e-30)
        tape = gs.DistributedGradientTape(plain, **options)
        items = tf.reduce_sum(mask) if item_weighted else None
        grads = tape.gradient(loss, [w, b], items=items)
        tape.apply_gradients(optimizer, zip(grads, [w, b], strict=True))

    for contributions in rounds:
        for x, y, mask in contributions[RANK]:
            step(x, y, mask)
    applied = gs.DistributedGradientTape(tf.GradientTape(), **options).flush(optimizer, [w, b])
    return {
        "weights": [w.numpy().tolist(), b.numpy().tolist()],
        "reference": [v.tolist() for v in reference(rounds, optimizer_name)],
        "flush_updates": applied,
        "iterations": int(optimizer.iterations.numpy()),
    }


def item_weighted_keras_optimizer(passes: int):
    return gs.DistributedOptimizer(
        make_optimizer("adam"),
        backward_passes_per_step=passes,
        average_aggregated_gradients=True,
        item_weighted=True,
        count_steps="updates",
    )


def item_weighted_step(w, b, optimizer, traces=None):
    """A tf.function micro-step on the summed loss, giving the optimizer its item count;
    appends to ``traces`` each time it is traced."""

    @tf.function(input_signature=SIGNATURE)
    def step(x, y, mask):
        if traces is not None:
            traces.append(1)
        with tf.GradientTape() as tape:
            loss = summed_loss(w, b, x, y, mask)
        grads = tape.gradient(loss, [w, b])
        optimizer.apply_gradients(zip(grads, [w, b], strict=True), items=tf.reduce_sum(mask))

    return step


def keras_changing_passes_case(case: int):
    """Keras 3 DistributedOptimizer with Adam, item-weighted, in a tf.function: two windows
    at N = 2, then N set to 4 for two more; the step is traced once."""
    rounds = windows(case, [2, 2, 4, 4])
    w, b = tf.Variable(W0), tf.Variable(B0)
    optimizer = item_weighted_keras_optimizer(2)
    traces = []
    step = item_weighted_step(w, b, optimizer, traces)

    traces_before = None
    for i, contributions in enumerate(rounds):
        if i == 2:
            traces_before = len(traces)
            optimizer.backward_passes_per_step = 4
        for x, y, mask in contributions[RANK]:
            step(x, y, mask)
    return {
        "weights": [w.numpy().tolist(), b.numpy().tolist()],
        "reference": [v.tolist() for v in reference(rounds, "adam")],
        "traces_before_change": traces_before,
        "traces": len(traces),
        "iterations": int(optimizer.iterations.numpy()),
        "passes": optimizer.backward_passes_per_step,
    }


def resume_case(case: int, directory: str):
    """Item-weighted Keras optimizer, N = 3 then 2: a checkpoint taken mid-window (one
    micro-step into the third window, after N changed) and restored into new objects
    finishes with the weights of the uninterrupted run."""
    rounds = windows(case, [3, 3, 2, 2])
    stream = [batch for contributions in rounds for batch in contributions[RANK]]
    stop = 7

    def build():
        w, b = tf.Variable(W0), tf.Variable(B0)
        optimizer = item_weighted_keras_optimizer(3)
        step = item_weighted_step(w, b, optimizer)
        checkpoint = tf.train.Checkpoint(w=w, b=b, optimizer=optimizer)
        return w, b, optimizer, step, checkpoint

    w, b, optimizer, step, checkpoint = build()
    path = None
    for i, batch in enumerate(stream):
        if i == 6:
            optimizer.backward_passes_per_step = 2
        if i == stop:
            path = checkpoint.write(f"{directory}/rank{RANK}")
        step(*batch)
    full = [w.numpy().tolist(), b.numpy().tolist()]

    w, b, optimizer, step, checkpoint = build()
    step(*stream[0])  # creates the optimizer's and the aggregator's state to restore into
    checkpoint.read(path).assert_consumed()
    restored_count = int(optimizer._gradsync_aggregator.counter.numpy())
    for batch in stream[stop:]:
        step(*batch)
    return {
        "weights": [w.numpy().tolist(), b.numpy().tolist()],
        "uninterrupted": full,
        "reference": [v.tolist() for v in reference(rounds, "adam")],
        "restored_counter": restored_count,
        "restored_passes": optimizer.backward_passes_per_step,
    }


def fit_rounds(batches_per_rank, passes):
    """The rounds ``fit`` takes with an AggregationCallback: full windows of ``passes``
    batches, then each rank's partial window (flushed), once per epoch."""
    rounds = []
    per_rank = [
        [batches[i : i + passes] for i in range(0, len(batches), passes)]
        for batches in batches_per_rank
    ]
    for i in range(max(len(parts) for parts in per_rank)):
        rounds.append([parts[i] if i < len(parts) else [] for parts in per_rank])
    return rounds


def fit_case(case: int, flavor: str):
    """model.fit with an item-weighted optimizer and AggregationCallback, N = 2, batch 4,
    two epochs: rank r holds 27 - 7 r samples, so the ranks have different numbers of
    batches and short last batches."""
    if flavor == "keras":
        kmod = keras
    else:
        import tf_keras as kmod
    passes, batch = 2, 4
    counts = [27 - 7 * r for r in range(SIZE)]
    data = []
    for r, count in enumerate(counts):
        rng = np.random.default_rng([case, r])
        data.append(
            (
                rng.normal(size=(count, FEATURES)).astype(np.float32),
                rng.integers(0, CLASSES, size=count),
            )
        )

    def model_and_loss():
        model = kmod.Sequential([kmod.Input((FEATURES,)), kmod.layers.Dense(CLASSES)])
        model.layers[0].set_weights([W0, B0])
        return model, kmod.losses.SparseCategoricalCrossentropy(from_logits=True)

    def adam():
        return kmod.optimizers.Adam(0.05)

    model, loss = model_and_loss()
    optimizer = gs.DistributedOptimizer(
        adam(),
        backward_passes_per_step=passes,
        average_aggregated_gradients=True,
        item_weighted=True,
        count_steps="updates",
    )
    model.compile(optimizer=optimizer, loss=loss)
    callback = (gs_keras if flavor == "keras" else gs_tf_keras).callbacks.AggregationCallback()
    x, y = data[RANK]
    model.fit(x, y, batch_size=batch, epochs=2, shuffle=False, verbose=0, callbacks=[callback])

    batches_per_rank = [
        [(xs[i : i + batch], ys[i : i + batch]) for i in range(0, len(xs), batch)]
        for xs, ys in data
    ]
    rounds = fit_rounds(batches_per_rank, passes) * 2
    reference_model, reference_loss = model_and_loss()
    reference_optimizer = adam()
    for contributions in rounds:
        parts = [part for per_rank in contributions for part in per_rank]
        xs = np.concatenate([p[0] for p in parts])
        ys = np.concatenate([p[1] for p in parts])
        with tf.GradientTape() as tape:
            value = reference_loss(ys, reference_model(xs))
        variables = reference_model.trainable_variables
        grads = tape.gradient(value, variables)
        reference_optimizer.apply_gradients(zip(grads, variables, strict=True))
    return {
        "weights": [v.tolist() for v in model.layers[0].get_weights()],
        "reference": [v.tolist() for v in reference_model.layers[0].get_weights()],
        "iterations": int(np.asarray(optimizer.iterations)),
        "rounds": len(rounds),
    }


CASES = {
    "tape_sgd": lambda: tape_case(1, "sgd", item_weighted=True),
    "tape_adam": lambda: tape_case(2, "adam", item_weighted=True),
    "tape_adam_unweighted": lambda: tape_case(2, "adam", item_weighted=False),
    "keras_changing_passes": lambda: keras_changing_passes_case(3),
    "resume": lambda: resume_case(4, sys.argv[1] + "/checkpoints"),
    "fit_keras": lambda: fit_case(5, "keras"),
    "fit_tf_keras": lambda: fit_case(6, "tf_keras"),
}
for name in sys.argv[2:] or CASES:
    results[name] = CASES[name]()
report(sys.argv[1], RANK, results)
