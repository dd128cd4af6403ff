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
    from transfer.zoo import FAMILIES, SOURCES, TOFU_WARNING, hash_status, source_path

    wn, wa = max(len(s.name) for s in SOURCES), max(len(s.arch) for s in SOURCES)
    checks = {s.name: hash_status(s, args.cache_dir) for s in SOURCES}  # a damaged hash record stops before any line
    for family, about in FAMILIES.items():
        print(f"{family}: {about}")
        print(f"  {'name':<{wn}} {'arch':<{wa}} {'threat':<6} {'eps':<6} {'top-1':>6}  {'status':<8} file / download; SHA-256")
        for s in (s for s in SOURCES if s.family == family):
            path = source_path(s, args.cache_dir)
            status = "present" if path.is_file() else "missing"
            acc = "-" if math.isnan(s.accuracy) else f"{s.accuracy:.2f}"
            where = f"{path}" + ("" if s.embedded else f"  <- {s.url}")
            print(f"  {s.name:<{wn}} {s.arch:<{wa}} {s.constraint:<6} {s.eps_label:<6} {acc:>6}  {status:<8} {where}; "
                  f"{checks[s.name]}")  # fmt: skip
        print()
    print("The paper (Utrera et al. 2020) used resnet50-natural and the engstrom2019 family; every file is checked by "
          "SHA-256 (published, else recorded at its first download) and the hash a run used is in its config.json. "
          f"Note: {TOFU_WARNING}.")


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
    from transfer.evaluation import EvaluateConfig, evaluate

    print(json.dumps(evaluate(dataclass_from_args(EvaluateConfig, args), progress=not args.no_progress), indent=2))


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="run directory to create (or to continue with --resume)")
    p.add_argument("--resume", action="store_true", help="continue a killed run from its last finished epoch")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(on_interrupt="the last saved state is kept; continue with the same command plus --resume")


def register(sub) -> None:
    """Add the transfer commands to the CLI's sub-parsers."""
    from transfer.evaluation import EvaluateConfig
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
    add_dataclass_arguments(p, EvaluateConfig)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=_evaluate)
