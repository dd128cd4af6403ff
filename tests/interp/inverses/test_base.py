"""The registry: methods by name, what they need, entries checked when declared, one registered from outside."""

import dataclasses

import numpy as np
import pytest
import torch

import interp
from interp import InterpError
from interp.inverses import Curvature, build_inverse
from interp.metrics import ranking_agreement


def test_model_methods_are_registry_entries_and_say_what_they_need():
    for name in ("ggn", "blockdiag", "kfac", "ekfac", "arnoldi"):
        assert interp.INVERSES.get(name).needs == "model"
    assert interp.INVERSES.get("ekfac").damped and not interp.INVERSES.get("ggn").damped
    with pytest.raises(InterpError, match="needs the model"):
        build_inverse("ekfac", Curvature(3, matrix=torch.eye(3)), damping=1.0)
    np.testing.assert_equal(ranking_agreement(np.eye(3) * -1, np.eye(3) * -1, k=1)["top_k_overlap"], 1.0)


class _Scaled(interp.InverseOperator):
    """A throw-away method: ``b / (1 + damping)`` (the identity as curvature), registered from outside interp."""

    method = "test-identity"

    def __init__(self, size, damping):
        self.size, self.damping = size, damping

    def apply(self, b):
        return b.to(torch.float64) / (1.0 + self.damping)

    def info(self):
        return {"method": self.method, "size": self.size, "rank_kept": self.size, "damping": self.damping}


def _build_scaled(curvature, *, rcond=None, damping=0.0, **_):
    return _Scaled(curvature.size, damping)


@pytest.fixture
def registered():
    interp.register_inverse("test-identity", _build_scaled, cutoff=False, help="identity curvature (a test)")
    yield "test-identity"
    interp.INVERSES.unregister("test-identity")


def test_a_method_registered_from_outside_works_from_the_api_and_the_cli(registered, finished_run, tmp_path):
    from cli.main import main
    from study.attribution.store import InfluenceDir

    g = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    op = interp.build_inverse(registered, interp.Curvature(6, matrix=torch.eye(6, dtype=torch.float64)), damping=1.0)
    assert torch.allclose(interp.influence_matrix(g, g, op), -(g @ g.T) / 2)
    with pytest.raises(interp.InterpError, match="registered already"):
        interp.register_inverse(registered, _build_scaled)
    with pytest.raises(interp.InterpError, match="unknown inverse method 'nope'; registered: auto, cholesky"):
        interp.build_inverse("nope", interp.Curvature(6))
    out = tmp_path / "inf"
    assert main(["influence", "--run", str(finished_run), "--out", str(out), "--test", "20", "--method", registered,
                 "--rcond", "exact"]) == 2  # a method without a cut-off refuses one, the default included
    assert main(["influence", "--run", str(finished_run), "--out", str(out), "--test", "20", "--method", registered]) == 0
    result = InfluenceDir(out).read()
    assert result.meta["inverse"]["method"] == registered and result.meta["settings"][0]["method"] == registered
    assert "no cut-off" in result.meta["settings"][0]["rcond_meaning"]
    assert main(["influence", "--run", str(finished_run), "--out", str(tmp_path / "x"), "--method", "nope"]) == 2


@pytest.mark.parametrize("name,build,match", [
    ("", _build_scaled, "name"), (3, _build_scaled, "name"), ("two words", _build_scaled, "name"),
    ("a,b", _build_scaled, "name"), ("ok", "not callable", "build must be callable"),
])  # fmt: skip
def test_the_registry_refuses_a_bad_entry_when_it_is_declared(name, build, match):
    with pytest.raises(interp.InterpError, match=match):
        interp.register_inverse(name, build)
    with pytest.raises(interp.InterpError, match="needs one of"):
        interp.register_inverse("fine-name", _build_scaled, needs="matrix")
    with pytest.raises(interp.InterpError, match="cutoff must be True or False"):
        interp.register_inverse("fine-name", _build_scaled, cutoff="no")
    # nothing half-registered: the unknown-method message still lists clean names
    with pytest.raises(interp.InterpError, match=r"unknown inverse method 'nope'; registered: auto, cholesky, eigh"):
        interp.build_inverse("nope", interp.Curvature(6))
    assert all(isinstance(n, str) and n for n in interp.INVERSES.names())


