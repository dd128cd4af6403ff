"""Training precision: what ``--precision`` and ``--channels-last`` mean, scoped to one training call.

* ``fp32``: IEEE float32 everywhere; TF32 is switched off for matrix products *and* cuDNN convolutions
  (PyTorch allows TF32 in cuDNN convolutions by default, so a plain loop is not fp32 on an Ampere+ GPU).
* ``tf32``: float32 storage, TensorFloat-32 tensor-core arithmetic for matrix products and convolutions
  (10-bit mantissa inputs, float32 accumulation) on CUDA; on a CPU there is no TF32 and it is fp32.
* ``bf16``: ``torch.autocast`` to bfloat16 for the forward pass (weights, gradients and the optimiser stay
  float32; bfloat16 keeps float32's range, so no loss scaling is needed), on CUDA and on CPUs.
* ``auto`` (the default): ``tf32`` on CUDA (PyTorch's own default for convolutions, extended to the
  classifier's matrix products), ``fp32`` elsewhere.

``channels_last`` stores the model's and the inputs' 4-d tensors as NHWC, the layout tensor-core convolutions use
natively and oneDNN's CPU convolutions run fastest in (``auto``: on, on CUDA and on CPUs: a training step measured
1.39x faster for a ResNet-50 at 224 px and 1.35x for the small ResNet at 28 px on 2 CPU cores; the same arithmetic
in another memory order, so results agree to float32 round-off). ``augment_on`` says where images are transformed:
``auto`` batches them on the training device on CUDA, and on a CPU for images of up to :data:`BATCHED_VALUES` values
(channels x pixels: grey images up to 224 px, colour ones up to 129 px), where the per-image loader is the slower
(``benchmarks/finetune_throughput.py --augmentation --channels 1|3``). Influence,
Hessians and every ``interp`` computation run outside these scopes and stay IEEE float32/float64 whatever a run was
trained with.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import field

import torch

from transfer.errors import UserError

PRECISIONS = ("auto", "fp32", "tf32", "bf16")
CHANNELS_LAST = ("auto", "on", "off")
AUGMENT_ON = ("auto", "loader", "device")
RESOLVED_PRECISIONS = tuple(p for p in PRECISIONS if p != "auto")  # what a run trains with once auto is resolved
RESOLVED_AUGMENT_ON = tuple(a for a in AUGMENT_ON if a != "auto")


def speed_fields() -> dict:
    """The three training-speed settings of ``finetune`` and ``pretrain`` (one help text each), as dataclass
    fields: ``precision``, ``channels_last``, ``augment_on``."""
    return {
        "precision": field(default="auto", metadata={"help": "auto (tf32 on CUDA, fp32 elsewhere), fp32 (IEEE, TF32 "
                           "off even in cuDNN), tf32 or bf16 (autocast forward; float32 weights and optimiser)"}),
        "channels_last": field(default="auto", metadata={"help": "NHWC memory layout of the model and its inputs: "
                               "auto (on: measured faster on CUDA and on CPUs), on or off"}),
        "augment_on": field(default="auto", metadata={"help": "where images are transformed: loader (one image at a "
                            "time in data-loader workers), device (whole batches on the training device: the data "
                            "held there as uint8, kornia's per-image augmentation) or auto (device on CUDA, and on "
                            "CPUs for grey images up to 224 px and colour ones up to 129 px; loader for larger ones "
                            "on CPUs, where it measured faster)"}),
    }  # fmt: skip


def check_speed_settings(cfg) -> None:
    """The checks of :func:`speed_fields`' settings."""
    if cfg.precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}; got {cfg.precision!r}")
    if cfg.channels_last not in CHANNELS_LAST:
        raise UserError(f"--channels-last must be one of {', '.join(CHANNELS_LAST)}; got {cfg.channels_last!r}")
    if cfg.augment_on not in AUGMENT_ON:
        raise UserError(f"--augment-on must be one of {', '.join(AUGMENT_ON)}; got {cfg.augment_on!r}")


def resolve_speed(cfg, device: torch.device, resolution: int, channels: int = 3) -> dict:
    """What ``cfg``'s three speed settings (:func:`speed_fields`) mean on ``device`` for images of ``resolution``
    pixels and ``channels`` channels (1: grey) as stored: ``precision`` (fp32, tf32 or bf16), ``channels_last``
    (bool) and ``augment_on`` (loader or device)."""
    return {"precision": resolve_precision(cfg.precision, device),
            "channels_last": resolve_channels_last(cfg.channels_last, device),
            "augment_on": resolve_augment_on(cfg.augment_on, device, resolution, channels)}  # fmt: skip


