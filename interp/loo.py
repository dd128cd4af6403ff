"""Leave-one-out retraining of a softmax linear head: the ground truth that influence predicts.

The head ``logits = W z + b`` is fitted to the optimum of the regularised objective

    R(theta) = 1/n sum_i w_i CE(W z_i + b, y_i) + lam/2 (||W||^2 + ||b||^2),

(``lam`` the fine-tune's weight decay, which SGD applies to the bias too), whose Hessian is
``H + lam I`` with ``H`` the Hessian of the mean loss. Removing training point ``j`` (``w_j = 0``)
is up-weighting it by ``-1/n``, so influence with ``damping = lam`` predicts the change of test
loss ``t`` as ``-I[t, j] / n``; :func:`leave_one_out` measures it by refitting (warm start), once per
removed point whatever the test images. Influence is only meaningful at a stationary point of ``R``:
:func:`refit_head` reports the gradient norm it reached and how far the head moved from where it started.

The refit is Newton's method where the head's Hessian is small (``C (D + 1)`` up to :data:`NEWTON_MAX`
parameters; the digits heads here have 650): with ``x~ = [z; 1]`` and ``p = softmax``,

    grad R = 1/n sum_i w_i (p_i - e_{y_i}) x~_i^T + lam theta,
    hess R = 1/n sum_i w_i (diag(p_i) - p_i p_i^T) (x) x~_i x~_i^T + lam I,

a Cholesky solve a step with a backtracking (Armijo) line search, quadratic convergence from the warm start in a
few steps where L-BFGS takes hundreds of line-search evaluations (the demo's leave-one-out checks: about 30x
faster). Written here because no library fits a weighted, L2-regularised multinomial logistic regression with a
bias under the same penalty to a gradient norm of 1e-10 from a given start. Larger heads (ResNet-50's 20,490
parameters: a 3.4 GB Hessian, 3 TFLOP a solve) use L-BFGS (strong Wolfe), as does ``solver="lbfgs"``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from interp.errors import InterpError

NEWTON_MAX = 2048  # head parameters C (D + 1) up to which the refit is Newton's method (a 32 MiB float64 Hessian)
SOLVERS = ("auto", "newton", "lbfgs")


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
    solver: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Minimise ``R`` from ``(weight, bias)`` in float64 until the gradient norm is below ``tol``: Newton's method
    (``solver`` ``newton``, or ``auto`` up to :data:`NEWTON_MAX` parameters; at most ``25 max_rounds`` steps) or
    L-BFGS with strong Wolfe line search (``lbfgs``, or ``auto`` above; ``max_rounds`` rounds of 500 iterations).
    Returns ``(W, b, info)`` with ``info = {"grad_norm_before", "grad_norm", "moved", "relative_move",
    "solver"}``; the inputs are not changed. ``lam`` must be > 0 for Newton (its Hessian is then positive
    definite); ``auto`` takes L-BFGS at ``lam = 0``."""
    if not (np.isfinite(lam) and lam >= 0):
        raise InterpError(f"the L2 strength must be a finite number >= 0, got {lam}")
    if solver not in SOLVERS:
        raise InterpError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    z, y = z.to(torch.float64), y.to(z.device)
    w0, b0 = weight.detach().to(torch.float64), bias.detach().to(torch.float64)
    before = gradient_norm(w0, b0, z, y, lam, weights)
    if solver == "auto":
        solver = "newton" if lam > 0 and w0.numel() + b0.numel() <= NEWTON_MAX else "lbfgs"
    if solver == "newton":
        if not lam > 0:
            raise InterpError("Newton's refit needs an L2 strength > 0 (a positive definite Hessian); use lbfgs")
        w, b = _newton(z, y, w0, b0, lam, weights, tol, 25 * max_rounds)
    else:
        w, b = _lbfgs(z, y, w0, b0, lam, weights, tol, max_rounds)
    reached = gradient_norm(w, b, z, y, lam, weights)
    moved = float(torch.sqrt(((w - w0) ** 2).sum() + ((b - b0) ** 2).sum()))
    size = float(torch.sqrt((w0**2).sum() + (b0**2).sum()))
    info = {
        "grad_norm_before": before,
        "grad_norm": reached,
        "moved": moved,
        "relative_move": moved / max(size, 1e-300),
        "solver": solver,
    }
    return w, b, info


