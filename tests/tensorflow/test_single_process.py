"""A world of one process, without a launcher, and the arguments every rank checks alike."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import gradsync.tensorflow as gs
from gradsync import engine


@pytest.fixture(autouse=True)
def world():
    gs.init()
    yield
    gs.shutdown()


def test_size_one_world_without_launcher():
    assert (gs.rank(), gs.size(), gs.local_rank(), gs.local_size()) == (0, 1, 0, 1)
    assert (gs.cross_rank(), gs.cross_size()) == (0, 1)
    x = tf.constant([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(gs.allreduce(x), x)
    np.testing.assert_array_equal(gs.allreduce(x, op=gs.Sum, postscale_factor=2.0), 2 * x)
    np.testing.assert_array_equal(gs.allgather(x), x)
    np.testing.assert_array_equal(gs.broadcast(x, 0), x)
    assert gs.broadcast_object({"a": 1}) == {"a": 1}


def test_collectives_before_init_raise_clear_error():
    gs.shutdown()
    assert not gs.is_initialized()
    with pytest.raises(gs.NotInitializedError, match="call gradsync.tensorflow.init"):
        gs.allreduce(tf.constant(1.0))
    with pytest.raises(gs.NotInitializedError):
        gs.rank()


@pytest.mark.parametrize("bad", [0, -1, 2.0, 1.5, True, "4", None])
def test_backward_passes_per_step_must_be_positive_integer(bad):
    with pytest.raises(ValueError, match="backward_passes_per_step"):
        gs.DistributedOptimizer(keras.optimizers.SGD(0.1), backward_passes_per_step=bad)
    with pytest.raises(ValueError, match="backward_passes_per_step"):
        gs.DistributedGradientTape(tf.GradientTape(), backward_passes_per_step=bad)
    with pytest.raises(ValueError, match="backward_passes_per_step"):
        gs.LocalGradientAggregationHelperEager(bad, None, False, False)


def test_n_equal_one_creates_no_aggregation_variables():
    optimizer = gs.DistributedOptimizer(keras.optimizers.SGD(0.5))
    w = tf.Variable([1.0, 2.0])
    optimizer.apply_gradients([(tf.constant([1.0, 1.0]), w)])
    np.testing.assert_array_equal(w.numpy(), [0.5, 1.5])
    assert optimizer._gradsync_aggregator.counter is None
    assert optimizer._gradsync_aggregator.accumulators == []


def test_sparse_gradients_need_sparse_as_dense():
    embedding = tf.Variable(np.ones((4, 2), np.float32))

    def sparse_gradient():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.gather(embedding, [1, 3]))
        return tape.gradient(loss, embedding)

    assert isinstance(sparse_gradient(), tf.IndexedSlices)
    refusing = gs.DistributedOptimizer(keras.optimizers.SGD(1.0), backward_passes_per_step=2)
    with pytest.raises(ValueError, match="sparse_as_dense=True"):
        refusing.apply_gradients([(sparse_gradient(), embedding)])
    densifying = gs.DistributedOptimizer(
        keras.optimizers.SGD(1.0), backward_passes_per_step=2, sparse_as_dense=True
    )
    densifying.apply_gradients([(sparse_gradient(), embedding)])
    np.testing.assert_array_equal(embedding.numpy(), np.ones((4, 2)))
    densifying.apply_gradients([(sparse_gradient(), embedding)])
    np.testing.assert_array_equal(embedding.numpy(), [[1, 1], [-1, -1], [1, 1], [-1, -1]])


def test_keras_gradient_accumulation_is_refused():
    with pytest.raises(ValueError, match="gradient_accumulation_steps=4.*backward_passes_per_step"):
        gs.DistributedOptimizer(keras.optimizers.SGD(0.1, gradient_accumulation_steps=4))


def test_two_optimizers_keep_separate_windows():
    first = gs.DistributedOptimizer(keras.optimizers.SGD(1.0), backward_passes_per_step=2)
    second = gs.DistributedOptimizer(keras.optimizers.SGD(1.0), backward_passes_per_step=3)
    a, b = tf.Variable([0.0]), tf.Variable([0.0])
    history = []
    for _ in range(6):
        first.apply_gradients([(tf.constant([1.0]), a)])
        second.apply_gradients([(tf.constant([1.0]), b)])
        history.append((float(a.numpy()[0]), float(b.numpy()[0])))
    assert history == [(0, 0), (-2, 0), (-2, -3), (-4, -3), (-4, -3), (-6, -6)]


@pytest.mark.parametrize("none_at", [[0], [1], [2], [0, 2], [0, 1]])
def test_none_gradients_stay_in_place(none_at):
    variables = [tf.Variable([float(i + 1)]) for i in range(3)]
    optimizer = gs.DistributedOptimizer(keras.optimizers.SGD(1.0), backward_passes_per_step=2)
    for _ in range(2):
        grads = [None if i in none_at else tf.constant([10.0 * (i + 1)]) for i in range(3)]
        optimizer.apply_gradients(zip(grads, variables, strict=True))
    for i, variable in enumerate(variables):
        expected = (i + 1.0) if i in none_at else (i + 1.0) - 2 * 10.0 * (i + 1)
        assert float(variable.numpy()[0]) == expected


def test_inf_in_one_window_does_not_poison_the_next():
    w = tf.Variable([0.0])
    optimizer = gs.DistributedOptimizer(keras.optimizers.SGD(1.0), backward_passes_per_step=2)
    optimizer.apply_gradients([(tf.constant([np.inf]), w)])
    optimizer.apply_gradients([(tf.constant([1.0]), w)])
    assert np.isneginf(w.numpy()[0])
    w.assign([0.0])
    optimizer.apply_gradients([(tf.constant([1.0]), w)])
    optimizer.apply_gradients([(tf.constant([2.0]), w)])
    assert float(w.numpy()[0]) == -3.0


def test_accumulators_are_not_broadcast():
    optimizer = gs.DistributedOptimizer(keras.optimizers.SGD(1.0), backward_passes_per_step=2)
    w = tf.Variable([0.0])
    optimizer.apply_gradients([(tf.constant([1.0]), w)])
    accumulator = optimizer._gradsync_aggregator.accumulators[0]
    before = engine.executed_counts().get("broadcast", 0)
    gs.broadcast_variables([accumulator, optimizer._gradsync_aggregator.counter], 0)
    assert engine.executed_counts().get("broadcast", 0) == before
    assert all(v is not accumulator for v in optimizer.variables)


def _tf_keras_sgd(family: str):
    import tf_keras

    return getattr(tf_keras.optimizers, family).SGD(1.0) if family else tf_keras.optimizers.SGD(1.0)


@pytest.mark.parametrize("flavour", ["keras", "tf_keras", "tf_keras_legacy"])
def test_optimizer_already_used_is_refused(flavour):
    optimizer = {
        "keras": lambda: keras.optimizers.SGD(1.0, momentum=0.9),
        "tf_keras": lambda: _tf_keras_sgd(""),
        "tf_keras_legacy": lambda: _tf_keras_sgd("legacy"),
    }[flavour]()
    w = tf.Variable([0.0])
    optimizer.apply_gradients([(tf.constant([1.0]), w)])
    with pytest.raises(ValueError, match="has not been used yet"):
        gs.DistributedOptimizer(optimizer)


@pytest.mark.parametrize("family", ["", "legacy"])
def test_tf_keras_optimizer_keeps_its_class_and_config(family):
    optimizer = _tf_keras_sgd(family)
    wrapped = gs.DistributedOptimizer(optimizer, backward_passes_per_step=2)
    assert isinstance(wrapped, type(optimizer))
    assert wrapped.get_config() == optimizer.get_config()


def test_tf_keras_new_family_in_v1_graph_points_to_legacy():
    optimizer = _tf_keras_sgd("")
    with tf.Graph().as_default():
        with pytest.raises(ValueError, match="use tf_keras.optimizers.legacy.SGD"):
            gs.DistributedOptimizer(optimizer)


def test_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="supports tf.compat.v1.train optimizers.*got builtins"):
        gs.DistributedOptimizer(object())


def test_loss_scale_optimizer_must_be_inside():
    with pytest.raises(ValueError, match=r"DistributedOptimizer\(LossScaleOptimizer\(opt\)\)"):
        keras.optimizers.LossScaleOptimizer(gs.DistributedOptimizer(keras.optimizers.SGD(0.1)))
    inside = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1))
    assert isinstance(gs.DistributedOptimizer(inside), keras.optimizers.LossScaleOptimizer)


def test_load_model_brings_back_the_distributed_optimizer(tmp_path):
    from gradsync.tensorflow.keras import load_model

    def saved(optimizer):
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile(optimizer=optimizer, loss="mse")
        model.fit(np.ones((4, 3)), np.ones((4, 2)), batch_size=1, verbose=0)
        path = str(tmp_path / f"{len(list(tmp_path.iterdir()))}.keras")
        model.save(path)
        return path

    distributed = saved(
        gs.DistributedOptimizer(
            keras.optimizers.SGD(0.1), compression=gs.Compression.fp16, backward_passes_per_step=3
        )
    )
    loaded = load_model(distributed).optimizer
    assert loaded.gradsync_settings.compression is gs.Compression.fp16
    assert loaded._gradsync_aggregator.backward_passes_per_step == 3
    assert int(loaded._gradsync_aggregator.counter.numpy()) == 4 % 3
    overridden = load_model(distributed, backward_passes_per_step=2).optimizer
    assert overridden._gradsync_aggregator.backward_passes_per_step == 2
    # Keras 3 restores its own optimizer classes itself: one saved without gradsync comes back
    # as it was.
    plain = load_model(saved(keras.optimizers.SGD(0.1))).optimizer
    assert type(plain) is keras.optimizers.SGD


def test_optimizer_name_need_not_be_an_identifier():
    optimizer = gs.DistributedOptimizer(
        keras.optimizers.SGD(1.0), name="my optimizer-2", backward_passes_per_step=2
    )
    w = tf.Variable([0.0])
    for _ in range(2):
        optimizer.apply_gradients([(tf.constant([1.0]), w)])
    assert float(w.numpy()[0]) == -2.0
    with tf.Graph().as_default():
        v = tf.compat.v1.Variable([1.0])
        legacy = gs.DistributedOptimizer(
            tf.compat.v1.train.GradientDescentOptimizer(1.0),
            name="2nd optimizer",
            backward_passes_per_step=2,
        )
        train = legacy.minimize(tf.reduce_sum(v))
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            session.run(train)
            session.run(train)
            assert session.run(v)[0] == -1.0


def test_sync_steps_reuse_one_fusion_buffer():
    """TensorFlow gives back the reduced gradients of one step before the next one fuses, so
    training holds one fusion buffer, not one per step in flight."""
    from gradsync.engine import fusion

    fusion.forget()
    shapes = [(300, 200), (200,), (200, 100), (100,)]
    weights = [tf.Variable(tf.zeros(s)) for s in shapes]
    gradients = [tf.Variable(tf.ones(s)) for s in shapes]
    optimizer = gs.DistributedOptimizer(keras.optimizers.SGD(0.5))
    step = tf.function(lambda: optimizer.apply([g.read_value() for g in gradients], weights))
    for _ in range(6):
        step()
    np.testing.assert_array_equal(weights[0].numpy(), np.full(shapes[0], -3.0))
    assert fusion.kept_buffer_count() == 1


@pytest.mark.parametrize("own_function", [False, True])
def test_window_average_with_gradsync_or_own_allreduce_func(own_function):
    """gradsync's allreduce folds the 1/N into the reduction; a Horovod-style function of the
    user's, which takes no scale, has its result divided instead. Both give the average."""
    from gradsync.tensorflow.training.reduction import make_gradient_allreducer

    if own_function:
        allreduce = lambda grads, variables: gs.grouped_allreduce(grads)  # noqa: E731
    else:
        allreduce = make_gradient_allreducer(gs.SyncSettings())
    aggregator = gs.LocalGradientAggregationHelperEager(4, allreduce, False, True)
    variable = tf.Variable([0.0, 0.0])
    for step in range(1, 5):
        result = aggregator.compute_gradients([tf.constant([1.0, 3.0]) * step], [variable])
    np.testing.assert_array_equal(result[0], [2.5, 7.5])  # (1 + 2 + 3 + 4) / 4 times [1, 3]


