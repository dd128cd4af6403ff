"""Run directory -> influence directory: the composition of ``transfer`` (data, model) and ``interp``.

Callable from Python with the same result as ``robust-transfer influence``::

    from study.attribution import InfluenceConfig, run_influence
    meta = run_influence(InfluenceConfig(run="runs/rob", out="influence/rob"))

The directory's files are described in :mod:`study.attribution.store`; ``meta.json`` records the sign
convention, cut-off, rank kept and timings. Everything is checked (settings, the run, sizes, free
disk space) before the directory is touched, and it is complete or refused by readers.
"""

from __future__ import annotations

import dataclasses
import itertools
import time

import numpy as np
from torch.utils.data import DataLoader

import interp
from interp import NORMALIZE_HELP, Curvature
from interp.curvature import device_free_bytes
from study.attribution.ensemble import run_ensemble
from study.attribution.head_path import compute_head
from study.attribution.inputs import load_run, output_bytes, run_dampings, run_identity, run_weight_decay
from study.attribution.matrices import operators_per_setting, write_matrices, write_streamed_matrices
from study.attribution.settings import HEAD_ALIASES, SIGN_CONVENTION, TRAINABLE, InfluenceConfig
from study.attribution.store import InfluenceDir
from transfer.device import resolve_device
from transfer.errors import UserError
from transfer.freezing import parse_blocks, trainable_names
from transfer.models import classifier_names
from transfer.runtime import torch_threads


def run_influence(cfg: InfluenceConfig, progress: bool = True) -> dict:
    """Compute and write both influence matrices of a fine-tuned run; return ``meta``.

    The directory is locked while written and complete only once ``meta.json`` exists. With ``cfg.ensemble`` > 1
    the result is the mean over that many fine-tuned models (:mod:`study.attribution.ensemble`).
    """
    if cfg.ensemble > 1:
        return run_ensemble(cfg, run_influence, progress)  # which calls back here once per model
    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    settings, model, train, test, idx_train, idx_test = load_run(cfg)
    requested = dataclasses.asdict(cfg)  # meta.json's "config" is what was asked for; its "settings" the values used
    rules = cfg.damping_rules()
    cfg = cfg.with_run_dampings(run_dampings(settings))
    model = model.to(device).eval()
    names = param_names(model, cfg.params, settings)
    out = InfluenceDir(cfg.out)
    with torch_threads(cfg.threads), out.writing(len(cfg.settings()) * output_bytes(len(train), len(test))):
        meta = _compute(cfg, out, settings, model, names, train, test, device, progress) | {"config": requested}
        for name, arr in (("y_train", train.targets), ("y_test", test.targets), ("idx_train", idx_train),
                          ("idx_test", idx_test)):  # fmt: skip
            out.save(name, np.asarray(arr))
        for i, st in enumerate(meta.get("settings", [])):  # settings run cut-off by cut-off, the dampings inside
            st["damping_rule"] = rules[i % len(rules)]
        meta["run_identity"] = run_identity(cfg.run)
        meta["timings"]["total_s"] = time.perf_counter() - t0
        out.complete(meta)
    return meta


def param_names(model, params: str, settings: dict) -> list[str]:
    """Full parameter names of ``--params``: ``head`` (alias ``fc``) is the classifier, whatever the
    architecture calls it; ``trainable`` every parameter the run fine-tuned (its ``blocks`` setting);
    anything else is comma-separated module paths."""
    if params in HEAD_ALIASES:
        return classifier_names(model)
    if params == TRAINABLE:
        return trainable_names(model, parse_blocks(settings.get("blocks", "1")))
    try:
        chosen = {n for path in params.split(",") if path.strip() for n in interp.select_params(model, path.strip())}
    except interp.InterpError as exc:
        raise UserError(f"--params: {exc}") from None
    # each tensor once, in the model's order (the gradients' layout), however the paths overlap or are ordered
    return [n for n, _ in model.named_parameters() if n in chosen]


def _compute(cfg, out: InfluenceDir, settings, model, names, train, test, device, progress) -> dict:
    loader = lambda ds: DataLoader(ds, batch_size=cfg.batch_size)  # noqa: E731
    meta = {
        "sign_convention": SIGN_CONVENTION,
        "run_settings": settings,
        "n_train": len(train),
        "n_test": len(test),
        "timings": {},
    }
    # the head's closed form serves a dense method over exactly the classifier's parameters, whatever --params said
    if cfg.inverse_method().needs == "dense" and sorted(names) == sorted(classifier_names(model)):
        lam = run_weight_decay(settings)
        return meta | compute_head(cfg, model, loader(train), loader(test), out, device, lam, progress)
    return meta | _generic(cfg, model, names, loader(train), loader(test), out, device, progress)


