"""Every interp path on CUDA gives the CPU's numbers (float64 round-off). Skipped without a GPU."""

import numpy as np
import pytest
import torch
from torch import nn

import interp
from interp import head_influence

pytestmark = pytest.mark.gpu


def _problem(n=64, d=8, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, d), nn.ReLU(), nn.Linear(d, c)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    return model, [(x[:32], y[:32]), (x[32:], y[32:])]


def _close(a, b, rtol=1e-8):
    a, b = np.asarray(torch.as_tensor(a).cpu()), np.asarray(torch.as_tensor(b).cpu())
    assert np.max(np.abs(a - b)) <= rtol * max(np.max(np.abs(b)), 1e-300)


@pytest.mark.parametrize("params", ["2", ["0.weight", "2.weight"]])
def test_hessian_and_gradients_on_cuda_equal_the_cpu(params):
    model, loader = _problem()
    h_cpu = interp.hessian(model, loader, params)
    h_gpu = interp.hessian(model, loader, params, device="cuda")
    assert h_gpu.device.type == "cuda" and next(model.parameters()).device.type == "cpu"
    _close(h_gpu, h_cpu)
    _close(
        interp.per_example_grads(model, loader, params, device="cuda"), interp.per_example_grads(model, loader, params)
    )


@pytest.mark.parametrize("method", ["cholesky", "eigh", "svd"])
def test_inverses_factorise_on_the_gpu_and_match(method):
    model, loader = _problem()
    h = interp.hessian(model, loader, "2") + 1e-3 * torch.eye(45, dtype=torch.float64)
    g = interp.per_example_grads(model, loader, "2")
    cpu = interp.influence_matrix(g[:10], g, interp.pseudo_inverse(h, method=method))
    inv = interp.pseudo_inverse(h.cuda(), method=method)
    assert inv.device.type == "cuda"
    gpu = interp.influence_matrix(g[:10].cuda(), g.cuda(), inv)
    assert gpu.device.type == "cpu"  # results come back to the host
    _close(gpu, cpu)


def test_conjugate_gradient_on_cuda_equals_the_dense_cpu_path():
    model, loader = _problem()
    params = ["0.weight", "2.weight"]
    h = interp.hessian(model, loader, params)
    damping = max(1e-2, -float(torch.linalg.eigvalsh(h).min()) + 1e-2)
    g = interp.per_example_grads(model, loader, params)
    dense = interp.influence_matrix(g[:8], g, h, damping=damping)
    matvec, p = interp.hessian_vector_product(model, loader, params, device="cuda")
    inv = interp.ConjugateGradientInverse(matvec, p, damping=damping, tol=1e-12, on="cuda")
    _close(interp.influence_matrix(g[:8], g, inv), dense, rtol=1e-6)


def test_head_influence_stays_on_the_gpu_and_matches_the_cpu():
    g = torch.Generator().manual_seed(1)
    z = torch.relu(torch.randn(300, 40, generator=g, dtype=torch.float64))
    z[:, :5] = 0  # dead features
    w = torch.randn(10, 40, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (300,), generator=g)
    zt, yt = z[:50] + 0.1, y[:50]
    cpu = head_influence(z, z @ w.T, y, zt, zt @ w.T, yt)
    gpu = head_influence(z.cuda(), (z @ w.T).cuda(), y.cuda(), zt.cuda(), (zt @ w.T).cuda(), yt.cuda())
    assert gpu["hessian_reduced"].device.type == "cuda" and gpu["inverse"].device.type == "cuda"
    _close(gpu["test"], cpu["test"])
    _close(gpu["train"], cpu["train"])
    assert gpu["removed"] == cpu["removed"]


def test_featviz_and_saliency_run_on_cuda_and_leave_the_model_alone():
    from transfer.zoo import load_source

    model = load_source("mnist5k-l2").model.cuda()
    flags = [p.requires_grad for p in model.parameters()]
    seeds = interp.noise_seeds(2, 28, seed=0).cuda()
    res = interp.visualize(model, seeds, [1, 2], interp.FeatVizConfig(iterations=5))
    assert np.isfinite(res.end).all() and (res.end > res.start).mean() > 0.5
    assert [p.requires_grad for p in model.parameters()] == flags
    x = torch.rand(2, 3, 28, 28, device="cuda")
    maps = interp.saliency_maps(model, x, torch.tensor([1, 2], device="cuda"), method="saliency")
    assert maps.shape == x.shape


def test_features_on_cuda_are_ieee_float32_and_the_tf32_setting_is_restored():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 5), torch.nn.Flatten(), torch.nn.Linear(64 * 28 * 28, 10))
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    cpu = interp.head_features(model, model[2], [(x, y)])[0]
    torch.backends.cudnn.allow_tf32 = True
    gpu = interp.head_features(model.cuda(), model[2], [(x, y)])[0].cpu()
    assert torch.backends.cudnn.allow_tf32 is True
    assert torch.allclose(gpu, cpu, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["ggn", "blockdiag", "kfac", "ekfac", "arnoldi"])
def test_model_curvature_methods_on_cuda_equal_the_cpu(method):
    """The GGN, its blocks, K-FAC / EK-FAC (curvlinops) and Arnoldi built on the GPU give the CPU's influence."""
    model, loader = _problem()
    names = ["0.weight", "0.bias", "2.weight", "2.bias"]
    g = interp.per_example_grads(model, loader, names)
    options = {"arnoldi_rank": 20} if method == "arnoldi" else {}
    if interp.INVERSES.get(method).cutoff:
        options["rcond"] = "exact"
    mats = {}
    for dev in ("cpu", "cuda"):
        curvature = interp.Curvature(g.shape[1], device=dev, model=model, data=loader, params=names)
        inv = interp.build_inverse(method, curvature, damping=1e-2, **options)
        assert inv.device.type == dev
        mats[dev] = interp.influence_matrix(g[:10].to(dev), g.to(dev), inv)
    _close(mats["cuda"], mats["cpu"], rtol=1e-6 if method == "arnoldi" else 1e-8)


def test_arnoldi_from_a_factors_gram_matrix_on_cuda_equals_the_cpu():
    """The top eigenpairs of ``F^T F`` from the Gram matrix (``torch.linalg.eigh`` sliced on CUDA, LAPACK's partial
    MRRR on the CPU) give the same inverse."""
    from interp.inverses import arnoldi_inverse

    g = torch.Generator().manual_seed(3)
    f = torch.randn(40, 300, generator=g, dtype=torch.float64) * torch.logspace(0, -3, 40, dtype=torch.float64)[:, None]
    v = torch.randn(300, 4, generator=g, dtype=torch.float64)
    out = {}
    for dev in ("cpu", "cuda"):
        fd = f.to(dev)
        inv = arnoldi_inverse(lambda q, fd=fd: fd.T @ (fd @ q), 300, rank=15, damping=1e-3, device=dev, factor=fd)
        assert inv.device.type == dev and inv.info()["solver"].startswith("dense eigh of the 40 x 40 Gram")
        out[dev] = inv.apply(v.to(dev))
    _close(out["cuda"], out["cpu"])
