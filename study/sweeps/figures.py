"""The paper's Figures 2-5 (and 10) from a sweep: mean lines with shaded 95% Student-t bands over seeds.

* ``accuracy`` (Fig. 2a): test accuracy against subset size, one colour per source, one line style per target;
* ``delta`` (Fig. 2b): paired robust-minus-natural differences against subset size, one panel per robust source;
* ``epochs`` (Fig. 3): test accuracy against epoch at one subset size, and the robust-minus-natural delta;
* ``blocks`` (Fig. 4/10): accuracy against subset size per number of fine-tuned blocks, and the 3-minus-1 delta;
* ``constraints`` (Fig. 5): every source side by side, one panel per target.

Subset sizes are on a log axis; "all" is placed at the target's full training-set size.
Accuracy bands are shaded within 0-100% (a t interval over two or three seeds can pass 100%); the
tables of ``summarize`` keep the unclipped numbers.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from study.sweeps.summary import (  # noqa: E402
    Interval,
    Progress,
    accuracies,
    in_sweep,
    natural_source,
    paired_differences,
    read_sweep_rows,
    table5,
)
from transfer.errors import UserError  # noqa: E402
from transfer.files import atomic_write_figure  # noqa: E402

FIGURES = ("accuracy", "delta", "epochs", "blocks", "constraints")
STYLES = ("-", "--", ":", "-.")
ACCURACY_RANGE = (0.0, 100.0)  # accuracy bands are shaded within it


def _band(ax, xs, ivs: list[Interval], label: str, color, style="-", clip: tuple[float, float] | None = None) -> None:
    """Mean line and shaded interval; ``clip`` bounds the shading to what the quantity can take (a t
    interval of accuracies over two or three seeds can pass 100%; the tables keep the unclipped numbers)."""
    means = [iv.mean for iv in ivs]
    ax.plot(xs, means, style, color=color, label=label, marker="o", ms=3)
    lows = [iv.low if not math.isnan(iv.low) else iv.mean for iv in ivs]
    highs = [iv.high if not math.isnan(iv.high) else iv.mean for iv in ivs]
    if clip is not None:
        lows, highs = [max(clip[0], x) for x in lows], [min(clip[1], x) for x in highs]
    ax.fill_between(xs, lows, highs, color=color, alpha=0.18, linewidth=0)


def _colours(targets) -> dict:
    cmap = plt.get_cmap("tab10")
    return {t: cmap(i % 10) for i, t in enumerate(sorted(targets))}


def blocks_text(blocks: str) -> str:
    """``1 fine-tuned block``, ``3 fine-tuned blocks``, ``all blocks fine-tuned``."""
    if str(blocks) == "all":
        return "all blocks fine-tuned"
    return f"{blocks} fine-tuned block{'' if str(blocks) == '1' else 's'}"


def _pick_blocks(cells, blocks: str | None) -> str:
    available = sorted({k[2] for k in cells})
    if blocks is None:
        return "3" if "3" in available else available[-1]
    if blocks not in available:
        raise UserError(f"--blocks {blocks} was not run in this sweep (it has {', '.join(available)})")
    return blocks


def _series(table: dict, target: str, blocks: str, source: str):
    keys = sorted(k for k in table if k[0] == target and k[2] == blocks and k[3] == source)
    return [k[1] for k in keys], [table[k] for k in keys]


def _size_axis(ax, ylabel: str) -> None:
    """A log axis of subset sizes, ticked at the sizes that were run and labelled in plain numbers."""
    ax.set_xscale("log")
    # data lines only: a reference line (axhline) spans the axes in axes coordinates, x in [0, 1]
    sizes = sorted({float(x) for line in ax.get_lines() if line.get_transform() == ax.transData
                    for x in line.get_xdata()})  # fmt: skip
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xticks(sizes, [f"{int(x):,}" for x in sizes])
    ax.set_xlabel("training images")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def accuracy_figure(rows, which="final", blocks=None, **_):
    cells = accuracies(rows, which)
    b = _pick_blocks(cells, blocks)
    table = table5(cells)
    targets, sources = sorted({k[0] for k in cells}), sorted({k[3] for k in cells})
    colour = _colours(sources)  # sources are what the figure compares: told apart by colour
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, t in enumerate(targets):
        for s in sources:
            xs, ivs = _series(table, t, b, s)
            if xs:
                _band(ax, xs, ivs, f"{t}, {s}", colour[s], STYLES[i % len(STYLES)], clip=ACCURACY_RANGE)
    _size_axis(ax, "test accuracy (%)")
    ax.set_title(f"Test accuracy, {blocks_text(b)} (mean, 95% CI over seeds; {which} epoch)", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    return fig


def delta_figure(rows, which="final", blocks=None, natural=None, **_):
    cells = accuracies(rows, which)
    b = _pick_blocks(cells, blocks)
    sources = sorted({k[3] for k in cells})
    nat = natural_source(sources, natural)
    paired = paired_differences(cells, nat)
    robust = [s for s in sources if s != nat]
    targets = sorted({k[0] for k in cells})
    colour = _colours(targets)
    fig, axes = plt.subplots(1, len(robust), figsize=(6 * len(robust), 4.2), squeeze=False)
    for ax, s in zip(axes[0], robust, strict=True):
        for t in targets:
            xs, ivs = _series(paired, t, b, s)
            if xs:
                _band(ax, xs, ivs, t, colour[t])
        ax.axhline(0, color="k", lw=0.8)
        _size_axis(ax, "accuracy delta (points)")
        ax.set_title(f"{s} minus {nat}, {blocks_text(b)}", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"Paired per-seed differences, mean and 95% CI ({which} epoch)", fontsize=10)
    fig.tight_layout()
    return fig


def _curves(rows, size: int, blocks: str) -> dict:
    """``(target, source) -> {seed: {epoch: test accuracy %}}`` from the runs' metrics.jsonl."""
    out: dict = defaultdict(dict)
    for r in rows:
        s = r["settings"]
        if int(r["n_train"]) != size or str(s["blocks"]) != blocks:
            continue
        path = Path(r["run_dir"]) / "metrics.jsonl"
        if not path.exists():
            continue
        lines = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
        out[(s["target"], s["source"])][int(s["seed"])] = {m["epoch"]: 100 * m["test_acc"] for m in lines}
    return out


