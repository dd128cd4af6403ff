"""Command-line options generated from a settings dataclass, so every flag maps to a field that is read."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing

from transfer.runtime import offered_fields


def _base_type(tp):
    if isinstance(tp, str):  # postponed annotations
        tp = eval(tp, {"int": int, "float": float, "str": str, "bool": bool, "None": type(None)})
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        (tp,) = [a for a in typing.get_args(tp) if a is not type(None)]
    return tp


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, exclude: tuple[str, ...] = ()) -> None:
    """One ``--field-name`` option per dataclass field, with the field's help text and default."""
    for f in offered_fields(cls):
        if f.name in exclude:
            continue
        required = f.default is dataclasses.MISSING
        kwargs = {"help": f.metadata.get("help", ""), "dest": f.name}
        tp = _base_type(f.type)
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = tp
        if required:
            kwargs["required"] = True
        else:
            kwargs["default"] = f.default
            kwargs["help"] += " (default: %(default)s)"
        parser.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def dataclass_from_args(cls, args: argparse.Namespace):
    """Build ``cls`` from the parsed options named after its fields."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})
