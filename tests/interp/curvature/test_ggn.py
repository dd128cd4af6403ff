"""The exact GGN: dense, per block, as a factor and as products, against curvlinops and the head's Hessian."""

import pytest
import torch

import interp
from interp import InterpError
from interp.curvature import ggn, ggn_blocks, ggn_factor, ggn_products, ggn_vector_product, layer_blocks
from interp.inverses import Curvature, build_inverse


def test_ggn_is_the_curvlinops_ggn_and_the_head_hessian(digits, small_net, names):
    train, _ = digits
    net = small_net()
    g = ggn(net, train, names)
    assert torch.allclose(g, g.T, atol=1e-12) and float(torch.linalg.eigvalsh(g).min()) > -1e-10
    matvec, size = ggn_vector_product(net, train, names)
    v = torch.randn(size, 3, dtype=torch.float64)
    assert torch.allclose(matvec(v), g @ v, atol=1e-10)
    f = ggn_factor(net, train, names)
    assert torch.allclose(f.T @ f, g, atol=1e-10)
    fast = ggn_products(net, train, names)
    assert "cached" in fast.description and torch.allclose(fast(v), g @ v, atol=1e-10)
    assert fast.shape == (size, size) and fast.dtype == torch.float64 and fast.device == torch.device("cpu")
    slow = ggn_products(net, train, names, max_bytes=1)
    assert "curvlinops" in slow.description and torch.allclose(slow(v), g @ v, atol=1e-10)
    # for the linear head alone the GGN is the Hessian (cross-entropy of an affine map)
    head = ["4.weight", "4.bias"]
    assert torch.allclose(ggn(net, train, head), interp.hessian(net, train, head, method="func"), atol=1e-10)


def test_blocks_are_the_diagonal_blocks_of_the_ggn(digits, small_net, exact_inverse, names):
    train, _ = digits
    net = small_net()
    g = ggn(net, train, names)
    groups = layer_blocks(net, names)
    assert groups == [["0.weight", "0.bias"], ["4.weight", "4.bias"]]
    b0, b1 = ggn_blocks(net, train, names, groups)
    assert torch.allclose(b0, g[:40, :40], atol=1e-12) and torch.allclose(b1, g[40:, 40:], atol=1e-12)
    with pytest.raises(InterpError, match="exactly once"):
        ggn_blocks(net, train, names, [["0.weight"]])
    inv = build_inverse("blockdiag", Curvature(len(g), model=net, data=train, params=names), rcond="exact",
                        damping=1e-3)  # fmt: skip
    dense = torch.block_diag(exact_inverse(g[:40, :40], 1e-3), exact_inverse(g[40:, 40:], 1e-3))
    v = torch.randn(len(g), 2, dtype=torch.float64)
    assert torch.allclose(inv.apply(v), dense @ v, rtol=1e-8, atol=1e-8)
    assert [b["size"] for b in inv.info()["blocks"]] == [40, 2570]
    assert len(inv.spectrum()) == len(g)


def test_a_ggn_that_does_not_fit_is_refused_naming_the_ggn_and_its_alternatives(digits, small_net, names):
    train, _ = digits
    with pytest.raises(InterpError, match=r"exact GGN over 2610 parameters .* --method ekfac or kfac"):
        ggn(small_net(), train, names, max_bytes=2**20)
    with pytest.raises(InterpError, match=r"2 layer blocks .* largest 2570 x 2570"):
        ggn_blocks(small_net(), train, names, layer_blocks(small_net(), names), max_bytes=2**20)
