"""K-FAC and EK-FAC inverses of the GGN over the Linear and Conv2d parameters of a selection (curvlinops).

K-FAC approximates each layer's GGN block by a Kronecker product ``A (x) B`` (input covariances ``A``,
output-gradient covariances ``B``) and drops the blocks between layers; EK-FAC keeps K-FAC's eigenbasis
``Q_A (x) Q_B`` and refits the eigenvalues to the diagonal of the GGN in that basis (George et al. 2018;
what kronfluence uses). The factors, their eigendecompositions and the damped inverse

    (K + damping I)^-1 = (Q_A (x) Q_B) diag(1 / (lambda + damping)) (Q_A (x) Q_B)^T

come from curvlinops' ``KFACLinearOperator`` / ``EKFACLinearOperator`` and ``KFACInverseLinearOperator``
with ``use_exact_damping`` (damping added to the Kronecker product itself, not to each factor) and the
``expand`` approximation for convolutions. The output-gradient factors come from ``fisher_type``:
``type-2`` (default: the exact GGN's factors, one backward pass per class), ``mc`` (one backward pass
per sampled label, ``mc_samples`` of them, curvlinops' fixed seed: an unbiased estimate of the same GGN,
``C / mc_samples`` times cheaper, for large models and many classes) or ``empirical`` (the gradients at
the true labels: the empirical Fisher, which is not the GGN and is offered for comparison only). No
Kronecker factor is written here.

A layer's weight and bias are two Kronecker blocks here (curvlinops' default ``separate_weight_and_bias``), with
the cross terms between them dropped; kronfluence joins them into one block (the input extended by a constant 1),
so at matched conventions the two agree on weight-only layers and differ slightly where a layer has a bias
(measured against kronfluence itself by ``benchmarks/peer_parity.py``). K-FAC's Kronecker product for a convolution
with ``T`` output locations is ``T`` times kronfluence's (it divides both factors by the images x ``T``, curvlinops
the output gradients' by the images alone), so a numeric damping weighs differently in the two; EK-FAC refits the
eigenvalues and is unaffected.

Parameters no Kronecker factorisation covers (BatchNorm scales and shifts, grouped convolutions) are
handled by a stated fallback: the exact GGN block of those parameters together (damped the same; cross
terms with the covered ones dropped), and their names and count are reported by ``info()``. The block is
inverted densely (eigh) up to :data:`DENSE_FALLBACK_MAX` parameters; above, from its factor ``F`` (``n C``
rows) by the Woodbury form where ``n C`` is the smaller (:mod:`interp.inverses.lowrank`; ResNet-50's ``layer4``
has 22,528 BatchNorm parameters, a 4 GB block whose eigh takes most of an hour on 2 cores), else densely.
Both are exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from interp.curvature.ggn import DeviceData, curvlinops_model, ggn, ggn_factor
from interp.curvature.library import curvlinops
from interp.curvature.params import flat_positions, select_params
from interp.device import ieee_float32
from interp.errors import InterpError
from interp.inverses.base import INVERSES, Curvature, InverseMethod, InverseOperator
from interp.inverses.dense import spectral_inverse
from interp.inverses.lowrank import lowrank_inverse

KINDS = ("kfac", "ekfac")
WEIGHT_AND_BIAS = ("separate Kronecker blocks for a layer's weight and its bias (curvlinops' separate_weight_and_bias; "
                   "kronfluence joins them into one block over the input with a homogeneous coordinate, a small "
                   "difference)")
DENSE_FALLBACK_MAX = 8192  # uncovered parameters up to which their block is inverted densely (a 512 MiB block)
FISHER_TYPES = ("type-2", "mc", "empirical")  # curvlinops' names; see the module's docstring
FISHER_DEFAULT = "type-2"  # the exact GGN's Kronecker factors (not a Monte-Carlo or empirical Fisher)


def kronecker_coverage(model: nn.Module, names: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(covered, uncovered)`` parameter names: those of ``nn.Linear`` and ungrouped ``nn.Conv2d`` modules
    (what curvlinops factorises), and the rest, each in the order of ``names``."""
    owners = {}
    for prefix, module in model.named_modules():
        ok = isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)
        for pname, _ in module.named_parameters(recurse=False):
            owners[f"{prefix}.{pname}" if prefix else pname] = ok
    covered = [n for n in names if owners.get(n, False)]
    return covered, [n for n in names if n not in set(covered)]


