"""The data both exact-accumulation workers train on: micro-batches of 1 to 5 samples of
``TOKENS`` positions, with a token mask, all derived from (case, index, rank)."""

import numpy as np

FEATURES, CLASSES, TOKENS = 6, 3, 4
W0 = np.random.default_rng(0).normal(scale=0.5, size=(FEATURES, CLASSES)).astype(np.float32)
B0 = np.zeros(CLASSES, np.float32)


def micro_batch(case: int, index: int, rank: int, tokens: int = TOKENS):
    """A micro-batch of 1 to 5 samples of ``tokens`` positions each, about 70% unmasked."""
    rng = np.random.default_rng([case, index, rank])
    n = int(rng.integers(1, 6))
    x = rng.normal(size=(n, tokens, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, size=(n, tokens))
    mask = (rng.random((n, tokens)) < 0.7).astype(np.float32)
    return x, y, mask


def concatenated(batches):
    """One batch made of ``batches``, as the single-process reference trains on it."""
    return tuple(np.concatenate([b[i] for b in batches]) for i in range(3))
