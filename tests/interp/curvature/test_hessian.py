import pytest
import torch
import torch.nn.functional as F
from torch import nn

from interp.curvature.grads import per_example_grads
from interp.curvature.head import folded_to_canonical, linear_head_grads, linear_head_hessian
from interp.curvature.hessian import check_dense_fits, hessian
from interp.errors import InterpError


def _problem(n=40, d=5, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    body = nn.Sequential(nn.Linear(3, d), nn.Tanh())
    model = nn.Sequential(body, nn.Linear(d, c)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    loader = [(x[i : i + 16], y[i : i + 16]) for i in range(0, n, 16)]
    return model, x, y, loader


def _reference_hessian(model, x, y, names):
    """torch.func.hessian of the mean loss over all data at once: the independent computation."""
    from torch.func import functional_call
    from torch.func import hessian as fh

    named = dict(model.named_parameters())
    theta = torch.cat([named[n].detach().flatten() for n in names])
    sizes = [named[n].numel() for n in names]

    def loss(flat):
        parts = {n: t.view(named[n].shape) for n, t in zip(names, flat.split(sizes), strict=True)}
        return F.cross_entropy(functional_call(model, {**named, **parts}, (x,)), y)

    return fh(loss)(theta)


def test_closed_form_equals_torch_func_hessian():
    model, x, y, loader = _problem()
    h = hessian(model, loader, model[1], method="closed_form")
    ref = _reference_hessian(model, x, y, ["1.weight", "1.bias"])
    assert h.dtype == torch.float64 and h.shape == (24, 24)
    assert torch.allclose(h, ref, atol=1e-10, rtol=0)


def test_generic_path_equals_torch_func_hessian_on_other_parameters():
    model, x, y, loader = _problem()
    h = hessian(model, loader, ["0.0.weight", "1.bias"], method="func")
    ref = _reference_hessian(model, x, y, ["0.0.weight", "1.bias"])
    assert torch.allclose(h, ref, atol=1e-10, rtol=0)


def test_auto_picks_the_closed_form_only_for_the_output_layer():
    model, x, y, loader = _problem()
    assert torch.allclose(hessian(model, loader, "1"), hessian(model, loader, "1", method="func"), atol=1e-10)
    with pytest.raises(InterpError, match="last operation"):
        hessian(model, loader, "0", method="closed_form")


def test_closed_form_gradients_equal_torch_func_per_example_gradients():
    model, x, y, loader = _problem()
    g = per_example_grads(model, loader, model[1])
    with torch.no_grad():
        z = model[0](x)
        folded = linear_head_grads(z, model(x), y)
    assert torch.allclose(folded[:, folded_to_canonical(4, 5)], g, atol=1e-12)
    # the Hessian is not the gradients' outer product, but both satisfy H 1-shift = 0
    h = linear_head_hessian(z, model(x).detach())
    shift = torch.ones(4, 1, dtype=torch.float64) * torch.randn(1, 6, dtype=torch.float64)
    assert torch.allclose(h @ shift.flatten(), torch.zeros(24, dtype=torch.float64), atol=1e-12)


def test_size_guard_refuses_and_names_the_alternative():
    with pytest.raises(InterpError, match="matrix-free"):
        check_dense_fits(20_490 * 10, max_bytes=24 * 2**30)
    check_dense_fits(20_490, max_bytes=24 * 2**30)


_CAPPED = """
import resource, sys, torch
from pathlib import Path
from interp.curvature.hessian import hessian
from interp.errors import InterpError
from transfer.zoo import load_source

vm = int([l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmSize:")][0].split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + int(float(sys.argv[1]) * 2**30), resource.RLIM_INFINITY))
model = load_source("mnist5k-l2").model
g = torch.Generator().manual_seed(0)
x, y = torch.rand(12, 3, 28, 28, generator=g), torch.randint(0, 10, (12,), generator=g)
names = ["model.layer3.1.bn1.weight", "model.layer3.1.bn1.bias", "model.layer3.1.bn2.weight",
         "model.layer3.1.bn2.bias", "model.fc.weight", "model.fc.bias"]
try:
    h = hessian(model, [(x, y)], names, method="func")  # one batch of 12: about 3 GiB if done at once
except InterpError as exc:
    print("refused:", exc)
    sys.exit(3)
torch.save(h, sys.argv[2])
"""


def test_the_generic_hessian_fits_its_batches_under_an_address_space_cap(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "h.pt"
    ok = subprocess.run([sys.executable, "-c", _CAPPED, "1.2", str(out)], capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stderr[-2000:]
    from transfer.zoo import load_source

    model = load_source("mnist5k-l2").model
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(12, 3, 28, 28, generator=g), torch.randint(0, 10, (12,), generator=g)
    names = ["model.layer3.1.bn1.weight", "model.layer3.1.bn1.bias", "model.layer3.1.bn2.weight",
             "model.layer3.1.bn2.bias", "model.fc.weight", "model.fc.bias"]  # fmt: skip
    ref = hessian(model, [(x[i : i + 3], y[i : i + 3]) for i in range(0, 12, 3)], names, method="func")
    assert torch.allclose(torch.load(out), ref, rtol=1e-10, atol=1e-12)
    tight = subprocess.run(
        [sys.executable, "-c", _CAPPED, "0.1", str(out)], capture_output=True, text=True, timeout=600
    )
    assert tight.returncode == 3, tight.stderr[-2000:]
    assert "GiB of working memory per image" in tight.stdout and "--method cg" in tight.stdout
