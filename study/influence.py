"""Run directory -> influence directory: the composition of ``transfer`` (data, model) and ``interp``.

Callable from Python with the same result as ``robust-transfer influence``::

    from study.influence import InfluenceConfig, run_influence
    meta = run_influence(InfluenceConfig(run="runs/rob", out="influence/rob"))

The directory's files are described in :mod:`study.influence_dir`; ``meta.json`` records the sign
convention, cut-off, rank kept and timings. Everything is checked (settings, the run, sizes, free
disk space) before the directory is touched, and it is complete or refused by readers.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

import interp
import interp.head
from interp.device import to_numpy
from interp.grads import as_eval_copy
from interp.head import reduced_to_folded
from interp.influence import NORMALIZE, NORMALIZE_HELP, influence_pair
from interp.inverse import INVERSES, NAMED_RCOND, Curvature, build_inverse, extreme_eigenvalues
from interp.loo import gradient_norm, refit_head
from study.influence_dir import InfluenceDir
from transfer import validation as v
from transfer.datasets import Subset, Transformed, load_raw_splits
from transfer.device import resolve_device
from transfer.errors import UserError
from transfer.files import read_json
from transfer.models import classifier
from transfer.runs import RunDir
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
    rcond: str = field(
        default="paper",
        metadata={
            "help": "pseudo-inverse cut-off relative to the largest eigenvalue: paper (0.05, as the paper's code, "
            "scipy pinv2 rcond=5e-2), exact (P * eps, scipy.linalg.pinv's default) or a number in [0, 1); a "
            "comma-separated list (paper,1e-2,1e-4,exact) factorises once and writes one matrix pair per setting"
        },
    )
    damping: str = field(
        default="0",
        metadata={
            "help": "added to the Hessian's diagonal: a number, or wd (the run's weight decay, which makes H + damping "
            "I the Hessian of the regularised objective); a comma-separated list gives one matrix pair per value"
        },
    )
    refit_head: bool = field(
        default=False,
        metadata={
            "help": "fc path: first move the head, on the run's frozen features, to the optimum of mean loss + "
            "weight_decay/2 ||[W, b]||^2 (float64, L-BFGS), where influence's first-order model holds; meta.json "
            "says how far it moved (without it, meta.json still reports how far from stationary the head is)"
        },
    )
    normalize: str = field(
        default="none",
        metadata={
            "help": "none (I_up,loss), relatif (divided by ||H^+ g_train||, Barshan et al. 2020) or cosine (-cos of "
            "the gradients, no Hessian)"
        },
    )
    method: str = field(
        default="auto",
        metadata={
            "help": "a registered inverse method: auto, cholesky, eigh, svd, or cg (matrix-free, for large parameter "
            "sets); interp.register_inverse adds more"
        },
    )
    cg_tol: float = field(default=1e-10, metadata={"help": "cg: relative residual at which a solve stops"})
    cg_max_iter: int = field(
        default=1000, metadata={"help": "cg: iteration limit; a solve that reaches it unconverged is reported"}
    )
    batch_size: int = field(default=256, metadata={"help": "batch size of the forward passes"})
    features_dtype: str = field(
        default="float32",
        metadata={
            "help": "precision of the network's forward pass before the float64 algebra (fc path): float32 (as "
            "trained; features differ from a float64 pass by ~1e-6 relative) or float64"
        },
    )
    save_hessian: bool = field(
        default=True, metadata={"help": "write hessian.npy (P x P float64; 3.4 GB for a ResNet-50 head)"}
    )
    data_root: str | None = field(default=None, metadata={"help": "where torchvision datasets live"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})

    def rconds(self) -> list[float | str]:
        """The cut-offs asked for: ``paper``, ``exact`` or numbers in [0, 1), in the order given."""
        return [_setting_value("rcond", item, ("paper", "exact"), high=1) for item in _items("rcond", self.rcond)]

    def dampings(self) -> list[float | str]:
        """The dampings asked for: numbers >= 0, or ``wd`` (resolved by :func:`with_weight_decay`)."""
        return [_setting_value("damping", item, ("wd",), high=None) for item in _items("damping", self.damping)]

    def inverse_method(self) -> interp.inverse.InverseMethod:
        """The registry entry of ``method`` (:data:`interp.inverse.INVERSES`)."""
        if self.method not in INVERSES.names():
            raise UserError(f"--method must be one of {', '.join(INVERSES.names())}; got {self.method!r} "
                            "(interp.register_inverse adds methods)")  # fmt: skip
        return INVERSES.get(self.method)

    def with_weight_decay(self, weight_decay: float) -> InfluenceConfig:
        """This config with ``wd`` in ``--damping`` replaced by the run's weight decay."""
        values = [weight_decay if d == "wd" else d for d in self.dampings()]
        return dataclasses.replace(self, damping=",".join(repr(float(d)) for d in values))

    def settings(self) -> list[dict]:
        """Every (cut-off, damping) pair, the first being the directory's main matrices."""
        return [{"rcond": r, "damping": d} for r in self.rconds() for d in self.dampings()]

    def __post_init__(self):
        """Every setting checked before the run is read or the output touched."""
        if not [p for p in self.params.split(",") if p.strip()]:
            raise UserError("--params must name at least one module, e.g. fc or layer4.2,fc")
        v.count_or_word("test", self.test, ("all",))
        self.rcond = "exact" if self.rcond is None else str(self.rcond)
        self.damping = str(self.damping)
        rconds, dampings = self.rconds(), self.dampings()
        for name, values in (("rcond", rconds), ("damping", dampings)):
            # one matrix pair per setting: the same value twice would write two identical pairs
            seen = [str(x) if isinstance(x, str) else float(x) for x in values]
            twice = sorted({str(x) for x in seen if seen.count(x) > 1})
            if twice:
                raise UserError(f"--{name} lists {', '.join(twice)} more than once; give each value once")
        method = self.inverse_method()
        v.choice("normalize", self.normalize, NORMALIZE)
        if self.refit_head and (self.params != "fc" or method.needs != "dense"):
            raise UserError(f"--refit-head applies to the head alone (--params fc, not --method {self.method})")
        if not method.cutoff and (len(rconds) > 1 or self.rcond not in ("paper", "exact")):
            raise UserError(f"--rcond does not apply to --method {self.method} (it solves without a cut-off); drop it")
        if len(rconds) * len(dampings) > 20:
            raise UserError(f"--rcond x --damping asks for {len(rconds) * len(dampings)} settings; at most 20")
        v.number("cg_tol", self.cg_tol, low=0, high=1, low_open=True, high_open=True)
        v.integer("cg_max_iter", self.cg_max_iter, low=1)
        v.integer("batch_size", self.batch_size, low=1)
        v.choice("features_dtype", self.features_dtype, ("float32", "float64"))
        v.device_name("device", self.device)


