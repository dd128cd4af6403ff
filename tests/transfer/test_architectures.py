"""Architectures as registry entries: a non-ResNet family end to end, and one registered from outside."""

import pytest
import torch
from torch import nn

from transfer.architectures import ARCHITECTURES, Architecture, register_architecture
from transfer.checkpoints import save_checkpoint
from transfer.errors import UserError
from transfer.freezing import residual_blocks, split_frozen_prefix, unfreeze_last_blocks
from transfer.models import build_model, classifier, replace_classifier


@pytest.mark.parametrize("arch", ARCHITECTURES.names())
@pytest.mark.parametrize("blocks", [0, 1, 3, "all"])
def test_every_entry_cuts_into_a_prefix_and_suffix_equal_to_its_forward_pass(arch, blocks):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(arch, 10).eval()
    size = 28 if arch == "small_resnet" else 40
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    split = split_frozen_prefix(model, blocks)
    assert torch.allclose(split.suffix(split.prefix(x)), model(x), atol=1e-5)
    names = unfreeze_last_blocks(model, blocks)
    assert not any(p.requires_grad for p in split.prefix.parameters())
    head = {f"model.{ARCHITECTURES.get(arch).linear}.{n}" for n in ("weight", "bias")}
    assert head <= set(names) and (blocks != 0 or set(names) == head)


def test_mobilenet_v2_says_what_its_blocks_are():
    model = build_model("mobilenet_v2", 10)
    blocks = residual_blocks(model)
    assert len(blocks) == 18 and blocks[-1][0] == "features.18" and blocks[0][0] == "features.1"
    assert "inverted-residual" in ARCHITECTURES.get("mobilenet_v2").blocks_meaning
    assert replace_classifier(model, 4) is model.model.classifier[1]


def _robustness_layout(net: nn.Module) -> dict:
    """The robustness library's file: ``module.model.*``, a duplicate ``module.attacker.model.*``, the normaliser."""
    sd = {f"module.model.{k}": v for k, v in net.state_dict().items()}
    sd |= {f"module.attacker.model.{k}": v for k, v in net.state_dict().items()}
    sd |= {"module.normalizer.new_mean": torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1),
           "module.normalizer.new_std": torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)}  # fmt: skip
    return {"model": sd, "epoch": 90}


@pytest.mark.parametrize("layout", ["robustness", "torchvision"])
def test_a_mobilenet_checkpoint_fine_tunes_and_explains_in_either_layout(layout, tmp_path):
    from study.attribution import InfluenceConfig, run_influence
    from study.attribution.store import InfluenceDir
    from transfer.finetune import FinetuneConfig, finetune

    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = build_model("mobilenet_v2", 1000).model
    path = tmp_path / "mobilenet.pt"
    torch.save(_robustness_layout(net) if layout == "robustness" else net.state_dict(), path)
    cfg = FinetuneConfig(source=str(path), arch="mobilenet_v2", target="digits", blocks="1", subset="20", epochs="1",
                         augment="none", resolution=32, batch_size=10, device="cpu")  # fmt: skip
    summary = finetune(cfg, tmp_path / "run", progress=False)
    assert summary["epochs"] == 1
    meta = run_influence(InfluenceConfig(run=str(tmp_path / "run"), out=str(tmp_path / "inf"), params="head",
                                         test="10", rcond="exact", device="cpu"), progress=False)  # fmt: skip
    assert meta["params"] == ["model.classifier.1.weight", "model.classifier.1.bias"]
    assert InfluenceDir(tmp_path / "inf").read()["influence_test"].shape == (10, 20)


def test_an_architecture_registered_from_outside_is_built_frozen_and_saved(tmp_path):
    class Tiny(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3, padding=1)
            self.body = nn.Sequential(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()),
                                      nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU()))  # fmt: skip
            self.out = nn.Linear(8, n)

        def forward(self, x):
            return self.out(self.body(self.stem(x)).mean((2, 3)))

    class Mean(nn.Module):
        def forward(self, x):
            return x.mean((2, 3))

    entry = Architecture("tiny-test", Tiny, stem=lambda net: [net.stem],
                         blocks=lambda net: [(f"body.{i}", b) for i, b in enumerate(net.body)],
                         pool=lambda net: Mean(), head="out", linear="out", native_size=16)  # fmt: skip
    register_architecture(entry)
    try:
        with pytest.raises(UserError, match="registered already"):
            register_architecture(entry)
        model = build_model("tiny-test", 3)
        assert unfreeze_last_blocks(model, 1) == ["model.body.1.0.weight", "model.body.1.0.bias", "model.out.weight",
                                                  "model.out.bias"]  # fmt: skip
        x = torch.rand(2, 3, 16, 16)
        split = split_frozen_prefix(model, 1)
        assert torch.allclose(split.suffix(split.prefix(x)), model(x))
        save_checkpoint(tmp_path / "t.pt", model, "tiny-test", 16)
        from transfer.zoo import load_source

        loaded = load_source(tmp_path / "t.pt")
        assert loaded.arch == "tiny-test" and classifier(loaded.model).out_features == 3
    finally:
        ARCHITECTURES.unregister("tiny-test")
