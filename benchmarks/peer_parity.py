"""Our LDS against dattri's ``lds``, our EK-FAC and K-FAC influence against kronfluence's, side by side, matched.

The peers are installed by the ``bench`` extra (``pip install -e ".[bench]"``) and imported only here, never by the
package. On a 1-block run of the embedded data (``mnist5k-l2 -> digits``, 100 images, trained here):

1. **LDS.** ``influence`` for EK-FAC over the fine-tuned block and the head's closed form at two cut-offs, then
   ``validate-influence --lds 10 --repeats 2``; every setting is scored again by ``dattri.metric.lds`` on the arrays the
   command saved in TRAK's layout (``subsets.npy``; ``targets.npy`` for the loss, and TRAK's margin recomputed here
   from ``logits.npy``, averaged over the repeats), with the influence matrix signed so that larger predicts a larger
   measured output. Printed: our LDS from ``lds.csv``, dattri's mean, the largest difference.
2. **EK-FAC and K-FAC.** The run's fine-tuned model (eval mode, float64), its trainable block's convolution weights:
   layers both libraries factorise (no bias; kronfluence does not track BatchNorm). Our ``kronecker_inverse``
   (curvlinops, ``fisher_type="empirical"``) and kronfluence's ``ekfac`` / ``kfac`` with ``use_empirical_fisher=True``,
   every dtype float64, the same damping (the run's weight decay, a number given to both); influence of every
   training image on the test images: ours is ``-g_test^T (K + damping I)^-1 g_train`` (negative = helpful),
   kronfluence's score the same product with the loss as measurement and the opposite sign. Printed: the largest
   difference relative to the largest score, Pearson, top-10 overlap per test image, and the least-squares scale of
   ours on theirs. Then the same with the head added, whose ``nn.Linear`` has a bias: there kronfluence joins weight
   and bias into one Kronecker block, and curvlinops keeps two, so the two differ by design; the size of that
   difference is what this line measures. K-FAC on a convolution differs by a convention, tested in one more line:
   kronfluence divides both factors by the images x output locations ``T``, curvlinops the output gradients' by the
   images alone, so theirs is ``T`` times smaller than ours, and with its damping divided by ``T`` and its scores
   divided by ``T`` it should be ours (EK-FAC refits the eigenvalues, so the factors' scale drops out there).

    pip install -e ".[bench]" && python benchmarks/peer_parity.py [--work /tmp/rt-peers]   # about 2 minutes
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

CLI = [sys.executable, "-m", "cli.main"]  # the `robust-transfer` command of this checkout
RUN = ["--source", "mnist5k-l2", "--target", "digits", "--blocks", "1", "--subset", "100", "--seed", "20000000"]
TEST = 40
INFLUENCE = {"ekfac": ["--params", "trainable", "--method", "ekfac", "--damping", "wd"],
             "head": ["--rcond", "paper,exact"]}  # fmt: skip


def cli(*args) -> None:
    subprocess.run([*CLI, *map(str, args), "--no-progress"], check=True, stdout=subprocess.DEVNULL)


def peers():
    try:
        from dattri.metric import lds
        from kronfluence.analyzer import Analyzer, prepare_model
        from kronfluence.arguments import FactorArguments, ScoreArguments
        from kronfluence.task import Task
    except ImportError as e:
        sys.exit(f"{e}: install the peers first: pip install -e \".[bench]\"")
    return lds, Analyzer, prepare_model, FactorArguments, ScoreArguments, Task


def trak_margin(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``z_y - log sum_{c != y} exp(z_c)`` of ``(..., Q, C)`` logits, written here from the definition."""
    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels).expand(z.shape[:-1])
    correct = z.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    others = z.scatter(-1, y.unsqueeze(-1), float("-inf")).logsumexp(-1)
    return (correct - others).numpy()


