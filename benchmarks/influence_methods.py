"""The inverse methods over fine-tuned blocks, against the exact GGN, and EK-FAC's cost on a whole block.

Part 1 (agreement): a run that fine-tuned everything (``--blocks all``, ``--subset`` digits) and the
selection ``layer1.1.conv2,fc`` (2,954 parameters), where the exact GGN fits. Every method with the same
damping is compared with the exact GGN's influence (``--method ggn --rcond exact``) by what class-match
reads, the ranking of training images per test image: per-row Spearman and top-10 overlap, beside the
Pearson of all entries, and the top-1 class match each method gives; with ``--with-hessian`` the exact
Hessian (``eigh``) too.

The refined inverse (``--method refined``: conjugate gradients on the exact GGN's products, preconditioned by EK-FAC,
and by the top eigenpairs of the GGN, ``--refined-preconditioner arnoldi``) is among them; target: top-10 overlap
>= 0.9 with the exact GGN.

Part 2 (scale): ``influence --params trainable --method ekfac --damping wd`` on a 1-block run of 400
images with all 360 test images (74,634 parameters: ``layer3.1`` and the head), its wall time and the
peak memory of the process that ran it (target: under 2 minutes on 2 cores); and the refined inverse on the same
block (where no dense GGN fits, its tight solve is the exact reference; preconditioned by the GGN's top eigenpairs,
since EK-FAC at this small damping does not reach its tolerance in 300 iterations), its cost against EK-FAC's and how
far EK-FAC's ranking is from it; and, since the GGN's 4,000-row factor fits here, both against the exact GGN by
Woodbury (``--method ggn``).

Each influence runs as its own ``robust-transfer influence`` process (the runs are fine-tuned first and
kept under ``--work``), so each peak memory is its own.

    python benchmarks/influence_methods.py [--work /tmp/rt-influence-methods] [--arnoldi-rank 200] [--skip-part1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from interp import class_match, ranking_agreement

SELECTION = "layer1.1.conv2,fc"


def cli(*args: str) -> tuple[float, float]:
    """Run ``robust-transfer ARGS`` in a child process; return (wall seconds, the child's peak GiB)."""
    code = ("import resource, sys; from cli.main import main; rc = main(sys.argv[1:]); "
            "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)")  # fmt: skip
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"robust-transfer {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    peak = [int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("PEAK_KB")]
    return wall, (peak[-1] / 2**20 if peak else float("nan"))


def finetuned(work: Path, name: str, blocks: str, subset: int) -> Path:
    run = work / name
    if not (run / "summary.json").exists():
        cli("finetune", "--source", "mnist5k-natural", "--target", "digits", "--blocks", blocks, "--subset",
            str(subset), "--epochs", "10", "--device", "cpu", "--out", str(run), "--resume", "--no-progress")  # fmt: skip
    return run


def influence(run: Path, out: Path, method: str, damping: str, extra: tuple[str, ...] = (), params=SELECTION,
              test: str = "100") -> tuple[float, float, dict]:  # fmt: skip
    if not (out / "meta.json").exists():
        wall, peak = cli("influence", "--run", str(run), "--out", str(out), "--params", params, "--test", test,
                         "--method", method, "--damping", damping, "--device", "cpu", "--no-progress", *extra)  # fmt: skip
    else:
        wall, peak = float("nan"), float("nan")
    return wall, peak, json.loads((out / "meta.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/rt-influence-methods", help="where the runs and results are kept")
    ap.add_argument("--subset", type=int, default=200, help="training images of the all-blocks run")
    ap.add_argument("--damping", default="1e-3", help="the same damping for every method and the exact GGN")
    ap.add_argument("--arnoldi-rank", default="200")
    ap.add_argument("--refined-tol", default="1e-6", help="the refined inverse's relative residual")
    ap.add_argument("--skip-part1", action="store_true", help="part 2 only")
    ap.add_argument("--skip-part2", action="store_true", help="part 1 only")
    ap.add_argument(
        "--with-hessian",
        action="store_true",
        help="also the exact Hessian (eigh; torch.func over 2,954 parameters: about 15 minutes here)",
    )
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    if not args.skip_part1:
        part1(work, args)
    if not args.skip_part2:
        part2(work, args)


def arnoldi_preconditioner(args: argparse.Namespace) -> tuple[str, ...]:
    """The refined inverse's flags for the GGN's top ``--arnoldi-rank`` eigenpairs as its preconditioner."""
    return ("--refined-preconditioner", "arnoldi", "--refined-rank", args.arnoldi_rank)


def part1(work: Path, args: argparse.Namespace) -> None:
    print(f"Part 1: {SELECTION} of a --blocks all run on {args.subset} digits, 100 test images, damping {args.damping}")
    run = finetuned(work, "all-blocks", "all", args.subset)
    spectral = arnoldi_preconditioner(args)
    methods = {  # label: (method, its flags, the directory's suffix)
        "ggn (exact)": ("ggn", ("--rcond", "exact"), ""),
        "blockdiag": ("blockdiag", ("--rcond", "exact"), ""),
        "kfac": ("kfac", (), ""),
        "ekfac": ("ekfac", (), ""),
        f"arnoldi r={args.arnoldi_rank}": ("arnoldi", ("--arnoldi-rank", args.arnoldi_rank), f"-r{args.arnoldi_rank}"),
        "refined (EK-FAC-PCG)": ("refined", ("--refined-tol", args.refined_tol), ""),
        f"refined (arnoldi-PCG r={args.arnoldi_rank})": ("refined", ("--refined-tol", args.refined_tol, *spectral),
                                                         f"-arnoldi{args.arnoldi_rank}"),
    }  # fmt: skip
    results = {}
    if args.with_hessian:
        methods["eigh (exact Hessian)"] = ("eigh", ("--rcond", "exact", "--no-save-hessian"), "")
    name = {label: f"infl-{method}-{args.damping}{suffix}" for label, (method, _, suffix) in methods.items()}
    for label, (method, extra, _) in methods.items():
        results[label] = influence(run, work / name[label], method, args.damping, extra)
    exact_dir = work / f"infl-ggn-{args.damping}"
    exact = np.load(exact_dir / "influence_test.npy")
    y_train, y_test = np.load(exact_dir / "y_train.npy"), np.load(exact_dir / "y_test.npy")
    print(f"{'method':<34} {'Pearson':>8} {'Spearman/row':>13} {'top-10 overlap':>15} {'top-1 class match':>18} "
          f"{'wall s':>7} {'peak GiB':>9}")  # fmt: skip
    for label, (wall, peak, _meta) in results.items():
        mat = np.load(work / name[label] / "influence_test.npy")
        agree = ranking_agreement(mat, exact, k=10)
        top1 = class_match(mat, y_test, y_train, k=1).per_rank[0]
        print(f"{label:<34} {agree['pearson']:>8.3f} {agree['spearman']:>13.3f} {agree['top_k_overlap']:>15.3f} "
              f"{top1:>18.3f} {wall:>7.1f} {peak:>9.2f}")  # fmt: skip


def part2(work: Path, args: argparse.Namespace) -> None:
    print("\nPart 2: --params trainable --method ekfac --damping wd, 1-block run on 400 digits, all 360 test images")
    run1 = finetuned(work, "one-block", "1", 400)
    wall, peak, meta = influence(run1, work / "infl-trainable-ekfac", "ekfac", "wd", params="trainable", test="all")
    info = meta["inverse"]
    print(f"P = {info['size']:,} ({info['kronecker_params']:,} Kronecker-factored, {info['fallback_params']} by the "
          f"exact GGN block: {', '.join(info['fallback_names'])})")  # fmt: skip
    print(f"ekfac: wall {wall:.1f} s (target < 120 s), peak memory {peak:.2f} GiB; stages: {meta['timings']}")
    spectral = arnoldi_preconditioner(args)
    wall_r, peak_r, meta_r = influence(run1, work / "infl-trainable-refined", "refined", "wd",
                                       ("--refined-tol", args.refined_tol, *spectral), params="trainable", test="all")  # fmt: skip
    wall_g, peak_g, _ = influence(run1, work / "infl-trainable-ggn", "ggn", "wd", ("--rcond", "exact"),
                                  params="trainable", test="all")  # fmt: skip
    info_r = meta_r["inverse"]
    ekfac_m, refined_m, ggn_m = (np.load(work / f"infl-trainable-{m}" / "influence_test.npy")
                                 for m in ("ekfac", "refined", "ggn"))  # fmt: skip
    print(f"refined (arnoldi-PCG r={args.arnoldi_rank}): wall {wall_r:.1f} s ({wall_r / wall:.1f}x EK-FAC's), peak "
          f"{peak_r:.2f} GiB, at most {info_r['max_iterations']} iterations to relative residual "
          f"{info_r['max_relative_residual']:.1e}")  # fmt: skip
    print(f"exact GGN (Woodbury): wall {wall_g:.1f} s, peak {peak_g:.2f} GiB")
    for label, mat, ref, ref_label in (("refined", refined_m, ggn_m, "the exact GGN"),
                                       ("ekfac", ekfac_m, refined_m, "refined"),
                                       ("ekfac", ekfac_m, ggn_m, "the exact GGN")):  # fmt: skip
        agree = ranking_agreement(mat, ref, k=10)
        gap = np.abs(mat - ref).max() / np.abs(ref).max()
        print(f"{label} against {ref_label}: largest difference {gap:.1e} of the largest score, Pearson "
              f"{agree['pearson']:.4f}, Spearman per row {agree['spearman']:.4f}, top-10 overlap "
              f"{agree['top_k_overlap']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
