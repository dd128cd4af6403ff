"""The proximal Bregman response function (PBRF): what influence functions approximate (Bae et al., NeurIPS 2022).

For training example ``m`` of ``n``, the selected parameters ``theta`` (the rest of the model held fixed) at their
trained values ``theta_s``, and a damping ``lam``, the PBRF response is the minimiser of

    J(theta) = 1/n sum_i D(f(x_i; theta), f(x_i; theta_s)) - eps/n L(f(x_m; theta), y_m) + lam/2 ||theta - theta_s||^2,

warm-started at ``theta_s``. ``D`` is the Bregman divergence of the cross-entropy on the logits, which for a softmax
does not depend on the label: ``D(z, z_s) = KL(softmax(z_s) || softmax(z))``. ``eps = 1`` removes example ``m`` (its
weight down by ``1/n``). The Hessian of ``J`` at ``theta_s`` is ``G + lam I`` (``G``: the GGN of the mean loss), so
to first order ``theta* - theta_s = (eps/n) (G + lam I)^{-1} g_m`` and a test loss changes by ``-(eps/n) I[t, m]``
(this package's sign convention) -- with neither the non-convexity of retraining a network nor the noise of SGD.
Against the PBRF an exact GGN inverse with the same damping should come close to a perfect correlation: the check
that an implementation is right over a non-convex selection, where leave-one-out by retraining cannot tell.

The minimiser is found by L-BFGS (strong Wolfe line search) in float64 on full batches. With a small ``lam`` the
problem is badly conditioned (eigenvalues of ``G + lam I`` from ``lam`` to ``||G||``) and plain L-BFGS crawls, so,
where the GGN's factor fits, it runs in whitened coordinates ``theta = theta_s + W u`` with
``W = (G_s + lam I)^{-1/2}`` (the GGN at ``theta_s``, from its ``n C``-row factor by the Woodbury eigen-form of
:mod:`interp.inverses.lowrank`). That changes the path, not the minimiser: the stopping rule is ``J``'s own
gradient, from autograd, in ``theta``. The solve stops when ``||W grad J||`` (the gradient in the whitened
coordinates, a Newton decrement) is below ``tol`` times its value at ``theta_s`` or after ``max_rounds`` rounds of
``max_iter`` iterations; ``info`` says what was reached, in both norms.

``eps`` < 1 down-weights the example instead of removing it: the Hessian of ``J`` at ``theta_s`` is
``G + lam I - (eps/n) H_m``, whose last term (the removed loss's non-GGN curvature) can outweigh a small ``lam``
and leave ``J`` without a minimum near ``theta_s`` at ``eps = 1`` (measured on the embedded 1-block run at
``lam = 5e-4`` and at the ``source`` damping 1: for its high-loss training images ``J`` keeps falling away from
``theta_s``, and ``theta`` enters the region where the cubic growth of a block's logits beats the quadratic proximity).
A ReLU network's ``J`` is also only piecewise smooth: along its low-curvature directions the Hessian changes by
15% within a move of ``1e-5`` (measured), so the response is linear only for small moves. ``(theta* - theta_s) / eps``
tends, as ``eps -> 0``, to the influence function's response ``(1/n) (G + lam I)^{-1} g_m``; ``epsilon="auto"``
takes, per example, the largest ``eps <= 1`` whose first-order move is ``max_move`` (``1e-3``) of the weights' norm.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from interp.curvature.ggn import factor_fits, ggn_factor
from interp.curvature.grads import as_eval_copy
from interp.curvature.params import ParamSpec, fixed_tensors, select_params
from interp.errors import InterpError, require_finite
from interp.inverses.lowrank import LowRankInverse, lowrank_inverse


def pbrf_objective(model: nn.Module, fixed: dict, theta: dict, theta_s: dict, x: torch.Tensor, y: torch.Tensor,
                   p_s: torch.Tensor, remove: int, damping: float, epsilon: float) -> torch.Tensor:  # fmt: skip
    """``J(theta)`` of the module's docstring, ``p_s`` ``(n, C)`` the softmax at ``theta_s``."""
    logits = functional_call(model, {**fixed, **theta}, (x,))
    log_q = F.log_softmax(logits, dim=1)
    bregman = (p_s * (torch.log(p_s.clamp_min(1e-300)) - log_q)).sum(1).mean()
    removed = F.cross_entropy(logits[remove : remove + 1], y[remove : remove + 1])
    proximity = sum(((theta[k] - theta_s[k]) ** 2).sum() for k in theta)
    return bregman - epsilon / len(y) * removed + damping / 2 * proximity


