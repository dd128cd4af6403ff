import pytest
import torch

from transfer.errors import UserError
from transfer.freezing import split_frozen_prefix, unfreeze_last_blocks
from transfer.models import build_model


def _blocks_of(names):
    return {".".join(n.split(".")[1:3]) if n.startswith("model.layer") else n for n in names}


@pytest.fixture(scope="module")
def resnet50():
    return build_model("resnet50", 10).eval()


@pytest.mark.parametrize(
    "blocks,expected",
    [
        (0, set()),
        (1, {"layer4.2"}),
        (3, {"layer4.0", "layer4.1", "layer4.2"}),
        (9, {f"layer4.{i}" for i in range(3)} | {f"layer3.{i}" for i in range(6)}),
    ],
)
def test_exact_trainable_sets_on_resnet50(resnet50, blocks, expected):
    names = unfreeze_last_blocks(resnet50, blocks)
    assert _blocks_of(names) == expected | {"model.fc.weight", "model.fc.bias"}
    trainable = {n for n, p in resnet50.named_parameters() if p.requires_grad}
    assert trainable == set(names)
    block_params = {n for n, _ in resnet50.named_parameters() if any(f"model.{b}." in n for b in expected)}
    assert block_params <= trainable  # every parameter of those blocks, BatchNorm included


def test_all_trains_everything(resnet50):
    names = unfreeze_last_blocks(resnet50, "all")
    assert len(names) == len(list(resnet50.parameters()))


def test_too_many_blocks_is_a_clear_error():
    with pytest.raises(UserError, match="6 residual blocks"):
        unfreeze_last_blocks(build_model("small_resnet", 10), 9)


@pytest.mark.parametrize("blocks", [0, 1, 3, 9, "all"])
def test_prefix_then_suffix_is_the_model(resnet50, blocks):
    split = split_frozen_prefix(resnet50, blocks)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(split.suffix(split.prefix(x)), resnet50(x), atol=1e-6)
    unfreeze_last_blocks(resnet50, blocks)
    assert not any(p.requires_grad for p in split.prefix.parameters())
