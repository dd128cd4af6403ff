"""The ``transfer`` commands: datasets, sources, pretrain, finetune, evaluate. No maths here."""

from __future__ import annotations

import argparse
import json
import math

from cli.dataclass_args import add_dataclass_arguments, dataclass_from_args


def _datasets(args) -> None:
    from transfer.datasets import dataset_names, dataset_spec

    print(f"{'name':<11} {'classes':>7} {'size':>5}  {'kind':<11} description")
    for name in dataset_names():
        s = dataset_spec(name)
        print(
            f"{s.name:<11} {s.num_classes:>7} {s.native_size:>5}  {'embedded' if s.embedded else 'torchvision':<11} {s.description}"
        )


def _sources(args) -> None:
    from transfer.zoo import SOURCES, source_path

    print(f"{'name':<17} {'arch':<13} {'threat':<6} {'eps':<6} {'top-1':>6}  {'status':<8} file / download")
    for s in SOURCES:
        path = source_path(s, args.cache_dir)
        status = "present" if path.is_file() else "missing"
        acc = "-" if math.isnan(s.accuracy) else f"{s.accuracy:.2f}"
        where = f"{path}" + ("" if s.embedded else f"  <- {s.url}")
        print(f"{s.name:<17} {s.arch:<13} {s.constraint:<6} {s.eps_label:<6} {acc:>6}  {status:<8} {where}")


def _pretrain(args) -> None:
    from transfer.pretrain import PretrainConfig, pretrain

    summary = pretrain(
        dataclass_from_args(PretrainConfig, args), args.out, resume=args.resume, progress=not args.no_progress
    )
    print(json.dumps(summary, indent=2))


def _finetune(args) -> None:
    from transfer.finetune import FinetuneConfig, finetune

    summary = finetune(
        dataclass_from_args(FinetuneConfig, args), args.out, resume=args.resume, progress=not args.no_progress
    )
    print(json.dumps(summary, indent=2))


def _evaluate(args) -> None:
    from transfer.attacks import PGDConfig
    from transfer.datasets import Subset, Transformed, load_raw_splits
    from transfer.device import resolve_device
    from transfer.errors import UserError
    from transfer.evaluation import evaluate_model
    from transfer.transforms import build_transform
    from transfer.zoo import load_source

    device = resolve_device(args.device)
    src = load_source(args.model, args.arch, args.cache_dir)
    train, test = load_raw_splits(args.dataset, args.data_root)
    raw = test if args.split == "test" else train
    if args.limit is not None:
        if args.limit < 1:
            raise UserError(f"--limit must be >= 1, got {args.limit}")
        raw = Subset(raw, range(min(args.limit, len(raw))))
    attack = None
    if args.attack != "none":
        if args.eps is None:
            raise UserError("--attack needs --eps")
        attack = PGDConfig(args.attack, args.eps, args.attack_steps, args.step_scale, args.random_start)
    data = Transformed(raw, build_transform(args.resolution or src.input_size, train=False))
    result = evaluate_model(src.model.to(device), data, device, attack, args.batch_size, progress=not args.no_progress)
    result.update(
        {
            "model": str(args.model),
            "dataset": args.dataset,
            "split": args.split,
            "attack": args.attack,
            "eps": args.eps,
            "attack_steps": args.attack_steps,
        }
    )
    print(json.dumps(result, indent=2))


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="run directory to create (or to continue with --resume)")
    p.add_argument("--resume", action="store_true", help="continue a killed run from its last finished epoch")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def register(sub) -> None:
    """Add the transfer commands to the CLI's sub-parsers."""
    from transfer.finetune import FinetuneConfig
    from transfer.pretrain import PretrainConfig

    p = sub.add_parser("datasets", help="list target datasets")
    p.set_defaults(func=_datasets)

    p = sub.add_parser("sources", help="list source models and whether they are present")
    p.add_argument(
        "--cache-dir", default=None, help="where downloaded sources live (default ~/.cache/robust-transfer/models)"
    )
    p.set_defaults(func=_sources)

    p = sub.add_parser("pretrain", help="train a source model, naturally or adversarially (PGD)")
    add_dataclass_arguments(p, PretrainConfig)
    _run_options(p)
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("finetune", help="fine-tune a source model on a target dataset")
    add_dataclass_arguments(p, FinetuneConfig)
    _run_options(p)
    p.set_defaults(func=_finetune)

    p = sub.add_parser("evaluate", help="clean and PGD-robust accuracy of a model")
    p.add_argument("--model", required=True, help="source name, run directory or checkpoint path")
    p.add_argument("--arch", default=None, help="architecture of a checkpoint path that does not say")
    p.add_argument("--dataset", required=True, help="dataset to evaluate on")
    p.add_argument("--split", choices=("test", "train"), default="test")
    p.add_argument("--attack", choices=("none", "l2", "linf"), default="none")
    p.add_argument("--eps", type=float, default=None, help="attack radius in [0, 1] pixel units")
    p.add_argument("--attack-steps", type=int, default=20)
    p.add_argument("--step-scale", type=float, default=2.5, help="step size = step_scale * eps / steps")
    p.add_argument("--random-start", action="store_true")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--resolution", type=int, default=None, help="input size (default: the model's native size)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_evaluate)