def _items(name: str, text: str) -> list[str]:
    items = [t.strip() for t in str(text).split(",")]
    if not items or any(not t for t in items):
        raise UserError(f"--{name} must be a value or a comma-separated list of values, got {text!r}")
    return items


def _setting_value(name: str, item: str, words: tuple[str, ...], high: float | None):
    if item in words:
        return item
    try:
        x = float(item)
    except ValueError:
        allowed = f"{', '.join(words)} or a number" if words else "a number"
        raise UserError(f"--{name} must be {allowed}, got {item!r}") from None
    return v.number(name, x, low=0, high=high, high_open=high is not None)


def load_run(cfg: InfluenceConfig):
    run = RunDir(cfg.run)
    if not Path(cfg.run).is_dir():
        raise UserError(f"--run {cfg.run} is not a directory; give a run directory from robust-transfer finetune")
    settings = run.recorded()
    if "target" not in settings or "resolved" not in settings:
        raise UserError(
            f"{cfg.run} is not a fine-tuning run (a pretrain run trains a source, it has no target); "
            "give a run directory from robust-transfer finetune"
        )
    if not run.finished():
        raise UserError(f"{cfg.run} has not finished (no summary.json); continue it with finetune --resume first")
    try:
        resolution = int(settings["resolved"]["resolution"])
        indices = np.asarray(read_json(run.subset, "run directory")["indices"], dtype=np.int64)
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{run.config} or {run.subset} lacks the resolution or the training indices") from None
    source = load_source(run.root)
    train_raw, test_raw = load_raw_splits(settings["target"], cfg.data_root)
    if len(indices) == 0 or indices.min() < 0 or indices.max() >= len(train_raw):
        raise UserError(f"{run.subset} holds indices outside the {len(train_raw)} training images of the target")
    if cfg.test == "all":
        idx_test = np.arange(len(test_raw))
    else:
        idx_test = class_covering_subset(test_raw.targets, int(cfg.test), seed=0, flag="--test")
    t = build_transform(resolution, train=False)
    train = Transformed(Subset(train_raw, indices), t)
    test = Transformed(Subset(test_raw, idx_test), t)
    return settings, source.model, train, test, indices, idx_test


