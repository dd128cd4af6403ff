"""Feature-visualisation speed: 9 features x 3 noise seeds, 200 iterations, on both shipped sources.

Target (issue 4): under a minute on 2 CPU cores for both models together. Also prints the speed-up
of optimising all (feature, seed) pairs as one batch over a Python loop of single pairs (timed on
a few pairs and extrapolated).

    python benchmarks/featviz_speed.py [--iterations 200] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch

from interp.viz import FeatVizConfig, noise_seeds, visualize
from transfer.zoo import load_source


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    features, seeds = list(range(9)), noise_seeds(3, 28, seed=0)
    cfg = FeatVizConfig(iterations=args.iterations)
    total = 0.0
    for name in ("mnist5k-natural", "mnist5k-l2"):
        model = load_source(name).model.to(args.device)
        t = time.perf_counter()
        res = visualize(model, seeds.to(args.device), features, cfg)
        dt = time.perf_counter() - t
        total += dt
        t = time.perf_counter()
        for f in features[:2]:  # the loop a script would write, one (feature, seed) pair at a time
            visualize(model, seeds[:1].to(args.device), [f], cfg)
        loop = (time.perf_counter() - t) / 2 * len(features) * len(seeds)
        print(
            f"{name:<16} batched {dt:6.1f} s; pair-by-pair loop (extrapolated) {loop:6.1f} s ({loop / dt:.1f}x); "
            f"mean activation {res.start.mean():.2f} -> {res.end.mean():.2f}"
        )
    print(
        f"both models: {total:.1f} s on {torch.get_num_threads()} threads (target < 60 s: {'ok' if total < 60 else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
