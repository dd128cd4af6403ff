"""The exact GGN's inverse: dense where its rank is full, by Woodbury on its factor where that is thinner."""

import torch

from interp.curvature import factor_rows, ggn
from interp.inverses import Curvature, build_inverse, pseudo_inverse


def test_the_ggn_of_a_thin_factor_is_inverted_by_woodbury_and_equals_the_dense_one(digits, small_net, names):
    train, _ = digits
    net = small_net()
    assert factor_rows(net, train, names) == 600 < 2610  # 60 images x 10 classes, 2,610 parameters
    g = ggn(net, train, names)
    curvature = Curvature(len(g), model=net, data=train, params=names)
    v = torch.randn(len(g), 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    base = build_inverse("ggn", curvature, rcond="exact", damping=1e-3)
    assert "Woodbury" in base.info()["solver"] and base.method == "ggn"
    for rcond, damping in (("exact", 1e-3), ("paper", 0.0), (1e-4, 1e-2)):
        inv = base.with_settings(rcond=rcond, damping=damping)
        dense = pseudo_inverse(g, rcond=rcond, damping=damping, method="eigh")
        out, ref = inv.apply(v), dense.apply(v)
        assert inv.rank == dense.rank, (rcond, damping)
        assert torch.linalg.norm(out - ref) <= 1e-6 * torch.linalg.norm(ref), (rcond, damping)
