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

``--augmentation`` compares instead the two ways images are transformed, at ``--resolution`` (224 for the
paper): one image at a time in the data loader (``--augment-on loader``) and whole batches with
kornia (``--augment-on device``, here on the CPU), images/s both ways, for grey (``--channels 1``, the default) or
colour (``--channels 3``) images: ``--augment-on auto``'s bound on CPUs (``transfer.precision.BATCHED_VALUES``).

``--device cuda`` (issue 21) times, for 0/1/3/9/all blocks, ``fit`` with the data and its augmentation on
the GPU in each precision (fp32, tf32 and bf16, channels-last) against the plain fp32 loop fed the same
way (whole model every step), at 224 px, batch 128 by default; target: the default precision (auto =
tf32, channels-last) at least as fast as the plain fp32 loop, and bf16 >= 5,000 images/s on one H200
with 3 blocks.

    python benchmarks/finetune_throughput.py --augmentation --resolution 224 --channels 3
    python benchmarks/finetune_throughput.py --device cuda --images 4096 --resolution 224 --batch-size 128
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from transfer.augment import BatchTransform
from transfer.datasets import Transformed
from transfer.freezing import unfreeze_last_blocks
from transfer.models import build_model
from transfer.precision import tf32_allowed
from transfer.runs import RunDir
from transfer.train import DeviceImages, TrainConfig, fit
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


def augmentation(args) -> None:
    """Images/s of the per-image loader path and of the batched (kornia) path, both on this CPU."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, args.channels, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (args.images,), generator=g)
    r = args.resolution
    kind = "grey" if args.channels == 1 else "colour"
    print(f"augmentation to {r} px of {args.images} 28x28 {kind} images, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    loader_rate = batched_rate = 0.0
    for _ in range(args.repeats):
        data = Transformed(Labelled(images, labels), build_transform(r, train=True))
        t = time.perf_counter()
        for _x, _y in DataLoader(data, batch_size=args.batch_size):
            pass
        loader_rate = max(loader_rate, args.images / (time.perf_counter() - t))
        transform = BatchTransform(r, train=True)
        t = time.perf_counter()
        for i in range(0, args.images, args.batch_size):
            transform(images[i : i + args.batch_size])
        batched_rate = max(batched_rate, args.images / (time.perf_counter() - t))
    faster = "loader" if loader_rate >= batched_rate else "batched (device)"
    print(f"per-image loader: {loader_rate:,.0f} img/s; batched kornia: {batched_rate:,.0f} img/s; faster here: {faster}")


def plain_gpu_loop(blocks, data: DeviceImages, epochs: int, batch_size: int, device) -> float:
    """The plain loop fed from the GPU: fp32 (TF32 off), whole model every step, batched augmentation."""
    with tf32_allowed(False):
        torch.manual_seed(0)
        model = build_model("resnet50", 10).to(device)
        unfreeze_last_blocks(model, blocks)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
        model.train()
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(epochs):
            perm = torch.randperm(len(data), device=device)
            for i in range(0, len(data), batch_size):
                idx = perm[i : i + batch_size]
                loss = F.cross_entropy(model(data.transform(data.images[idx])), data.labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        torch.cuda.synchronize(device)
        return epochs * len(data) / (time.perf_counter() - t0)


def cuda_grid(args) -> None:
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g).to(device)
    labels = torch.randint(0, 10, (args.images,), generator=g).to(device)
    r = args.resolution
    train = DeviceImages(images, labels, BatchTransform(r, train=True))
    test = DeviceImages(images[:8], labels[:8], BatchTransform(r, train=False))
    print(f"ResNet-50 on {torch.cuda.get_device_name(device)}, {args.images} CIFAR-sized images upscaled to {r} px on "
          f"the GPU (kornia augmentation), batch {args.batch_size}, {args.aug_epochs} epoch(s) per case")  # fmt: skip
    print(f"{'blocks':<7} {'plain fp32':>11} " + " ".join(f"{p:>11}" for p in ("fit fp32", "fit tf32", "fit bf16")))
    for blocks in ("0", "1", "3", "9", "all"):
        b = blocks if blocks == "all" else int(blocks)
        base = plain_gpu_loop(b, train, args.aug_epochs, args.batch_size, device)
        rates = []
        for precision in ("fp32", "tf32", "bf16"):
            torch.manual_seed(0)
            model = build_model("resnet50", 10)
            cfg = TrainConfig(epochs=args.aug_epochs, batch_size=args.batch_size, lr=0.01, eval_every=args.aug_epochs,
                              precision=precision, channels_last=precision != "fp32")  # fmt: skip
            with tempfile.TemporaryDirectory() as d:
                torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                fit(model, b, train, test, cfg, RunDir(d), device, progress=False)
                torch.cuda.synchronize(device)
                rates.append(args.aug_epochs * len(train) / (time.perf_counter() - t0))
        print(f"{blocks:<7} {base:>11,.0f} " + " ".join(f"{x:>11,.0f}" for x in rates)
              + f"   tf32/plain {rates[1] / base:.2f}x")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--plain-epochs", type=int, default=1)
    ap.add_argument("--aug-epochs", type=int, default=3, help="epochs of fit() in the augmented cases")
    ap.add_argument("--repeats", type=int, default=2, help="alternating repeats of the augmented cases (best kept)")
    ap.add_argument("--epochs", type=int, default=100, help="epochs of fit() in the cached cases")
    ap.add_argument("--augmentation", action="store_true", help="compare the loader and batched augmentation paths")
    ap.add_argument("--channels", type=int, choices=(1, 3), default=1, help="--augmentation: grey (1) or colour (3)")
    ap.add_argument("--device", default="cpu", help="cuda: the GPU grid of blocks x precisions")
    args = ap.parse_args()
    if args.augmentation:
        return augmentation(args)
    if args.device != "cpu":
        return cuda_grid(args)
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