def lds_parity(work: Path, lds) -> None:
    import csv

    from study.attribution.store import InfluenceDir

    truth = work / "validate" / "lds" / "ground_truth"
    subsets = torch.as_tensor(np.load(truth / "subsets.npy"))
    test_indices = np.load(truth / "test_indices.npy")
    rows = list(csv.DictReader((work / "validate" / "lds.csv").open()))
    print("\n| influence | setting | target | our LDS | dattri's lds, mean | difference |\n|---|---|---|---|---|---|")
    worst = 0.0
    for row in rows:
        d = Path(row["influence"])  # as validate-influence was given it, from this same working directory
        assert row["target"] == "loss", row["target"]
        assert np.array_equal(np.load(d / "idx_train.npy"), np.load(truth / "train_indices.npy"))
        assert np.array_equal(np.load(d / "idx_test.npy"), test_indices)
        labels = np.load(d / "y_test.npy")
        res = InfluenceDir(d).read()
        setting = next(st for st in res.settings if st.get("label") == row["setting"])
        influence = np.asarray(res.setting(setting["index"])[0])
        targets = {"loss": (np.load(truth / "targets.npy"), 1.0),
                   "margin": (trak_margin(np.load(truth / "logits.npy"), labels).mean(axis=1), -1.0)}  # fmt: skip
        ours = {"loss": float(row["lds"]), "margin": float(row["lds_margin"])}  # validate-influence's --target loss
        for target, (gt, sign) in targets.items():
            per, _ = lds(torch.as_tensor(sign * influence.T), (torch.as_tensor(gt), subsets))
            theirs = float(np.nanmean(per.numpy()))
            worst = max(worst, abs(theirs - ours[target]))
            print(f"| {d.name} | {row['setting']} | {target} | {ours[target]:+.15f} | {theirs:+.15f} | "
                  f"{theirs - ours[target]:.1e} |")  # fmt: skip
    print(f"\nLDS: largest difference from dattri's lds {worst:.1e} over {len(rows)} settings x 2 targets")


def kronecker_parity(work: Path, Analyzer, prepare_model, FactorArguments, ScoreArguments, Task) -> None:
    import interp
    from study.attribution.inputs import load_run, run_weight_decay
    from study.attribution.settings import InfluenceConfig
    from transfer.freezing import parse_blocks, trainable_module_names

    cfg = InfluenceConfig(run=str(work / "run"), out=str(work / "unused"), test=str(TEST))  # load_run reads, not writes
    settings, model, train, test, _, _ = load_run(cfg)
    model = model.eval().double()
    damping = run_weight_decay(settings)
    stack = lambda ds: TensorDataset(torch.stack([x for x, _ in ds]).double(), torch.tensor([int(y) for _, y in ds]))  # noqa: E731
    tr, te = stack(train), stack(test)
    block, head = (f"model.{n}" for n in trainable_module_names(model, parse_blocks(settings["blocks"])))
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n.startswith(block + ".")]
    tracked = {"the block's convolutions (weight only)": convs, "the same and the head (a bias)": [*convs, head]}

    class Classification(Task):
        def __init__(self, modules):
            super().__init__()
            self.modules = modules

        def compute_train_loss(self, batch, model, sample=False):
            assert not sample, "empirical Fisher: the true labels"
            x, y = batch
            return F.cross_entropy(model(x), y, reduction="sum")

        def compute_measurement(self, batch, model):
            x, y = batch
            return F.cross_entropy(model(x), y, reduction="sum")

        def get_influence_tracked_modules(self):
            return self.modules

    f64 = torch.float64
    sa = ScoreArguments(damping_factor=damping, per_sample_gradient_dtype=f64, precondition_dtype=f64, score_dtype=f64)
    print(f"\nK-FAC and EK-FAC on {work / 'run'}: {len(tr)} training, {len(te)} test images, empirical Fisher, "
          f"damping {damping:g}")  # fmt: skip
    print("\n| method | parameters | count | largest difference / largest score | Pearson | top-10 overlap | scale, ours "
          "/ theirs |\n|---|---|---|---|---|---|---|")  # fmt: skip
    loader = lambda ds: DataLoader(ds, batch_size=50)  # noqa: E731
    for kind in ("ekfac", "kfac"):
        fa = FactorArguments(strategy=kind, use_empirical_fisher=True, activation_covariance_dtype=f64,
                             gradient_covariance_dtype=f64, eigendecomposition_dtype=f64, per_sample_gradient_dtype=f64,
                             lambda_dtype=f64)  # fmt: skip
        for label, modules in tracked.items():
            names = [n for n, _ in model.named_parameters() if n.rsplit(".", 1)[0] in modules]
            inv = interp.kronecker_inverse(model, loader(tr), names, kind=kind, damping=damping, fisher_type="empirical")
            g_tr, g_te = (interp.per_example_grads(model, loader(d), names) for d in (tr, te))
            ours = interp.influence_matrix(g_te, g_tr, inv).numpy()
            task = Classification(modules)
            analyzer = Analyzer("parity", prepare_model(copy.deepcopy(model), task), task, cpu=True, disable_tqdm=True,
                                output_dir=str(work / "kronfluence"))  # fmt: skip
            analyzer.fit_all_factors(kind, dataset=tr, per_device_batch_size=50, factor_args=fa, overwrite_output_dir=True)
            analyzer.compute_pairwise_scores("scores", kind, query_dataset=te, train_dataset=tr,
                                             per_device_query_batch_size=50, per_device_train_batch_size=50,
                                             score_args=sa, overwrite_output_dir=True)  # fmt: skip
            theirs = -analyzer.load_pairwise_scores("scores")["all_modules"].numpy()  # their sign: positive = helpful
            _row(METHOD[kind], label, g_tr.shape[1], ours, theirs)
            if kind == "kfac" and modules == convs:
                # kronfluence divides both factors of a convolution by the images x output locations (T), curvlinops
                # the output gradients' by the images alone: ours is T K_theirs, and (T K + d)^-1 = (K + d / T)^-1 / T,
                # so theirs at damping / T, its scores divided by T, should be ours
                t = locations(model, convs, te)
                analyzer.compute_pairwise_scores("scores_t", kind, query_dataset=te, train_dataset=tr,
                                                 per_device_query_batch_size=50, per_device_train_batch_size=50,
                                                 overwrite_output_dir=True, score_args=ScoreArguments(
                                                     damping_factor=damping / t, per_sample_gradient_dtype=f64,
                                                     precondition_dtype=f64, score_dtype=f64))  # fmt: skip
                theirs_t = -analyzer.load_pairwise_scores("scores_t")["all_modules"].numpy() / t
                _row(METHOD[kind], f"{label}, theirs at damping / T and divided by T (T = {t})", g_tr.shape[1], ours,
                     theirs_t)  # fmt: skip


