"""Figures: class-match curves (paper Fig. 8), class-sorted influence heatmaps (Fig. 7) and grids of
the most helpful training images (Fig. 6). Functions take arrays and return matplotlib figures."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from interp.metrics import ClassMatch, most_helpful


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def class_match_figure(curves: dict[str, dict[str, ClassMatch]]):
    """One panel per target (``"test"``, ``"train"``), one line per run: match rate at each rank."""
    plt = _plt()
    targets = sorted({t for per_run in curves.values() for t in per_run})
    fig, axes = plt.subplots(1, len(targets), figsize=(5 * len(targets), 3.6), squeeze=False)
    for ax, target in zip(axes[0], targets, strict=True):
        for run, per_target in curves.items():
            if target in per_target:
                cm = per_target[target]
                ranks = np.arange(1, cm.k + 1)
                ax.plot(ranks, cm.per_rank, label=f"{run} (top-1 {cm.per_rank[0]:.2f}, 3/5 {cm.at_least_3_of_5:.2f})")
        ax.set_xlabel("rank of training image by helpfulness")
        ax.set_ylabel("fraction with the same class")
        ax.set_title(f"{target} images vs training images")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def class_sorted(influence: np.ndarray, y_rows: np.ndarray, y_cols: np.ndarray) -> np.ndarray:
    """Rows and columns reordered by class (stable), standardised by the Frobenius norm."""
    rows = np.argsort(y_rows, kind="stable")
    cols = np.argsort(y_cols, kind="stable")
    m = np.asarray(influence)[rows][:, cols]
    return m / (np.linalg.norm(m) or 1.0)


def heatmap_figure(panels: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]], max_side: int = 1000):
    """Fig. 7: per run ``(title, I, y_rows, y_cols)``, class-sorted and norm-standardised.

    Helpful (negative) entries are dark. Matrices larger than ``max_side`` are shown block-averaged.
    """
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False)
    for ax, (title, inf, y_rows, y_cols) in zip(axes[0], panels, strict=True):
        m = class_sorted(inf, y_rows, y_cols)
        m = _downsample(m, max_side)
        lim = np.percentile(np.abs(m), 99) or 1.0
        im = ax.imshow(m, cmap="gray", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
        _class_ticks(ax, np.sort(y_rows), np.sort(y_cols), m.shape, inf.shape)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training images (by class)")
        ax.set_ylabel("test images (by class)")
        fig.colorbar(im, ax=ax, fraction=0.046, label="influence / ||I||  (dark = helpful)")
    fig.tight_layout()
    return fig


def _downsample(m: np.ndarray, max_side: int) -> np.ndarray:
    fr = max(1, int(np.ceil(m.shape[0] / max_side)))
    fc = max(1, int(np.ceil(m.shape[1] / max_side)))
    if fr == fc == 1:
        return m
    r, c = m.shape[0] // fr * fr, m.shape[1] // fc * fc
    return m[:r, :c].reshape(r // fr, fr, c // fc, fc).mean(axis=(1, 3))


def _class_ticks(ax, y_rows_sorted, y_cols_sorted, shown, full):
    for labels, n_shown, n_full, axis in (
        (y_cols_sorted, shown[1], full[1], "x"),
        (y_rows_sorted, shown[0], full[0], "y"),
    ):
        classes, starts = np.unique(labels, return_index=True)
        scale = n_shown / n_full
        for s in starts[1:]:
            (ax.axvline if axis == "x" else ax.axhline)(s * scale - 0.5, color="red", lw=0.3)
        centres = (starts + np.append(starts[1:], len(labels))) / 2 * scale
        (ax.set_xticks if axis == "x" else ax.set_yticks)(centres, [str(c) for c in classes], fontsize=6)


def _show(ax, image: np.ndarray, title: str, color: str = "black"):
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[0] in (1, 3):
        img = np.moveaxis(img, 0, -1)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255 if img.dtype == np.uint8 else 1)
    ax.set_title(title, fontsize=6, color=color)
    ax.axis("off")


def influence_grid_figure(
    influence: np.ndarray,
    test_images: Sequence,
    train_images: Sequence,
    y_test: np.ndarray,
    y_train: np.ndarray,
    top: int = 5,
    title: str = "",
):
    """Fig. 6: one test image per class (rows), then its ``top`` most helpful training images.

    Training images of the test image's class have green titles, others red.
    """
    plt = _plt()
    rows = [int(np.flatnonzero(y_test == c)[0]) for c in np.unique(y_test)]
    best = most_helpful(np.asarray(influence)[rows], top)
    fig, axes = plt.subplots(len(rows), top + 1, figsize=(1.1 * (top + 1), 1.15 * len(rows)), squeeze=False)
    for r, (i, helpers) in enumerate(zip(rows, best, strict=True)):
        _show(axes[r, 0], test_images[i], f"test y={y_test[i]}")
        for c, j in enumerate(helpers, start=1):
            same = y_train[j] == y_test[i]
            _show(axes[r, c], train_images[j], f"#{c} y={y_train[j]}", "green" if same else "red")
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig


def featviz_figure(seeds, results: dict, seed_labels: Sequence[str]):
    """Paper's Figure 1 layout: one row per (objective, seed); columns = the seed, then each model's image.

    ``results`` maps a model label to a :class:`interp.viz.featviz.FeatVizResult` (same objectives and seeds).
    """
    plt = _plt()
    labels = list(results)
    first = results[labels[0]]
    n = len(first.objective)
    fig, axes = plt.subplots(n, 1 + len(labels), figsize=(1.6 * (1 + len(labels)), 1.6 * n), squeeze=False)
    for r in range(n):
        s = first.seed_index[r]
        _show(axes[r, 0], seeds[s].numpy(), f"seed {seed_labels[s]}, f={first.objective[r]}")
        for c, label in enumerate(labels, start=1):
            res = results[label]
            _show(
                axes[r, c], res.images[r].numpy(), f"{label}\nact {res.end[r]:.2f} (+{res.end[r] - res.start[r]:.2f})"
            )
    fig.tight_layout()
    return fig


def saliency_figure(images, maps: dict, titles: Sequence[str]):
    """Rows = images; columns = the image, then each model's attribution magnitude ``(B, H, W)``."""
    plt = _plt()
    labels = list(maps)
    fig, axes = plt.subplots(
        len(images), 1 + len(labels), figsize=(1.7 * (1 + len(labels)), 1.7 * len(images)), squeeze=False
    )
    for r in range(len(images)):
        _show(axes[r, 0], np.asarray(images[r]), titles[r])
        for c, label in enumerate(labels, start=1):
            m = np.asarray(maps[label][r])
            axes[r, c].imshow(m, cmap="inferno", vmin=0, vmax=np.percentile(m, 99.5) or 1.0)
            axes[r, c].set_title(label, fontsize=6)
            axes[r, c].axis("off")
    fig.tight_layout()
    return fig


def sensitivity_figure(series: dict[str, list[tuple[str, ClassMatch]]], level: float = 0.95):
    """Top-1 and >=3-of-5 class match (test images) against the setting (cut-off / damping), one line
    per run with its bootstrap interval: where a natural-vs-robust gap holds and where it flips."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for run, points in series.items():
        labels = [label for label, _ in points]
        x = np.arange(len(points))
        for ax, stat, name in ((axes[0], "top1", "top-1"), (axes[1], "at_least_3_of_5", ">= 3 of top 5")):
            mids = [cm.rows[stat].mean() for _, cm in points]
            ci = np.array([cm.intervals(level)[stat] for _, cm in points])
            line = ax.plot(x, mids, marker="o", label=run)[0]
            ax.fill_between(x, ci[:, 0], ci[:, 1], color=line.get_color(), alpha=0.2)
            ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=7)
            ax.set_ylabel(f"{name} class match (test)")
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
    axes[0].set_title(f"top-1 vs setting ({int(level * 100)}% bootstrap band)")
    axes[1].set_title(f">= 3 of top 5 vs setting ({int(level * 100)}% bootstrap band)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig
