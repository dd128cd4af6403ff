"""Arnoldi over a fine-tuned block: Lanczos on the cached GGN factor's products against its Gram matrix, in one run.

On the full demo's 1-block runs (``mnist5k-l2 -> digits``, ``--blocks 1``, ``--subset 400``, 10 epochs; 74,634
trainable parameters, a GGN factor of 400 x 10 = 4,000 rows) the top ``--rank`` eigenpairs of ``G = F^T F`` are
found twice from the same factor, in the same process and thread count: by Lanczos (``scipy eigsh`` on the products
``F^T (F v)``, each of which reads the whole factor) and from the ``4,000 x 4,000`` Gram matrix ``F F^T`` (what
``influence --method arnoldi`` does where the factor is cached). Printed: each one's seconds and the ratio, the
largest relative difference of their eigenvalues and of their damped inverses applied to the training gradients
of 32 images, and the share of the trace each reports left out (Hutchinson's estimate for Lanczos, exact for the
Gram matrix). The factor itself (the same for both) is timed apart.

    python benchmarks/arnoldi_gram.py [--work /tmp/rt-arnoldi-gram] [--rank 200] [--threads 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

CLI = [sys.executable, "-m", "cli.main"]  # the `robust-transfer` command of this checkout


def finetuned(work: Path) -> Path:
    run = work / "one-block"
    if not (run / "summary.json").exists():
        subprocess.run([*CLI, "finetune", "--source", "mnist5k-l2", "--target", "digits", "--blocks", "1", "--subset",
                        "400", "--epochs", "10", "--device", "cpu", "--out", str(run), "--resume", "--no-progress"],
                       check=True)  # fmt: skip
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/rt-arnoldi-gram", help="where the fine-tuned run is kept")
    ap.add_argument("--rank", type=int, default=200, help="eigenpairs asked for (influence's --arnoldi-rank)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import interp
    from interp.curvature import ggn_products
    from interp.inverses import arnoldi_inverse
    from study.attribution.inputs import load_run, run_weight_decay
    from study.attribution.settings import InfluenceConfig
    from transfer.freezing import parse_blocks, trainable_names

    run = finetuned(Path(args.work))
    settings, model, train, _, _, _ = load_run(InfluenceConfig(run=str(run), out=str(Path(args.work) / "unused")))
    model = model.eval()
    names = trainable_names(model, parse_blocks(settings["blocks"]))
    damping = run_weight_decay(settings)
    loader = DataLoader(train, batch_size=256)

    t = time.perf_counter()
    products = ggn_products(model, loader, names, max_bytes=1 << 40)
    factor_s = time.perf_counter() - t
    f = products.factor
    print(f"{run}: P = {products.size:,} trainable parameters, the GGN factor {f.shape[0]:,} x {f.shape[1]:,} "
          f"({f.numel() * 8 / 2**30:.2f} GiB float64) in {factor_s:.1f} s; rank {args.rank}, damping {damping:g}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip

    found = {}
    for how, factor in (("Lanczos (products)", None), ("Gram matrix", f)):
        t = time.perf_counter()
        inv = arnoldi_inverse(products, products.size, rank=args.rank, damping=damping, factor=factor)
        found[how] = (inv, time.perf_counter() - t)
        info = inv.info()
        print(f"{how:<20} {found[how][1]:7.1f} s  {info['products']:4d} products  trace left out "
              f"{info['trace_rest_estimate']:.4f} (standard error {info['trace_rest_standard_error']:.4f}); "
              f"{info['solver']}")  # fmt: skip

    (lanczos, t_l), (gram, t_g) = found.values()
    g = interp.per_example_grads(model, DataLoader(torch.utils.data.Subset(train, range(32)), batch_size=32), names)
    a, b = lanczos.apply(g.T.to(torch.float64)), gram.apply(g.T.to(torch.float64))
    w = (gram.eigenvalues - lanczos.eigenvalues[: len(gram.eigenvalues)]).abs().max() / lanczos.eigenvalues.abs().max()
    print(f"Gram matrix vs Lanczos: {t_l / t_g:.2f}x faster; eigenvalues agree to {float(w):.1e} of the largest, the "
          f"damped inverses on 32 training gradients to {float((a - b).abs().max() / a.abs().max()):.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