def epochs_figure(rows, which="final", blocks=None, natural=None, size=None, **_):
    cells = accuracies(rows, which)
    b = _pick_blocks(cells, blocks)
    sizes = sorted({k[1] for k in cells})
    n = size if size is not None else (3200 if 3200 in sizes else sizes[len(sizes) // 2])
    if n not in sizes:
        raise UserError(f"--size {n} was not run in this sweep (it has {', '.join(map(str, sizes))})")
    curves = _curves(rows, n, b)
    if not curves:
        raise UserError(
            f"no metrics.jsonl found in the run directories of size {n}, blocks {b} (under {Path(rows[0]['run_dir']).parent}"
            "...); were the runs moved or deleted?"
        )
    sources = sorted({k[3] for k in cells})
    nat = natural_source(sources, natural) if len(sources) > 1 else sources[0]
    targets = sorted({k[0] for k in curves})
    colour = _colours(targets)
    fig, (ax, ax_d) = plt.subplots(1, 2, figsize=(12, 4.2))
    for t in targets:
        for i, s in enumerate(sources):
            runs = curves.get((t, s), {})
            epochs = sorted(set.intersection(*(set(c) for c in runs.values()))) if runs else []
            if epochs:
                _band(ax, epochs, [Interval.of([c[e] for c in runs.values()]) for e in epochs], f"{t}, {s}", colour[t],
                      STYLES[i % len(STYLES)], clip=ACCURACY_RANGE)  # fmt: skip
            if s == nat or not runs:
                continue
            base = curves.get((t, nat), {})
            seeds = sorted(set(runs) & set(base))
            if seeds:
                ivs = [Interval.of([runs[sd][e] - base[sd][e] for sd in seeds]) for e in epochs]
                _band(ax_d, epochs, ivs, f"{t}, {s} - {nat}", colour[t], STYLES[i % len(STYLES)])
    for a, label in ((ax, "test accuracy (%)"), (ax_d, "accuracy delta (points)")):
        a.set_xlabel("epoch")
        a.set_ylabel(label)
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    ax_d.axhline(0, color="k", lw=0.8)
    fig.suptitle(f"Test accuracy during fine-tuning, {n} images, {blocks_text(b)} (mean, 95% CI over seeds)",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    return fig


def blocks_figure(rows, which="final", source=None, **_):
    cells = accuracies(rows, which)
    sources = sorted({k[3] for k in cells})
    src = source or next((s for s in sources if s != _natural_or_none(sources)), sources[0])
    if src not in sources:
        raise UserError(f"--source {src!r} is not a source of this sweep ({', '.join(sources)})")
    table = table5(cells)
    targets = sorted({k[0] for k in cells})
    block_values = sorted({k[2] for k in cells}, key=lambda b: (b == "all", int(b) if b.isdigit() else 0))
    colour = _colours(targets)
    fig, (ax, ax_d) = plt.subplots(1, 2, figsize=(12, 4.2))
    for t in targets:
        for i, b in enumerate(block_values):
            xs, ivs = _series(table, t, b, src)
            if xs:
                _band(ax, xs, ivs, f"{t}, {blocks_text(b)}", colour[t], STYLES[i % len(STYLES)], clip=ACCURACY_RANGE)
    hi, lo = ("3", "1") if {"1", "3"} <= set(block_values) else (block_values[-1], block_values[0])
    for t in targets:
        deltas = {}
        for (tt, n, b, s), by_seed in cells.items():
            if tt == t and s == src and b == hi and (t, n, lo, s) in cells:
                base = cells[(t, n, lo, s)]
                diffs = [by_seed[sd] - base[sd] for sd in by_seed if sd in base]
                if diffs:
                    deltas[n] = Interval.of(diffs)
        if deltas:
            xs = sorted(deltas)
            _band(ax_d, xs, [deltas[x] for x in xs], t, colour[t])
    _size_axis(ax, "test accuracy (%)")
    _size_axis(ax_d, f"{hi} minus {lo} blocks (points)")
    ax_d.axhline(0, color="k", lw=0.8)
    ax.legend(fontsize=7, ncol=2)
    ax_d.legend(fontsize=7)
    fig.suptitle(f"Fine-tuned blocks, source {src} (mean, 95% CI over seeds; {which} epoch)", fontsize=10)
    fig.tight_layout()
    return fig


def _natural_or_none(sources):
    try:
        return natural_source(sources)
    except UserError:
        return None


def constraints_figure(rows, which="final", blocks=None, **_):
    cells = accuracies(rows, which)
    b = _pick_blocks(cells, blocks)
    table = table5(cells)
    targets, sources = sorted({k[0] for k in cells}), sorted({k[3] for k in cells})
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, len(targets), figsize=(5 * len(targets), 4), squeeze=False)
    for ax, t in zip(axes[0], targets, strict=True):
        for i, s in enumerate(sources):
            xs, ivs = _series(table, t, b, s)
            if xs:
                _band(ax, xs, ivs, s, cmap(i % 10), clip=ACCURACY_RANGE)
        _size_axis(ax, "test accuracy (%)")
        ax.set_title(f"{t}, {blocks_text(b)}", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"Source constraints compared (mean, 95% CI over seeds; {which} epoch)", fontsize=10)
    fig.tight_layout()
    return fig


_DRAW = {"accuracy": accuracy_figure, "delta": delta_figure, "epochs": epochs_figure, "blocks": blocks_figure,
         "constraints": constraints_figure}  # fmt: skip


def draw(rows: list[dict], figure: str, out: Path, progress: Progress | None = None, **options) -> list[Path]:
    """Draw ``figure`` from done ledger rows into ``out/<figure>.png`` and ``.pdf``; return the paths.

    ``progress`` (over every ledger row) writes, under a figure of a partial sweep, how many runs
    are done and which cells have fewer than planned.
    """
    if figure not in FIGURES:
        raise UserError(f"--figure must be one of {', '.join(FIGURES)}; got {figure!r}")
    if not rows:
        raise UserError("the sweep has no finished run yet; nothing to plot")
    fig = _DRAW[figure](rows, **options)
    if progress is not None and not progress.complete:
        cells = [f"{t} n={n} b={b} {s} ({d}/{p})" for (t, n, b, s), (d, p) in progress.incomplete().items()]
        shown = "; ".join(cells[:4]) + (f"; and {len(cells) - 4} more" if len(cells) > 4 else "")
        fig.text(0.01, 0.005, f"{progress.note()} Incomplete: {shown}", fontsize=7, color="firebrick", ha="left",
                 va="bottom", wrap=True)  # fmt: skip
        fig.subplots_adjust(bottom=max(fig.subplotpars.bottom, 0.2))
    paths = [out / f"{figure}.png", out / f"{figure}.pdf"]
    for i, p in enumerate(paths):
        atomic_write_figure(p, fig, close=i == len(paths) - 1)
    return paths


def plot_sweep(sweep: Path | str, figures: list[str], out: Path | str | None = None, allow_partial: bool = False,
               **options) -> list[Path]:  # fmt: skip
    """``robust-transfer plot``: ``figures`` of a sweep into ``out`` (default ``SWEEP/figures``), an
    :class:`~transfer.files.OutputDir` (locked while written, refused when it holds foreign files)."""
    from transfer.files import OutputDir, name_patterns

    for figure in figures:
        if figure not in FIGURES:
            raise UserError(f"--figure must be one of {', '.join(FIGURES)}; got {figure!r}")
    rows, progress = read_sweep_rows(sweep, allow_partial)
    out = Path(out or Path(sweep) / "figures")
    ours = name_patterns(*(f"{f}.{ext}" for f in FIGURES for ext in ("png", "pdf")))
    with OutputDir(out, "figures", ours, adopt=in_sweep(sweep, "figures")):
        return [p for figure in figures for p in draw(rows, figure, out, progress, **options)]
