import pytest
import torch
import torch.nn.functional as F

from transfer.attacks import PGDConfig, pgd_attack
from transfer.models import build_model


@pytest.fixture(scope="module")
def model_and_batch():
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model("small_resnet", 10).eval()
    x = torch.rand(16, 3, 28, 28, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    return model, x, y


@pytest.mark.parametrize("constraint,eps", [("l2", 0.5), ("linf", 8 / 255)])
@pytest.mark.parametrize("random_start", [False, True])
@pytest.mark.parametrize("keep_best", [False, True])
def test_pgd_stays_in_the_ball_and_the_box_and_raises_the_loss(
    model_and_batch, constraint, eps, random_start, keep_best
):
    model, x, y = model_and_batch
    cfg = PGDConfig(constraint, eps, steps=5, random_start=random_start, keep_best=keep_best)
    adv = pgd_attack(model, x, y, cfg)
    delta = (adv - x).flatten(1)
    norms = delta.norm(dim=1) if constraint == "l2" else delta.abs().max(dim=1).values
    assert (norms <= eps + 1e-5).all()
    assert adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y, reduction="none")
        attacked = F.cross_entropy(model(adv), y, reduction="none")
    assert attacked.mean() > clean.mean()
    assert (attacked >= clean - 1e-4).float().mean() >= 0.9
    assert not any(p.grad is not None for p in model.parameters())


def test_keep_best_is_never_worse_than_the_last_iterate(model_and_batch):
    model, x, y = model_and_batch
    last = pgd_attack(model, x, y, PGDConfig("l2", 2.0, steps=4, step_scale=4.0))
    best = pgd_attack(model, x, y, PGDConfig("l2", 2.0, steps=4, step_scale=4.0, keep_best=True))
    with torch.no_grad():
        assert (
            F.cross_entropy(model(best), y, reduction="none")
            >= F.cross_entropy(model(last), y, reduction="none") - 1e-5
        ).all()


def test_step_size_rule():
    assert PGDConfig("linf", 0.1, steps=10, step_scale=2.5).step_size == pytest.approx(0.025)
    with pytest.raises(ValueError):
        PGDConfig("l1", 0.1)
