"""The GPU data path and each precision on CUDA. Skipped without a GPU (run with pytest -m gpu)."""

import pytest
import torch

from transfer.augment import BatchTransform, stack_images
from transfer.datasets import load_raw_splits
from transfer.finetune import FinetuneConfig, finetune
from transfer.train import DeviceImages, training_inputs
from transfer.transforms import build_transform

pytestmark = pytest.mark.gpu


def test_training_images_live_on_the_gpu_and_transform_there_as_on_the_cpu():
    train, test = load_raw_splits("digits", None)
    dev = torch.device("cuda")
    tr, te = training_inputs(train, test, list(range(100)), 32, "paper", "device", dev)
    assert isinstance(tr, DeviceImages) and tr.images.is_cuda and tr.images.dtype == torch.uint8 and len(te) == 360
    x, _ = stack_images(train, range(16))
    cpu = BatchTransform(32, train=False)(x)
    torch.testing.assert_close(BatchTransform(32, train=False)(x.cuda()).cpu(), cpu, atol=1e-5, rtol=0)
    one = train[3][0].unsqueeze(0).expand(256, -1, -1, -1).cuda()
    torch.manual_seed(0)
    a = BatchTransform(32, train=True)(one)
    torch.manual_seed(0)
    assert a.is_cuda and torch.equal(a, BatchTransform(32, train=True)(one))  # a seed repeats the batch
    assert len({tuple(img.flatten().tolist()) for img in a.cpu()}) == 256  # per-image parameters, on the device
    per_image = torch.stack([build_transform(32, train=True)(train[3][0]) for _ in range(256)])
    assert abs(float(per_image.mean()) - float(a.mean())) < 0.02


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_finetune_on_cuda_with_each_precision_and_device_augmentation(tmp_path, precision):
    cfg = FinetuneConfig(source="mnist5k-l2", target="digits", blocks="1", subset="200", epochs="3", eval_every="1",
                         device="cuda", precision=precision)  # fmt: skip
    summary = finetune(cfg, tmp_path / "r", progress=False)
    assert summary["precision"] == precision and summary["augment_on"] == "device" and summary["channels_last"]
    assert summary["final_test_acc"] > 0.5  # the shipped robust source transfers to digits well above chance
