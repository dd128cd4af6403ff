import json

import pytest

from cli.main import main


def _one_line_error(capsys, argv, match):
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert match in err
    return err


@pytest.mark.parametrize(
    "argv,match",
    [
        (
            ["finetune", "--source", "mnist5k-l2", "--target", "imagenette", "--out", "{tmp}/a"],
            "unknown dataset 'imagenette'; choose one of: mnist5k, digits",
        ),
        (
            ["finetune", "--source", "resnet51", "--target", "digits", "--out", "{tmp}/b"],
            "neither a source name (resnet50-natural",
        ),
        (["finetune", "--source", "{tmp}/none.pt", "--target", "digits", "--out", "{tmp}/c"], "neither a source name"),
        (
            ["finetune", "--source", "mnist5k-l2", "--target", "digits", "--subset", "5", "--out", "{tmp}/d"],
            "cannot cover 10 classes",
        ),
        (
            ["finetune", "--source", "mnist5k-l2", "--target", "digits", "--subset", "99999", "--out", "{tmp}/e"],
            "larger than the split it is drawn from (1437 images)",
        ),
        (
            ["finetune", "--source", "mnist5k-l2", "--target", "digits", "--blocks", "9", "--out", "{tmp}/f"],
            "exceeds the 6 residual blocks",
        ),
        (
            ["finetune", "--source", "mnist5k-l2", "--arch", "resnet50", "--target", "digits", "--out", "{tmp}/g"],
            "not a resnet50",
        ),
        (["evaluate", "--model", "mnist5k-l2", "--dataset", "digits", "--device", "cuda"], "no CUDA device"),
        (["finetune", "--target", "digits"], "required: --source"),
    ],
)
def test_user_errors_are_one_line_without_traceback(capsys, tmp_path, argv, match):
    import torch

    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    _one_line_error(capsys, [a.replace("{tmp}", str(tmp_path)) for a in argv], match)


def test_wrong_architecture_for_a_plain_checkpoint(capsys, tmp_path, small_checkpoint):
    import torch

    torch.save(torch.load(small_checkpoint, weights_only=True)["state_dict"], tmp_path / "plain.pt")
    _one_line_error(
        capsys,
        ["evaluate", "--model", str(tmp_path / "plain.pt"), "--arch", "resnet18", "--dataset", "digits"],
        "does not fit architecture 'resnet18'",
    )


def test_sources_marks_the_embedded_ones_present(capsys):
    assert main(["sources"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.strip().startswith("mnist5k-l2") and "present" in line for line in lines)
    assert any(line.strip().startswith("resnet50-linf-8 ") for line in lines)
    # both robust families, each file's SHA-256 rule stated
    assert any(line.startswith("engstrom2019:") and "the paper's" in line for line in lines)
    assert any(line.startswith("salman2020:") and "not the paper's" in line for line in lines)
    pinned = next(line for line in lines if line.strip().startswith("resnet50-l2-3 "))
    assert "published: 380b14e6f9750bffa1447cf7017f65da4dc5ce71a3dd112f107515dcf7b14d9d" in pinned
    assert "recorded at the first download" in next(line for line in lines if "resnet50-linf-8-engstrom" in line)


def test_evaluate_reports_clean_and_robust_accuracy(capsys):
    argv = [
        "evaluate",
        "--model",
        "mnist5k-l2",
        "--dataset",
        "mnist5k",
        "--limit",
        "64",
        "--attack",
        "l2",
        "--eps",
        "1.0",
        "--attack-steps",
        "5",
        "--no-progress",
    ]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 64 and 0.7 < out["clean_acc"] <= 1 and 0 <= out["robust_acc"] <= out["clean_acc"]


def test_finetune_on_digits_from_the_shipped_robust_source_is_far_above_chance(capsys, tmp_path):
    argv = [
        "finetune",
        "--source",
        "mnist5k-l2",
        "--target",
        "digits",
        "--blocks",
        "1",
        "--subset",
        "500",
        "--epochs",
        "6",
        "--batch-size",
        "64",
        "--out",
        str(tmp_path / "run"),
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["final_test_acc"] > 0.8  # chance is 0.1
    assert main(argv[:-3] + ["--resume", "--device", "cpu", "--no-progress"]) == 0  # finished: returns the summary