def test_xla_compiled_functions_are_refused_with_the_way_out():
    """Keras compiles with XLA by default on GPU machines; XLA cannot compile the MPI call."""
    x = tf.constant([1.0, 2.0])
    with pytest.raises(ValueError, match="allreduce cannot run inside a function compiled"):
        tf.function(lambda: gs.allreduce(x), jit_compile=True)()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    optimizer = gs.DistributedOptimizer(keras.optimizers.SGD(0.1), backward_passes_per_step=2)
    model.compile(optimizer=optimizer, loss="mse", jit_compile=True)
    with pytest.raises(ValueError, match=r"pass jit_compile=False to model\.compile"):
        model.fit(np.ones((8, 3)), np.ones((8, 2)), verbose=0)
    model.compile(optimizer=optimizer, loss="mse", jit_compile=False)
    model.fit(np.ones((8, 3)), np.ones((8, 2)), verbose=0)  # the way out works


def test_results_kept_across_sync_steps_never_change():
    """Results of one sync step, kept while later steps run in the same tf.function, keep
    their values: their fusion buffer is not lent again while they are alive."""
    step = tf.function(lambda x: gs.grouped_allreduce([x, x * 2.0], op=gs.Sum))
    first = step(tf.ones([100_000]))
    expected = [t.numpy().copy() for t in first]
    for k in range(2, 6):
        later = step(tf.fill([100_000], float(k)))
        np.testing.assert_array_equal(later[1].numpy()[:3], [2.0 * k] * 3)
    for kept, values in zip(first, expected, strict=True):
        np.testing.assert_array_equal(kept.numpy(), values)


