"""The curvature libraries used without the FutureWarning torch.jit.script raises (interp.curvature.library): at
curvlinops' import, and at forward-mode AD's first use (torch.func.hessian, Hessian-vector products)."""

import subprocess
import sys
import warnings

import pytest

from interp.curvature.library import quiet_jit_deprecation

# a fresh interpreter: the warning is raised once, at curvlinops' first import, which an earlier test may have done
CODE = """
import warnings
warnings.simplefilter("error", FutureWarning)
from interp.curvature.library import curvlinops
print(curvlinops().EKFACLinearOperator.__name__)
"""
# the same for forward-mode AD: the first jvp of a process scripts torch's decompositions
HVP = """
import warnings
warnings.simplefilter("error", FutureWarning)
import torch
from torch import nn
from interp import hessian_vector_product
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
matvec, p = hessian_vector_product(model, [(torch.randn(8, 3), torch.randint(0, 2, (8,)))], ["0.weight"])
print(p, tuple(matvec(torch.randn(p, 2, dtype=torch.float64)).shape))
"""
PLAIN_JVP = """
import warnings
warnings.simplefilter("error", FutureWarning)
import torch
from torch.func import jvp
jvp(lambda x: (x ** 2).sum(), (torch.randn(3),), (torch.randn(3),))
"""


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_curvlinops_imports_without_its_dependencys_jit_warning():
    done = _python(CODE)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "EKFACLinearOperator"


def test_the_warning_it_hides_is_raised_by_a_plain_import():
    """What the module is for: without it the same import fails on the warning (skipped, saying the module can go,
    once a later linear_operator stops raising it)."""
    plain = CODE.replace("from interp.curvature.library import curvlinops", "import curvlinops as lib").replace(
        "curvlinops()", "lib"
    )
    done = _python(plain)
    if done.returncode == 0:
        pytest.skip("curvlinops' dependencies no longer raise it: interp.curvature.library can go")
    assert "torch.jit.script` is deprecated" in done.stderr


def test_hessian_vector_products_run_without_forward_mode_ads_jit_warning():
    done = _python(HVP)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "12 (12, 2)"


def test_a_plain_first_jvp_raises_the_warning_it_hides():
    done = _python(PLAIN_JVP)
    if done.returncode == 0:
        pytest.skip("torch's forward-mode AD no longer raises it: quiet_jit_deprecation can go")
    assert "torch.jit.script` is deprecated" in done.stderr


def test_only_that_warning_is_hidden():
    with pytest.warns(FutureWarning, match="another") as seen, quiet_jit_deprecation():
        warnings.warn("`torch.jit.script` is deprecated. Please switch", FutureWarning, stacklevel=1)
        warnings.warn("another deprecation", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["another deprecation"]
    with pytest.warns(FutureWarning, match="jit.script"):  # after the block it passes again
        warnings.warn("`torch.jit.script` is deprecated. Please switch", FutureWarning, stacklevel=1)
