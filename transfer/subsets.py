"""Class-covering random subsets of a training set, and the paper's seed sequence."""

from __future__ import annotations

import numpy as np

from transfer.errors import UserError

PAPER_SEED_BASE = 20_000_000
PAPER_SEED_STEP = 100_000
MAX_SEED = 2**63 - 1  # seeds feed numpy's SeedSequence and torch.Generator.manual_seed


def paper_seeds(k: int) -> list[int]:
    """The seeds of Utrera et al.: ``S_k = 20000000 + 100000 * i`` for ``i = 0..k-1``."""
    if k < 1:
        raise UserError(f"the number of seeds must be at least 1, got {k}")
    return [PAPER_SEED_BASE + PAPER_SEED_STEP * i for i in range(k)]


def class_covering_subset(labels: np.ndarray, n: int, seed: int, flag: str = "--subset") -> np.ndarray:
    """Draw ``n`` indices without replacement so that every class appears at least once.

    One index per class is drawn uniformly from that class, then the remaining ``n - C`` uniformly
    from all other indices. The draw depends only on ``(labels, n, seed)``.

    Args:
        labels: ``(N,)`` integer class labels of the full training set.
        n: subset size, ``C <= n <= N`` where ``C`` is the number of distinct labels.
        seed: seed of a NumPy PCG64 generator.
        flag: the option that asked for ``n``, named in errors.

    Returns:
        ``(n,)`` sorted int64 indices into ``labels``.
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if n < len(classes):
        raise UserError(
            f"{flag} {n}: a subset of {n} images cannot cover {len(classes)} classes; use {flag} >= {len(classes)}"
        )
    if n > len(labels):
        raise UserError(f"{flag} {n} is larger than the split it is drawn from ({len(labels)} images)")
    rng = np.random.default_rng(seed)
    chosen = np.array([rng.choice(np.flatnonzero(labels == c)) for c in classes], dtype=np.int64)
    rest = np.setdiff1d(np.arange(len(labels)), chosen)
    extra = rng.choice(rest, size=n - len(classes), replace=False)
    return np.sort(np.concatenate([chosen, extra]).astype(np.int64))
