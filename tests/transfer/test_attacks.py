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


def test_the_l2_random_start_lies_on_the_sphere_as_in_robustness():
    from transfer.attacks import _random_start

    torch.manual_seed(0)
    x0 = torch.full((2000, 3, 8, 8), 0.5)
    eps = 0.3  # small enough that no start is clamped to [0, 1]

    def radii(kind):
        return (_random_start(x0, "l2", eps, kind) - x0).flatten(1).norm(dim=1)

    sphere, ball = radii("sphere"), radii("ball")
    # robustness's L2Step.random_perturb: x + eps * r / ||r||, every start at radius eps
    assert torch.allclose(sphere, torch.full_like(sphere, eps), rtol=1e-5)
    assert PGDConfig("l2", eps).random_start_radius == "sphere"
    # the other option, by name: radius uniform in [0, eps] (mean eps / 2, quartiles eps / 4, 3 eps / 4)
    q = torch.quantile(ball, torch.tensor([0.25, 0.5, 0.75]))
    assert torch.allclose(q, torch.tensor([0.25, 0.5, 0.75]) * eps, atol=0.03 * eps)
    with pytest.raises(ValueError, match="random-start-radius must be one of sphere, ball"):
        PGDConfig("l2", eps, random_start_radius="shell")


def test_keep_best_works_for_a_float64_model():
    from transfer.zoo import load_source

    model = load_source("mnist5k-l2").model.double().eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 28, 28, generator=g, dtype=torch.float64)
    y = torch.tensor([1, 7])
    adv = pgd_attack(model, x, y, PGDConfig("l2", 1.0, 2, keep_best=True, random_start=True))
    assert adv.dtype == torch.float64 and adv.shape == x.shape
    assert float((adv - x).flatten(1).norm(dim=1).max()) <= 1.0 + 1e-9


def test_keep_best_takes_the_losss_dtype_for_a_float32_input_into_a_float64_model():
    from transfer.zoo import load_source

    model = load_source("mnist5k-l2").model.double().eval()
    x = torch.rand(2, 3, 28, 28, generator=torch.Generator().manual_seed(0))  # float32 images
    adv = pgd_attack(model, x, torch.tensor([1, 7]), PGDConfig("l2", 1.0, 2, keep_best=True))
    assert adv.dtype == torch.float32 and float((adv - x).flatten(1).norm(dim=1).max()) <= 1.0 + 1e-5
