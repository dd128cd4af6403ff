import torch

from transfer.transforms import build_transform


def test_test_transform_upscales_grayscale_to_three_channels_deterministically():
    image = torch.randint(0, 256, (1, 8, 8), dtype=torch.uint8)
    t = build_transform(28, train=False)
    out = t(image)
    assert out.shape == (3, 28, 28) and out.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 1
    assert torch.equal(out, t(image)) and torch.equal(out[0], out[2])


def test_paper_augmentation_is_random_but_seedable_and_none_is_not():
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    aug = build_transform(32, train=True, augment="paper")
    torch.manual_seed(0)
    a = aug(image)
    torch.manual_seed(0)
    assert torch.equal(a, aug(image))
    assert not torch.equal(a, aug(image))
    plain = build_transform(32, train=True, augment="none")
    assert torch.equal(plain(image), build_transform(32, train=False)(image))
