"""Influence over fine-tuned ResNet-50 blocks at (a reduction of) the paper's scale: EK-FAC and streamed gradients.

A torchvision ResNet-50 with a 10-class head (random weights: no download here; the cost does not depend
on the weights), inputs of ``--resolution`` px, ``--train`` / ``--test`` synthetic images. Over
``--params`` (default ``layer4``: 14.96 M parameters, the paper's "3 blocks", with the head) it builds
``--method`` (default ``ekfac``, curvlinops) and writes the test x train influence matrix with the
per-example gradients streamed (``interp.streamed_influence``: they are never held whole), then prints
each stage's time, the passes over the training gradients, and the peak memory, and extrapolates to the
paper's 3,200 train x 1,000 test at 224 px:

* per-example gradients scale with images x passes x pixels (the convolutions' work grows with the
  resolution squared, ``(224 / r)^2``); the passes are ``ceil(test / m)`` for chunks of ``m`` test rows;
* the Kronecker factors scale with the training images x pixels; their eigendecompositions do not.

    python benchmarks/influence_scale.py --params layer4 --method ekfac [--fisher mc] [--train 64 --test 16 --resolution 64]

At 32 px ``layer4``'s 3x3 convolutions see 1x1 maps and curvlinops' eigendecomposition of their input
factors failed here (LAPACK): 64 px is the smallest resolution measured.
"""

from __future__ import annotations

import math
import resource
import time

import numpy as np
import torch
import torchvision

from interp import Curvature, build_inverse, per_example_grad_batches, select_params, streamed_influence
from interp.curvature import device_free_bytes


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run(args) -> None:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = torchvision.models.resnet50(num_classes=10).to(device).eval()
    names = [n for path in args.params.split(",") for n in select_params(model, path.strip())]
    size = sum(dict(model.named_parameters())[n].numel() for n in names)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.train + args.test, 3, args.resolution, args.resolution, generator=g)
    y = torch.randint(0, 10, (args.train + args.test,), generator=g)
    b = args.batch
    train = [(x[i : i + b], y[i : i + b]) for i in range(0, args.train, b)]
    test = [(x[i : i + b], y[i : i + b]) for i in range(args.train, args.train + args.test, b)]
    print(f"ResNet-50 (random weights), --params {args.params}: P = {size:,}; {args.train} train, {args.test} test, "
          f"{args.resolution} px, {device}, {torch.get_num_threads()} threads, float64")  # fmt: skip

    t = time.perf_counter()
    inv = build_inverse(args.method, Curvature(size, device=device, model=model, data=train, params=names),
                        damping=args.damping, progress=False,
                        **({"fisher": args.fisher} if args.method in ("kfac", "ekfac") else {}))  # fmt: skip
    _ = inv.apply(torch.zeros(size, 1, dtype=torch.float64, device=device))  # the factors are computed on first use
    t_curv = time.perf_counter() - t
    info = inv.info()
    print(f"{args.method} curvature and inverse ({info.get('curvature', '')}): {t_curv:.1f} s; Kronecker-factored "
          f"{info.get('kronecker_params', '-')}, exact-GGN fallback {info.get('fallback_params', '-')} parameters "
          f"({info.get('fallback', '-')}); peak {peak_gib():.2f} GiB")  # fmt: skip

    budget = args.budget_gib * 2**30 if args.budget_gib else device_free_bytes(device) // 4
    batches = lambda loader: lambda: per_example_grad_batches(model, loader, names, device=device)  # noqa: E731
    t = time.perf_counter()
    mat, passes = streamed_influence(inv, batches(test), batches(train), (args.test, args.train), budget_bytes=budget)
    t_inf = time.perf_counter() - t
    rows = max(1, int(budget // (2 * 8 * size)))
    print(f"test x train influence, streamed: {t_inf:.1f} s, {passes} pass(es) over the training gradients "
          f"({rows} test rows solved per pass, budget {budget / 2**30:.1f} GiB); finite: {bool(np.isfinite(np.asarray(mat)).all())}; "
          f"peak {peak_gib():.2f} GiB")  # fmt: skip

    # extrapolation to the paper's setting, from the measured per-image gradient cost
    grads_here = passes * args.train + args.test
    per_image = t_inf / grads_here
    paper_passes = math.ceil(1000 / rows)
    scale = (224 / args.resolution) ** 2
    paper_grads = paper_passes * 3200 + 1000
    print(f"extrapolated to 3,200 train x 1,000 test at 224 px with the same budget: {paper_passes} passes, "
          f"{paper_grads:,} per-example gradients x {per_image * scale:.2f} s = {paper_grads * per_image * scale / 3600:.1f} h "
          f"here, plus the factors: {t_curv * 3200 / args.train * scale / 60:.0f} min (linear in images and pixels); "
          "on a GPU both shrink by its speed-up and the budget grows with its memory (fewer passes)")  # fmt: skip


def add_arguments(ap) -> None:
    ap.add_argument("--params", default=None, help="fine-tuned blocks, e.g. layer4 (switches to this benchmark)")
    ap.add_argument("--method", default="ekfac", help="a model-curvature inverse: ekfac, kfac, arnoldi")
    ap.add_argument("--fisher", default="type-2", help="kfac/ekfac: type-2, mc or empirical (as influence --fisher)")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--damping", type=float, default=1e-3)
    ap.add_argument("--budget-gib", type=float, default=None, help="memory for the solved test rows (default 1/4 free)")
    ap.add_argument("--device", default="cpu")
