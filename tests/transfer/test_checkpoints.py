import argparse

import pytest
import torch

from transfer.checkpoints import save_checkpoint
from transfer.errors import UserError
from transfer.models import IMAGENET_MEAN, build_model
from transfer.zoo import load_source


@pytest.fixture(scope="module")
def resnet50():
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = build_model("resnet50", 1000, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3)).eval()
    return model


@pytest.fixture(scope="module")
def probe():
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _same_outputs(a, b, x):
    with torch.no_grad():
        return torch.allclose(a.eval()(x), b.eval()(x), atol=1e-5)


def test_robustness_library_checkpoint_round_trips(tmp_path, resnet50, probe):
    net = resnet50.model.state_dict()
    sd = {
        "module.normalizer.new_mean": resnet50.normalizer.mean.clone(),
        "module.normalizer.new_std": resnet50.normalizer.std.clone(),
    }
    sd |= {f"module.model.{k}": v for k, v in net.items()}
    sd |= {f"module.attacker.model.{k}": v.clone() for k, v in net.items()}
    sd |= {
        "module.attacker.normalize.new_mean": resnet50.normalizer.mean.clone(),
        "module.attacker.normalize.new_std": resnet50.normalizer.std.clone(),
    }
    torch.save(
        {"model": sd, "optimizer": {"state": {}, "param_groups": []}, "schedule": None, "epoch": 90},
        tmp_path / "robust.ckpt",
    )
    loaded = load_source(tmp_path / "robust.ckpt")
    assert loaded.arch == "resnet50" and loaded.input_size == 224
    assert torch.allclose(loaded.model.normalizer.std.flatten(), torch.tensor([0.2, 0.25, 0.3]))
    assert _same_outputs(loaded.model, resnet50, probe)
    torch.save({"state_dict": sd}, tmp_path / "robust2.ckpt")  # robust-models-transfer's other key
    assert _same_outputs(load_source(tmp_path / "robust2.ckpt").model, resnet50, probe)


def test_torchvision_weight_file_round_trips_with_imagenet_normalisation(tmp_path, resnet50, probe):
    torch.save(resnet50.model.state_dict(), tmp_path / "tv.pth")
    loaded = load_source(tmp_path / "tv.pth", arch="resnet50")
    assert torch.allclose(loaded.model.normalizer.mean.flatten(), torch.tensor(IMAGENET_MEAN))
    with torch.no_grad():
        assert torch.allclose(loaded.model.model.eval()(probe), resnet50.model(probe), atol=1e-5)


def test_own_format_and_plain_normalized_state_dict_round_trip(tmp_path, resnet50, probe):
    save_checkpoint(tmp_path / "own.pt", resnet50, "resnet50", 224, {"k": 1})
    loaded = load_source(tmp_path / "own.pt")
    assert loaded.meta == {"k": 1} and _same_outputs(loaded.model, resnet50, probe)
    torch.save(resnet50.state_dict(), tmp_path / "plain.pt")
    assert _same_outputs(load_source(tmp_path / "plain.pt").model, resnet50, probe)


def test_pickled_objects_are_refused_not_executed(tmp_path, resnet50):
    torch.save({"model": resnet50.model.state_dict(), "args": argparse.Namespace(lr=0.1)}, tmp_path / "unsafe.ckpt")
    with pytest.raises(UserError, match="cannot be read safely"):
        load_source(tmp_path / "unsafe.ckpt")


def test_wrong_architecture_is_a_clear_error(tmp_path, resnet50):
    torch.save(resnet50.model.state_dict(), tmp_path / "tv.pth")
    with pytest.raises(UserError, match="does not fit architecture 'resnet18'"):
        load_source(tmp_path / "tv.pth", arch="resnet18")
    with pytest.raises(UserError, match="neither a source name"):
        load_source(tmp_path / "missing.pt")


def test_non_finite_weights_are_refused_with_their_names(tmp_path, small_checkpoint):
    from transfer.checkpoints import load_checkpoint
    from transfer.errors import UserError

    ckpt = torch.load(small_checkpoint, weights_only=True)
    ckpt["state_dict"]["model.fc.bias"][0] = float("inf")
    torch.save(ckpt, tmp_path / "inf.pt")
    with pytest.raises(UserError, match=r"inf.pt holds non-finite weights \(NaN or Inf in fc.bias\)"):
        load_checkpoint(tmp_path / "inf.pt")