@dataclasses.dataclass(frozen=True)
class _ShrinkOptions:
    """An outside method's own option: one field, its default and help, checked where it is declared."""

    shrink: float = dataclasses.field(default=1.0, metadata={"help": "divide the identity's inverse by this"})

    def __post_init__(self):
        if not self.shrink > 0:
            raise interp.InterpError(f"shrink must be > 0, got {self.shrink}")


class _Shrunk(interp.InverseOperator):
    """``b / (shrink (1 + damping))``: written against the operator template (``_solve``, not ``apply``)."""

    method = "test-shrink"

    def __init__(self, size, damping, shrink):
        self.size, self.damping, self.shrink = size, damping, shrink

    def _solve(self, cols):
        return cols / (self.shrink * (1.0 + self.damping))

    def info(self):
        return {"method": self.method, "size": self.size, "rank_kept": self.size, "shrink": self.shrink}

    def report(self):
        return [f"test-shrink: every direction divided by {self.shrink:g}"]


def _build_shrunk(curvature, *, damping, progress, shrink):  # exactly what the method reads: no **_
    return _Shrunk(curvature.size, damping, shrink)


def test_an_outside_method_brings_its_own_option_to_the_cli_and_nothing_else_reads_it(finished_run, tmp_path,
                                                                                      capsys):  # fmt: skip
    """Exposing a new method's option takes its module and one settings field: here both live in this test."""
    from cli.main import main
    from study.attribution.store import InfluenceDir

    interp.register_inverse("test-shrink", _build_shrunk, needs="dense", cutoff=False, options=_ShrinkOptions,
                            help="the identity, shrunk (a test)")  # fmt: skip
    try:
        common = ["influence", "--run", str(finished_run), "--test", "20", "--no-progress"]
        assert main([*common, "--out", str(tmp_path / "plain"), "--method", "test-shrink"]) == 0
        capsys.readouterr()
        assert main([*common, "--out", str(tmp_path / "half"), "--method", "test-shrink", "--shrink", "2"]) == 0
        assert "test-shrink: every direction divided by 2" in capsys.readouterr().out  # the operator's own line
        plain, half = InfluenceDir(tmp_path / "plain").read(), InfluenceDir(tmp_path / "half").read()
        assert half.meta["config"]["options"] == {"shrink": 2.0} and plain.meta["config"]["options"] == {"shrink": 1.0}
        np.testing.assert_allclose(half["influence_test"], plain["influence_test"] / 2, rtol=1e-12)
        shown = _help(main, ["influence", "--help"])  # --method's help comes from the registry, with its flag
        assert "--shrink SHRINK --method test-shrink: divide the identity's inverse by this" in shown
        assert "shrink: the identity, shrunk (a test)" in shown
        # nothing else reads it, and it reads nothing else
        assert main([*common, "--out", str(tmp_path / "x"), "--method", "eigh", "--shrink", "2"]) == 2
        assert "--shrink applies to --method test-shrink, not eigh" in capsys.readouterr().err
        assert main([*common, "--out", str(tmp_path / "x"), "--method", "test-shrink", "--arnoldi-rank", "3"]) == 2
        assert "--arnoldi-rank applies to --method arnoldi, not test-shrink" in capsys.readouterr().err
        assert main([*common, "--out", str(tmp_path / "x"), "--method", "test-shrink", "--shrink", "0"]) == 2
        assert "--shrink must be > 0, got 0.0" in capsys.readouterr().err
        with pytest.raises(interp.InterpError, match="takes no option arnoldi_rank; its options: shrink"):
            interp.build_inverse("test-shrink", interp.Curvature(3, matrix=torch.eye(3)), arnoldi_rank=3)
    finally:
        interp.INVERSES.unregister("test-shrink")


def _help(main, argv) -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        main(argv)
    return " ".join(buf.getvalue().split())


def test_an_option_name_belongs_to_one_method_family():
    @dataclasses.dataclass(frozen=True)
    class Clash:
        arnoldi_rank: int = 3

    with pytest.raises(interp.InterpError, match="option arnoldi_rank is 'arnoldi''s already"):
        interp.register_inverse("test-clash", _build_shrunk, options=Clash)
    assert "test-clash" not in interp.INVERSES.names()
