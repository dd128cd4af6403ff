"""Run directory -> influence directory: the composition of ``transfer`` (data, model) and ``interp``.

Callable from Python with the same result as ``robust-transfer influence``::

    from cli.influence_pipeline import InfluenceConfig, run_influence
    meta = run_influence(InfluenceConfig(run="runs/rob", out="influence/rob"))

An influence directory holds ``influence_test.npy`` ``(n_test, n_train)``, ``influence_train.npy``
``(n_train, n_train)``, ``y_test.npy``, ``y_train.npy``, ``idx_test.npy``, ``idx_train.npy``
(indices into the dataset's test and train splits), ``hessian.npy``, ``spectrum.npy`` and
``meta.json`` (sign convention, cut-off, rank kept, timings).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

import interp
from interp.inverse import extreme_eigenvalues
from transfer.datasets import Subset, Transformed, load_raw_splits
from transfer.device import resolve_device
from transfer.errors import UserError
from transfer.runs import RunDir, atomic_write_json, read_json
from transfer.subsets import class_covering_subset
from transfer.transforms import build_transform
from transfer.zoo import load_source

SIGN_CONVENTION = (
    "I[i, j] = -g_test_i^T (H + damping I)^+ g_train_j (Koh & Liang's I_up,loss; H = Hessian of the MEAN "
    "training loss): the change in test loss i per unit up-weighting of training image j. Negative = helpful; "
    "removing j changes test loss by about -I[i, j] / n_train."
)


@dataclass
class InfluenceConfig:
    """Settings of ``robust-transfer influence``."""

    run: str = field(metadata={"help": "run directory from robust-transfer finetune"})
    out: str = field(metadata={"help": "influence directory to write"})
    params: str = field(
        default="fc",
        metadata={"help": "parameters: fc (closed form), or comma-separated module paths such as layer4.2,fc"},
    )
    test: str = field(
        default="all", metadata={"help": "test images: all, or N (a class-covering random subset, seed 0)"}
    )
    rcond: float | None = field(
        default=None,
        metadata={
            "help": "pseudo-inverse cut-off relative to the largest eigenvalue (default P * eps, as numpy/scipy pinv)"
        },
    )
    damping: float = field(default=0.0, metadata={"help": "added to the Hessian's diagonal"})
    method: str = field(
        default="auto", metadata={"help": "auto, cholesky, eigh, svd, or cg (matrix-free, for large parameter sets)"}
    )
    batch_size: int = field(default=256, metadata={"help": "batch size of the forward passes"})
    save_hessian: bool = field(
        default=True, metadata={"help": "write hessian.npy (P x P float64; 3.4 GB for a ResNet-50 head)"}
    )
    data_root: str | None = field(default=None, metadata={"help": "where torchvision datasets live"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})


def _load_run(cfg: InfluenceConfig):
    run = RunDir(cfg.run)
    if not run.finished():
        raise UserError(f"{cfg.run} is not a finished fine-tuning run (no summary.json)")
    settings = read_json(run.config)["settings"]
    resolved = settings["resolved"]
    indices = np.asarray(read_json(run.subset)["indices"], dtype=np.int64)
    source = load_source(run.root)
    train_raw, test_raw = load_raw_splits(settings["target"], cfg.data_root)
    if cfg.test == "all":
        idx_test = np.arange(len(test_raw))
    else:
        try:
            idx_test = class_covering_subset(test_raw.targets, int(cfg.test), seed=0)
        except ValueError:
            raise UserError(f"--test must be a number or all, got {cfg.test!r}") from None
    t = build_transform(resolved["resolution"], train=False)
    train = Transformed(Subset(train_raw, indices), t)
    test = Transformed(Subset(test_raw, idx_test), t)
    return settings, source.model, train, test, indices, idx_test


def run_influence(cfg: InfluenceConfig, progress: bool = True) -> dict:
    """Compute and write both influence matrices of a fine-tuned run; return ``meta``."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    settings, model, train, test, idx_train, idx_test = _load_run(cfg)
    model = model.to(device).eval()
    loader = lambda ds: DataLoader(ds, batch_size=cfg.batch_size)  # noqa: E731
    y_train, y_test = np.asarray(train.targets), np.asarray(test.targets)
    meta = {
        "config": asdict(cfg),
        "sign_convention": SIGN_CONVENTION,
        "run_settings": settings,
        "n_train": len(train),
        "n_test": len(test),
        "timings": {},
    }
    try:
        if cfg.params == "fc" and cfg.method != "cg":
            meta |= _head(cfg, model, loader(train), loader(test), out, device, progress)
        else:
            meta |= _generic(cfg, model, loader(train), loader(test), out, progress)
    except interp.InterpError as exc:
        raise UserError(str(exc)) from None
    for name, arr in (("y_train", y_train), ("y_test", y_test), ("idx_train", idx_train), ("idx_test", idx_test)):
        np.save(out / f"{name}.npy", arr)
    meta["timings"]["total_s"] = time.perf_counter() - t0
    atomic_write_json(out / "meta.json", meta)
    return meta