METHOD = {"ekfac": "EK-FAC", "kfac": "K-FAC"}


def locations(model: nn.Module, convs: list[str], data: TensorDataset) -> int:
    """The output locations ``T`` (height x width) of the convolutions ``convs``, which must share one."""
    sizes = set()
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.add(out.shape[-2] * out.shape[-1]))
             for n, m in model.named_modules() if n in convs]  # fmt: skip
    with torch.no_grad():
        model(data.tensors[0][:1])
    for h in hooks:
        h.remove()
    assert len(sizes) == 1, sizes
    return sizes.pop()


def _row(method: str, label: str, count: int, ours: np.ndarray, theirs: np.ndarray) -> None:
    import interp

    rel = np.abs(ours - theirs).max() / np.abs(theirs).max()
    agree = interp.ranking_agreement(ours, theirs, k=10)
    scale = float(ours.ravel() @ theirs.ravel() / (theirs.ravel() @ theirs.ravel()))  # least squares
    print(f"| {method} | {label} | {count:,} | {rel:.1e} | {np.corrcoef(ours.ravel(), theirs.ravel())[0, 1]:.6f} | "
          f"{agree['top_k_overlap']:.3f} | {scale:.4f} |")  # fmt: skip


def main() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning, module="kronfluence")  # its GradScaler call, not ours
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/rt-peers", help="scratch directory; what it holds from an earlier call is used")
    a = ap.parse_args()
    lds, *kron = peers()
    work = Path(a.work)
    t = time.perf_counter()
    if not (work / "run" / "summary.json").exists():  # what an earlier call made is kept, as in the other benchmarks
        cli("finetune", *RUN, "--out", work / "run")
    for name, flags in INFLUENCE.items():
        if not (work / name / "meta.json").exists():
            cli("influence", "--run", work / "run", "--out", work / name, "--test", TEST, *flags)
    if not (work / "validate" / "lds.csv").exists():
        cli("validate-influence", "--run", work / "run", "--out", work / "validate", "--lds", 10, "--repeats", 2,
            "--influence", ",".join(str(work / n) for n in INFLUENCE), "--tests", 0, "--executor", "local")  # fmt: skip
    print(f"run, influence and a ground truth of 10 halves x 2 (or what --work held): {time.perf_counter() - t:.0f} s")
    lds_parity(work, lds)
    kronecker_parity(work, *kron)


if __name__ == "__main__":
    main()
