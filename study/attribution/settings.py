"""Settings of ``robust-transfer influence``: what is computed, validated where it is declared.

``--rcond`` and ``--damping`` lists are parsed here, once (:meth:`InfluenceConfig.rconds`,
:meth:`InfluenceConfig.dampings`), for ``influence``, ``influence-study`` and ``validate-influence``;
``--method`` resolves through ``interp``'s inverse registry.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import interp
import interp.head
from interp.curvature_methods import ARNOLDI_RANK
from interp.influence import NORMALIZE
from interp.inverse import INVERSES
from interp.kronecker import FISHER_DEFAULT, FISHER_TYPES
from transfer import validation as v
from transfer.errors import UserError
from transfer.runtime import Runtime, runtime_help

HEAD_ALIASES = ("head", "fc")  # --params naming the classifier of any architecture
GRADIENTS = ("auto", "memory", "stream")
TRAINABLE = "trainable"  # --params naming every parameter the run fine-tuned: its unfrozen blocks and the head
SIGN_CONVENTION = (
    "I[i, j] = -g_test_i^T (H + damping I)^+ g_train_j (Koh & Liang's I_up,loss; H = Hessian of the MEAN "
    "training loss): the change in test loss i per unit up-weighting of training image j. Negative = helpful; "
    "removing j changes test loss by about -I[i, j] / n_train."
)


# The cut-offs and dampings have one parser (InfluenceConfig.rconds / dampings) and these defaults, one per
# purpose: a single matrix pair takes the method's own (the paper's for the head: interp's registry says);
# validation sets the exact inverse beside it; the study over seeds reads how the comparison moves with the
# cut-off. No damping unless asked (``wd``: the weight decay).
RCOND_VALIDATE = "exact,paper"
RCOND_STUDY = "paper,1e-2,1e-3,exact"
DAMPING_DEFAULT = "0"

RUN_DATA_ROOT = "where torchvision datasets live (default: the one the run recorded)"


@dataclass(kw_only=True)
class InfluenceConfig(Runtime):
    """Settings of ``robust-transfer influence``."""

    run: str = field(metadata={"help": "run directory from robust-transfer finetune"})
    out: str = field(metadata={"help": "influence directory to write"})
    params: str = field(
        default="fc",
        metadata={"help": "parameters: head (alias fc: the classifier, in closed form, whatever the architecture "
                  "calls it), trainable (every parameter the run fine-tuned: its unfrozen blocks and the head), or "
                  "comma-separated module paths such as layer4.2,fc"},  # fmt: skip
    )
    test: str = field(
        default="all", metadata={"help": "test images: all, or N (a class-covering random subset, seed 0)"}
    )
    rcond: str | None = field(
        default=None,
        metadata={
            "help": "pseudo-inverse cut-off relative to the largest eigenvalue: paper (0.05, as the paper's code, "
            "scipy pinv2 rcond=5e-2), exact (P * eps, scipy.linalg.pinv's default) or a number in [0, 1); a "
            "comma-separated list (paper,1e-2,1e-4,exact) factorises once and writes one matrix pair per setting. "
            "Default: the method's own, paper for the dense Hessian methods (auto, cholesky, eigh, svd: the head, as "
            "the paper), exact for ggn, blockdiag and arnoldi (the exact references); methods without a cut-off "
            "(cg, kfac, ekfac) refuse it"
        },
    )
    damping: str = field(
        default=DAMPING_DEFAULT,
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
            "help": "a registered inverse method: auto, cholesky, eigh, svd (the Hessian, dense), cg (the Hessian, "
            "matrix-free), ggn (the exact Gauss-Newton matrix, dense), blockdiag (its per-layer blocks), kfac and "
            "ekfac (Kronecker-factored GGN, curvlinops; need --damping > 0), arnoldi (the GGN's top --arnoldi-rank "
            "eigenpairs); interp.register_inverse adds more"
        },
    )
    arnoldi_rank: int = field(
        default=ARNOLDI_RANK, metadata={"help": "arnoldi: eigenpairs of the GGN computed (the subspace's dimension)"}
    )
    fisher: str = field(
        default=FISHER_DEFAULT,
        metadata={"help": "kfac, ekfac: the Fisher of the Kronecker factors: type-2 (the exact GGN's, one backward pass "
                  "per class), mc (one sampled label per image: an unbiased estimate, classes-times cheaper, for "
                  "large selections) or empirical (the true labels' gradients: not the GGN, for comparison)"},
    )  # fmt: skip
    cg_tol: float = field(default=1e-10, metadata={"help": "cg: relative residual at which a solve stops"})
    cg_max_iter: int = field(
        default=1000, metadata={"help": "cg: iteration limit; a solve that reaches it unconverged is reported"}
    )
    gradients: str = field(
        default="auto",
        metadata={"help": "per-example gradients of a generic selection: memory (held whole), stream (computed "
                  "batch by batch, solved a chunk of rows at a time, never held whole) or auto (streamed when "
                  "holding them would take over half the free memory)"},
    )  # fmt: skip
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
    data_root: str | None = field(default=None, metadata=runtime_help("data_root", help=RUN_DATA_ROOT))

    RUNTIME = ("device", "threads", "data_root")

    def rconds(self) -> list[float | str | None]:
        """The cut-offs asked for: ``paper``, ``exact`` or numbers in [0, 1), in the order given; ``[None]`` for a
        method without a cut-off."""
        if self.rcond is None:
            return [None]
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
        method = self.inverse_method()
        if not method.cutoff and self.rcond is not None:
            raise UserError(f"--rcond does not apply to --method {self.method} (it solves without a cut-off); drop it")
        if method.cutoff and self.rcond is None:
            self.rcond = method.default_rcond  # the method's own: paper for the head's Hessian, exact for ggn & co.
        self.rcond = None if self.rcond is None else str(self.rcond)
        self.damping = str(self.damping)
        rconds, dampings = self.rconds(), self.dampings()
        for name, values in (("rcond", rconds), ("damping", dampings)):
            # one matrix pair per setting: the same value twice would write two identical pairs
            seen = [x if x is None or isinstance(x, str) else float(x) for x in values]
            twice = sorted({str(x) for x in seen if seen.count(x) > 1})
            if twice:
                raise UserError(f"--{name} lists {', '.join(twice)} more than once; give each value once")
        v.choice("normalize", self.normalize, NORMALIZE)
        if self.refit_head and (self.params not in HEAD_ALIASES or method.needs != "dense"):
            raise UserError(f"--refit-head applies to the head alone (--params fc, not --method {self.method})")
        if method.damped and any(d != "wd" and float(d) <= 0 for d in dampings):
            raise UserError(f"--method {self.method} needs --damping > 0 (its curvature has zero eigenvalues); "
                            "give e.g. wd (the run's weight decay) or 1e-3")  # fmt: skip
        v.integer("arnoldi_rank", self.arnoldi_rank, low=1)
        v.choice("fisher", self.fisher, FISHER_TYPES)
        v.choice("gradients", self.gradients, GRADIENTS)
        if len(rconds) * len(dampings) > 20:
            raise UserError(f"--rcond x --damping asks for {len(rconds) * len(dampings)} settings; at most 20")
        v.number("cg_tol", self.cg_tol, low=0, high=1, low_open=True, high_open=True)
        v.integer("cg_max_iter", self.cg_max_iter, low=1)
        v.integer("batch_size", self.batch_size, low=1)
        v.choice("features_dtype", self.features_dtype, ("float32", "float64"))
        self._refuse_foreign_options(method)
        super().__post_init__()

    def asked(self) -> dict:
        """The settings as recorded in ``meta.json``: every field but the options of methods other than this one."""
        return {k: val for k, val in dataclasses.asdict(self).items()
                if k not in METHOD_OPTIONS or self.method in METHOD_OPTIONS[k]}  # fmt: skip

    def _refuse_foreign_options(self, method) -> None:
        """A method's own option set for another method is refused, not recorded as if it had been used."""
        for name, readers in METHOD_OPTIONS.items():
            default = next(f.default for f in dataclasses.fields(self) if f.name == name)
            if getattr(self, name) != default and self.method not in readers:
                raise UserError(f"{v.flag(name)} applies to --method {' and '.join(readers)}, not {method.name}")


# the options of one method each, and the methods that read them
METHOD_OPTIONS = {"arnoldi_rank": ("arnoldi",), "fisher": ("kfac", "ekfac"), "cg_tol": ("cg",),
                  "cg_max_iter": ("cg",)}  # fmt: skip


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