def streams(mode: str, size: int, n_train: int, n_test: int, device) -> bool:
    """Whether the per-example gradients are streamed: ``stream``, or ``auto`` when holding them (the training
    ones twice, with their solve, and the test ones) would take more than half the memory free on the device."""
    if mode != "auto":
        return mode == "stream"
    return 8 * size * (3 * n_train + n_test) > device_free_bytes(device) / 2


def _first_built(operators):
    """``operators`` (a generator of ``(setting, inverse)``) with its first inverse built now: a curvature that does
    not fit, or any other refusal of the method, comes before the per-example gradients are computed."""
    first = next(operators)
    return itertools.chain([first], operators)


def _curvature_operators(cfg, model, names, size, train_loader, out: InfluenceDir, device, progress):
    """``(operators per setting, how the curvature was taken, seconds)``, the first operator already built."""
    t = time.perf_counter()
    method = cfg.inverse_method()
    if method.needs == "model":
        curvature = Curvature(size, device=device, model=model, data=train_loader, params=names)
        operators = operators_per_setting(curvature, cfg, progress)
        path = f"{cfg.method} ({method.help})"
    elif method.needs == "hvp":
        products = interp.hessian_vector_product(model, train_loader, names, device=device)
        operators = operators_per_setting(Curvature(products.size, matvec=products, device=device), cfg, progress)
        path = f"matrix-free ({cfg.method}, {products.description})"
    else:
        h = interp.hessian(model, train_loader, names, device=device, progress=progress)
        if cfg.save_hessian:
            out.save("hessian", h.cpu().numpy())
        if cfg.method == "auto":  # the generic Hessian is rarely positive definite: go straight to eigh
            cfg = dataclasses.replace(cfg, method="eigh")
        operators = operators_per_setting(Curvature(h.shape[0], matrix=h, device=h.device), cfg, progress)
        path = "dense Hessian (torch.func)"
    operators = _first_built(operators)
    return operators, path, time.perf_counter() - t


def _generic(cfg, model, names, train_loader, test_loader, out: InfluenceDir, device, progress) -> dict:
    size = sum(dict(model.named_parameters())[n].numel() for n in names)
    n_train, n_test = len(train_loader.dataset), len(test_loader.dataset)
    operators, path, curvature_s = _curvature_operators(cfg, model, names, size, train_loader, out, device, progress)
    timings = {"curvature_s": curvature_s}
    stream = streams(cfg.gradients, size, n_train, n_test, device)  # with the curvature already in memory
    t = time.perf_counter()
    if stream:
        budget = device_free_bytes(device) // 4
        batches = lambda loader: lambda: interp.per_example_grad_batches(model, loader, names, device=device)  # noqa: E731
        written, inv = write_streamed_matrices(cfg, out, batches(test_loader), batches(train_loader),
                                               (n_test, n_train), operators, budget, progress)  # fmt: skip
    else:
        g_train = interp.per_example_grads(model, train_loader, names, device=device, progress=progress)
        g_test = interp.per_example_grads(model, test_loader, names, device=device, progress=progress)
        timings["gradients_s"] = time.perf_counter() - t
        t = time.perf_counter()
        written, inv = write_matrices(cfg, out, g_test, g_train, operators, None, progress)
    if inv.spectrum() is not None:
        out.save("spectrum", inv.spectrum())
    timings["influence_s"] = time.perf_counter() - t
    info = inv.info()
    infos = [w["inverse"] for w in written]
    if all("max_relative_residual" in i for i in infos):  # an iterative solver: the worst over every setting
        info = infos[0] | {"max_relative_residual": max(i["max_relative_residual"] for i in infos),
                           "converged": all(i.get("converged", True) for i in infos)}  # fmt: skip
    return {
        "params": names,
        "path": path,
        "device": str(device),
        "normalize": cfg.normalize,
        "normalize_meaning": NORMALIZE_HELP[cfg.normalize],
        "settings": written,
        "hessian_layout": "named_parameters order, each flattened",
        "gradients": "streamed in batches (never held whole)" if stream else "held in memory",
        "rank_kept": info.get("rank_kept"),
        "inverse": info,
        **({"cg": info} if cfg.method == "cg" else {}),  # where earlier versions put it
        "timings": timings,
    }
