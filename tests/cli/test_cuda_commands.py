"""Every command on CUDA, compared with the CPU. Skipped without a GPU; run on the device."""

import json

import numpy as np
import pytest

from cli.main import main

pytestmark = pytest.mark.gpu


def _finetune(out, device, blocks="1"):
    argv = ["finetune", "--source", "mnist5k-l2", "--target", "digits", "--blocks", blocks, "--subset", "200",
            "--epochs", "3", "--out", str(out), "--device", device, "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    return json.loads((out / "summary.json").read_text())


def test_finetune_and_evaluate_on_cuda_match_the_cpu_to_a_tolerance(tmp_path):
    cpu, gpu = _finetune(tmp_path / "cpu", "cpu"), _finetune(tmp_path / "gpu", "cuda")
    assert abs(cpu["final_test_acc"] - gpu["final_test_acc"]) <= 0.05
    argv = ["evaluate", "--model", str(tmp_path / "gpu"), "--dataset", "digits", "--device", "cuda", "--no-progress"]
    assert main(argv) == 0


@pytest.mark.parametrize("params,method", [("fc", "auto"), ("fc", "eigh"), ("layer3.1.bn2,fc", "auto"), ("fc", "cg")])
def test_influence_on_cuda_equals_the_cpu(tmp_path, params, method):
    _finetune(tmp_path / "run", "cpu", blocks="0")
    outs = {}
    for device in ("cpu", "cuda"):
        outs[device] = tmp_path / f"inf-{device}"
        argv = ["influence", "--run", str(tmp_path / "run"), "--out", str(outs[device]), "--test", "40",
                "--params", params, "--method", method, "--damping", "0.01", "--device", device, "--no-progress"]  # fmt: skip
        assert main(argv) == 0
    for name in ("influence_test", "influence_train"):
        a, b = np.load(outs["cuda"] / f"{name}.npy"), np.load(outs["cpu"] / f"{name}.npy")
        # float32 networks on two devices give features that differ in the last bits; the algebra is float64
        assert np.max(np.abs(a - b)) <= 1e-4 * np.max(np.abs(b))
    assert main(["class-match", str(outs["cuda"]), "--k", "10"]) == 0
    assert main(["plot-influence", str(outs["cuda"]), "--top", "3"]) == 0


def test_featviz_and_saliency_commands_on_cuda(tmp_path):
    assert main(["featviz", "--model", "mnist5k-l2", "--features", "1,2", "--seeds", "noise:1", "--iterations", "5",
                 "--out", str(tmp_path), "--device", "cuda"]) == 0  # fmt: skip
    assert main(["saliency", "--model", "mnist5k-l2", "--dataset", "mnist5k", "--images", "2", "--out",
                 str(tmp_path), "--device", "cuda"]) == 0  # fmt: skip
    assert list(tmp_path.glob("*.png"))