def run_weight_decay(settings: dict) -> float:
    """The weight decay a run was fine-tuned with (its L2 strength on every parameter, the head's bias too)."""
    try:
        return float(settings.get("weight_decay", 0.0))
    except (TypeError, ValueError):
        raise UserError(
            f"the run's config.json holds a weight_decay that is not a number: {settings['weight_decay']!r}"
        ) from None


def output_bytes(n_train: int, n_test: int) -> int:
    """Bytes of the two float64 influence matrices and the label files, checked before anything is computed.

    ``hessian.npy`` is left out: a disk that fills while it is written ends in a one-line error and
    an incomplete directory, whereas the memory-mapped matrices are checked again by ``interp``
    right before they are created.
    """
    return 8 * (n_test * n_train + n_train * n_train) + 8 * (2 * n_train + 2 * n_test)


def run_influence(cfg: InfluenceConfig, progress: bool = True) -> dict:
    """Compute and write both influence matrices of a fine-tuned run; return ``meta``.

    The directory is locked while written and complete only once ``meta.json`` exists.
    """
    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    settings, model, train, test, idx_train, idx_test = load_run(cfg)
    requested = asdict(cfg)  # meta.json's "config" is what was asked for; its "settings" the values used
    cfg = cfg.with_weight_decay(run_weight_decay(settings))
    model = model.to(device).eval()
    names = _param_names(model, cfg.params)
    out = InfluenceDir(cfg.out)
    with out.writing(len(cfg.settings()) * output_bytes(len(train), len(test))):
        meta = _compute(cfg, out, settings, model, names, train, test, device, progress) | {"config": requested}
        for name, arr in (("y_train", train.targets), ("y_test", test.targets), ("idx_train", idx_train),
                          ("idx_test", idx_test)):  # fmt: skip
            out.save(name, np.asarray(arr))
        meta["timings"]["total_s"] = time.perf_counter() - t0
        out.complete(meta)
    return meta


def _param_names(model, params: str) -> list[str]:
    try:
        return [
            n for path in params.split(",") if path.strip() for n in interp.params.select_params(model, path.strip())
        ]
    except interp.InterpError as exc:
        raise UserError(f"--params: {exc}") from None


def _compute(cfg, out: InfluenceDir, settings, model, names, train, test, device, progress) -> dict:
    loader = lambda ds: DataLoader(ds, batch_size=cfg.batch_size)  # noqa: E731
    meta = {
        "config": asdict(cfg),
        "sign_convention": SIGN_CONVENTION,
        "run_settings": settings,
        "n_train": len(train),
        "n_test": len(test),
        "timings": {},
    }
    # the head's closed form serves a dense method over exactly the classifier's parameters, whatever --params said
    if cfg.inverse_method().needs == "dense" and sorted(names) == sorted(_head_names(model)):
        lam = run_weight_decay(settings)
        return meta | _head(cfg, model, loader(train), loader(test), out, device, lam, progress)
    return meta | _generic(cfg, model, names, loader(train), loader(test), out, device, progress)


def _head_names(model) -> list[str]:
    """The full parameter names of the model's classifier."""
    head = classifier(model)
    return [f"{prefix}.{n}" for prefix, m in model.named_modules() if m is head for n, _ in m.named_parameters()]


def _inverses(curvature: Curvature, cfg: InfluenceConfig, **options):
    """One operator per setting, lazily, through the registry; where the method factorises once for several
    settings (its ``shared`` entry), the others reuse that factorisation (:meth:`InverseOperator.with_settings`)."""
    settings, method = cfg.settings(), cfg.inverse_method()
    if len(settings) == 1 or method.shared is None:
        for st in settings:
            yield st, build_inverse(cfg.method, curvature, rcond=st["rcond"], damping=st["damping"], **options)
        return
    base = build_inverse(method.shared, curvature, rcond=settings[0]["rcond"], damping=0.0, **options)
    for st in settings:
        reused = base.with_settings(rcond=st["rcond"], damping=st["damping"])
        yield st, reused or build_inverse(cfg.method, curvature, rcond=st["rcond"], damping=st["damping"], **options)