def pbrf_whitening(model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: ParamSpec = None, *,
                   damping: float, max_bytes: int | None = None) -> LowRankInverse | None:  # fmt: skip
    """``(G_s + damping I)^{-1}`` in eigen-form from the GGN's factor at the model's parameters (float64, on ``x``'s
    device), whose square root whitens the PBRF (see the module's docstring); ``None`` where the factor's ``n C P``
    numbers would take more than a quarter of ``max_bytes`` (default: the memory free on the device). Build it once
    and pass it to every :func:`pbrf_response` of the same model, data and damping."""
    names = list(select_params(model, params))
    loader = [(x, y)]
    if not factor_fits(model, loader, names, x.device, torch.float64, max_bytes):
        return None
    factor = ggn_factor(model, loader, names, dtype=torch.float64, device=x.device)
    return lowrank_inverse(factor, damping)


def _whiten(inverse: LowRankInverse | None, damping: float):
    """``u -> W u`` with ``W = (V diag(s) V^T + damping I)^{-1/2}``, the identity without an inverse."""
    if inverse is None:
        return lambda u: u
    v, s = inverse.eigenvectors, inverse.eigenvalues
    scale = (s + damping).rsqrt() - damping**-0.5
    return lambda u: v @ (scale * (v.T @ u)) + u * damping**-0.5


