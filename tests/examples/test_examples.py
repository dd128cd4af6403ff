"""The scripts under examples/ run as documented (on small settings where the documented ones take minutes)."""

import importlib.util
from pathlib import Path

import numpy as np

from study.attribution.store import InfluenceDir

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_influence_on_your_own_model_needs_interp_alone(tmp_path):
    source = (EXAMPLES / "influence_own_model.py").read_text()
    assert "transfer" not in [line.split()[1].split(".")[0] for line in source.splitlines()
                              if line.startswith(("import ", "from "))]  # fmt: skip
    report = _load("influence_own_model").main(str(tmp_path / "heat.png"))
    paper, exact = report["paper"], report["exact"]
    kept = lambda r: int(r["kept"].split("/")[0])  # noqa: E731
    assert kept(paper) < kept(exact)  # the paper's cut-off keeps fewer directions
    assert paper["influence"].shape == exact["influence"].shape == (400, 1000)
    assert 0.1 < paper["top1"] <= 1 and 0.1 < exact["top1"] <= 1  # above chance (0.1) for a trained net
    assert (tmp_path / "heat.png").stat().st_size > 0


def test_the_cpu_quick_start_through_the_api(tmp_path):
    result = _load("cpu_quickstart").main(str(tmp_path), subset=100, epochs=2, test="50")
    for d in result["dirs"].values():
        res = InfluenceDir(d).read()
        assert np.asarray(res["influence_test"]).shape == (50, 100)
    assert ("rcond=paper damping=0", "test") in result["paired"]


def test_the_section6_script_on_the_embedded_data(tmp_path):
    report = _load("cifar10_influence_gpu").main(
        [
            "--out",
            str(tmp_path / "s6"),
            "--target",
            "digits",
            "--sources",
            "mnist5k-natural,mnist5k-l2",
            "--size",
            "60",
            "--blocks",
            "0",
            "--seeds",
            "2",
            "--epochs",
            "2",
            "--rcond",
            "paper,exact",
            "--test",
            "30",
            "--device",
            "cpu",
        ]  # fmt: skip
    )
    assert report["seeds"] == [20000000, 20100000]
    assert {r["setting"] for r in report["differences"]} == {"rcond=paper damping=0", "rcond=exact damping=0"}
