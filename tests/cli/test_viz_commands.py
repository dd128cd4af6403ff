import csv

from cli.main import main


def test_featviz_writes_a_grid_and_numbers(tmp_path, capsys):
    argv = [
        "featviz",
        "--model",
        "mnist5k-natural",
        "--model",
        "mnist5k-l2",
        "--features",
        "4,8",
        "--seeds",
        "noise:2",
        "--seeds",
        "grey",
        "--iterations",
        "20",
        "--out",
        str(tmp_path),
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    rows = list(csv.DictReader(open(tmp_path / "featviz.csv")))
    assert len(rows) == 2 * 2 * 3 and {r["seed"] for r in rows} == {"noise0", "noise1", "grey"}
    assert all(float(r["activation"]) > float(r["activation_seed"]) for r in rows)
    assert (tmp_path / "featviz.png").stat().st_size > 10_000


def test_saliency_writes_a_grid_maps_and_concentration(tmp_path, capsys):
    argv = [
        "saliency",
        "--model",
        "mnist5k-natural",
        "--model",
        "mnist5k-l2",
        "--dataset",
        "digits",
        "--images",
        "4",
        "--method",
        "ig",
        "--out",
        str(tmp_path),
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    rows = list(csv.DictReader(open(tmp_path / "saliency_ig.csv")))
    assert len(rows) == 8 and {"edge_correlation", "top5pct_mass"} <= rows[0].keys()
    assert (tmp_path / "saliency_ig.png").stat().st_size > 10_000 and (tmp_path / "saliency_ig.npz").exists()


def test_bad_layer_is_one_line(tmp_path, capsys):
    argv = [
        "featviz",
        "--model",
        "mnist5k-l2",
        "--features",
        "1",
        "--layer",
        "nope",
        "--out",
        str(tmp_path),
        "--device",
        "cpu",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "valid names" in err