def _head(cfg, model, train_loader, test_loader, out: Path, device, progress) -> dict:
    head = model.model.fc
    t = time.perf_counter()
    z_tr, logits_tr, y_tr = interp.head_features(
        model, head, train_loader, device=device, progress=progress, desc="train features"
    )
    z_te, logits_te, y_te = interp.head_features(
        model, head, test_loader, device=device, progress=progress, desc="test features"
    )
    features_s = time.perf_counter() - t
    res = interp.head_influence(
        z_tr.double(),
        logits_tr.double(),
        y_tr,
        z_te.double(),
        logits_te.double(),
        y_te,
        rcond=cfg.rcond,
        damping=cfg.damping,
        method=cfg.method,
        out_test=out / "influence_test.npy",
        out_train=out / "influence_train.npy",
        progress=progress,
    )
    inv, h_r, q = res["inverse"], res["hessian_reduced"], res["basis"]
    t = time.perf_counter()
    spec = extreme_eigenvalues(h_r, inv, k=20) if inv.method == "cholesky" else {"all": inv.spectrum()}
    c, e = q.shape[0], z_tr.shape[1] + 1
    null_dim = e  # the 1_C kron u directions, exactly zero
    np.save(out / "spectrum.npy", np.concatenate([np.zeros(null_dim), *[np.asarray(v) for v in spec.values()]]))
    spectrum_s = time.perf_counter() - t
    if cfg.save_hessian:
        t = time.perf_counter()
        h4 = h_r.view(c - 1, e, c - 1, e)
        full = torch.einsum("ak,kxly,bl->axby", q, h4, q).reshape(c * e, c * e)
        np.save(out / "hessian.npy", full.numpy())
        del full
        hessian_save_s = time.perf_counter() - t
    info = inv.info()
    return {
        "params": ["model.fc.weight", "model.fc.bias"],
        "path": "closed form on the softmax head, reduced to the complement of its exact null space",
        "hessian_layout": "folded [W | b] (C, D+1) row-major: index c*(D+1)+d; d = D is the bias",
        "null_space_dim_removed": null_dim,
        "rank_kept": info["rank_kept"],
        "inverse": info,
        "largest_eigenvalue": float(np.max(np.concatenate([np.asarray(v) for v in spec.values()]))),
        "smallest_kept_eigenvalue": float(np.min(np.concatenate([np.asarray(v) for v in spec.values()]))),
        "spectrum": (
            "spectrum.npy: the D+1 exact zeros of the null space, then the 20 smallest and 20 largest eigenvalues "
            "of the reduced Hessian (Lanczos)"
            if inv.method == "cholesky"
            else "spectrum.npy: the D+1 exact zeros of the null space, then every eigenvalue of the reduced Hessian"
        ),
        "timings": {
            "features_s": features_s,
            **res["timings"],
            "spectrum_s": spectrum_s,
            **({"hessian_save_s": hessian_save_s} if cfg.save_hessian else {}),
        },
    }


def _generic(cfg, model, train_loader, test_loader, out: Path, progress) -> dict:
    params = [p.strip() for p in cfg.params.split(",") if p.strip()]
    names = [n for path in params for n in interp.params.select_params(model, path)]
    t = time.perf_counter()
    g_train = interp.per_example_grads(model, train_loader, names, progress=progress)
    g_test = interp.per_example_grads(model, test_loader, names, progress=progress)
    timings = {"gradients_s": time.perf_counter() - t}
    t = time.perf_counter()
    if cfg.method == "cg":
        matvec, _ = interp.hessian_vector_product(model, train_loader, names)
        test, cg_info = interp.influence_matrix_cg(g_test, g_train, matvec, damping=cfg.damping, progress=progress)
        train, _ = interp.influence_matrix_cg(g_train, g_train, matvec, damping=cfg.damping, progress=progress)
        np.save(out / "influence_test.npy", test.numpy())
        np.save(out / "influence_train.npy", train.numpy())
        timings["influence_s"] = time.perf_counter() - t
        return {"params": names, "path": "matrix-free conjugate gradient", "cg": cg_info, "timings": timings}
    h = interp.hessian(model, train_loader, names, progress=progress)
    timings["hessian_s"] = time.perf_counter() - t
    if cfg.save_hessian:
        np.save(out / "hessian.npy", h.numpy())
    t = time.perf_counter()
    method = "eigh" if cfg.method == "auto" else cfg.method
    inv = interp.pseudo_inverse(h, rcond=cfg.rcond, damping=cfg.damping, method=method)
    interp.influence_matrix(g_test, g_train, inv, out=out / "influence_test.npy", progress=progress)
    interp.influence_matrix(g_train, g_train, inv, out=out / "influence_train.npy", progress=progress)
    if inv.method != "cholesky":
        np.save(out / "spectrum.npy", inv.spectrum())
    timings["influence_s"] = time.perf_counter() - t
    info = inv.info()
    return {
        "params": names,
        "path": "dense Hessian (torch.func)",
        "hessian_layout": "named_parameters order, each flattened",
        "rank_kept": info["rank_kept"],
        "inverse": info,
        "timings": timings,
    }
