"""study.sweeps.figures: the paper's Figures 2-5 drawn from ledger rows."""

import matplotlib.collections
import numpy as np
import pytest

from study.sweeps.figures import accuracy_figure, blocks_figure, delta_figure, draw
from transfer.errors import UserError


def _row(source, seed, acc, n, blocks="1"):
    return {"settings": {"source": source, "target": "digits", "blocks": blocks, "seed": seed}, "n_train": n,
            "final_acc": acc, "best_acc": acc}  # fmt: skip


# two seeds whose accuracies differ a lot: the 95% t interval (t = 12.7 with one degree of freedom) passes 100%
ROWS = [
    _row(source, seed, acc, n, blocks)
    for blocks in ("1", "3")
    for source, accs in (("mnist5k-natural", (0.30, 0.28, 0.70, 0.76)), ("mnist5k-l2", (0.42, 0.40, 0.82, 0.89)))
    for seed, (a100, a400) in zip((20_000_000, 20_100_000), ((accs[0], accs[2]), (accs[1], accs[3])), strict=True)
    for n, acc in ((100, a100), (400, a400))
]


def _bands(ax):
    return [c for c in ax.collections if isinstance(c, matplotlib.collections.PolyCollection)]


def test_the_delta_figure_is_ticked_at_the_subset_sizes():
    # the zero line (axhline, x in axes coordinates 0..1) once entered the size ticks and broke the log axis
    fig = delta_figure(ROWS, blocks="1")
    ax = fig.axes[0]
    assert list(ax.get_xticks()) == [100.0, 400.0]
    assert 0 < ax.get_xlim()[0] < 100 and ax.get_xlim()[1] > 400
    ys = np.concatenate([line.get_ydata() for line in ax.get_lines()[:1]])
    assert np.allclose(ys, [12.0, 12.5])  # mean of (12, 12) and (12, 13) points, robust minus natural
    assert _bands(ax), "the interval is shaded"


def test_accuracy_bands_are_shaded_within_0_and_100_percent():
    for fig in (accuracy_figure(ROWS, blocks="1"), blocks_figure(ROWS)):
        ax = fig.axes[0]
        assert list(ax.get_xticks()) == [100.0, 400.0]
        for band in _bands(ax):
            ys = np.concatenate([path.vertices[:, 1] for path in band.get_paths()])
            assert ys.min() >= 0.0 and ys.max() <= 100.0
        # without clipping the natural source's band at 400 images would reach 73 + 12.7 * 3 = 111%
        assert max(v.vertices[:, 1].max() for b in _bands(ax) for v in b.get_paths()) == pytest.approx(100.0)


def test_draw_refuses_unknown_figures_and_empty_sweeps(tmp_path):
    with pytest.raises(UserError, match="--figure"):
        draw(ROWS, "nonsense", tmp_path)
    with pytest.raises(UserError, match="no finished run"):
        draw([], "accuracy", tmp_path)
    paths = draw(ROWS, "delta", tmp_path, blocks="3")
    assert all(p.stat().st_size > 0 for p in paths)


def test_the_accuracy_figure_tells_sources_apart_by_colour_and_says_one_block():
    fig = accuracy_figure(ROWS, blocks="1")
    ax = fig.axes[0]
    colours = {line.get_label(): line.get_color() for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert colours["digits, mnist5k-natural"] != colours["digits, mnist5k-l2"]
    assert "1 fine-tuned block " in ax.get_title() and "blocks" not in ax.get_title().split("(")[0]


def test_a_partial_sweep_is_plotted_only_when_asked_and_says_so(sweep_factory, tmp_path):
    from study.sweeps.figures import plot_sweep

    sweep = sweep_factory("s", done=3)
    with pytest.raises(UserError, match="is incomplete: 3 of 4 runs done"):
        plot_sweep(sweep, ["accuracy"], blocks="0")
    assert not (sweep / "figures").exists()
    import matplotlib.pyplot as plt

    captured = []
    real_savefig = plt.Figure.savefig
    plt.Figure.savefig = lambda self, *a, **k: (captured.append(self), real_savefig(self, *a, **k))[1]
    try:
        paths = plot_sweep(sweep, ["accuracy"], allow_partial=True, blocks="0")
    finally:
        plt.Figure.savefig = real_savefig
    assert [p.name for p in paths] == ["accuracy.png", "accuracy.pdf"]
    texts = [t.get_text() for t in captured[0].texts]
    assert any("Partial sweep: 3 of 4 runs done" in t and "mnist5k-l2 (1/2)" in t for t in texts)


def test_plot_refuses_a_directory_of_other_files(sweep_factory, tmp_path):
    from study.sweeps.figures import plot_sweep

    user = tmp_path / "u"
    user.mkdir()
    (user / "accuracy.png").write_bytes(b"my own figure")
    with pytest.raises(UserError, match="no .robust-transfer marker"):
        plot_sweep(sweep_factory("s", done=4), ["accuracy"], user, blocks="0")
    assert (user / "accuracy.png").read_bytes() == b"my own figure"


def test_the_epochs_figure_reads_runs_from_the_sweep_wherever_it_is_run(sweep_factory, tmp_path, monkeypatch):
    from study.sweeps.figures import plot_sweep

    sweep = sweep_factory("s", done=4)
    for key in ("mnist5k-natural", "mnist5k-l2"):
        for seed in (20_000_000, 20_100_000):
            run = sweep / "runs" / "digits" / key / "b0" / "n100" / f"s{seed}"
            run.mkdir(parents=True)
            (run / "metrics.jsonl").write_text('{"epoch": 1, "test_acc": 0.5}\n{"epoch": 2, "test_acc": 0.6}\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert plot_sweep(sweep, ["epochs"], size=100)  # run directories found from the ledger's own directory
    for run in (sweep / "runs").rglob("metrics.jsonl"):
        run.unlink()
    with pytest.raises(UserError, match="no metrics.jsonl found"):  # never an empty figure
        plot_sweep(sweep, ["epochs"], size=100)