def _one_step(optimizer, variable, items=None):
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(variable * variable)
    grads = tape.gradient(loss, [variable])
    optimizer.apply_gradients(zip(grads, [variable], strict=True), items=items)


def test_items_without_item_weighting_is_refused():
    variable = tf.Variable([1.0, 2.0])
    optimizer = gs.DistributedOptimizer(keras.optimizers.SGD(0.1), backward_passes_per_step=2)
    with pytest.raises(ValueError, match="created without item_weighted=True"):
        _one_step(optimizer, variable, items=3.0)


def test_item_weighting_needs_items():
    variable = tf.Variable([1.0, 2.0])
    optimizer = gs.DistributedOptimizer(keras.optimizers.SGD(0.1), item_weighted=True)
    with pytest.raises(ValueError, match="needs each micro-step's item count"):
        _one_step(optimizer, variable)


def test_item_weighting_needs_average():
    with pytest.raises(ValueError, match="needs op=Average, got op=SUM"):
        gs.DistributedOptimizer(keras.optimizers.SGD(0.1), item_weighted=True, op=gs.Sum)


def test_item_weighted_single_process_divides_by_items():
    variable = tf.Variable([1.0, 2.0])
    optimizer = gs.DistributedOptimizer(
        keras.optimizers.SGD(1.0),
        backward_passes_per_step=2,
        item_weighted=True,
        average_aggregated_gradients=True,
    )
    _one_step(optimizer, variable, items=3.0)  # gradient of the sum: 2 * [1, 2]
    _one_step(optimizer, variable, items=1.0)
    # (2 + 2) * [1, 2] over 4 items, one step of 1.0
    np.testing.assert_allclose(variable.numpy(), [0.0, 0.0], atol=1e-7)


