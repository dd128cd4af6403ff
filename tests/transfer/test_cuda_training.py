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


def test_models_trained_together_on_cuda_are_the_models_trained_alone(tmp_path):
    """transfer.together on the GPU (where it is meant to pay): the same weights as one at a time, float32 throughout
    (TF32 would round each model's convolutions differently alone and stacked), each model's augmentation drawn from
    its own CUDA generator state."""
    import numpy as np

    from transfer.runs import RunDir
    from transfer.together import finetune_together

    rng = np.random.default_rng(0)
    indices = [np.sort(rng.choice(1000, 100, replace=False)) for _ in range(3)]
    cfgs = [FinetuneConfig(source="mnist5k-l2", target="digits", blocks="1", subset="100", epochs="3", eval_every="2",
                           batch_size=32, seed=20_000_000 + k, device="cuda", precision="fp32") for k in range(3)]  # fmt: skip
    alone = [finetune(c, tmp_path / f"a{k}", progress=False, indices=indices[k]) for k, c in enumerate(cfgs)]
    together = finetune_together(cfgs, [tmp_path / f"t{k}" for k in range(3)], indices, progress=False)
    for k in range(3):
        a, b = (torch.load(RunDir(tmp_path / f"{w}{k}").model, weights_only=True)["state_dict"] for w in "at")
        for name, t in a.items():
            if t.is_floating_point():
                assert float((b[name] - t).abs().max()) <= 1e-3 * max(float(t.abs().max()), 1e-12), name
        assert together[k]["together"] == 3
        assert together[k]["final_test_acc"] == pytest.approx(alone[k]["final_test_acc"], abs=1 / 360 + 1e-9)
