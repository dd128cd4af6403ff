import pytest

from interp.errors import InterpError
from interp.params import select_params
from transfer.zoo import load_source


def test_the_hint_for_an_unknown_module_names_the_head():
    model = load_source("mnist5k-l2").model
    with pytest.raises(InterpError, match=r"no parameters match 'nope'; .*model\.fc$"):
        select_params(model, "nope")
    assert list(select_params(model, "fc")) == ["model.fc.weight", "model.fc.bias"]
