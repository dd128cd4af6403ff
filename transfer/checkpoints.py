"""Reading and writing model checkpoints, safely.

Formats read (all through ``torch.load(..., weights_only=True)``; nothing is ever unpickled with
full Python semantics):

* ``robust-transfer``: ``{"format": "robust-transfer/1", "arch", "num_classes", "mean", "std",
  "input_size", "state_dict", "meta"}``, written by :func:`save_checkpoint`;
* MadryLab ``robustness`` / robust-models-transfer: a dict with ``model`` or ``state_dict`` whose
  keys are ``module.normalizer.new_mean|new_std``, ``module.model.*`` and a duplicate
  ``module.attacker.model.*`` (dropped);
* a plain state dict of a torchvision network (``conv1.weight`` ...), such as torchvision's
  published weight files, or of a :class:`~transfer.models.NormalizedModel`
  (``normalizer.mean`` ... ``model.conv1.weight`` ...).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch

from transfer.errors import UserError
from transfer.files import atomic_torch_save
from transfer.models import ARCHITECTURES, NormalizedModel, build_model, check_arch, classifier

FORMAT = "robust-transfer/1"


@dataclass
class ParsedCheckpoint:
    """A network's weights, with whatever the file said about it."""

    state_dict: dict[str, torch.Tensor]  # keys of the bare network (``conv1.weight``)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    arch: str | None = None
    input_size: int | None = None
    meta: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        for key in ARCHITECTURES.linear_keys():  # fc.weight, classifier.1.weight, ...
            if key in self.state_dict:
                return int(self.state_dict[key].shape[0])
        raise UserError("the checkpoint has no final layer 'fc.weight' (nor another known classifier); is it one?")


def read_checkpoint(path: Path | str) -> dict:
    """``torch.load`` with ``weights_only=True``; a file that needs unpickling is refused."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{path} cannot be read safely (weights_only=True refused it: {first}). "
            "robust-transfer never runs pickled code from a checkpoint; if you trust the file, "
            "load it yourself and re-save only its tensors (torch.save(ckpt['model'], new_path))"
        ) from None
    except Exception as exc:
        raise UserError(f"{path} is not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None


def _strip(prefix: str, sd: dict) -> dict:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def _norm_stats(t: torch.Tensor) -> tuple[float, ...]:
    return tuple(float(v) for v in t.flatten())


def parse_checkpoint(obj: dict) -> ParsedCheckpoint:
    """Recognise the format of a loaded checkpoint and return the bare network's weights."""
    if not isinstance(obj, dict):
        raise UserError(f"a checkpoint must hold a dict, found {type(obj).__name__}")
    if obj.get("format") == FORMAT:
        missing = [k for k in ("arch", "mean", "std", "state_dict") if k not in obj]
        if missing:
            raise UserError(f"the checkpoint declares {FORMAT} but lacks {', '.join(missing)}: it is damaged or was not "
                            "written by robust-transfer")  # fmt: skip
        if not isinstance(obj["state_dict"], dict):
            raise UserError(f"the checkpoint declares {FORMAT} but its state_dict is a {type(obj['state_dict']).__name__}")
        return ParsedCheckpoint(
            state_dict=_strip("model.", obj["state_dict"]),
            mean=tuple(obj["mean"]),
            std=tuple(obj["std"]),
            arch=obj["arch"],
            input_size=obj.get("input_size"),
            meta=dict(obj.get("meta", {})),
        )
    sd = obj.get("model", obj.get("state_dict", obj))
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError("the checkpoint holds no state dict of tensors under 'model' or 'state_dict'")
    if any(k.startswith("module.") for k in sd):
        sd = _strip("module.", sd)
    mean = std = None
    for m_key, s_key in (("normalizer.new_mean", "normalizer.new_std"), ("normalizer.mean", "normalizer.std")):
        if m_key in sd and s_key in sd:
            mean, std = _norm_stats(sd[m_key]), _norm_stats(sd[s_key])
    if any(k.startswith("model.") for k in sd):
        sd = _strip("model.", sd)  # also drops the duplicate attacker.model.* copy
    return ParsedCheckpoint(state_dict=sd, mean=mean, std=std)


def load_checkpoint(path: Path | str) -> ParsedCheckpoint:
    """Read and parse a checkpoint file; weights holding NaN or Inf are refused, naming the tensors."""
    parsed = parse_checkpoint(read_checkpoint(path))
    bad = [k for k, t in parsed.state_dict.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise UserError(f"{path} holds non-finite weights (NaN or Inf in {shown}); it cannot be used")
    return parsed


def checkpoint_arch(parsed: ParsedCheckpoint, arch: str | None, default_arch: str = "resnet50") -> str:
    """The architecture to build: the one asked for, else the one the file records, else ``default_arch``."""
    if arch and parsed.arch and arch != parsed.arch:
        raise UserError(f"the checkpoint is a {parsed.arch}, not a {arch}; drop --arch or pass --arch {parsed.arch}")
    arch = arch or parsed.arch or default_arch
    check_arch(arch)
    return arch


def model_from_checkpoint(parsed: ParsedCheckpoint, arch: str) -> NormalizedModel:
    """Build ``arch`` and load the weights strictly; a mismatch names the likely cause."""
    model = build_model(arch, parsed.num_classes, parsed.mean, parsed.std)
    try:
        missing, unexpected = model.model.load_state_dict(parsed.state_dict, strict=False)
    except RuntimeError as exc:  # shape mismatches
        detail = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), str(exc))
        raise UserError(
            f"the checkpoint does not fit architecture {arch!r} ({detail}); pass the right --arch"
        ) from None
    if missing or unexpected:
        raise UserError(
            f"the checkpoint does not fit architecture {arch!r}: {len(missing)} missing keys "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}); "
            "pass the right --arch"
        )
    return model


def save_checkpoint(
    path: Path | str, model: NormalizedModel, arch: str, input_size: int, meta: dict | None = None
) -> None:
    """Write ``model`` in the robust-transfer format (tensors and plain values only), atomically."""
    atomic_torch_save(
        {
            "format": FORMAT,
            "arch": arch,
            "num_classes": int(classifier(model).out_features),
            "mean": _norm_stats(model.normalizer.mean),
            "std": _norm_stats(model.normalizer.std),
            "input_size": int(input_size),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "meta": meta or {},
        },
        path,
    )
