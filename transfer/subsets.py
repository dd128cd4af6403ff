"""Class-covering random subsets of a training set, and the paper's seed sequence."""

from __future__ import annotations

import numpy as np

from transfer.errors import UserError

PAPER_SEED_BASE = 20_000_000
PAPER_SEED_STEP = 100_000


def paper_seeds(k: int) -> list[int]:
    """The seeds of Utrera et al.: ``S_k = 20000000 + 100000 * i`` for ``i = 0..k-1``."""
    if k < 1:
        raise UserError(f"the number of seeds must be at least 1, got {k}")
    return [PAPER_SEED_BASE + PAPER_SEED_STEP * i for i in range(k)]


def class_covering_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Draw ``n`` indices without replacement so that every class appears at least once.

    One index per class is drawn uniformly from that class, then the remaining ``n - C`` uniformly
    from all other indices. The draw depends only on ``(labels, n, seed)``.

    Args:
        labels: ``(N,)`` integer class labels of the full training set.
        n: subset size, ``C <= n <= N`` where ``C`` is the number of distinct labels.
        seed: seed of a NumPy PCG64 generator.

    Returns:
        ``(n,)`` sorted int64 indices into ``labels``.
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if n < len(classes):
        raise UserError(f"a subset of {n} images cannot cover {len(classes)} classes; use --subset >= {len(classes)}")
    if n > len(labels):
        raise UserError(f"--subset {n} is larger than the training set ({len(labels)} images)")
    rng = np.random.default_rng(seed)
    chosen = np.array([rng.choice(np.flatnonzero(labels == c)) for c in classes], dtype=np.int64)
    rest = np.setdiff1d(np.arange(len(labels)), chosen)
    extra = rng.choice(rest, size=n - len(classes), replace=False)
    return np.sort(np.concatenate([chosen, extra]).astype(np.int64))