def keep_recorded_speed(resolved: dict, recorded: dict | None, device: torch.device) -> tuple[dict, str | None]:
    """The speed settings a resumed run trains with: those ``recorded`` when it started (:func:`resolve_speed`'s
    keys; ``None``: a run started before they were recorded, which takes ``resolved``), so that a run killed and
    resumed on another device, or after ``auto``'s rule changed, goes on as it began; but ``tf32`` on a device
    without it is ``fp32``, as :func:`resolve_precision` says. Also a message naming what differs from
    ``resolved`` (``None`` where nothing does)."""
    if recorded is None:
        return resolved, None
    if (not isinstance(recorded, dict) or recorded.get("precision") not in RESOLVED_PRECISIONS
            or not isinstance(recorded.get("channels_last"), bool)
            or recorded.get("augment_on") not in RESOLVED_AUGMENT_ON):
        raise UserError(f"the run's recorded speed settings are not valid ({recorded!r}); it was not written by "
                        "robust-transfer, or was edited")  # fmt: skip
    kept = {"precision": resolve_precision(recorded["precision"], device),
            "channels_last": recorded["channels_last"],
            "augment_on": recorded["augment_on"]}  # fmt: skip
    changed = [f"{k} {kept[k]!r} (resolved now: {resolved[k]!r})" for k in resolved if kept[k] != resolved[k]]
    if not changed:
        return kept, None
    return kept, f"resuming with the speed settings the run started with: {', '.join(changed)}"


# images of up to this many values (channels x resolution^2) are augmented batched on a CPU too. Batched kornia works
# on the stored channels (a grey image on its one), the per-image loader on three whatever the image, so the batched
# path's cost grows with the values and the loader's with the pixels. Measured on 2 CPU cores (Intel Xeon,
# benchmarks/finetune_throughput.py --augmentation --images 1024 --batch-size 128 --repeats 3, 2026-12-05), batched
# against loader images/s: grey 7,116 vs 1,293 at 128 px, 3,260 vs 1,031 at 160, 1,803 vs 907 at 192, 1,277 vs 709
# at 224 (50,176 values), 486 vs 478 at 288 (82,944); colour 1,926 vs 1,261 at 128 (49,152 values), 640 vs 950 at 160
# (76,800), 320 vs 631 at 224. The crossover lies between 50,176 and 76,800 values; the bound is the largest measured
# size where batched won (so grey up to 224 px, colour up to 129 px)
BATCHED_VALUES = 224 * 224


def resolve_augment_on(augment_on: str, device: torch.device, resolution: int | None = None, channels: int = 3) -> str:
    """``auto`` -> ``device`` on CUDA, and on a CPU for images of ``channels x resolution^2`` up to
    :data:`BATCHED_VALUES` (grey up to 224 px, colour up to 129 px; ``resolution=None``: not known, taken as large);
    ``loader`` otherwise."""
    if augment_on != "auto":
        return augment_on
    small = resolution is not None and channels * resolution**2 <= BATCHED_VALUES
    return "device" if device.type == "cuda" or small else "loader"


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``tf32`` on CUDA, ``fp32`` elsewhere; ``tf32`` on a CPU is ``fp32`` (it has none)."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "auto":
        return "tf32" if device.type == "cuda" else "fp32"
    if precision == "tf32" and device.type != "cuda":
        return "fp32"
    return precision


def resolve_channels_last(channels_last: str, device: torch.device) -> bool:
    if channels_last not in CHANNELS_LAST:
        raise UserError(f"--channels-last must be one of {', '.join(CHANNELS_LAST)}; got {channels_last!r}")
    return device.type in ("cuda", "cpu") if channels_last == "auto" else channels_last == "on"


@contextlib.contextmanager
def tf32_allowed(allowed: bool) -> Iterator[None]:
    """TF32 for CUDA matrix products and cuDNN convolutions on or off for the block, restored after (the flags
    are process-wide)."""
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = allowed
    torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward pass's autocast for a resolved precision (a no-op but for bf16)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