def _setting_label(st: dict) -> str:
    return f"rcond={st['rcond']} damping={st['damping']:g}"


def _write_settings(cfg, out: InfluenceDir, g_test, g_train, operators, grad_norms, progress) -> list[dict]:
    """Both matrices for every (cut-off, damping) setting: the first as ``influence_{test,train}.npy``,
    the others as ``influence_{test,train}.s<i>.npy``. Returns what each setting kept and dropped."""
    written = []
    for i, (st, inv) in enumerate(operators):
        names = ("influence_test", "influence_train") if i == 0 else (f"influence_test.s{i}", f"influence_train.s{i}")
        with out.staged(names[0]) as path_test, out.staged(names[1]) as path_train:
            influence_pair(g_test, g_train, inv, normalize=cfg.normalize, grad_norms=grad_norms,
                           out_test=path_test, out_train=path_train, progress=progress)  # fmt: skip
        info = inv.info()
        share = inv.dropped_norm_share(g_train)
        written.append(
            {
                "index": i,
                "label": _setting_label(st),
                "files": [f"{n}.npy" for n in names],
                "rcond_name": st["rcond"] if isinstance(st["rcond"], str) else None,
                "rcond_meaning": (
                    NAMED_RCOND.get(st["rcond"], "a number: that fraction of the largest eigenvalue")
                    if cfg.inverse_method().cutoff
                    else f"no cut-off: {cfg.method} solves without one"
                ),
                **{k: info.get(k) for k in ("method", "rcond", "damping", "cutoff", "rank_kept", "size", "n_dropped")},
                "dropped_gradient_norm_share": share,
                "inverse": info,
            }
        )
        if i == 0:
            first = inv
    return written, first


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


def _head(cfg, model, train_loader, test_loader, out: InfluenceDir, device, lam: float, progress) -> dict:
    dtype = getattr(torch, cfg.features_dtype)
    if dtype != torch.float32:
        model = as_eval_copy(model, dtype, device)  # the caller's model keeps its precision
    head = model.model.fc
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
    red = interp.head.reduce_head(
        z_tr.double(), logits_tr, y_tr, z_te.double(), logits_te, y_te, device=device, progress=progress
    )
    t = time.perf_counter()
    curvature = Curvature(red.hessian.shape[0], matrix=red.hessian, device=red.hessian.device)
    written, inv = _write_settings(
        cfg, out, red.g_test, red.g_train, _inverses(curvature, cfg), red.grad_norms, progress
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
        "params": ["model.fc.weight", "model.fc.bias"],
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


def _generic(cfg, model, names, train_loader, test_loader, out: InfluenceDir, device, progress) -> dict:
    t = time.perf_counter()
    g_train = interp.per_example_grads(model, train_loader, names, device=device, progress=progress)
    g_test = interp.per_example_grads(model, test_loader, names, device=device, progress=progress)
    timings = {"gradients_s": time.perf_counter() - t}
    t = time.perf_counter()
    method = cfg.inverse_method()
    if method.needs == "hvp":
        matvec, size = interp.hessian_vector_product(model, train_loader, names, device=device)
        operators = _inverses(Curvature(size, matvec=matvec, device=device), cfg, tol=cfg.cg_tol,
                              max_iter=cfg.cg_max_iter, progress=progress)  # fmt: skip
        path = f"matrix-free ({cfg.method}, Hessian-vector products)"
    else:
        h = interp.hessian(model, train_loader, names, device=device, progress=progress)
        timings["hessian_s"] = time.perf_counter() - t
        if cfg.save_hessian:
            out.save("hessian", h.cpu().numpy())
        t = time.perf_counter()
        if cfg.method == "auto":  # the generic Hessian is rarely positive definite: go straight to eigh
            cfg = dataclasses.replace(cfg, method="eigh")
        operators = _inverses(Curvature(h.shape[0], matrix=h, device=h.device), cfg)
        path = "dense Hessian (torch.func)"
    written, inv = _write_settings(cfg, out, g_test, g_train, operators, None, progress)
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
        "rank_kept": info.get("rank_kept"),
        "inverse": info,
        **({"cg": info} if cfg.method == "cg" else {}),  # where earlier versions put it
        "timings": timings,
    }
