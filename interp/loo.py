"""Leave-one-out retraining of a softmax linear head: the ground truth that influence predicts.

The head ``logits = W z + b`` is fitted to the optimum of the regularised objective

    R(theta) = 1/n sum_i w_i CE(W z_i + b, y_i) + lam/2 (||W||^2 + ||b||^2),

(``lam`` the fine-tune's weight decay, which SGD applies to the bias too), whose Hessian is
``H + lam I`` with ``H`` the Hessian of the mean loss. Removing training point ``j`` (``w_j = 0``)
is up-weighting it by ``-1/n``, so influence with ``damping = lam`` predicts the change of test
loss ``t`` as ``-I[t, j] / n``; :func:`leave_one_out` measures it by refitting (warm start).
Influence is only meaningful at a stationary point of ``R``: :func:`refit_head` reports the
gradient norm it reached and how far the head moved from where it started.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from interp.errors import InterpError


def objective(w: torch.Tensor, b: torch.Tensor, z, y, lam: float, weights=None) -> torch.Tensor:
    """``R(theta)`` above (mean over the weights' total ``n``, not over the kept points)."""
    losses = F.cross_entropy(z @ w.T + b, y, reduction="none")
    if weights is not None:
        losses = losses * weights
    return losses.sum() / len(y) + lam / 2 * ((w**2).sum() + (b**2).sum())


def gradient_norm(w: torch.Tensor, b: torch.Tensor, z, y, lam: float, weights=None) -> float:
    """``||grad R(theta)||`` at ``theta = (w, b)`` in float64: zero at a stationary point, where influence applies."""
    w = w.detach().to(torch.float64).requires_grad_(True)
    b = b.detach().to(torch.float64).requires_grad_(True)
    gw, gb = torch.autograd.grad(objective(w, b, z.to(torch.float64), y.to(z.device), lam, weights), (w, b))
    return float(torch.sqrt((gw**2).sum() + (gb**2).sum()))


def refit_head(
    z: torch.Tensor,
    y: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    lam: float,
    *,
    weights: torch.Tensor | None = None,
    max_rounds: int = 20,
    tol: float = 1e-10,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Minimise ``R`` from ``(weight, bias)`` in float64 with L-BFGS (strong Wolfe) until the gradient
    norm is below ``tol`` or ``max_rounds`` rounds of 500 iterations. Returns ``(W, b, info)`` with
    ``info = {"grad_norm_before", "grad_norm", "moved", "relative_move"}``; the inputs are not changed."""
    if not (np.isfinite(lam) and lam >= 0):
        raise InterpError(f"the L2 strength must be a finite number >= 0, got {lam}")
    z, y = z.to(torch.float64), y.to(z.device)
    w0, b0 = weight.detach().to(torch.float64), bias.detach().to(torch.float64)
    w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)

    def grad_norm() -> float:
        return gradient_norm(w, b, z, y, lam, weights)

    before = grad_norm()
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=500, tolerance_grad=tol / 10, tolerance_change=1e-16,
                            history_size=50, line_search_fn="strong_wolfe")  # fmt: skip

    def closure():
        opt.zero_grad()
        value = objective(w, b, z, y, lam, weights)
        value.backward()
        return value

    reached = before
    for _ in range(max_rounds):
        opt.step(closure)
        reached = grad_norm()
        if reached < tol:
            break
    moved = float(torch.sqrt(((w.detach() - w0) ** 2).sum() + ((b.detach() - b0) ** 2).sum()))
    size = float(torch.sqrt((w0**2).sum() + (b0**2).sum()))
    info = {
        "grad_norm_before": before,
        "grad_norm": reached,
        "moved": moved,
        "relative_move": moved / max(size, 1e-300),
    }
    return w.detach(), b.detach(), info


def leave_one_out(
    z_train: torch.Tensor,
    y_train: torch.Tensor,
    z_test: torch.Tensor,
    y_test: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    lam: float,
    pairs: list[tuple[int, int]],
) -> np.ndarray:
    """Actual change of test loss ``t`` when training point ``j`` is removed and the head refitted
    (warm start from the optimum ``(weight, bias)``), for every ``(t, j)`` in ``pairs``."""
    z_test = z_test.to(torch.float64)

    def test_loss(w, b, t):
        return float(F.cross_entropy(z_test[t : t + 1] @ w.T + b, y_test[t : t + 1]))

    out = []
    for t, j in pairs:
        keep = torch.ones(len(y_train), dtype=torch.float64, device=z_train.device)
        keep[j] = 0.0
        w, b, _ = refit_head(z_train, y_train, weight, bias, lam, weights=keep)
        out.append(test_loss(w, b, t) - test_loss(weight.to(torch.float64), bias.to(torch.float64), t))
    return np.array(out)
