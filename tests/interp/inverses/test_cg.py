"""Conjugate gradient: the matrix-free inverse."""

import pytest
import torch

import interp
from interp import InterpError


def test_conjugate_gradient_on_an_indefinite_system_says_so():
    a = torch.diag(torch.tensor([2.0, 1.0, -0.5], dtype=torch.float64))
    with pytest.raises(InterpError, match="not positive definite: curvature .* raise --damping"):
        interp.conjugate_gradient(lambda v: a @ v, torch.ones(3, 2, dtype=torch.float64))
    x, _, residual = interp.conjugate_gradient(lambda v: a @ v, torch.ones(3, 2, dtype=torch.float64), damping=1.0)
    assert residual < 1e-10 and torch.allclose(
        (a + torch.eye(3, dtype=torch.float64)) @ x, torch.ones(3, 2, dtype=torch.float64)
    )
