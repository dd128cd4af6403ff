import pytest
import torch

from tests.conftest import Killed, kill_after
from transfer.attacks import PGDConfig
from transfer.datasets import Transformed, load_raw_splits
from transfer.evaluation import evaluate_model
from transfer.pretrain import PretrainConfig, pretrain
from transfer.transforms import build_transform
from transfer.zoo import load_source


def test_adversarial_training_raises_robust_accuracy_of_a_tiny_model(tmp_path):
    common = dict(
        dataset="digits",
        resolution=8,
        augment="none",
        epochs=6,
        eval_every=6,
        batch_size=64,
        lr=0.05,
        device="cpu",
        eps=0.5,
        attack_steps=3,
    )
    pretrain(PretrainConfig(constraint="none", **common), tmp_path / "nat", progress=False)
    pretrain(PretrainConfig(constraint="l2", **common), tmp_path / "adv", progress=False)
    _, test = load_raw_splits("digits")
    data = Transformed(test, build_transform(8, train=False))
    attack = PGDConfig("l2", 1.0, steps=10, random_start=False)
    nat = evaluate_model(load_source(tmp_path / "nat").model, data, torch.device("cpu"), attack)
    adv = evaluate_model(load_source(tmp_path / "adv").model, data, torch.device("cpu"), attack)
    assert nat["clean_acc"] > 0.8 and adv["clean_acc"] > 0.6
    assert adv["robust_acc"] > nat["robust_acc"] + 0.1


def test_bad_constraint_is_a_user_error(tmp_path):
    from transfer.errors import UserError

    with pytest.raises(UserError, match="constraint"):
        pretrain(PretrainConfig(constraint="l1"), tmp_path / "x", progress=False)


def test_a_resumed_pretraining_keeps_the_speed_settings_it_started_with(tmp_path, monkeypatch):
    cfg = PretrainConfig(dataset="digits", resolution=8, epochs=2, eval_every=1, batch_size=128, device="cpu")
    with pytest.raises(Killed):
        pretrain(cfg, tmp_path / "r", progress=False, on_epoch_end=kill_after(1))
    monkeypatch.setattr("transfer.precision.BATCHED_VALUES", 0)  # auto's rule now takes the loader at 8 px
    with pytest.warns(UserWarning, match="augment_on 'device'"):
        assert pretrain(cfg, tmp_path / "r", resume=True, progress=False)["augment_on"] == "device"