def pbrf_response(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    remove: int,
    params: ParamSpec = None,
    *,
    damping: float,
    epsilon: float | str = 1.0,
    max_move: float = 1e-3,
    whitening: LowRankInverse | None | str = "auto",
    tol: float = 1e-4,
    max_rounds: int = 20,
    max_iter: int = 500,
) -> tuple[dict[str, torch.Tensor], dict]:
    """The PBRF minimiser (see the module's docstring) of the parameters ``params`` of ``model`` (an eval-mode copy,
    float64, on ``x``'s device; the caller's model is not changed) for removing example ``remove`` of the full batch
    ``(x, y)``. ``whitening``: ``"auto"`` builds :func:`pbrf_whitening` where it fits, ``None`` runs plain L-BFGS,
    or one built before (its damping must be ``damping``). Returns ``({name: tensor}, info)``: the parameters at the
    minimiser and ``{"grad_norm", "grad_norm_before", "whitened_grad_norm", "whitened_grad_norm_before", "moved",
    "relative_move", "iterations", "whitened", "converged", "diverged", "epsilon"}``. ``epsilon="auto"`` takes the
    largest ``eps <= 1`` whose first-order move ``(eps/n) ||(G + lam I)^{-1} g_m||`` is ``max_move`` times
    ``||theta_s||`` (needs the whitening). ``diverged``: the iterates left every
    finite value, as they do where ``J`` has no minimum near ``theta_s`` (the removed term's negative curvature
    ``-eps/n`` times the loss's non-GGN part beating ``damping``): lower ``epsilon``."""
    if isinstance(epsilon, str) and epsilon != "auto":
        raise InterpError(f"epsilon must be a number in (0, 1] or 'auto', got {epsilon!r}")
    if not isinstance(epsilon, str) and not 0 < epsilon <= 1:
        raise InterpError(f"epsilon must be in (0, 1], got {epsilon}")
    if not (np.isfinite(damping) and damping > 0):
        raise InterpError(f"the PBRF needs damping > 0 (its proximity term), got {damping}")
    if not 0 <= remove < len(y):
        raise InterpError(f"remove must index one of the {len(y)} training examples, got {remove}")
    names = list(select_params(model, params))
    copy = as_eval_copy(model, torch.float64, x.device)
    x = x.to(torch.float64)
    if isinstance(whitening, str):
        if whitening != "auto":
            raise InterpError(f"whitening must be 'auto', None or a LowRankInverse, got {whitening!r}")
        whitening = pbrf_whitening(copy, x, y, names, damping=damping)
    elif whitening is not None and not np.isclose(whitening.damping, damping, rtol=1e-12, atol=0):
        raise InterpError(f"the whitening was built with damping {whitening.damping:g}, the PBRF asks {damping:g}")
    fixed = fixed_tensors(copy, names)
    named = dict(copy.named_parameters())
    theta_s = {k: named[k].detach().clone() for k in names}
    sizes = [theta_s[k].numel() for k in names]
    flat_s = torch.cat([theta_s[k].reshape(-1) for k in names])
    with torch.no_grad():
        p_s = torch.softmax(functional_call(copy, {**fixed, **theta_s}, (x,)), dim=1)
    require_finite(p_s, "the model's outputs at its trained parameters")
    whiten = _whiten(whitening, damping)

    def theta_of(u: torch.Tensor) -> dict:
        flat = flat_s + whiten(u)
        return {k: t.reshape(theta_s[k].shape) for k, t in zip(names, flat.split(sizes), strict=True)}

    def objective(u: torch.Tensor) -> torch.Tensor:
        return pbrf_objective(copy, fixed, theta_of(u), theta_s, x, y, p_s, remove, damping, epsilon)

    def norms(u: torch.Tensor, vector: bool = False):
        """``||grad_theta J||`` and ``||W grad_theta J||`` (``= ||grad_u J||``) at ``u`` (``vector``: the gradient)."""
        theta = {k: v.detach().requires_grad_(True) for k, v in theta_of(u.detach()).items()}
        value = pbrf_objective(copy, fixed, theta, theta_s, x, y, p_s, remove, damping, epsilon)
        g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(value, list(theta.values()))])
        return g if vector else (float(g.norm()), float(whiten(g).norm()))

    if epsilon == "auto":
        if whitening is None:
            raise InterpError("epsilon='auto' needs the whitening (the GGN's factor did not fit): give a number")
        epsilon = 1.0
        g = norms(torch.zeros_like(flat_s), vector=True)  # grad J at theta_s with eps = 1: -(1/n) g_m
        linear = float(whiten(whiten(g)).norm())  # the first-order move (1/n) ||(G + lam I)^{-1} g_m||
        epsilon = min(1.0, max_move * float(flat_s.norm()) / max(linear, 1e-300))
    u = torch.zeros_like(flat_s, requires_grad=True)
    before, white_before = norms(u)
    opt = torch.optim.LBFGS([u], lr=1, max_iter=max_iter, tolerance_grad=tol * white_before / 10,
                            tolerance_change=1e-18, history_size=50, line_search_fn="strong_wolfe")  # fmt: skip

    def closure():
        opt.zero_grad()
        value = objective(u)
        value.backward()
        return value

    reached, white = before, white_before
    for _ in range(max_rounds):
        opt.step(closure)
        reached, white = norms(u)
        if white < tol * white_before or not np.isfinite(white):
            break
    out = {k: v.detach() for k, v in theta_of(u.detach()).items()}
    moved = float(torch.sqrt(sum(((out[k] - theta_s[k]) ** 2).sum() for k in out)))
    size = float(torch.sqrt(sum((theta_s[k] ** 2).sum() for k in out)))
    return out, {"grad_norm_before": before, "grad_norm": reached, "whitened_grad_norm_before": white_before,
                 "whitened_grad_norm": white, "moved": moved, "relative_move": moved / max(size, 1e-300),
                 "iterations": int(opt.state[opt._params[0]].get("n_iter", 0)), "whitened": whitening is not None,
                 "converged": bool(white < tol * white_before), "diverged": not np.isfinite(white),
                 "epsilon": epsilon}  # fmt: skip
