"""interp's public entry points refuse inputs that would give a wrong answer silently (issue 18, class 9)."""

import numpy as np
import pytest
import torch

import interp
from interp import InterpError


def _problem(p=6, n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(p, p, generator=g, dtype=torch.float64)
    return a @ a.T + torch.eye(p, dtype=torch.float64), torch.randn(n, p, generator=g, dtype=torch.float64)


def test_an_asymmetric_hessian_is_refused_with_its_asymmetry():
    h, g = _problem()
    skew = torch.triu(h, 1) * 0.8  # the case: about 40% asymmetric
    with pytest.raises(InterpError, match=r"h \(the Hessian\) is not symmetric: max \|H - H\^T\|"):
        interp.influence_matrix(g, g, h + skew)
    with pytest.raises(InterpError, match="not symmetric"):
        interp.pseudo_inverse(h + skew)
    rounded = h + 1e-13 * torch.triu(torch.ones_like(h), 1)  # round-off of an assembled Hessian is accepted
    assert interp.influence_matrix(g, g, rounded).shape == (5, 5)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda h, g: (g[0], g, h), r"g_test must be 2-D \(n, P\), got shape \(6,\)"),
        (lambda h, g: (g, g.numpy(), h), "g_train must be a torch.Tensor, got numpy.ndarray; convert it with torch.from_numpy"),
        (lambda h, g: (g, g, h.numpy()), "h \\(the Hessian\\) must be a torch.Tensor"),
        (lambda h, g: (g, g, h.half()), "must be float32 or float64, got torch.float16; half precision"),
        (lambda h, g: (g.half(), g, h), "g_test must be float32 or float64, got torch.float16"),
        (lambda h, g: (g.long(), g, h), "g_test must be float32 or float64, got torch.int64"),
        (lambda h, g: (g, g[:, :4], h), "g_test has 6 columns and g_train 4"),
        (lambda h, g: (g, g, -h), "has no positive eigenvalue"),
        (lambda h, g: (g, g, h[:4]), r"must be a square \(P, P\) matrix"),
    ],
)
def test_bad_arguments_name_the_argument(make, match):
    h, g = _problem()
    with pytest.raises(InterpError, match=match):
        interp.influence_matrix(*make(h, g))


def test_class_match_refuses_nan_non_integer_k_and_k_beyond_the_training_set():
    rng = np.random.default_rng(0)
    inf, y_test, y_train = rng.standard_normal((4, 7)), np.arange(4) % 2, np.arange(7) % 2
    bad = inf.copy()
    bad[1, 2] = np.nan
    with pytest.raises(InterpError, match=r"influence holds 1 non-finite value\(s\)"):
        interp.class_match(bad, y_test, y_train, k=3)
    with pytest.raises(InterpError, match=r"k must be an integer, got 2.5 \(float\)"):
        interp.class_match(inf, y_test, y_train, k=2.5)
    with pytest.raises(InterpError, match="k must be an integer"):
        interp.class_match(inf, y_test, y_train, k=True)
    with pytest.raises(InterpError, match="k must be between 1 and 7"):
        interp.class_match(inf, y_test, y_train, k=8)
    with pytest.raises(InterpError, match="k must be between 1 and 6"):  # its own entry is left out
        interp.class_match(rng.standard_normal((7, 7)), y_train, y_train, k=7, exclude_self=True)
    with pytest.raises(InterpError, match="y_test must be a 1-D array of integer labels"):
        interp.class_match(inf, y_test.astype(float), y_train, k=3)
    with pytest.raises(InterpError, match=r"influence must be 2-D"):
        interp.most_helpful(inf[0], 3)
    assert interp.class_match(inf, y_test, y_train, k=7).k == 7
