"""Command-line options generated from a settings dataclass, so every flag maps to a field that is read.

A field whose metadata says ``method_options`` (``InfluenceConfig.options``) becomes one flag per option of every
registered inverse method (each method owns its options as a dataclass: :class:`interp.InverseMethod`), so a
method registered from outside the package brings its flags with it; the flags given are gathered into the field.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing

from transfer.runtime import offered_fields


def _base_type(tp):
    if isinstance(tp, str):  # postponed annotations
        tp = eval(tp, {"int": int, "float": float, "str": str, "bool": bool, "dict": dict, "None": type(None)})
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        (tp,) = [a for a in typing.get_args(tp) if a is not type(None)]
    return tp


def _help(f: dataclasses.Field) -> str:
    text = f.metadata.get("help", "")
    return text() if callable(text) else text  # a help made when the parser is (the registry's methods, say)


def _add(parser: argparse.ArgumentParser, name: str, tp, help_text: str, default, required: bool = False) -> None:
    kwargs = {"help": help_text, "dest": name}
    if tp is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs["type"] = tp
    if required:
        kwargs["required"] = True
    else:
        kwargs["default"] = default
    parser.add_argument("--" + name.replace("_", "-"), **kwargs)


def method_option_fields() -> dict[str, tuple[dataclasses.Field, list[str]]]:
    """Every registered inverse method's options: name -> (the field, the methods that read it)."""
    from interp import INVERSES

    out: dict[str, tuple[dataclasses.Field, list[str]]] = {}
    for method in INVERSES.methods():
        for f in method.option_fields():
            out.setdefault(f.name, (f, []))[1].append(method.name)
    return out


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, exclude: tuple[str, ...] = ()) -> None:
    """One ``--field-name`` option per dataclass field, with the field's help text and default."""
    for f in offered_fields(cls):
        if f.name in exclude:
            continue
        if f.metadata.get("method_options"):
            for name, (opt, methods) in method_option_fields().items():
                default = opt.default if opt.default is not dataclasses.MISSING else "required"
                _add(parser, name, _base_type(opt.type), f"--method {', '.join(methods)}: {_help(opt)} (default: "
                     f"{default})", None)  # fmt: skip
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        help_text = _help(f) + ("" if required else " (default: %(default)s)")
        _add(parser, f.name, _base_type(f.type), help_text, None if required else f.default, required)


def dataclass_from_args(cls, args: argparse.Namespace):
    """Build ``cls`` from the parsed options named after its fields (a ``method_options`` field: the method options
    given on the command line)."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("method_options"):
            values[f.name] = {name: getattr(args, name) for name in method_option_fields()
                              if getattr(args, name, None) is not None}  # fmt: skip
        elif hasattr(args, f.name):
            values[f.name] = getattr(args, f.name)
    return cls(**values)
