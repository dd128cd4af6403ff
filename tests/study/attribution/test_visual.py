"""The Python twins of featviz, saliency, plot-influence and class-match's files."""

import pytest

from interp.viz import FeatVizConfig
from study.attribution.class_match import class_match_report, write_class_match
from study.attribution.visual import featviz_to_dir, plot_influence_dirs, saliency_to_dir
from transfer.errors import UserError


def test_featviz_and_saliency_from_python_write_what_the_commands_write(tmp_path):
    report = featviz_to_dir(["mnist5k-natural", "mnist5k-l2"], "4,7", tmp_path / "fv", FeatVizConfig(iterations=2),
                            ["noise:1"], device="cpu")  # fmt: skip
    assert set(report["results"]) == {"mnist5k-natural", "mnist5k-l2"} and len(report["rows"]) == 2 * 2
    assert all(p.stat().st_size > 0 for p in report["paths"])
    sal = saliency_to_dir(["mnist5k-l2"], "digits", tmp_path / "sal", images="3", device="cpu")
    assert len(sal["rows"]) == 3 and set(sal["concentration"]) == {"mnist5k-l2"}
    assert [p.suffix for p in sal["paths"]] == [".png", ".npz", ".csv"] and all(p.exists() for p in sal["paths"])
    (tmp_path / "fv" / "mine.txt").write_text("x")
    with pytest.raises(UserError, match="not robust-transfer's featviz"):
        featviz_to_dir(["mnist5k-l2"], "4", tmp_path / "fv", FeatVizConfig(iterations=1), device="cpu")


def test_influence_figures_and_class_match_files_from_python(influence_out, tmp_path):
    paths = plot_influence_dirs([str(influence_out)], top=3, png_dir=tmp_path)
    assert [p.name for p in paths] == ["influence_heatmap.png", f"influence_grid_{influence_out.name}.png"]
    report = class_match_report([str(influence_out)], k=10)
    written = write_class_match(report, tmp_path / "cm.csv")
    assert [p.name for p in written][:2] == ["cm.csv", "cm.png"] and all(p.exists() for p in written)
