"""The paper's Section 6 on a GPU: CIFAR-10, 3,200 training images, 3 blocks unfrozen, natural vs
robust ResNet-50 sources, several seeds; influence of every run's head at the paper's cut-off and
others, class-match per seed, and the robust-minus-natural difference with its interval over seeds.

The sources download into ~/.cache/robust-transfer/ on first use (`robust-transfer sources` lists
them and their addresses) and CIFAR-10 into --data-root; the fine-tunes run as a resumable sweep,
so a killed script continues where it stopped when started again. The same study on the embedded
data, in minutes on a CPU:

    python examples/cifar10_influence_gpu.py --out sweeps/sec6                    # the paper's setting, GPU
    python examples/cifar10_influence_gpu.py --out /tmp/s6 --target digits --sources mnist5k-natural,mnist5k-l2 \\
        --size 400 --blocks 1 --seeds 2 --epochs 10 --device cpu
"""

from __future__ import annotations

import argparse
from pathlib import Path

from study.attribution.over_seeds import InfluenceStudyConfig, run_influence_study
from study.sweeps.coordinator import SweepConfig, run_sweep


def grid(sources: list[str], target: str, blocks: int, size: int, seeds: int, epochs: str, device: str,
         data_root: str | None) -> str:  # fmt: skip
    listed = ", ".join(f'"{s}"' for s in sources)
    root = f'data_root = "{data_root}"\n' if data_root else ""
    return (f'name = "section6"\nsources = [{listed}]\ntargets = ["{target}"]\nblocks = [{blocks}]\n\n'
            f'[seeds]\n{size} = {seeds}\n\n[finetune]\nepochs = "{epochs}"\neval_every = "auto"\n'
            f'device = "{device}"\n{root}')  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="sweep directory (resumable)")
    p.add_argument("--sources", default="resnet50-natural,resnet50-l2-3")
    p.add_argument("--target", default="cifar10")
    p.add_argument("--size", type=int, default=3200)
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--seeds", type=int, default=5, help="the paper's seeds S_k = 20000000 + 100000 i, i < k")
    p.add_argument("--epochs", default="auto", help="auto: the paper's Table 2 (150 epochs at 3,200 images)")
    p.add_argument("--rcond", default="paper,1e-3,exact")
    p.add_argument("--test", default="all", help="test images for influence: all (10,000 for CIFAR-10) or N")
    p.add_argument("--k", type=int, default=100, help="ranks of the class-match curves (at most the subset size - 1)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--data-root", default=None)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out.parent / f"{out.name}.grid.toml").write_text(
        grid(
            args.sources.split(","),
            args.target,
            args.blocks,
            args.size,
            args.seeds,
            args.epochs,
            args.device,
            args.data_root,
        )  # fmt: skip
    )
    counts = run_sweep(SweepConfig(str(out.parent / f"{out.name}.grid.toml"), str(out)))
    print(f"fine-tunes: {counts}")
    report = run_influence_study(InfluenceStudyConfig(sweep=str(out), size=str(args.size), blocks=str(args.blocks),
                                                      rcond=args.rcond, test=args.test, device=args.device,
                                                      target=args.target,
                                                      # a row ranks the other size - 1 training images, no more
                                                      k=min(args.k, args.size - 1)))  # fmt: skip
    for line in report["reading"]:
        print(line)
    print(f"wrote {report['out']}/study.json, study.csv, study.png")
    return report


if __name__ == "__main__":
    main()
