"""Does influence predict anything here? Leave-one-out on a fine-tuned run's head.

On the run's frozen features, the head is refitted to the optimum of the regularised objective
(weight decay as an explicit L2 term, float64, L-BFGS; see :mod:`interp.loo`), influence is
computed there with ``damping = weight decay`` for each cut-off asked for, and for a few test
images the most influential training images (plus random ones) are removed one at a time and the
head refitted: predicted ``-I/n`` against the actual change of test loss, Pearson and Spearman.

    from study.attribution.leave_one_out import ValidateConfig, validate_influence
    report = validate_influence(ValidateConfig(run="runs/rob", out="validate/rob"))
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

import interp
from interp import leave_one_out, refit_head
from study.attribution import InfluenceConfig, load_run, run_influence, run_weight_decay
from study.attribution.ground_truth import MAX_RETRAININGS, MIN_SUBSETS
from study.attribution.inputs import up_to_date
from study.attribution.lds import exact_references, lds_figure, lds_report, read_influence_of, write_lds_csv
from study.attribution.pbrf_check import pbrf_check
from study.attribution.retrain_loo import retrained_loo
from study.attribution.retraining import TARGETS
from study.attribution.settings import (
    EXECUTION,
    RCOND_VALIDATE,
    RUN_DATA_ROOT,
    check_executor,
    influence_field,
    retrain_executor,
)
from study.sweeps.executors import Executor
from transfer import validation as v
from transfer.device import resolve_device
from transfer.errors import UserError
from transfer.files import OutputDir, atomic_write_csv, atomic_write_figure, atomic_write_json, name_patterns
from transfer.models import classifier
from transfer.runtime import Runtime, runtime_help, torch_threads

MIN_PAIRS = 3  # fewer points than this have no correlation (two points always lie on a line)
FEW_PAIRS = 10  # under this a correlation is reported with a warning
VALIDATE_FILES = ("validate.json", "validate.csv", "validate.png", "lds", "lds.csv", "lds.png", "loo")


def correlations(predicted: np.ndarray, actual: np.ndarray) -> dict:
    """Pearson and Spearman of predicted against actual changes, with a ``warning`` where they mean
    little: fewer than :data:`FEW_PAIRS` points, or a constant side (no correlation is defined: NaN)."""
    from scipy.stats import pearsonr, spearmanr  # scipy.stats takes most of a second to import: not at start-up

    n = len(predicted)
    if n < MIN_PAIRS:
        raise UserError(f"{n} removal(s) cannot give a correlation; at least {MIN_PAIRS} are needed")
    constant = [name for name, x in (("predicted", predicted), ("actual", actual)) if np.ptp(x) == 0]
    if constant:
        out = {"pearson": float("nan"), "spearman": float("nan"),
               "warning": f"the {' and '.join(constant)} changes are all equal: no correlation is defined"}  # fmt: skip
    else:
        out = {"pearson": float(pearsonr(predicted, actual)[0]), "spearman": float(spearmanr(predicted, actual)[0])}
        if n < FEW_PAIRS:
            out["warning"] = f"only {n} removals: a correlation over so few points is weak evidence"
    return out


@dataclass(kw_only=True)
class ValidateConfig(Runtime):
    """Settings of ``robust-transfer validate-influence``."""

    run: str = field(metadata={"help": "run directory from robust-transfer finetune"})
    out: str = field(metadata={"help": "directory for validate.json, validate.csv and validate.png"})
    tests: int = field(default=3, metadata={"help": "test images (the highest-loss ones after the refit); 0 with --lds: "
                                            "the LDS only, no leave-one-out check"})
    removals: int = field(default=10, metadata={"help": "most influential training images removed per test image"})
    random: int = field(default=5, metadata={"help": "random training images removed per test image"})
    rcond: str = influence_field("rcond", default=RCOND_VALIDATE, help="cut-offs to compare (as influence --rcond)")
    test: str = influence_field("test", default="200", help="test images the candidates are drawn from: all or N")
    seed: int = field(default=0, metadata={"help": "seed of the random removals and of the --lds subsets"})
    lds: int = field(
        default=0,
        metadata={"help": "also the linear datamodeling score: retrain the run's fine-tune (its settings) on this many "
                  "random subsets and correlate each influence setting's prediction with the retrained test outputs "
                  "(0: off; at least 5; TRAK and dattri use 100)"},
    )  # fmt: skip
    repeats: int = field(
        default=1,
        metadata={"help": "--lds: retrainings of each subset, with training seeds run seed + 0, 1, ...; their outputs "
                  "are averaged, and from 2 on the ground truth's reliability (split-half, Spearman-Brown) and "
                  "ceiling are reported (kronfluence's examples use 5)"},
    )  # fmt: skip
    target: str = field(
        default="loss",
        metadata={"help": "--lds: the measured output: loss (the test cross-entropy, what I_up,loss predicts) or "
                  "margin (TRAK's: the correct logit minus the log-sum-exp of the others); the other is reported too"},
    )  # fmt: skip
    fraction: float = field(default=0.5, metadata={"help": "--lds: share of the run's training images in each subset"})
    retrain: bool = field(
        default=False,
        metadata={"help": "leave-one-out by retraining the run's whole fine-tune (its blocks and head, SGD, same "
                  "settings and seed) once per removed image, instead of refitting the head: the check of "
                  "influence over the trainable parameters; scores the directories of --influence"},
    )  # fmt: skip
    pbrf: bool = field(
        default=False,
        metadata={"help": "instead of leave-one-out, the proximal Bregman response function (Bae et al. 2022): for the "
                  "images --retrain would remove, the response of every fine-tuned parameter warm-started at the "
                  "run's weights, solved to convergence: what influence approximates, without retraining's noise; "
                  "scores the directories of --influence"},
    )  # fmt: skip
    pbrf_damping: str = field(
        default="wd",
        metadata={"help": "--pbrf: the proximity term's strength: wd (the run's weight decay), source (1 / (lr x SGD "
                  "steps)) or a number > 0; influence computed with the same damping is the one it checks"},
    )  # fmt: skip
    pbrf_epsilon: str = field(
        default="auto",
        metadata={"help": "--pbrf: the image's weight goes down by epsilon / n, and the response is divided by epsilon "
                  "(the influence function is its limit as epsilon -> 0): a number in (0, 1] (1 removes the image; "
                  "the objective of a high-loss image may then have no minimum near the run's weights) or auto (per "
                  "image, the largest epsilon <= 1 whose first-order move is 1e-3 of the weights' norm)"},
    )  # fmt: skip
    influence: str | None = field(
        default=None,
        metadata={"help": "--lds: comma-separated influence directories of this run to score (any --method and "
                  "--params); default: one computed here (head, the cut-offs of --rcond, damping = weight decay)"},
    )  # fmt: skip
    exact: str | None = field(
        default=None,
        metadata={"help": "--lds: comma-separated influence directories of this run taken as the exact result (e.g. "
                  "influence --params trainable --method ggn, or the head's with --rcond exact; of several settings "
                  "the one labelled exact): each scored setting of the same parameters and damping is reported with "
                  "its agreement with it (top-10 overlap and Spearman per test image)"},
    )  # fmt: skip
    ensemble: int = influence_field("ensemble", help="the influence computed here (without --influence): averaged "
                                    "over this many models, as influence --ensemble (the run's fine-tune repeated "
                                    "with other seeds on the same images)")  # fmt: skip
    executor: str = influence_field(
        "executor", help="--lds/--retrain/--ensemble: where the retrainings run: local (worker processes here: one per "
        "GPU, else cores / --threads), inline (this process, one at a time), ray, or a registered executor")
    retrain_workers: int | None = influence_field("retrain_workers")
    address: str | None = influence_field("address")
    together: int = influence_field("together")
    device: str = field(default="auto", metadata=runtime_help("device", help=(
        "auto, cpu, cuda or cuda:N: where features, influence and the --lds/--retrain retrainings run (the head's "
        "refits run on the CPU whatever it is: thousands of tiny solves)")))  # fmt: skip
    data_root: str | None = field(default=None, metadata=runtime_help("data_root", help=RUN_DATA_ROOT))

    RUNTIME = ("device", "threads", "data_root")

    def retrain_executor(self) -> Executor:
        """The executor of this command's retrainings (and of --ensemble's fine-tunes)."""
        return retrain_executor(self)

    def __post_init__(self):
        v.integer("tests", self.tests, low=0)
        v.integer("removals", self.removals, low=1)
        v.integer("random", self.random, low=0)
        v.integer("seed", self.seed, low=0)
        check_executor(self)
        if self.lds:
            v.integer("lds", self.lds, low=MIN_SUBSETS, high=MAX_RETRAININGS)
        v.integer("repeats", self.repeats, low=1, high=MAX_RETRAININGS)
        if self.lds * self.repeats > MAX_RETRAININGS:
            raise UserError(f"--lds {self.lds} x --repeats {self.repeats} = {self.lds * self.repeats} retrainings; at "
                            f"most {MAX_RETRAININGS}")  # fmt: skip
        v.choice("target", self.target, tuple(TARGETS))
        if not self.lds and (self.repeats != 1 or self.target != "loss"):
            raise UserError("--repeats and --target describe the ground truth of --lds; give --lds M")
        v.number("fraction", self.fraction, low=0, high=1, low_open=True, high_open=True)
        if self.influence is not None and not (self.lds or self.retrain or self.pbrf):
            raise UserError("--influence names directories for --lds, --retrain or --pbrf to score; give one of them")
        if self.influence is not None and self.ensemble > 1:
            raise UserError("--ensemble is for the influence computed here; the directories of --influence were "
                            "computed with their own (influence --ensemble K)")  # fmt: skip
        if self.retrain and self.pbrf:
            raise UserError("--retrain and --pbrf are two checks of the same removals; run them one at a time")
        self.pbrf_epsilon = str(self.pbrf_epsilon)
        if (self.pbrf_damping != "wd" or self.pbrf_epsilon != "auto") and not self.pbrf:
            raise UserError("--pbrf-damping and --pbrf-epsilon are for --pbrf")
        if self.pbrf_epsilon != "auto":
            v.number("pbrf_epsilon", self.pbrf_epsilon, low=0, high=1, low_open=True)
        if self.tests == 0 and (not self.lds or self.retrain or self.pbrf):
            raise UserError("--tests 0 skips the leave-one-out check and keeps the LDS alone: give --lds M (and not "
                            "--retrain or --pbrf, which are checks of removals)")  # fmt: skip
        if self.exact is not None and not self.lds:
            raise UserError("--exact names the exact result the --lds scores are compared with; give --lds M")
        pairs = self.tests * (self.removals + self.random)
        if self.tests and pairs < MIN_PAIRS:
            raise UserError(
                f"--tests {self.tests} x (--removals {self.removals} + --random {self.random}) = {pairs} removal(s): "
                f"a correlation needs at least {MIN_PAIRS} (and means little under {FEW_PAIRS}); raise them"
            )
        super().__post_init__()
        self.influence_config()

    def influence_config(self) -> InfluenceConfig:
        return InfluenceConfig(run=self.run, out=self.out, rcond=self.rcond, test=self.test, device=self.device,
                               threads=self.threads, data_root=self.data_root, ensemble=self.ensemble,
                               **{k: getattr(self, k) for k in EXECUTION})  # fmt: skip


def validate_influence(cfg: ValidateConfig, progress: bool = True) -> dict:
    """Refit, predict, retrain; write ``validate.json``, ``validate.csv``, ``validate.png``; return the report.

    ``cfg.out`` is held (:class:`~transfer.files.OutputDir`) from the start, so a directory holding
    other files is refused before any work."""
    out = Path(cfg.out)
    with torch_threads(cfg.threads), OutputDir(out, "validate-influence", name_patterns(*VALIDATE_FILES)):
        return _validate(cfg, out, progress)


def _validate(cfg: ValidateConfig, out: Path, progress: bool) -> dict:
    # the named directories are read, and checked to be this run's, before any refit or retraining starts
    named = read_influence_of(Path(cfg.run), _named_dirs(cfg.influence)) if cfg.influence else None
    if cfg.exact:
        exact_references(read_influence_of(Path(cfg.run), _named_dirs(cfg.exact)))
    if cfg.retrain:
        return _validate_retrained(cfg, out, named, progress)
    if cfg.pbrf:
        return _validate_pbrf(cfg, out, named, progress)
    if cfg.tests == 0:
        report = {"run": cfg.run, "config": asdict(cfg), "settings": [],
                  "note": "--tests 0: no leave-one-out check, the linear datamodeling score only"}  # fmt: skip
        return _finish(cfg, out, report, [], "", named, progress)
    icfg = cfg.influence_config()
    settings, model, train, test, idx_train, idx_test = load_run(icfg)
    lam = run_weight_decay(settings)
    model = model.to(resolve_device(cfg.device)).eval()
    head = classifier(model)
    z_tr, _, y_tr = interp.head_features(model, head, DataLoader(train, batch_size=256), progress=progress)
    z_te, _, y_te = interp.head_features(model, head, DataLoader(test, batch_size=256), progress=progress)
    # the head problem is small (C x (D+1) parameters): its many L-BFGS refits run faster on the CPU than as
    # thousands of tiny GPU kernels with a host sync each (measured: the quick demo's influence stage 294 s on
    # an H100 vs about 60 s on 2 CPU cores); the features above came from the model's device
    z_tr, z_te, y_tr, y_te = z_tr.double().cpu(), z_te.double().cpu(), y_tr.cpu(), y_te.cpu()
    w, b, fit = refit_head(z_tr, y_tr, head.weight.cpu(), head.bias.cpu(), lam)
    if fit["grad_norm"] > 1e-6:
        raise UserError(f"the head refit stopped at gradient norm {fit['grad_norm']:.2e}; the optimum was not reached")
    logits_tr, logits_te = z_tr @ w.T + b, z_te @ w.T + b
    losses = torch.nn.functional.cross_entropy(logits_te, y_te, reduction="none")
    tests = losses.argsort(descending=True)[: cfg.tests].tolist()
    n = len(y_tr)
    rng = np.random.default_rng(cfg.seed)
    results, rows = [], []
    actual_cache: dict[tuple[int, int], float] = {}
    for rcond in icfg.rconds():
        res = interp.head_influence(z_tr, logits_tr, y_tr, z_te[tests], logits_te[tests], y_te[tests],
                                    rcond=rcond, damping=lam, method="eigh")  # fmt: skip
        inf = np.asarray(res["test"])
        pairs = []
        for row, t in enumerate(tests):
            top = np.argsort(-np.abs(inf[row]), kind="stable")[: cfg.removals].tolist()
            chosen = set(top)
            rest = [j for j in range(n) if j not in chosen]
            pairs += [(row, t, j, "top") for j in top]
            pairs += [
                (row, t, int(j), "random") for j in rng.choice(rest, size=min(cfg.random, len(rest)), replace=False)
            ]
        todo = [(t, j) for _, t, j, _ in pairs if (t, j) not in actual_cache]
        for (t, j), delta in zip(todo, leave_one_out(z_tr, y_tr, z_te, y_te, w, b, lam, todo), strict=True):
            actual_cache[(t, j)] = float(delta)
        predicted = np.array([-inf[row, j] / n for row, _, j, _ in pairs])
        actual = np.array([actual_cache[(t, j)] for _, t, j, _ in pairs])
        label = f"rcond={rcond} damping={lam:g}"
        results.append({
            "setting": label, "rank_kept": res["inverse"].rank, "size": res["inverse"].size,
            **correlations(predicted, actual), "n_pairs": len(pairs),
        })  # fmt: skip
        rows += [[label, int(idx_test[t]), int(idx_train[j]), kind, p, a]  # dataset indices, as every check writes
                 for (_, t, j, kind), p, a in zip(pairs, predicted, actual, strict=True)]  # fmt: skip
    report = {
        "run": cfg.run,
        "config": asdict(cfg),
        "weight_decay_as_l2": lam,
        "refit": fit,
        "objective": "1/n sum CE + weight_decay/2 ||[W, b]||^2 (float64, L-BFGS)",
        "prediction": "-I[t, j] / n with damping = weight decay",
        "settings": results,
    }
    return _finish(cfg, out, report, rows, "actual change in test loss (refit without j)", named, progress)


def _finish(cfg: ValidateConfig, out: Path, report: dict, rows: list, xlabel: str, named, progress: bool) -> dict:
    """Add the LDS when asked, then write validate.csv, validate.png and validate.json (last)."""
    if cfg.lds:
        report["lds"] = _lds(cfg, out, named, progress)
    if rows:
        atomic_write_csv(
            out / "validate.csv", ["setting", "test_index", "train_index", "kind", "predicted", "actual"], rows
        )
        atomic_write_figure(out / "validate.png", _figure(rows, report["settings"], xlabel))
    else:  # the LDS alone: no removals to list or plot (an earlier check's files here would read as this one's)
        for name in ("validate.csv", "validate.png"):
            (out / name).unlink(missing_ok=True)
    atomic_write_json(out / "validate.json", report)
    return report


def _named_dirs(text: str) -> list[Path]:
    return [Path(d.strip()) for d in text.split(",") if d.strip()]


def _scored(cfg: ValidateConfig, own: Path, named, progress: bool) -> list:
    """The directories of ``--influence`` (``named``, read), or one computed at ``own`` (head, the cut-offs, damping =
    weight decay, ``--ensemble`` models) and read."""
    if named is not None:
        return named
    icfg = dataclasses.replace(cfg.influence_config(), out=str(own), damping="wd")
    if not up_to_date(own, icfg):
        run_influence(icfg, progress=progress)
    return read_influence_of(Path(cfg.run), [own])


def _validate_retrained(cfg: ValidateConfig, out: Path, named, progress: bool) -> dict:
    """Leave-one-out by retraining the whole fine-tune (:mod:`study.attribution.retrain_loo`)."""
    results = _scored(cfg, out / "loo" / "influence", named, progress)
    scored, rows = retrained_loo(Path(cfg.run), results, out / "loo", cfg.tests, cfg.removals, cfg.random, cfg.seed,
                                 cfg.device, cfg.data_root, cfg.retrain_executor, progress)  # fmt: skip
    results = [{**{k: v for k, v in r.items() if k not in ("predicted", "actual", "n_pairs")},
                **correlations(r["predicted"], r["actual"]), "n_pairs": r["n_pairs"]} for r in scored]  # fmt: skip
    report = {
        "run": cfg.run,
        "config": asdict(cfg),
        "objective": "the run's fine-tune (blocks and head, SGD, its settings and seed), retrained without each image",
        "prediction": "-I[t, j] / n of each influence directory's setting",
        "settings": results,
    }
    return _finish(cfg, out, report, rows, "actual change in test loss (retrained without j)", named, progress)


def _validate_pbrf(cfg: ValidateConfig, out: Path, named, progress: bool) -> dict:
    """Influence against the PBRF of the fine-tuned parameters (:mod:`study.attribution.pbrf_check`)."""
    results = _scored(cfg, out / "loo" / "influence", named, progress)
    scored, rows, reached = pbrf_check(Path(cfg.run), results, cfg.tests, cfg.removals, cfg.random, cfg.seed,
                                       cfg.pbrf_damping, _epsilon(cfg.pbrf_epsilon), cfg.device, cfg.data_root,
                                       progress)  # fmt: skip
    keep = ("predicted", "actual", "n_pairs", "every_predicted", "every_actual")
    results = [{**{k: v for k, v in r.items() if k not in keep}, **correlations(r["predicted"], r["actual"]),
                "n_pairs": r["n_pairs"],
                **{f"{k}_every": val for k, val in correlations(r["every_predicted"], r["every_actual"]).items()},
                "n_every": len(r["every_actual"])} for r in scored]  # fmt: skip
    report = {
        "run": cfg.run,
        "config": asdict(cfg),
        "objective": "the PBRF of every fine-tuned parameter (warm start at the run's weights, Bregman and proximity "
        f"terms, damping {reached['damping']:g}, the image down-weighted by epsilon/n with epsilon "
        f"{reached['epsilon']} ({min(reached['epsilons']):.2g} to {max(reached['epsilons']):.2g}), the response "
        "divided by epsilon), solved by L-BFGS"
        + (" whitened by the exact GGN at the run's weights" if reached["whitened"] else ""),
        "prediction": "-I[t, j] / n of each influence directory's setting",
        "pbrf": reached,
        "settings": results,
    }
    return _finish(cfg, out, report, rows, "PBRF change in test loss (j down-weighted by 1/n)", named, progress)


def _epsilon(text: str) -> float | str:
    return text if text == "auto" else float(text)


def _lds(cfg: ValidateConfig, out: Path, named, progress: bool) -> dict:
    """The linear datamodeling score of the named influence directories (or of one computed here)."""
    results = _scored(cfg, out / "lds" / "influence", named, progress)
    exact = read_influence_of(Path(cfg.run), _named_dirs(cfg.exact)) if cfg.exact else None
    report, scatter = lds_report(Path(cfg.run), results, out / "lds", cfg.lds, cfg.repeats, cfg.target, cfg.fraction,
                                 cfg.seed, cfg.device, cfg.data_root, cfg.retrain_executor, progress,
                                 exact)  # fmt: skip
    write_lds_csv(out / "lds.csv", report)
    atomic_write_figure(out / "lds.png", lds_figure(scatter, cfg.target))
    return report


def _figure(rows, results, xlabel: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 4), squeeze=False)
    for ax, res in zip(axes[0], results, strict=True):
        mine = [r for r in rows if r[0] == res["setting"]]
        for kind, color in (("top", "C0"), ("random", "C1")):
            pts = np.array([[r[5], r[4]] for r in mine if r[3] == kind]).reshape(-1, 2)
            ax.scatter(pts[:, 0], pts[:, 1], s=10, color=color, label=f"{kind} removals")
        lim = max(1e-12, np.abs(np.array([[r[4], r[5]] for r in mine])).max() * 1.1)
        ax.plot([-lim, lim], [-lim, lim], color="grey", lw=0.5)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("predicted -I / n")
        ax.set_title(f"{res['setting']}, kept {res['rank_kept']}/{res['size']}\n"
                     f"Pearson {res['pearson']:.3f}, Spearman {res['spearman']:.3f}", fontsize=9)  # fmt: skip
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
