"""Projected gradient descent (PGD) attacks in L2 and Linf, with the `robustness` library's rules.

For an input ``x0`` in [0, 1] and label ``y``, PGD ascends the cross-entropy loss
``L(f(x), y)`` from ``x0`` (or a random point of the ball) for ``steps`` iterations:

* L2:   ``x <- Proj(x + a * g / ||g||_2)``, the ball ``||x - x0||_2 <= eps`` per example;
* Linf: ``x <- Proj(x + a * sign(g))``,     the ball ``||x - x0||_inf <= eps``;

where ``g = dL/dx``, ``a = step_scale * eps / steps`` and ``Proj`` projects onto the ball and then
clamps to [0, 1]. With ``keep_best`` the per-example iterate of highest loss is returned.

Random start (``random_start``): Linf draws ``x0 + U[-eps, eps]^d``; L2 draws a Gaussian direction
and puts it at radius ``eps`` (``random_start_radius="sphere"``, what ``robustness``'s
``L2Step.random_perturb`` does and so what the paper's sources were trained with) or at a radius
uniform in ``[0, eps]`` (``"ball"``, this project's default before 2026-11). Either is then projected
onto [0, 1].
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from transfer import validation as v

CONSTRAINTS = ("l2", "linf")
START_RADII = ("sphere", "ball")


@dataclass(frozen=True)
class PGDConfig:
    """Settings of one PGD attack."""

    constraint: str  # "l2" or "linf"
    eps: float  # radius in [0, 1] pixel units
    steps: int = 7
    step_scale: float = 2.5  # step size = step_scale * eps / steps
    random_start: bool = False
    keep_best: bool = False
    random_start_radius: str = "sphere"  # L2: "sphere" (radius eps, as robustness) or "ball" (uniform in [0, eps])

    def __post_init__(self):
        v.choice("attack", self.constraint, CONSTRAINTS)
        v.choice("random_start_radius", self.random_start_radius, START_RADII)
        v.number("eps", self.eps, low=0)
        v.integer("attack_steps", self.steps, low=1)
        v.number("step_scale", self.step_scale, low=0, low_open=True)

    @property
    def step_size(self) -> float:
        return self.step_scale * self.eps / self.steps


# the help of the PGD settings that ``pretrain`` (training attacks) and ``evaluate`` (test attacks) both offer
ATTACK_HELP = {
    "eps": "attack radius in [0, 1] pixel units",
    "attack_steps": "PGD steps",
    "step_scale": "PGD step size = step_scale * eps / steps",
    "random_start": "start PGD at a random point of the ball",
    "random_start_radius": "L2 random start: sphere (radius eps, as robustness) or ball (radius uniform in [0, eps])",
    "keep_best": "use each image's PGD iterate of highest loss",
}


def attack_field(name: str, default, why: str = ""):
    """A settings-dataclass field for PGD setting ``name`` with its one help text, ``why`` appended."""
    return dataclasses.field(default=default, metadata={"help": ATTACK_HELP[name] + (f" ({why})" if why else "")})


def check_attack_settings(cfg) -> None:
    """The PGD settings of a command's settings dataclass checked as :class:`PGDConfig` checks them."""
    if getattr(cfg, "eps", None) is not None:
        v.number("eps", cfg.eps, low=0)
    v.integer("attack_steps", cfg.attack_steps, low=1)
    v.number("step_scale", cfg.step_scale, low=0, low_open=True)
    v.choice("random_start_radius", cfg.random_start_radius, START_RADII)


def attack_from(cfg, constraint: str, eps: float) -> PGDConfig:
    """The :class:`PGDConfig` of a command's PGD settings (fields named as :data:`ATTACK_HELP`)."""
    return PGDConfig(constraint, eps, cfg.attack_steps, cfg.step_scale, random_start=cfg.random_start,
                     keep_best=cfg.keep_best, random_start_radius=cfg.random_start_radius)  # fmt: skip


def _per_example_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def project(x: torch.Tensor, x0: torch.Tensor, constraint: str, eps: float) -> torch.Tensor:
    """Project ``x`` onto the eps-ball around ``x0`` (per example), then onto [0, 1]."""
    delta = x - x0
    if constraint == "l2":
        delta = delta * torch.clamp(eps / (_per_example_norm(delta) + 1e-12), max=1.0)
    else:
        delta = delta.clamp(-eps, eps)
    return (x0 + delta).clamp(0.0, 1.0)


def _step(x: torch.Tensor, grad: torch.Tensor, constraint: str, size: float) -> torch.Tensor:
    if constraint == "l2":
        return x + size * grad / (_per_example_norm(grad) + 1e-10)
    return x + size * grad.sign()


def _random_start(x0: torch.Tensor, constraint: str, eps: float, radius: str = "sphere") -> torch.Tensor:
    if constraint == "l2":
        noise = torch.randn_like(x0)
        if radius == "sphere":
            r = torch.full((x0.shape[0], *([1] * (x0.dim() - 1))), eps, dtype=x0.dtype, device=x0.device)
        else:
            r = eps * torch.rand(x0.shape[0], *([1] * (x0.dim() - 1)), dtype=x0.dtype, device=x0.device)
        return x0 + noise / (_per_example_norm(noise) + 1e-12) * r
    return x0 + torch.empty_like(x0).uniform_(-eps, eps)


def pgd_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: PGDConfig) -> torch.Tensor:
    """Return adversarial inputs ``(B, C, H, W)`` in [0, 1] within ``cfg.eps`` of ``x``.

    The model is used as given (put it in eval mode first, as the `robustness` library does);
    its parameters receive no gradient.
    """
    x0 = x.detach()
    if cfg.eps == 0:
        return x0.clone()
    adv = (
        project(_random_start(x0, cfg.constraint, cfg.eps, cfg.random_start_radius), x0, cfg.constraint, cfg.eps)
        if cfg.random_start
        else x0.clone()
    )
    # the running best loss in the loss's own dtype (a float32 input into a float64 model gives a float64 loss)
    best, best_loss = adv.clone(), None
    for _ in range(cfg.steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(adv), y, reduction="none")
        (grad,) = torch.autograd.grad(loss.sum(), adv)
        with torch.no_grad():
            if cfg.keep_best:
                best_loss = torch.full_like(loss, -float("inf")) if best_loss is None else best_loss
                better = loss.detach() > best_loss
                best[better], best_loss[better] = adv.detach()[better], loss.detach()[better]
            adv = project(_step(adv.detach(), grad, cfg.constraint, cfg.step_size), x0, cfg.constraint, cfg.eps)
    if cfg.keep_best:
        with torch.no_grad():
            loss = F.cross_entropy(model(adv), y, reduction="none")
            better = loss > best_loss if best_loss is not None else torch.ones_like(loss, dtype=torch.bool)
            best[better] = adv[better]
        return best
    return adv.detach()
