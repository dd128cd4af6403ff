"""The paper's transforms on whole batches (transfer.augment): the same test transform, per-image random
parameters, reproducible under a seed, and the same output distribution as the per-image path."""

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

from transfer.augment import BatchTransform, stack_images
from transfer.datasets import load_raw_splits
from transfer.errors import UserError
from transfer.transforms import build_transform

R = 32


@pytest.fixture(scope="module")
def digits():
    train, _ = load_raw_splits("digits", None)
    return train


def test_the_test_transform_equals_the_per_image_one(digits):
    x, y = stack_images(digits, range(16))
    assert x.dtype == torch.uint8 and x.shape == (16, 1, 8, 8) and y.tolist() == [digits[i][1] for i in range(16)]
    per_image = torch.stack([build_transform(R, train=False)(digits[i][0]) for i in range(16)])
    torch.testing.assert_close(BatchTransform(R, train=False)(x), per_image, atol=1e-6, rtol=0)
    assert torch.equal(BatchTransform(R, train=True, augment="none")(x), BatchTransform(R, train=False)(x))


def test_parameters_are_drawn_per_image_and_a_seed_repeats_the_batch(digits):
    x = digits[3][0].unsqueeze(0).expand(64, -1, -1, -1)  # one image, 64 times
    t = BatchTransform(R, train=True)
    torch.manual_seed(7)
    a = t(x)
    torch.manual_seed(7)
    b = t(x)
    assert torch.equal(a, b)
    assert a.shape == (64, 3, R, R) and 0 <= a.min() and a.max() <= 1
    distinct = {tuple(np.round(img.flatten().numpy(), 5)) for img in a}
    assert len(distinct) == 64  # every copy got its own crop, flip, jitter and rotation
    flipped = [torch.allclose(img, img.flip(-1)) for img in a]
    assert not any(flipped)


def test_a_grey_image_is_augmented_as_its_three_channel_copy_would_be(digits):
    """Augmented on its one channel (a third of the work): the same draws and, up to float32 round-off, the same
    images as the three-channel copy of the image gets."""
    x, _ = stack_images(digits, range(64))
    t = BatchTransform(R, train=True)
    torch.manual_seed(3)
    grey = t(x)
    torch.manual_seed(3)
    copied = t(x.expand(-1, 3, -1, -1))
    assert grey.shape == copied.shape == (64, 3, R, R) and grey.is_contiguous()
    torch.testing.assert_close(grey, copied, atol=1e-6, rtol=0)
    assert not torch.equal(grey[0], grey[1])


def _statistics(z: torch.Tensor) -> dict[str, np.ndarray]:
    """Per image: brightness, contrast, left-right and top-bottom balance (crops and flips), colourfulness."""
    half = z.shape[-1] // 2
    return {
        "mean": z.mean((1, 2, 3)), "std": z.std((1, 2, 3)),
        "left_minus_right": z[..., :half].mean((1, 2, 3)) - z[..., half:].mean((1, 2, 3)),
        "top_minus_bottom": z[..., :half, :].mean((1, 2, 3)) - z[..., half:, :].mean((1, 2, 3)),
        "saturation": (z - z.mean(1, keepdim=True)).abs().mean((1, 2, 3)),
    }  # fmt: skip


@pytest.mark.parametrize("colour", [False, True])
def test_the_batched_augmentation_has_the_per_image_paths_distribution(digits, colour):
    """2,000 draws of each path on one image: Kolmogorov-Smirnov on five per-image statistics (p > 0.001 each)
    and the per-pixel mean and spread of the draws within 0.05."""
    img = digits[3][0]
    if colour:  # a colour image, for the saturation jitter: the digit in red, its mirror in green, grey blue
        img = torch.cat([img, img.flip(-1), torch.full_like(img, 8)])
    n = 2000
    torch.manual_seed(0)
    per_image = torch.stack([build_transform(R, train=True)(img) for _ in range(n)])
    batched = BatchTransform(R, train=True)(img.unsqueeze(0).expand(n, -1, -1, -1))
    a, b = _statistics(per_image), _statistics(batched)
    for name in a:
        if not colour and name == "saturation":
            continue  # grayscale: zero in both
        p = ks_2samp(a[name].numpy(), b[name].numpy()).pvalue
        assert p > 1e-3, f"{name}: KS p = {p:.2g}, means {a[name].mean():.4f} vs {b[name].mean():.4f}"
    assert (per_image.mean(0) - batched.mean(0)).abs().max() < 0.05
    assert (per_image.std(0) - batched.std(0)).abs().max() < 0.05


def test_images_of_several_sizes_cannot_be_stacked():
    class Mixed:
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return torch.zeros(1, 8 + i, 8, dtype=torch.uint8), 0

    with pytest.raises(UserError, match="images of one size"):
        stack_images(Mixed())
    with pytest.raises(UserError, match=r"\(B, 1 or 3, H, W\)"):
        BatchTransform(R, train=False)(torch.zeros(2, 2, 8, 8, dtype=torch.uint8))
