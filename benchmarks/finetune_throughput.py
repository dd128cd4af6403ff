"""Fine-tuning throughput of ``transfer.train.fit`` against a plain loop, measured in one run.

The plain loop is what research code usually does: every step runs the whole ResNet-50 forward
(frozen parameters have ``requires_grad=False``) and back-propagates into the trainable blocks.
``fit`` runs the frozen prefix without autograd and, when its output cannot change between epochs
(``--augment none`` with ``--frozen-bn eval``), computes it once and reuses it.

Targets (issue 2): no slower for 1-3 blocks with augmentation; >= 3x for 1 block and >= 20x for
0 blocks with the cached prefix. The plain loop's cost is the same every epoch, so it is timed
over ``--plain-epochs`` epochs; ``fit`` is timed over a whole run of ``--epochs`` (cache build,
per-epoch state saves and evaluations included), the paper's 100 by default.

    python benchmarks/finetune_throughput.py [--images 512] [--resolution 64] [--epochs 100]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from transfer.datasets import Transformed
from transfer.freezing import unfreeze_last_blocks
from transfer.models import build_model
from transfer.runs import RunDir
from transfer.train import TrainConfig, fit
from transfer.transforms import build_transform


class Labelled(TensorDataset):
    @property
    def targets(self):
        return self.tensors[1].numpy()


def make_data(n: int, res: int, augment: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, res, res), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    raw = Labelled(images, labels)
    return Transformed(raw, build_transform(res, train=True, augment=augment))


def plain_loop(blocks, data, epochs: int, batch_size: int) -> float:
    """Images per second of the textbook loop: whole model every step, SGD on the trainable part."""
    torch.manual_seed(0)
    model = build_model("resnet50", 10)
    unfreeze_last_blocks(model, blocks)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    model.train()
    t0 = time.perf_counter()
    for _ in range(epochs):
        for x, y in DataLoader(data, batch_size=batch_size, shuffle=True):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return epochs * len(data) / (time.perf_counter() - t0)


def ours(blocks, data, test, epochs: int, batch_size: int, frozen_bn: str, cache: bool) -> float:
    torch.manual_seed(0)
    model = build_model("resnet50", 10)
    cfg = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=0.01,
        eval_every=max(epochs, 1),
        frozen_bn=frozen_bn,
        cache_train_prefix=cache,
    )
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        fit(model, blocks, data, test, cfg, RunDir(d), torch.device("cpu"), progress=False)
        return epochs * len(data) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--plain-epochs", type=int, default=1)
    ap.add_argument("--aug-epochs", type=int, default=3, help="epochs of fit() in the augmented cases")
    ap.add_argument("--repeats", type=int, default=2, help="alternating repeats of the augmented cases (best kept)")
    ap.add_argument("--epochs", type=int, default=100, help="epochs of fit() in the cached cases")
    args = ap.parse_args()
    print(
        f"ResNet-50, {args.images} images at {args.resolution}x{args.resolution}, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads"
    )
    aug = make_data(args.images, args.resolution, "paper")
    plain_data = make_data(args.images, args.resolution, "none")
    # fit() evaluates after the first and last epoch, the plain loop never: keep that extra work tiny
    test = make_data(8, args.resolution, "none", seed=1)
    cases = [
        ("1 block, augmentation", 1, aug, "train", False, args.aug_epochs, None),
        ("3 blocks, augmentation", 3, aug, "train", False, args.aug_epochs, None),
        ("1 block, cached prefix", 1, plain_data, "eval", True, args.epochs, 3.0),
        ("0 blocks, cached prefix", 0, plain_data, "eval", True, args.epochs, 20.0),
    ]
    print(f"{'case':<26} {'plain img/s':>12} {'fit img/s':>12} {'ratio':>8} {'target':>8}")
    ok = True
    for name, blocks, data, bn, cache, epochs, target in cases:
        # alternate the two loops and keep each one's best: the machine's noise and warm-up hit both alike
        base = fast = 0.0
        for _ in range(args.repeats if target is None else 1):
            base = max(base, plain_loop(blocks, data, args.plain_epochs, args.batch_size))
            fast = max(fast, ours(blocks, data, test, epochs, args.batch_size, bn, cache))
        ratio = fast / base
        goal = f">={target:g}x" if target else "~1x"
        met = ratio >= target if target else ratio >= 0.95  # "no slower", within timing noise
        ok &= met
        print(f"{name:<26} {base:>12.1f} {fast:>12.1f} {ratio:>7.2f}x {goal:>8} {'ok' if met else 'MISSED'}")
    print("all targets met" if ok else "some targets missed")


if __name__ == "__main__":
    main()
