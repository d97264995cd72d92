"""What every benchmark worker shares: thread pinning, interleaved timing, statistics,
the synthetic gradient set and the benchmark models.

Import this module before TensorFlow: it quiets TensorFlow's logging and pins the thread
counts of every process (worker or reference) to the same values.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
THREADS = int(os.environ.get("BENCH_THREADS", "1"))
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = str(THREADS)

import numpy as np  # noqa: E402

MB = 1 << 20

# MLP 1024 -> hidden x 3 -> 10: about 1M, 10M and 50M parameters.
MODELS = {"1M": 512, "10M": 2048, "50M": 4864}
INPUT_DIM, CLASSES, MICRO_BATCH = 1024, 10, 32


def pin_threads() -> None:
    """Gives TensorFlow THREADS intra-op and THREADS inter-op threads (call before any op)."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(
        int(os.environ.get("BENCH_INTER_OP_THREADS", THREADS))
    )


def session_config():
    """The same thread counts for a v1 Session."""
    import tensorflow as tf

    return tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=THREADS, inter_op_parallelism_threads=THREADS
    )


def layer_sizes(model: str) -> list[int]:
    hidden = MODELS[model]
    return [INPUT_DIM, hidden, hidden, hidden, CLASSES]


def mlp(model: str):
    """The Keras MLP of ``model``'s size: ReLU hidden layers, ``CLASSES`` logits."""
    import keras

    sizes = layer_sizes(model)
    return keras.Sequential(
        [keras.Input((sizes[0],))]
        + [keras.layers.Dense(s, activation="relu") for s in sizes[1:-1]]
        + [keras.layers.Dense(sizes[-1])]
    )


def parameter_count(model: str) -> int:
    sizes = layer_sizes(model)
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


def gradient_shapes(total_bytes: int, count: int = 60) -> list[tuple[int, ...]]:
    """About ``count`` float32 tensors of mixed sizes (weights and biases of count/2 layers)
    whose sizes add up to about ``total_bytes``."""
    layers = count // 2
    biases = [128 * (1 + i % 8) for i in range(layers)]
    weight_share = [(1, 2, 4, 8, 16, 32)[i % 6] * (1 + (i * 7) % 5) for i in range(layers)]
    floats = total_bytes // 4 - sum(biases)
    shapes: list[tuple[int, ...]] = []
    for bias, share in zip(biases, weight_share, strict=True):
        elements = max(bias, floats * share // sum(weight_share))
        shapes += [(max(1, elements // bias), bias), (bias,)]
    return shapes


def gradient_arrays(total_bytes: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s, dtype=np.float32) * 1e-3 for s in gradient_shapes(total_bytes)]


def interleaved(
    cases: dict[str, Callable[[], object]],
    repeats: int,
    iterations: int | dict[str, int],
    sync: Callable[[], object] | None = None,
    warmup: int = 2,
) -> dict[str, list[float]]:
    """Seconds per call of each case, one value per repeat, the cases taking turns in every
    repeat so that a slow moment of the machine hits all of them alike."""
    for case in cases.values():
        for _ in range(warmup):
            case()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, case in cases.items():
            count = iterations[name] if isinstance(iterations, dict) else iterations
            if sync is not None:
                sync()
            start = time.perf_counter()
            for _ in range(count):
                case()
            times[name].append((time.perf_counter() - start) / count)
    return times


def summary(values: list[float]) -> dict[str, float]:
    """Median and spread (min, max, quartiles) of repeated measurements."""
    ordered = sorted(values)
    if len(ordered) > 1:
        quartiles = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        quartiles = ordered * 3
    return {
        "median": statistics.median(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "q1": quartiles[0],
        "q3": quartiles[2],
        "n": len(ordered),
    }


def ratios(numerators: list[float], denominators: list[float]) -> dict[str, float]:
    """Summary of the per-repeat ratios (each pair measured back to back)."""
    return summary([a / b for a, b in zip(numerators, denominators, strict=True)])


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker_arguments(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", required=True, help="where rank 0 writes its JSON result")
    parser.add_argument("--repeats", type=int, default=5)
    return parser


def write_result(path: str, result: dict) -> None:
    result["threads_per_process"] = THREADS
    with open(path, "w") as handle:
        json.dump(result, handle, indent=1)
