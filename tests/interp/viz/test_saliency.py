import pytest
import torch
from torch import nn

from interp.viz.saliency import METHODS, concentration, edge_map, saliency_maps


def _linear_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).eval()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("wrt", ["loss", "logit"])
def test_maps_have_the_input_shape(method, wrt):
    x = torch.rand(5, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 3, 0])
    attr = saliency_maps(_linear_model(), x, y, method, wrt, smoothgrad_samples=4, ig_steps=8)
    assert attr.shape == x.shape and torch.isfinite(attr).all()


def test_plain_saliency_of_a_linear_logit_is_its_weight_row():
    model = _linear_model()
    x, y = torch.rand(2, 3, 8, 8), torch.tensor([1, 3])
    attr = saliency_maps(model, x, y, "saliency", "logit")
    w = model[1].weight.detach().view(4, 3, 8, 8)
    assert torch.allclose(attr, w[y], atol=1e-6)


def test_concentration_is_high_for_an_edge_aligned_map_and_low_for_noise():
    x = torch.zeros(1, 3, 16, 16)
    x[..., 4:12, 4:12] = 1.0
    aligned = edge_map(x).unsqueeze(1).expand(1, 3, 16, 16)
    noise = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    good, bad = concentration(aligned, x), concentration(noise, x)
    assert good["edge_correlation"][0] > 0.99 and abs(bad["edge_correlation"][0]) < 0.3
    assert good["top5pct_mass"][0] > bad["top5pct_mass"][0]
