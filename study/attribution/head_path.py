"""Influence over a softmax head in closed form: features once, the head's exact null space removed.

The head may first be moved to the optimum of the regularised objective on the frozen features
(``--refit-head``), where influence's first-order model holds; ``meta.json`` says how stationary it is.
"""

from __future__ import annotations

import time

import numpy as np
import torch

import interp
from interp import NORMALIZE_HELP, Curvature, gradient_norm, refit_head, to_numpy
from interp.curvature import as_eval_copy, reduce_head, reduced_to_folded
from interp.inverses import extreme_eigenvalues
from study.attribution.matrices import operators_per_setting, write_matrices
from study.attribution.store import InfluenceDir
from transfer.models import classifier, classifier_names


def _stationary_head(cfg, head, z_tr, logits_tr, y_tr, z_te, logits_te, lam: float, out: InfluenceDir):
    """The head influence is computed at, its logits, and the meta entry that says how stationary it is.

    Influence is a first-order model around a minimum of the training objective; a fine-tune stopped
    after a few epochs is not at one. ``--refit-head`` moves the head there (frozen features).
    """
    z_tr, z_te = z_tr.double(), z_te.double()
    w, b = head.weight.detach().double(), head.bias.detach().double()
    entry = {
        "objective": "mean cross-entropy + weight_decay/2 ||[W, b]||^2 on the run's frozen features (float64)",
        "weight_decay_as_l2": lam,
        "grad_norm_of_fine_tuned_head": gradient_norm(w, b, z_tr, y_tr, lam),
        "refit": None,
    }
    if not cfg.refit_head:
        entry["grad_norm_used"] = entry["grad_norm_of_fine_tuned_head"]
        return logits_tr.double(), logits_te.double(), entry
    w, b, fit = refit_head(z_tr, y_tr, w, b, lam)
    out.save("head_refit_weight", to_numpy(w))
    out.save("head_refit_bias", to_numpy(b))
    entry |= {
        "refit": fit | {"files": ["head_refit_weight.npy", "head_refit_bias.npy"]},
        "grad_norm_used": fit["grad_norm"],
    }
    return z_tr @ w.T + b, z_te @ w.T + b, entry


def compute_head(cfg, model, train_loader, test_loader, out: InfluenceDir, device, lam: float, progress) -> dict:
    dtype = getattr(torch, cfg.features_dtype)
    if dtype != torch.float32:
        model = as_eval_copy(model, dtype, device)  # the caller's model keeps its precision
    head = classifier(model)
    t = time.perf_counter()
    z_tr, logits_tr, y_tr = interp.head_features(
        model, head, train_loader, device=device, dtype=dtype, progress=progress, desc="train features"
    )
    z_te, logits_te, y_te = interp.head_features(
        model, head, test_loader, device=device, dtype=dtype, progress=progress, desc="test features"
    )
    features_s = time.perf_counter() - t
    t = time.perf_counter()
    logits_tr, logits_te, stationarity = _stationary_head(cfg, head, z_tr, logits_tr, y_tr, z_te, logits_te, lam, out)
    stationarity_s = time.perf_counter() - t
    red = reduce_head(
        z_tr.double(), logits_tr, y_tr, z_te.double(), logits_te, y_te, device=device, progress=progress
    )
    t = time.perf_counter()
    curvature = Curvature(red.hessian.shape[0], matrix=red.hessian, device=red.hessian.device)
    written, inv = write_matrices(
        cfg, out, red.g_test, red.g_train, operators_per_setting(curvature, cfg, progress), red.grad_norms, progress
    )
    influence_s = time.perf_counter() - t
    h_r, q, live = red.hessian, red.basis, red.live
    t = time.perf_counter()
    full = inv.spectrum()
    spec = {"all": full} if full is not None else extreme_eigenvalues(h_r, inv, k=20)
    removed = red.removed
    null_dim = removed["softmax_null_space"]["directions"] + removed["dead_features"]["directions"]
    out.save("spectrum", np.concatenate([np.zeros(null_dim), *[np.asarray(v) for v in spec.values()]]))
    spectrum_s = time.perf_counter() - t
    if cfg.save_hessian:
        t = time.perf_counter()
        out.save("hessian", reduced_to_folded(h_r, q, live).cpu().numpy())
        hessian_save_s = time.perf_counter() - t
    info = inv.info()
    return {
        "params": classifier_names(model),
        "path": "closed form on the softmax head, reduced to the complement of its exact null space",
        "device": str(device),
        "features_dtype": cfg.features_dtype,
        "stationarity": stationarity,
        "normalize": cfg.normalize,
        "normalize_meaning": NORMALIZE_HELP[cfg.normalize],
        "settings": written,
        "hessian_layout": "folded [W | b] (C, D+1) row-major: index c*(D+1)+d; d = D is the bias",
        "null_space_dim_removed": null_dim,
        "removed": removed,
        "rank_kept": info["rank_kept"],
        "inverse": info,
        "largest_eigenvalue": float(np.max(np.concatenate([np.asarray(v) for v in spec.values()]))),
        "smallest_kept_eigenvalue": float(np.min(np.concatenate([np.asarray(v) for v in spec.values()]))),
        "spectrum": (
            "spectrum.npy: the exact zeros of the removed null space (softmax and dead features), then every "
            "eigenvalue of the reduced Hessian"
            if full is not None
            else "spectrum.npy: the exact zeros of the removed null space (softmax and dead features), then the 20 "
            "smallest and 20 largest eigenvalues of the reduced Hessian (Lanczos)"
        ),
        "timings": {
            "features_s": features_s,
            "stationarity_s": stationarity_s,
            "hessian_s": red.hessian_s,
            "influence_s": influence_s,
            "spectrum_s": spectrum_s,
            **({"hessian_save_s": hessian_save_s} if cfg.save_hessian else {}),
        },
    }
