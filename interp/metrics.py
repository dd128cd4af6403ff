"""Class-match rates of the most influential training images (the paper's Figure 8)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from interp.errors import InterpError, require_k


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
    rows: dict[str, np.ndarray] | None = None  # per-row indicators: top1, at_least_3_of_5, cumulative_k
    _intervals: dict = field(default_factory=dict, repr=False, compare=False)

    def intervals(self, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> dict[str, tuple[float, float]]:
        """Bootstrap intervals (percentile, over the rows) of top-1, >=3 of top 5 and the top-k cumulative rate.

        Computed once per ``(level, n_boot, seed)``: the CSV, the printout and the plots share them."""
        key = (level, n_boot, seed)
        if key not in self._intervals:
            self._intervals[key] = {
                name: bootstrap_interval(v, level, n_boot, seed) for name, v in (self.rows or {}).items()
            }
        return self._intervals[key]


def _influence_rows(influence) -> np.ndarray:
    """``influence`` as a 2-D float64 array with finite entries (a NaN would rank anywhere), else :class:`InterpError`."""
    try:
        inf = np.asarray(influence, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InterpError(f"influence must be a numeric (n_rows, n_train) array ({exc})") from None
    if inf.ndim != 2:
        raise InterpError(f"influence must be 2-D (n_rows, n_train), got shape {inf.shape}")
    bad = int((~np.isfinite(inf)).sum())
    if bad:
        raise InterpError(f"influence holds {bad} non-finite value(s) (NaN or Inf); recompute it or drop those rows")
    return inf


def most_helpful(influence: np.ndarray, k: int, exclude_self: bool = False) -> np.ndarray:
    """Indices ``(n_rows, k)`` of the ``k`` most negative entries of each row, most helpful first.

    ``exclude_self`` drops the diagonal (a training image's influence on itself). Exact ties are
    broken by the lower training index. ``k`` above the entries a row can rank is an error.
    """
    inf = _influence_rows(influence)
    if exclude_self:
        if inf.shape[0] != inf.shape[1]:
            raise InterpError(f"exclude_self needs a square train x train matrix, got shape {inf.shape}")
        inf = inf.copy()
        np.fill_diagonal(inf, np.inf)
    k = require_k(k, inf.shape[1] - int(exclude_self))
    # a stable sort: exactly tied values (duplicate training images) come in index order, so the
    # lists are reproducible; argpartition would pick among ties at the k-th place arbitrarily
    return np.argsort(inf, axis=1, kind="stable")[:, :k]


def class_match(
    influence: np.ndarray, y_test: np.ndarray, y_train: np.ndarray, k: int = 100, exclude_self: bool = False
) -> ClassMatch:
    """Class-match rates of the most helpful (most negative ``I_up,loss``) training images per row."""
    y_test, y_train = np.asarray(y_test), np.asarray(y_train)
    for name, y in (("y_test", y_test), ("y_train", y_train)):
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise InterpError(f"{name} must be a 1-D array of integer labels, got shape {y.shape} and dtype {y.dtype}")
    shape = np.shape(influence)
    if shape != (len(y_test), len(y_train)):
        raise InterpError(f"influence has shape {shape}, the labels give ({len(y_test)}, {len(y_train)})")
    top = most_helpful(influence, k, exclude_self)
    match = y_train[top] == y_test[:, None]
    cumulative = np.cumsum(match, axis=1) / np.arange(1, match.shape[1] + 1)
    five = match[:, :5].sum(axis=1) >= 3 if match.shape[1] >= 5 else np.zeros(len(match), dtype=bool)
    rows = {"top1": match[:, 0].astype(float), "at_least_3_of_5": five.astype(float), "cumulative_k": cumulative[:, -1]}
    return ClassMatch(match.mean(0), cumulative.mean(0), float(five.mean()), match.shape[1], len(match), rows)


def _bootstrap_means(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement) of ``values`` ``(n,)``."""
    rng = np.random.default_rng(seed)
    n = len(values)
    out = np.empty(n_boot)
    for start in range(0, n_boot, 256):  # bounded memory: 256 resamples of n indices at a time
        idx = rng.integers(0, n, size=(min(256, n_boot - start), n))
        out[start : start + len(idx)] = values[idx].mean(axis=1)
    return out


def bootstrap_interval(
    values: np.ndarray, level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (one number per test image)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        raise InterpError("no rows to bootstrap")
    means = _bootstrap_means(values, n_boot, seed)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def paired_difference(a: ClassMatch, b: ClassMatch, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> dict:
    """``a - b`` for each per-row rate, with a paired bootstrap interval over the (same) rows.

    Both must be computed over the same test images in the same order (e.g. robust and natural
    runs of one target with the same ``--test`` selection); returns ``{stat: (diff, low, high)}``.
    """
    if a.rows is None or b.rows is None or a.n_rows != b.n_rows:
        raise InterpError(f"a paired difference needs the same rows; got {a.n_rows} and {b.n_rows}")
    out = {}
    for name in a.rows:
        diff = a.rows[name] - b.rows[name]
        out[name] = (float(diff.mean()), *bootstrap_interval(diff, level, n_boot, seed))
    return out


def ranking_agreement(approx, exact, k: int = 10) -> dict:
    """How well an approximate influence matrix ranks training images as the exact one does, per test row.

    ``approx`` and ``exact`` ``(n_test, n_train)`` (this module's sign convention: negative = helpful); ``k``
    between 1 and ``n_train`` (an :class:`InterpError` otherwise, never clamped). Returns ``pearson`` (of all
    entries; NaN where either matrix is constant), ``spearman`` (mean over the rows where both are
    non-constant of the rank correlation of a row; NaN if there is none), ``top_k_overlap`` (mean over rows of
    |top-k most helpful by approx intersected with exact| / k), ``k``, and ``constant_rows`` (rows left out of
    ``spearman``). What class-match reads is the ranking of each row, so the last two rates are the ones that
    matter there.
    """
    from scipy.stats import spearmanr

    a, e = _influence_rows(approx), _influence_rows(exact)
    if a.shape != e.shape:
        raise InterpError(f"approx and exact must be 2-D of the same shape, got {a.shape} and {e.shape}")
    k = require_k(k, a.shape[1])
    top_a, top_e = most_helpful(a, k), most_helpful(e, k)
    overlap = [len(set(top_a[i]) & set(top_e[i])) / k for i in range(len(a))]
    varied = [i for i in range(len(a)) if np.ptp(a[i]) > 0 and np.ptp(e[i]) > 0]
    rows = [spearmanr(a[i], e[i])[0] for i in varied]
    both_vary = np.ptp(a) > 0 and np.ptp(e) > 0
    return {
        "pearson": float(np.corrcoef(a.ravel(), e.ravel())[0, 1]) if both_vary else float("nan"),
        "spearman": float(np.mean(rows)) if rows else float("nan"),
        "top_k_overlap": float(np.mean(overlap)),
        "k": k,
        "constant_rows": len(a) - len(varied),
    }