@dataclass(eq=False)
class KroneckerInverse(InverseOperator):
    """``(K + damping I)^-1`` with ``K`` the K-FAC or EK-FAC GGN over the covered parameters, and the exact
    GGN block's damped pseudo-inverse over the uncovered ones (see the module's docstring)."""

    kind: str
    factors: object  # the curvlinops (E)KFACLinearOperator, its factors computed on first use
    covered: torch.Tensor  # positions of the covered parameters in the flat layout
    uncovered: torch.Tensor
    uncovered_names: list[str]
    fallback: InverseOperator | None  # a SpectralInverse or, for a large block, a LowRankInverse
    size: int
    damping: float
    on: torch.device
    fisher_type: str = FISHER_DEFAULT
    mc_samples: int = 1
    method: str = field(init=False)

    def __post_init__(self):
        KFACInverseLinearOperator = curvlinops().KFACInverseLinearOperator

        if self.kind not in KINDS:
            raise InterpError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not self.damping > 0:
            raise InterpError(
                f"{self.kind} needs damping > 0: its eigenvalues include zeros (a dead input or output direction "
                "of a layer) whose inverse is infinite; give e.g. the run's weight decay (wd) or 1e-3"
            )
        self.method = self.kind
        self._inverse = (KFACInverseLinearOperator(self.factors, damping=self.damping, use_exact_damping=True)
                         if self.factors is not None else None)  # fmt: skip

    @property
    def device(self) -> torch.device:
        return self.on

    def _solve(self, cols: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(cols)
        if self._inverse is not None:
            try:
                with ieee_float32():
                    out[self.covered] = (self._inverse @ cols[self.covered].contiguous()).to(out.dtype)
            except torch.linalg.LinAlgError as exc:  # curvlinops decomposes the factors on first use
                raise InterpError(
                    f"{self.kind}: the eigendecomposition of a Kronecker factor failed ({str(exc).split(':')[0]}: "
                    f"{str(exc).split(':', 2)[-1].strip()[:120]}); a factor of far lower rank than its size (few "
                    "images, small feature maps) or with non-finite entries can cause it: use more training images "
                    "or a larger input, or --method blockdiag / arnoldi"
                ) from exc
        if self.fallback is not None:
            out[self.uncovered] = self.fallback.apply(cols[self.uncovered])
        return out

    def with_settings(self, *, rcond="same", damping: float | None = None) -> KroneckerInverse:
        """The same factors under another damping (the Kronecker factors are not recomputed)."""
        d = self.damping if damping is None else damping
        fallback = self.fallback.with_settings(damping=d) if self.fallback is not None else None
        return KroneckerInverse(self.kind, self.factors, self.covered, self.uncovered, self.uncovered_names,
                                fallback, self.size, d, self.on, self.fisher_type, self.mc_samples)  # fmt: skip

    def _fisher(self) -> str:
        return f"mc, {self.mc_samples} sample(s)" if self.fisher_type == "mc" else self.fisher_type

    def info(self) -> dict:
        return {
            "method": self.kind,
            "size": self.size,
            "damping": self.damping,
            "damping_rule": "exact: (K + damping I)^-1 in K's eigenbasis (curvlinops use_exact_damping)",
            "curvature": f"GGN, {self.kind.upper()} (curvlinops, fisher_type={self._fisher()}, kfac_approx=expand)",
            "fisher_type": self.fisher_type,
            "rank_kept": self.size,
            "n_dropped": 0,
            "kronecker_params": int(len(self.covered)),
            "fallback_params": int(len(self.uncovered)),
            "fallback_names": self.uncovered_names,
            "weight_and_bias": WEIGHT_AND_BIAS,
            "fallback": f"exact GGN block of these parameters, damped the same (cross terms dropped), inverted by "
            f"{'eigh' if self.fallback.method != 'lowrank' else 'Woodbury on its factor'}"
            if self.uncovered_names
            else "none needed",
        }


    def report(self) -> list[str]:
        info = self.info()
        lines = [f"curvature: {info['curvature']}", f"{self.kind}: {WEIGHT_AND_BIAS}"]
        if self.uncovered_names:
            names = self.uncovered_names
            lines.append(f"{info['fallback_params']} parameters Kronecker factors do not cover ({len(names)} tensors: "
                         f"{', '.join(names[:4])}{', ...' if len(names) > 4 else ''}): {info['fallback']}")  # fmt: skip
        return lines


def kronecker_inverse(
    model: nn.Module,
    loader: Iterable,
    names: Sequence[str],
    *,
    kind: str = "ekfac",
    damping: float,
    fisher_type: str = FISHER_DEFAULT,
    mc_samples: int = 1,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> KroneckerInverse:
    """Build the K-FAC / EK-FAC inverse of the GGN of the mean cross-entropy over ``loader`` for ``names``
    (``fisher_type``: see the module's docstring)."""
    lib = curvlinops()
    EKFACLinearOperator, KFACLinearOperator = lib.EKFACLinearOperator, lib.KFACLinearOperator

    if fisher_type not in FISHER_TYPES:
        raise InterpError(f"fisher_type must be one of {', '.join(FISHER_TYPES)}, got {fisher_type!r}")
    if not (isinstance(mc_samples, int) and mc_samples >= 1):
        raise InterpError(f"mc_samples must be an integer >= 1, got {mc_samples!r}")

    names = list(select_params(model, list(names)))  # each once, in the gradients' (named_parameters) order
    dev = torch.device(device)
    covered, uncovered = kronecker_coverage(model, names)
    pos = flat_positions(model, names)
    start = sum(len(i) for i in pos.values())
    index = lambda group: torch.cat([pos[n] for n in group]).to(dev) if group else torch.zeros(0, dtype=torch.long, device=dev)  # noqa: E731
    factors = None
    if covered:
        copy, chosen = curvlinops_model(model, covered, dtype, dev)
        cls = EKFACLinearOperator if kind == "ekfac" else KFACLinearOperator
        with ieee_float32():
            factors = cls(copy, nn.CrossEntropyLoss(), chosen, DeviceData(loader, dev, dtype), progressbar=progress,
                          check_deterministic=False, fisher_type=fisher_type, mc_samples=mc_samples)  # fmt: skip
    fallback = None
    if uncovered:
        fallback = _fallback(model, loader, uncovered, damping, dtype, dev, progress)
    return KroneckerInverse(kind, factors, index(covered), index(uncovered), uncovered, fallback, start, damping, dev,
                            fisher_type, mc_samples)  # fmt: skip


def _fallback(model, loader, names, damping, dtype, dev, progress) -> InverseOperator:
    """The exact damped GGN block of ``names``: dense eigh when small, else from its factor when that is thinner."""
    wanted = set(names)
    total = sum(p.numel() for n, p in model.named_parameters() if n in wanted)
    if total > DENSE_FALLBACK_MAX:
        f = ggn_factor(model, loader, names, dtype=dtype, device=dev, progress=progress)
        if f.shape[0] < f.shape[1]:
            return lowrank_inverse(f, damping)
        block = f.T @ f
        del f
    else:
        block = ggn(model, loader, names, dtype=dtype, device=dev, progress=progress)
    return spectral_inverse(block, rcond="exact", damping=damping, method="eigh")


@dataclass(frozen=True)
class KroneckerOptions:
    """The settings of ``--method kfac`` and ``ekfac``."""

    fisher: str = field(default=FISHER_DEFAULT, metadata={"help": "the Fisher of the Kronecker factors: type-2 (the "
                        "exact GGN's, one backward pass per class), mc (one sampled label per image: an unbiased "
                        "estimate, classes-times cheaper, for large selections) or empirical (the true labels' "
                        "gradients: not the GGN, for comparison)"})  # fmt: skip
    mc_samples: int = field(default=1, metadata={"help": "--fisher mc: labels sampled per image"})

    def __post_init__(self):
        if self.fisher not in FISHER_TYPES:
            raise InterpError(f"fisher must be one of {', '.join(FISHER_TYPES)}, got {self.fisher!r}")
        if isinstance(self.mc_samples, bool) or not isinstance(self.mc_samples, int) or self.mc_samples < 1:
            raise InterpError(f"mc_samples must be an integer >= 1, got {self.mc_samples!r}")
        if self.mc_samples != 1 and self.fisher != "mc":
            raise InterpError(f"mc_samples applies to fisher mc, not {self.fisher}")


def _kronecker(kind: str):
    def build(curvature: Curvature, *, damping: float, progress: bool, fisher: str, mc_samples: int):
        return kronecker_inverse(curvature.model, curvature.data, curvature.names(), kind=kind, damping=damping,
                                 fisher_type=fisher, mc_samples=mc_samples, device=curvature.device,
                                 progress=progress)  # fmt: skip

    return build


for _kind, _what in (("kfac", "K-FAC"), ("ekfac", "EK-FAC")):
    INVERSES.register(InverseMethod(_kind, _kronecker(_kind), needs="model", cutoff=False, shared=_kind, damped=True,
                                    options=KroneckerOptions,
                                    help=f"{_what} of the GGN (curvlinops), Linear and Conv2d; other parameters by "
                                    "their exact GGN block"))  # fmt: skip
