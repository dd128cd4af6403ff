"""Both influence matrices for every (cut-off, damping) setting, through the inverse registry.

One operator per setting; where the method factorises once for several settings, the others reuse
that factorisation. Each setting's matrices and what it kept and dropped are written to the directory.
"""

from __future__ import annotations

from interp import Curvature, build_inverse, influence_pair, streamed_influence
from interp.inverses import NAMED_RCOND
from study.attribution.settings import InfluenceConfig
from study.attribution.store import InfluenceDir


def operators_per_setting(curvature: Curvature, cfg: InfluenceConfig, progress: bool = False):
    """One operator per setting, lazily, through the registry, each given exactly what its method reads (the
    setting's cut-off and damping, ``cfg.options``); where the method factorises once for several settings (its
    ``shared`` entry), the others reuse that factorisation (:meth:`InverseOperator.with_settings`)."""
    settings, method = cfg.settings(), cfg.inverse_method()

    def build(name: str, st: dict):
        return build_inverse(name, curvature, rcond=st["rcond"], damping=st["damping"], progress=progress,
                             **cfg.options)  # fmt: skip

    if len(settings) == 1 or method.shared is None:
        for st in settings:
            yield st, build(cfg.method, st)
        return
    base = build(method.shared, settings[0])
    for st in settings:
        yield st, base.with_settings(rcond=st["rcond"], damping=st["damping"]) or build(cfg.method, st)


def _setting_label(st: dict, cutoff: bool = True) -> str:
    return f"rcond={st['rcond']} damping={st['damping']:g}" if cutoff else f"damping={st['damping']:g}"


def _entry(cfg, i: int, st: dict, inv, names: tuple[str, str], share: float | None) -> dict:
    info = inv.info()
    return {
        "index": i,
        "label": _setting_label(st, cfg.inverse_method().cutoff),
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
        "report": inv.report(),
    }


def _names(i: int) -> tuple[str, str]:
    return ("influence_test", "influence_train") if i == 0 else (f"influence_test.s{i}", f"influence_train.s{i}")


def write_matrices(cfg, out: InfluenceDir, g_test, g_train, operators, grad_norms, progress) -> list[dict]:
    """Both matrices for every (cut-off, damping) setting: the first as ``influence_{test,train}.npy``,
    the others as ``influence_{test,train}.s<i>.npy``. Returns what each setting kept and dropped."""
    written = []
    for i, (st, inv) in enumerate(operators):
        names = _names(i)
        with out.staged(names[0]) as path_test, out.staged(names[1]) as path_train:
            influence_pair(g_test, g_train, inv, normalize=cfg.normalize, grad_norms=grad_norms,
                           out_test=path_test, out_train=path_train, progress=progress)  # fmt: skip
        written.append(_entry(cfg, i, st, inv, names, inv.dropped_norm_share(g_train)))
        if i == 0:
            first = inv
    return written, first


class DroppedShare:
    """The share of the training gradients' squared norm an inverse drops, summed chunk by chunk:
    ``sum_c share_c ||G_c||_F^2 / sum_c ||G_c||_F^2``, which equals the share over all of them at once
    (:meth:`interp.InverseOperator.dropped_norm_share` is a ratio of sums over rows)."""

    def __init__(self, inv):
        self.inv, self.dropped, self.total = inv, 0.0, 0.0

    def __call__(self, g) -> None:
        norm = float((g * g).sum())
        self.dropped += self.inv.dropped_norm_share(g) * norm
        self.total += norm

    @property
    def share(self) -> float:
        return self.dropped / self.total if self.total else 0.0


def write_streamed_matrices(cfg, out: InfluenceDir, test_batches, train_batches, shape: tuple[int, int], operators,
                            budget: int, progress) -> list[dict]:  # fmt: skip
    """As :func:`write_matrices`, with the gradients streamed (:func:`interp.streamed_influence`)
    instead of held: ``test_batches()`` / ``train_batches()`` start a pass over them; ``cfg.normalize`` applies as
    in the held path, and the share of the gradients' norm in dropped directions is summed over the training
    gradients' chunks as the train x train matrix passes them (:class:`DroppedShare`)."""
    n_test, n_train = shape
    written = []
    for i, (st, inv) in enumerate(operators):
        names = _names(i)
        dropped = DroppedShare(inv)
        with out.staged(names[0]) as path_test, out.staged(names[1]) as path_train:
            _, test_passes = streamed_influence(inv, test_batches, train_batches, (n_test, n_train),
                                                budget_bytes=budget, out=path_test, progress=progress,
                                                normalize=cfg.normalize)  # fmt: skip
            _, train_passes = streamed_influence(inv, train_batches, train_batches, (n_train, n_train),
                                                 budget_bytes=budget, out=path_train, progress=progress,
                                                 normalize=cfg.normalize, on_rows=dropped)  # fmt: skip
        entry = _entry(cfg, i, st, inv, names, dropped.share)
        entry["gradient_passes"] = {"test x train": test_passes, "train x train": train_passes}
        written.append(entry)
        if i == 0:
            first = inv
    return written, first
