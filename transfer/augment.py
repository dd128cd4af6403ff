"""The paper's transforms on whole batches, on the training device: GPU-resident data and augmentation.

:func:`transfer.transforms.build_transform` transforms one image at a time in the data loader's worker
processes; on a GPU that CPU work bounds training (about 1,075 images/s against 2,246 for the same
network fed from the GPU, measured on an H100). Here a batch of uint8 images ``(B, C, H, W)``, held on the
device, is transformed there in one pass: upscale (bilinear, antialiased, as torchvision's ``Resize``),
then the paper's augmentation with **per-image random parameters**: crop with padding 4, horizontal flip, colour
jitter 0.25 (brightness, contrast, saturation) and rotation of up to 2 degrees, then clamping to [0, 1], and
grayscale to three channels (a grey image is augmented on its one channel: the same result as on three equal
channels up to float32 round-off, at a third of the work).

The augmentation is kornia's (``kornia.augmentation``): its ``ColorJitter`` uses torchvision's formulas
(brightness multiplies, contrast and saturation blend with the grayscale mean / image), its random crop
pads with zeros as torchvision's does, and every transform draws its parameters per image on the device.
torchvision.transforms.v2 would apply one draw to a whole batch. Two differences from the per-image path,
both stated: kornia draws the order of the three jitter steps once per batch (torchvision once per
image), and rotation interpolates with ``nearest`` as torchvision's default, with kornia's
``align_corners=True`` grid (a sub-pixel offset at 2 degrees). ``tests/transfer/test_augment.py`` compares
the two paths' output distributions.

Randomness comes from torch's global generators (kornia takes no generator), so a caller that seeds them
(the training loop does, per epoch, under ``torch.random.fork_rng``) gets the same batch twice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from transfer.errors import UserError
from transfer.transforms import AUGMENTS

CROP_PADDING = 4
JITTER = 0.25
ROTATION_DEGREES = 2.0


class BatchTransform(nn.Module):
    """uint8 ``(B, C, H, W)`` with ``C`` in {1, 3} -> float ``(B, 3, R, R)`` in [0, 1], on the input's device."""

    def __init__(self, resolution: int, *, train: bool, augment: str = "paper"):
        super().__init__()
        if augment not in AUGMENTS:
            raise UserError(f"--augment must be one of {', '.join(AUGMENTS)}; got {augment!r}")
        self.resolution = resolution
        self.augment = None
        if train and augment == "paper":
            import kornia.augmentation as K

            r = resolution
            self.augment = nn.Sequential(
                K.RandomCrop((r, r), padding=CROP_PADDING, fill=0.0, padding_mode="constant"),
                K.RandomHorizontalFlip(p=0.5),
                K.ColorJitter(brightness=JITTER, contrast=JITTER, saturation=JITTER, p=1.0),
                K.RandomRotation(ROTATION_DEGREES, resample="nearest", p=1.0),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise UserError(f"a batch of images must be (B, 1 or 3, H, W), got {tuple(x.shape)}")
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        r = self.resolution
        if x.shape[-2:] != (r, r):
            x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False, antialias=True)
        if self.augment is not None:
            # a grey image is augmented on its one channel and copied to three after: crop, flip and rotation act on
            # every channel alike, brightness multiplies, and contrast and saturation blend with the grey version,
            # which of three equal channels is that channel up to float32 round-off (BT.601's weights sum to one);
            # the draws depend on the batch's size alone, so they are the same, at a third of the work
            x = self.augment(x.contiguous())
        x = x.clamp(0.0, 1.0)
        return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x


def stack_images(dataset, indices=None, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 (N, C, H, W), labels (N,))`` of a dataset of uint8 ``(C, H, W)`` images, on ``device``.

    Every image must have the same size (the paper's six targets do)."""
    idx = range(len(dataset)) if indices is None else [int(i) for i in indices]
    images, labels = [], []
    for i in idx:
        img, label = dataset[i]
        images.append(torch.as_tensor(img))
        labels.append(int(label))
    shapes = {tuple(t.shape) for t in images}
    if len(shapes) > 1:
        raise UserError(f"--augment-on device needs images of one size; this dataset has {sorted(shapes)[:3]}...")
    x = torch.stack(images)
    if x.dtype != torch.uint8:
        raise UserError(f"--augment-on device needs uint8 images, got {x.dtype}")
    return x.to(device), torch.tensor(labels, dtype=torch.long, device=device)