def test_flush_applies_a_partial_window_divided_by_what_it_holds():
    variable = tf.Variable([1.0, 2.0])
    optimizer = gs.DistributedOptimizer(
        keras.optimizers.SGD(0.5), backward_passes_per_step=4, average_aggregated_gradients=True
    )
    _one_step(optimizer, variable)
    _one_step(optimizer, variable)
    np.testing.assert_array_equal(variable.numpy(), [1.0, 2.0])  # no update yet
    assert optimizer.flush() == 1
    np.testing.assert_allclose(variable.numpy(), [0.0, 0.0], atol=1e-7)  # 0.5 * mean of 2 x
    assert optimizer.flush() == 0  # nothing left
    assert int(optimizer._gradsync_aggregator.counter.numpy()) == 0


def test_flush_inside_tf_function_is_refused():
    variable = tf.Variable([1.0, 2.0])
    optimizer = gs.DistributedOptimizer(keras.optimizers.SGD(0.5), backward_passes_per_step=2)
    _one_step(optimizer, variable)
    with pytest.raises(RuntimeError, match="call it outside tf.function"):
        tf.function(optimizer.flush)()


def test_changing_passes_after_tracing_without_a_window_is_refused():
    variable = tf.Variable([1.0, 2.0])
    optimizer = gs.DistributedOptimizer(keras.optimizers.SGD(0.1))
    tf.function(lambda: _one_step(optimizer, variable))()
    with pytest.raises(ValueError, match="created with backward_passes_per_step=1 once"):
        optimizer.backward_passes_per_step = 2
    with pytest.raises(ValueError, match="must be an integer >= 1"):
        optimizer.backward_passes_per_step = 0


def test_changing_passes_eagerly_from_one_gives_windows():
    variable = tf.Variable([1.0, 2.0])
    optimizer = gs.DistributedOptimizer(keras.optimizers.SGD(0.5))
    optimizer.backward_passes_per_step = 2
    _one_step(optimizer, variable)
    np.testing.assert_array_equal(variable.numpy(), [1.0, 2.0])
    _one_step(optimizer, variable)
    np.testing.assert_allclose(variable.numpy(), [-1.0, -2.0])  # the sum of two gradients