def _lbfgs(z, y, w0, b0, lam: float, weights, tol: float, max_rounds: int) -> tuple[torch.Tensor, torch.Tensor]:
    w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=500, tolerance_grad=tol / 10, tolerance_change=1e-16,
                            history_size=50, line_search_fn="strong_wolfe")  # fmt: skip

    def closure():
        opt.zero_grad()
        value = objective(w, b, z, y, lam, weights)
        value.backward()
        return value

    for _ in range(max_rounds):
        opt.step(closure)
        if gradient_norm(w, b, z, y, lam, weights) < tol:
            break
    return w.detach(), b.detach()


def _newton(z, y, w0, b0, lam: float, weights, tol: float, max_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Newton's method on ``theta = [W, b]`` ``(C, D + 1)`` with the gradient and Hessian of the module's docstring
    and an Armijo backtracking line search; stops below ``tol`` or after ``max_steps`` steps."""
    n, c = len(y), w0.shape[0]
    x = torch.cat([z, torch.ones(n, 1, dtype=z.dtype, device=z.device)], dim=1)  # (n, D + 1)
    wt = torch.ones(n, dtype=z.dtype, device=z.device) if weights is None else weights.to(z.dtype)
    onehot = F.one_hot(y, c).to(z.dtype)
    theta = torch.cat([w0, b0[:, None]], dim=1)

    def value(th: torch.Tensor) -> torch.Tensor:
        return objective(th[:, :-1], th[:, -1], z, y, lam, weights)

    for _ in range(max_steps):
        p = torch.softmax(x @ theta.T, dim=1)  # (n, C)
        grad = ((wt[:, None] * (p - onehot)).T @ x) / n + lam * theta  # (C, D + 1)
        if float(grad.norm()) < tol:
            break
        m = (p[:, :, None] * x[:, None, :]).reshape(n, -1)  # rows p_i (x) x~_i, (n, C (D + 1))
        diag = torch.einsum("ic,ia,ib->cab", wt[:, None] * p, x, x)  # the diag(p_i) part, block c by c
        hess = -(m.T * wt) @ m
        d = x.shape[1]
        for k in range(c):
            hess[k * d : (k + 1) * d, k * d : (k + 1) * d] += diag[k]
        hess = hess / n + lam * torch.eye(c * d, dtype=z.dtype, device=z.device)
        step = torch.cholesky_solve(grad.reshape(-1, 1), torch.linalg.cholesky(hess)).reshape(c, d)
        now, slope, t = value(theta), float((grad * step).sum()), 1.0
        while t > 1e-12 and float(value(theta - t * step)) > float(now) - 1e-4 * t * slope:
            t /= 2
        theta = theta - t * step
    return theta[:, :-1].contiguous(), theta[:, -1].contiguous()


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
    (warm start from the optimum ``(weight, bias)``), for every ``(t, j)`` in ``pairs``; one refit per ``j``."""
    z_test = z_test.to(torch.float64)

    def test_loss(w, b, t):
        return float(F.cross_entropy(z_test[t : t + 1] @ w.T + b, y_test[t : t + 1]))

    refits = {}
    for j in dict.fromkeys(j for _, j in pairs):
        keep = torch.ones(len(y_train), dtype=torch.float64, device=z_train.device)
        keep[j] = 0.0
        refits[j] = refit_head(z_train, y_train, weight, bias, lam, weights=keep)[:2]
    w0, b0 = weight.to(torch.float64), bias.to(torch.float64)
    return np.array([test_loss(*refits[j], t) - test_loss(w0, b0, t) for t, j in pairs])
