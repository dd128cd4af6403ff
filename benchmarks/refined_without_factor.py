"""The refined inverse's two preconditioners where no GGN factor is cached: every exact product a pass over the data.

``influence --method refined`` caches the GGN's factor where it fits, and then an exact product is two small
matrix products; where it does not fit (a larger block or more images), every product is curvlinops' pass over the
training images, and the preconditioners' costs differ in kind: EK-FAC's factors take one pass, the ``arnoldi``
preconditioner's top ``--rank`` eigenpairs about ``2 r`` single products (Lanczos), and each CG iteration is one
product of as many columns as there are right-hand sides. Here the factor is turned off (``ggn_products(...,
max_bytes=0)``) on the 2,954-parameter selection ``layer1.1.conv2,fc`` of ``benchmarks/influence_methods.py``'s
``--blocks all`` run (200 digits, damping 1e-3; the training gradients as the right-hand sides, as ``influence``
solves them, 64 columns at a time), and printed: the Lanczos eigenpairs' seconds and products, the
arnoldi-preconditioned solve's iterations and seconds, and the EK-FAC-preconditioned solve's seconds per iteration
over ``--ekfac-iterations`` iterations (it needs more than 300 here even with the factor cached, so its whole solve
is extrapolated from them and printed as such, not run), every solution's relative error against the exact dense GGN
solve.

    python benchmarks/refined_without_factor.py [--work /tmp/rt-influence-methods] [--ekfac-iterations 3]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import torch
from influence_methods import SELECTION, finetuned  # the sibling benchmark's run: the same command and directory
from torch.utils.data import DataLoader


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/rt-influence-methods", help="where the fine-tuned run is kept")
    ap.add_argument("--subset", type=int, default=200, help="training images of the all-blocks run")
    ap.add_argument("--damping", type=float, default=1e-3)
    ap.add_argument("--rank", type=int, default=200, help="eigenpairs of the arnoldi preconditioner")
    ap.add_argument("--tol", type=float, default=1e-6, help="the solves' relative residual")
    ap.add_argument("--ekfac-iterations", type=int, default=3, help="EK-FAC-preconditioned iterations timed")
    args = ap.parse_args()

    import interp
    from interp.curvature import ggn_factor, ggn_products
    from interp.inverses import ConjugateGradientInverse, DeflationPreconditioner, arnoldi_inverse, kronecker_inverse
    from study.attribution.inputs import load_run
    from study.attribution.pipeline import param_names
    from study.attribution.settings import InfluenceConfig

    run = finetuned(Path(args.work), "all-blocks", "all", args.subset)
    cfg = InfluenceConfig(run=str(run), out=str(Path(args.work) / "unused"))
    settings, model, train, _, _, _ = load_run(cfg)
    model = model.eval()
    names = param_names(model, SELECTION, settings)  # as `influence --params` resolves it
    loader = DataLoader(train, batch_size=cfg.batch_size)
    products = ggn_products(model, loader, names, max_bytes=0)  # no factor: a pass over the data a product
    size, d = products.size, args.damping
    rhs = interp.per_example_grads(model, loader, names).T.to(torch.float64)  # (P, n_train)
    factor = ggn_factor(model, loader, names)  # the exact GGN, factored, for the dense reference solve
    exact = torch.linalg.solve(factor.T @ factor + d * torch.eye(size, dtype=torch.float64), rhs)
    print(f"{SELECTION}: P = {size:,}, {rhs.shape[1]} right-hand sides, damping {d:g}, {products.description}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip

    def solve(pre, max_iter: int) -> tuple[dict, float]:
        inv = ConjugateGradientInverse(products, size, damping=d, tol=args.tol, max_iter=max_iter, preconditioner=pre,
                                       method="refined", curvature=products.description)  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the EK-FAC solve stops at its limit, by design here
            x = inv.apply(rhs)
        return inv.info(), float(torch.linalg.norm(x - exact) / torch.linalg.norm(exact))

    t = time.perf_counter()
    eigen = arnoldi_inverse(products, size, rank=args.rank, damping=d, trace=False)
    eig_s = time.perf_counter() - t
    info, err = solve(DeflationPreconditioner(eigen), 300)
    total = eig_s + info["solve_seconds"]
    print(f"arnoldi-PCG (r = {args.rank}): eigenpairs {eig_s:.1f} s ({eigen.products} products, {eigen.solver}); "
          f"solve {info['max_iterations']} iterations to relative residual {info['max_relative_residual']:.1e}, "
          f"{info['solve_seconds']:.1f} s; {total:.1f} s in all; relative error against the exact solve {err:.1e}")  # fmt: skip

    t = time.perf_counter()
    ekfac = kronecker_inverse(model, loader, names, kind="ekfac", damping=d)
    fit_s = time.perf_counter() - t
    info, err = solve(ekfac, args.ekfac_iterations)
    per = info["solve_seconds"] / (info["max_iterations"] + 1)  # each chunk's first residual is one product more
    whole = fit_s + 301 * per
    print(f"EK-FAC-PCG: factors {fit_s:.1f} s; {info['max_iterations']} iterations {info['solve_seconds']:.1f} s "
          f"({per:.1f} s a product of every right-hand side), relative residual {info['max_relative_residual']:.2g}, "
          f"relative error {err:.2g}; 300 iterations (not converged even with the factor cached: "
          f"benchmarks/influence_methods.py) would take about {whole:.0f} s, extrapolated, not run: "
          f"{whole / total:.0f}x the arnoldi-preconditioned solve's {total:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
