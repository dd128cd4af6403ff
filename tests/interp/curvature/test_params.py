import pytest

from interp.curvature.params import select_params
from interp.errors import InterpError
from transfer.zoo import load_source


def test_the_hint_for_an_unknown_module_names_the_head():
    model = load_source("mnist5k-l2").model
    with pytest.raises(InterpError, match=r"no parameters match 'nope'; .*model\.fc$"):
        select_params(model, "nope")
    assert list(select_params(model, "fc")) == ["model.fc.weight", "model.fc.bias"]


def test_a_path_that_names_several_modules_is_an_error_that_lists_them():
    model = load_source("mnist5k-l2").model
    with pytest.raises(InterpError, match=r"'conv1' matches \d+ modules: model\.conv1, model\.layer1\.0\.conv1"):
        select_params(model, "conv1")
    assert list(select_params(model, "model.conv1")) == ["model.conv1.weight"]
    block = select_params(model, "layer3.1")
    assert block and all(n.startswith("model.layer3.1.") for n in block)


def test_names_submodules_and_requires_grad_selections():
    model = load_source("mnist5k-l2").model
    assert list(select_params(model, model.model.fc)) == ["model.fc.weight", "model.fc.bias"]
    assert list(select_params(model, ["model.fc.bias"])) == ["model.fc.bias"]
    with pytest.raises(InterpError, match="unknown parameter names"):
        select_params(model, ["model.fc.nope"])
    for p in model.parameters():
        p.requires_grad_(False)
    model.model.fc.weight.requires_grad_(True)
    assert list(select_params(model, None)) == ["model.fc.weight"]
