"""curvlinops imported without the FutureWarning its dependency raises at import (interp.curvature.library)."""

import subprocess
import sys

import pytest

# a fresh interpreter: the warning is raised once, at curvlinops' first import, which an earlier test may have done
CODE = """
import warnings
warnings.simplefilter("error", FutureWarning)
from interp.curvature.library import curvlinops
print(curvlinops().EKFACLinearOperator.__name__)
"""


def test_curvlinops_imports_without_its_dependencys_jit_warning():
    done = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "EKFACLinearOperator"


def test_the_warning_it_hides_is_raised_by_a_plain_import():
    """What the module is for: without it the same import fails on the warning (skipped, saying the module can go,
    once a later linear_operator stops raising it)."""
    plain = CODE.replace("from interp.curvature.library import curvlinops", "import curvlinops as lib").replace(
        "curvlinops()", "lib"
    )
    done = subprocess.run([sys.executable, "-c", plain], capture_output=True, text=True, timeout=120)
    if done.returncode == 0:
        pytest.skip("curvlinops' dependencies no longer raise it: interp.curvature.library can go")
    assert "torch.jit.script` is deprecated" in done.stderr
