"""Settings of ``robust-transfer influence``: what is computed, validated where it is declared.

``--rcond`` and ``--damping`` lists are parsed here, once (:meth:`InfluenceConfig.rconds`,
:meth:`InfluenceConfig.dampings`), for ``influence``, ``influence-study`` and ``validate-influence``;
``--method`` resolves through ``interp``'s inverse registry.
"""

from __future__ import annotations

import dataclasses
from dataclasses import InitVar, dataclass, field

from interp import INVERSES, NORMALIZE, InterpError, InverseMethod
from study.sweeps.engines import EXECUTORS, make_executor
from study.sweeps.executors import MAX_WORKERS, Executor
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

# the dampings a run implies, by name (``--damping wd,source``): each a stated rule, never one chosen by a score
DAMPING_RULES = {
    "wd": "the run's weight decay: H + damping I is then the Hessian of the regularised objective SGD minimised",
    "source": "1 / (learning rate x SGD steps): the damping implied by the proximity early-stopped SGD keeps to its "
    "start (SOURCE, Bae et al. 2024)",
}

RUN_DATA_ROOT = "where torchvision datasets live (default: the one the run recorded)"
NOT_RETRAIN = ("slurm",)  # slurm is a sweep's executor: its options (partition, time, ...) are sweep's
MAX_ENSEMBLE = 100
# the settings that make an influence directory what it is: a directory computed with the same ones from the same run
# is reused (a killed study or ensemble resumes); the executor and the device only say where it was computed
SHARED = ("params", "method", "options", "test", "rcond", "damping", "normalize", "refit_head", "features_dtype",
          "ensemble")  # fmt: skip
EXECUTION = ("executor", "retrain_workers", "address", "together")
MAX_TOGETHER = 64
TOGETHER = ("local", "inline")  # the executors that train several runs in one loop


def check_executor(cfg) -> None:
    """The retraining executor's settings of ``cfg`` (``executor``, ``retrain_workers``, ``address``), checked."""
    v.choice("executor", cfg.executor, [n for n in EXECUTORS if n not in NOT_RETRAIN])
    if cfg.retrain_workers is not None:
        v.integer("retrain_workers", cfg.retrain_workers, low=1, high=MAX_WORKERS)
    if cfg.executor != "local" and cfg.retrain_workers is not None:
        raise UserError("--retrain-workers is for --executor local")
    if cfg.executor != "ray" and cfg.address is not None:
        raise UserError("--address is for --executor ray")
    v.integer("together", cfg.together, low=1, high=MAX_TOGETHER)
    if cfg.together > 1 and cfg.executor not in TOGETHER:
        raise UserError(f"--together is for --executor {' or '.join(TOGETHER)}")


def retrain_executor(cfg) -> Executor:
    """The executor of ``cfg``'s retrainings (``executor``, ``retrain_workers``, ``threads``, ``address``,
    ``together``)."""
    return make_executor(cfg.executor, workers=cfg.retrain_workers, threads=cfg.threads, address=cfg.address,
                         together=cfg.together)  # fmt: skip


