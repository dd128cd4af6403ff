"""Class-match rates of the most influential training images (the paper's Figure 8)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from interp.errors import InterpError


@dataclass
class ClassMatch:
    """Rates over the rows of an influence matrix, ``k`` ranks deep.

    ``per_rank[r-1]``: fraction of rows whose ``r``-th most helpful training image has the row's
    label. ``cumulative[r-1]``: mean fraction of same-label images among the ``r`` most helpful.
    ``at_least_3_of_5``: fraction of rows with >= 3 same-label images in their top 5.
    """

    per_rank: np.ndarray
    cumulative: np.ndarray
    at_least_3_of_5: float
    k: int
    n_rows: int


def most_helpful(influence: np.ndarray, k: int, exclude_self: bool = False) -> np.ndarray:
    """Indices ``(n_rows, k)`` of the ``k`` most negative entries of each row, most helpful first.

    ``exclude_self`` drops the diagonal (a training image's influence on itself). Exact ties are
    broken by the lower training index.
    """
    inf = np.asarray(influence, dtype=np.float64)
    if exclude_self:
        if inf.shape[0] != inf.shape[1]:
            raise InterpError("exclude_self needs a square train x train matrix")
        inf = inf.copy()
        np.fill_diagonal(inf, np.inf)
    k = min(k, inf.shape[1] - int(exclude_self))
    # a stable sort: exactly tied values (duplicate training images) come in index order, so the
    # lists are reproducible; argpartition would pick among ties at the k-th place arbitrarily
    return np.argsort(inf, axis=1, kind="stable")[:, :k]


def class_match(
    influence: np.ndarray, y_test: np.ndarray, y_train: np.ndarray, k: int = 100, exclude_self: bool = False
) -> ClassMatch:
    """Class-match rates of the most helpful (most negative ``I_up,loss``) training images per row."""
    y_test, y_train = np.asarray(y_test), np.asarray(y_train)
    if influence.shape != (len(y_test), len(y_train)):
        raise InterpError(f"influence has shape {influence.shape}, labels give ({len(y_test)}, {len(y_train)})")
    if k < 1:
        raise InterpError(f"k must be >= 1, got {k}")
    top = most_helpful(influence, k, exclude_self)
    match = y_train[top] == y_test[:, None]
    cumulative = np.cumsum(match, axis=1) / np.arange(1, match.shape[1] + 1)
    five = match[:, :5].sum(axis=1) >= 3 if match.shape[1] >= 5 else np.zeros(len(match), dtype=bool)
    return ClassMatch(match.mean(0), cumulative.mean(0), float(five.mean()), match.shape[1], len(match))
