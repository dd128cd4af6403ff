import csv
import json

import numpy as np
import pytest

from cli.main import main


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for source in ("mnist5k-l2", "mnist5k-natural"):
        argv = [
            "finetune",
            "--source",
            source,
            "--target",
            "digits",
            "--blocks",
            "0",
            "--subset",
            "80",
            "--epochs",
            "2",
            "--augment",
            "none",
            "--out",
            str(root / source),
            "--device",
            "cpu",
            "--no-progress",
        ]
        assert main(argv) == 0
    return root


def test_influence_class_match_and_plots_end_to_end(runs, tmp_path, capsys):
    outs = []
    for source in ("mnist5k-l2", "mnist5k-natural"):
        out = tmp_path / f"inf-{source}"
        assert main(["influence", "--run", str(runs / source), "--out", str(out), "--test", "30", "--no-progress"]) == 0
        outs.append(out)
    out = outs[0]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["n_train"] == 80 and meta["n_test"] == 30 and "Negative = helpful" in meta["sign_convention"]
    # the softmax null space (D+1 = 65) is removed exactly; the rest is kept or dropped by the cut-off
    assert meta["null_space_dim_removed"] == 65
    assert meta["rank_kept"] + meta["inverse"]["n_dropped"] == 9 * 65
    assert np.load(out / "influence_test.npy").shape == (30, 80)
    assert np.load(out / "influence_train.npy").shape == (80, 80)
    assert np.load(out / "hessian.npy").shape == (650, 650)
    subset = json.loads((runs / "mnist5k-l2" / "subset.json").read_text())
    assert np.load(out / "idx_train.npy").tolist() == subset["indices"]
    assert np.load(out / "y_train.npy").tolist() == subset["labels"]
    spectrum = np.load(out / "spectrum.npy")
    assert (spectrum[:65] == 0).all() and spectrum.max() == meta["largest_eigenvalue"] > 0

    capsys.readouterr()
    assert main(["class-match", *map(str, outs), "--k", "10", "--exclude-self"]) == 0
    rows = list(csv.DictReader(open(out / "class_match.csv")))
    assert len(rows) == 2 * 2 * 10 and {r["target"] for r in rows} == {"test", "train"}
    assert all(0 <= float(r["match_rate"]) <= 1 for r in rows)
    assert (out / "class_match.png").stat().st_size > 10_000

    assert main(["plot-influence", *map(str, outs), "--top", "4"]) == 0
    for name in ("influence_heatmap.png", f"influence_grid_{out.name}.png", f"influence_grid_{outs[1].name}.png"):
        assert (out / name).stat().st_size > 10_000


def test_generic_parameters_and_the_size_guard(runs, tmp_path, capsys):
    out = tmp_path / "generic"
    argv = [
        "influence",
        "--run",
        str(runs / "mnist5k-l2"),
        "--out",
        str(out),
        "--test",
        "10",
        "--params",
        "layer3.1.bn2,fc",
        "--damping",
        "0.01",
        "--no-progress",
    ]
    assert main(argv) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["params"][0] == "model.layer3.1.bn2.weight" and len(meta["params"]) == 4
    assert np.load(out / "influence_test.npy").shape == (10, 80)
    assert np.load(out / "hessian.npy").shape == (778, 778)
    capsys.readouterr()
    assert (
        main(
            [
                "influence",
                "--run",
                str(runs / "mnist5k-l2"),
                "--out",
                str(tmp_path / "big"),
                "--params",
                "model",
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "matrix-free" in err and len(err.strip().splitlines()) == 1


def test_sensitivity_class_match_with_intervals_and_a_paired_difference(runs, tmp_path, capsys):
    outs = []
    for source in ("mnist5k-l2", "mnist5k-natural"):
        out = tmp_path / f"sens-{source}"
        argv = ["influence", "--run", str(runs / source), "--out", str(out), "--test", "30",
                "--rcond", "paper,1e-3,exact", "--normalize", "relatif", "--no-progress"]  # fmt: skip
        assert main(argv) == 0
        outs.append(out)
    meta = json.loads((outs[0] / "meta.json").read_text())
    assert meta["normalize"] == "relatif" and [s["rcond_name"] for s in meta["settings"]] == ["paper", None, "exact"]
    capsys.readouterr()
    assert main(["class-match", *map(str, outs), "--k", "5"]) == 0
    printed = capsys.readouterr().out
    assert "rcond=paper damping=0" in printed and "paired" in printed and "(95% bootstrap)" in printed
    rows = list(csv.DictReader(open(outs[0] / "class_match.csv")))
    assert len(rows) == 2 * 3 * 2 * 5  # dirs x settings x targets x ranks
    for r in rows:
        assert float(r["top1_low"]) <= float(r["match_rate"]) <= float(r["top1_high"]) or r["rank"] != "1"
    paired = list(csv.DictReader(open(outs[0] / "class_match_paired.csv")))
    assert {p["setting"] for p in paired} == {s["label"] for s in meta["settings"]}
    for p in paired:
        assert float(p["low"]) <= float(p["difference"]) <= float(p["high"])
    assert (outs[0] / "class_match_sensitivity.png").stat().st_size > 10_000


def test_streamed_gradients_through_the_cli_end_in_the_printout_not_a_traceback(runs, tmp_path, capsys):
    out = tmp_path / "stream"
    capsys.readouterr()
    assert main(["influence", "--run", str(runs / "mnist5k-l2"), "--out", str(out), "--params", "layer3.1.bn2,fc",
                 "--method", "ggn", "--rcond", "paper", "--gradients", "stream", "--test", "20", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "rcond=paper damping=0" in printed and "of the training gradients' squared norm" in printed
    assert "(not computed)" not in printed


def test_overlapping_paths_through_ekfac_name_each_tensor_once(runs, tmp_path):
    out = tmp_path / "overlap"
    assert main(["influence", "--run", str(runs / "mnist5k-l2"), "--out", str(out), "--method", "ekfac",
                 "--params", "layer3.1,layer3.1.conv2,fc", "--damping", "1e-3", "--test", "20", "--no-progress"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert len(meta["params"]) == len(set(meta["params"])) == 8