@dataclass(kw_only=True)
class InfluenceConfig(Runtime):
    """Settings of ``robust-transfer influence``."""

    run: str = field(metadata={"help": "run directory from robust-transfer finetune"})
    out: str = field(metadata={"help": "influence directory to write"})
    params: str = field(
        default="fc",
        metadata={
            "help": "parameters: head (alias fc: the classifier, in closed form, whatever the architecture "
            "calls it), trainable (every parameter the run fine-tuned: its unfrozen blocks and the head), or "
            "comma-separated module paths such as layer4.2,fc"
        },  # fmt: skip
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
            "help": "added to the Hessian's diagonal: a number, or a rule: wd (the run's weight decay, which makes H + "
            "damping I the Hessian of the regularised objective) or source (1 / (lr x SGD steps), the damping "
            "early-stopped SGD implies: SOURCE, Bae et al. 2024); a comma-separated list gives one matrix pair per "
            "value, the LDS's sensitivity to it"
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
    method: str = field(default="auto", metadata={"help": lambda: method_help()})
    options: dict = field(
        default_factory=dict,
        metadata={"help": "the method's own options by name (each offered as its own flag, e.g. --arnoldi-rank); "
                  "an option of another method is refused", "method_options": True},
    )  # fmt: skip
    # the options of the built-in methods, as earlier versions took them (they go to ``options``)
    arnoldi_rank: InitVar[int | None] = None
    fisher: InitVar[str | None] = None
    cg_tol: InitVar[float | None] = None
    cg_max_iter: InitVar[int | None] = None
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
    ensemble: int = field(
        default=1,
        metadata={"help": "models whose influence is averaged: the run and K - 1 more fine-tunes of it on the same "
                  "training images with training seeds run seed + 1, ..., K - 1 (head initialisation, batch order, "
                  "augmentation), each with this method and these settings; the fine-tunes and per-model "
                  "directories are kept under OUT/ensemble (resumable) and listed in meta.json (1: the run alone)"},
    )  # fmt: skip
    executor: str = field(
        default="local",
        metadata={"help": "--ensemble: where the extra fine-tunes run: local (worker processes here: one per GPU, "
                  "else cores / --threads), inline (this process, one at a time), ray, or a registered executor"},
    )  # fmt: skip
    retrain_workers: int | None = field(
        default=None, metadata={"help": "--executor local: worker processes (default: one per GPU, else per core)"}
    )
    address: str | None = field(
        default=None, metadata={"help": "--executor ray: cluster address (default: a local Ray)"}
    )
    together: int = field(
        default=1,
        metadata={"help": "--executor local or inline: fine-tunes that differ only in seed and training images are "
                  "trained up to this many in one loop (one forward of the frozen layers for all; the same models "
                  "to round-off). For GPUs, where one small model leaves the device idle; on a CPU it was measured "
                  "slower (1: one at a time)"},
    )  # fmt: skip
    data_root: str | None = field(default=None, metadata=runtime_help("data_root", help=RUN_DATA_ROOT))

    RUNTIME = ("device", "threads", "data_root")

    def retrain_executor(self) -> Executor:
        """The executor of the ensemble's fine-tunes."""
        return retrain_executor(self)

    def rconds(self) -> list[float | str | None]:
        """The cut-offs asked for: ``paper``, ``exact`` or numbers in [0, 1), in the order given; ``[None]`` for a
        method without a cut-off."""
        if self.rcond is None:
            return [None]
        return [setting_value("rcond", item, ("paper", "exact"), high=1) for item in _items("rcond", self.rcond)]

    def dampings(self) -> list[float | str]:
        """The dampings asked for: numbers >= 0, or a rule's name (``wd``, ``source``: resolved from the run by
        :meth:`with_run_dampings`)."""
        return [
            setting_value("damping", item, tuple(DAMPING_RULES), high=None) for item in _items("damping", self.damping)
        ]

    def inverse_method(self) -> InverseMethod:
        """The registry entry of ``method`` (:data:`interp.INVERSES`)."""
        if self.method not in INVERSES.names():
            raise UserError(f"--method must be one of {', '.join(INVERSES.names())}; got {self.method!r} "
                            "(interp.register_inverse adds methods)")  # fmt: skip
        return INVERSES.get(self.method)

    def with_run_dampings(self, values: dict[str, float]) -> InfluenceConfig:
        """This config with every rule's name in ``--damping`` replaced by its value for the run (``values``:
        :func:`study.attribution.inputs.run_dampings`)."""
        resolved = [values[d] if d in DAMPING_RULES else d for d in self.dampings()]
        return dataclasses.replace(self, damping=",".join(repr(float(d)) for d in resolved))

    def damping_rules(self) -> list[str | None]:
        """The rule each damping came from (``wd``, ``source``), or None for a number, in the order given."""
        return [d if d in DAMPING_RULES else None for d in self.dampings()]

    def settings(self) -> list[dict]:
        """Every (cut-off, damping) pair, the first being the directory's main matrices."""
        return [{"rcond": r, "damping": d} for r in self.rconds() for d in self.dampings()]

    def __post_init__(self, arnoldi_rank=None, fisher=None, cg_tol=None, cg_max_iter=None):
        """Every setting checked before the run is read or the output touched."""
        legacy = {"arnoldi_rank": arnoldi_rank, "fisher": fisher, "cg_tol": cg_tol, "cg_max_iter": cg_max_iter}
        self.options = {**dict(self.options), **{k: val for k, val in legacy.items() if val is not None}}
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
        if method.damped and any(d not in DAMPING_RULES and float(d) <= 0 for d in dampings):
            raise UserError(f"--method {self.method} needs --damping > 0 (its curvature has zero eigenvalues); "
                            "give e.g. wd (the run's weight decay) or 1e-3")  # fmt: skip
        v.choice("gradients", self.gradients, GRADIENTS)
        if len(rconds) * len(dampings) > 20:
            raise UserError(f"--rcond x --damping asks for {len(rconds) * len(dampings)} settings; at most 20")
        v.integer("batch_size", self.batch_size, low=1)
        v.choice("features_dtype", self.features_dtype, ("float32", "float64"))
        v.integer("ensemble", self.ensemble, low=1, high=MAX_ENSEMBLE)
        check_executor(self)
        self.options = method_options(method, self.options)
        super().__post_init__()


def method_help() -> str:
    """``--method``'s help, from the registry (a method registered from outside the package is listed too)."""
    listed = "; ".join(f"{m.name}: {m.help}" if m.help else m.name for m in INVERSES.methods())
    return f"a registered inverse method: {listed} (interp.register_inverse adds more)"


def method_options(method: InverseMethod, given: dict) -> dict:
    """``method``'s own options, ``given`` over their defaults (:meth:`InverseMethod.resolve_options`). An option
    of another method is refused, naming the methods that read it; a value the method's options class refuses is
    said with its flag."""
    owners = INVERSES.option_owners()
    for name in given:
        if name not in owners:
            raise UserError(f"{v.flag(name)} is no registered method's option; options: "
                            f"{', '.join(v.flag(n) for n in owners) or 'none'}")  # fmt: skip
        if method.name not in owners[name]:
            raise UserError(f"{v.flag(name)} applies to --method {' and '.join(owners[name])}, not {method.name}")
    try:
        return method.resolve_options(given)
    except InterpError as exc:
        text = str(exc)
        first = text.split(" ", 1)[0]
        raise UserError(
            v.flag(first) + text[len(first) :] if first in owners else f"--method {method.name}: {text}"
        ) from None


def _items(name: str, text: str) -> list[str]:
    items = [t.strip() for t in str(text).split(",")]
    if not items or any(not t for t in items):
        raise UserError(f"--{name} must be a value or a comma-separated list of values, got {text!r}")
    return items


def setting_value(name: str, item: str, words: tuple[str, ...], high: float | None, low_open: bool = False):
    """One value of a setting: one of ``words``, or a finite number from 0 (excluded with ``low_open``) up to
    ``high`` (excluded; ``None``: unbounded)."""
    if item in words:
        return item
    try:
        x = float(item)
    except ValueError:
        allowed = f"{', '.join(words)} or a number" if words else "a number"
        raise UserError(f"{v.flag(name)} must be {allowed}, got {item!r}") from None
    return v.number(name, x, low=0, high=high, low_open=low_open, high_open=high is not None)


def influence_field(name: str, **override):
    """:class:`InfluenceConfig`'s field ``name`` for another command's settings: its default, help and checks (the
    other command builds an :class:`InfluenceConfig` from it), with ``default`` or ``help`` overridden where
    given, so that a flag means the same everywhere instead of being copied."""
    f = InfluenceConfig.__dataclass_fields__[name]
    meta = {**f.metadata, **({"help": override["help"]} if "help" in override else {})}
    if "default" in override:
        return field(default=override["default"], metadata=meta)
    if f.default_factory is not dataclasses.MISSING:
        return field(default_factory=f.default_factory, metadata=meta)
    return field(default=f.default, metadata=meta)
