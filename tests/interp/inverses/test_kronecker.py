"""K-FAC and EK-FAC (curvlinops): exact where the GGN is a Kronecker product, the Fisher types, the fallback."""

import pytest
import torch
from torch import nn

import interp
from interp import InterpError
from interp.curvature import ggn
from interp.inverses import Curvature, build_inverse, kronecker_coverage, kronecker_inverse
from interp.metrics import ranking_agreement


@pytest.mark.parametrize("kind", ["kfac", "ekfac"])
def test_kronecker_is_exact_where_the_ggn_is_a_kronecker_product(kind, exact_inverse):
    """One training example through a linear layer: G = a a^T (x) (diag p - p p^T), a Kronecker product, so the
    K-FAC and EK-FAC inverses equal the exact damped inverse."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(6, 4, bias=False)).double()
    data = [(torch.randn(1, 6, dtype=torch.float64), torch.tensor([2]))]
    g = ggn(net, data, ["0.weight"])
    inv = kronecker_inverse(net, data, ["0.weight"], kind=kind, damping=1e-2)
    v = torch.randn(24, 3, dtype=torch.float64)
    assert torch.allclose(inv.apply(v), exact_inverse(g, 1e-2) @ v, rtol=1e-8, atol=1e-8)


def test_kronecker_fisher_types_are_the_ggn_its_monte_carlo_estimate_and_the_empirical_fisher(exact_inverse):
    """One example through a linear layer: type-2 gives a a^T (x) (diag p - p p^T) (the GGN); the empirical
    Fisher a a^T (x) g g^T with g = p - e_y, the true label's output gradient; MC an estimate of the GGN."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(6, 4, bias=False)).double()
    x, y = torch.randn(1, 6, dtype=torch.float64), torch.tensor([2])
    data = [(x, y)]
    v = torch.randn(24, 3, dtype=torch.float64)
    p = torch.softmax(net(x), 1)[0].detach()
    g = p - torch.nn.functional.one_hot(y, 4)[0].double()
    empirical = torch.kron(g.outer(g), x[0].outer(x[0]))  # the weight flattened row-major: output-major
    assert torch.allclose(ggn(net, data, ["0.weight"]), torch.kron(p.diag() - p.outer(p), x[0].outer(x[0])))
    emp = kronecker_inverse(net, data, ["0.weight"], kind="kfac", damping=1e-2, fisher_type="empirical")
    assert torch.allclose(emp.apply(v), exact_inverse(empirical, 1e-2) @ v, rtol=1e-6, atol=1e-8)
    exact = exact_inverse(ggn(net, data, ["0.weight"]), 1e-1) @ v
    mc = kronecker_inverse(net, data, ["0.weight"], kind="kfac", damping=1e-1, fisher_type="mc", mc_samples=4000)
    assert mc.info()["fisher_type"] == "mc" and "4000 sample(s)" in mc.info()["curvature"]
    assert float((mc.apply(v) - exact).norm() / exact.norm()) < 0.1  # an estimate: about 1/sqrt(samples)
    assert not torch.allclose(emp.apply(v), exact, rtol=1e-2)  # the empirical Fisher is not the GGN
    with pytest.raises(InterpError, match="fisher_type must be one of type-2, mc, empirical"):
        kronecker_inverse(net, data, ["0.weight"], kind="kfac", damping=1e-2, fisher_type="exact")
    with pytest.raises(InterpError, match="mc_samples"):
        kronecker_inverse(net, data, ["0.weight"], kind="kfac", damping=1e-2, fisher_type="mc", mc_samples=0)


def test_kronecker_names_what_it_cannot_factorise_and_inverts_it_exactly(digits, monkeypatch, small_net, exact_inverse):
    train, test = digits
    net = small_net()
    covered, uncovered = kronecker_coverage(net, ["0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias"])
    assert uncovered == ["1.weight", "1.bias"] and "0.bias" in covered
    names = ["0.weight", "1.weight", "1.bias", "4.weight"]
    inv = kronecker_inverse(net, train, names, kind="ekfac", damping=1e-3)
    info = inv.info()
    assert info["fallback_names"] == ["1.weight", "1.bias"] and info["fallback_params"] == 8
    assert info["kronecker_params"] == 36 + 2560
    # the fallback block is the exact GGN block of the BatchNorm parameters, damped
    bn = ggn(net, train, ["1.weight", "1.bias"])
    v = torch.zeros(inv.size, 1, dtype=torch.float64)
    v[36:44] = torch.randn(8, 1, dtype=torch.float64)
    assert torch.allclose(inv.apply(v)[36:44], exact_inverse(bn, 1e-3) @ v[36:44], rtol=1e-8, atol=1e-10)
    with pytest.raises(InterpError, match="damping > 0"):
        kronecker_inverse(net, train, names, kind="kfac", damping=0.0)
    # a selection Kronecker factors do not cover at all is the exact GGN block alone
    only_bn = kronecker_inverse(net, train, ["1.weight", "1.bias"], kind="ekfac", damping=1e-3)
    assert only_bn.info()["kronecker_params"] == 0
    assert torch.allclose(only_bn.apply(v[36:44]), exact_inverse(bn, 1e-3) @ v[36:44], rtol=1e-8, atol=1e-10)
    # another damping re-uses the factors
    other = inv.with_settings(damping=1e-1)
    assert other.factors is inv.factors and other.info()["damping"] == 1e-1
    # a fallback block over DENSE_FALLBACK_MAX parameters is inverted from its factor: the same inverse
    import interp.inverses.kronecker

    monkeypatch.setattr(interp.inverses.kronecker, "DENSE_FALLBACK_MAX", 4)
    tall = interp.inverses.kronecker._fallback(net, train, ["1.weight", "1.bias"], 1e-3, torch.float64, "cpu", False)
    assert tall.method == "eigh"  # 600 factor rows for 8 parameters: the dense block is the smaller
    thin = interp.inverses.kronecker._fallback(net, train, ["4.weight"], 1e-3, torch.float64, "cpu", False)
    assert thin.method == "lowrank"  # 600 rows for 2,560 parameters
    w = torch.randn(2560, 2, dtype=torch.float64)
    assert torch.allclose(thin.apply(w), exact_inverse(ggn(net, train, ["4.weight"]), 1e-3) @ w, rtol=1e-7, atol=1e-8)


def test_ekfac_approximates_the_ggn_influence(digits, small_net, names):
    train, test = digits
    net = small_net()
    g_train = interp.per_example_grads(net, train, names)
    g_test = interp.per_example_grads(net, test, names)
    exact = interp.influence_matrix(g_test, g_train, ggn(net, train, names), damping=1e-2, rcond="exact")
    curvature = Curvature(g_train.shape[1], model=net, data=train, params=names)
    agree = {m: ranking_agreement(interp.influence_matrix(g_test, g_train, build_inverse(m, curvature, damping=1e-2)),
                                  exact, k=5) for m in ("kfac", "ekfac")}  # fmt: skip
    for m, a in agree.items():
        assert a["pearson"] > 0.5 and a["spearman"] > 0.3, (m, a)  # an approximation, not noise


def test_kronecker_methods_take_names_once_in_the_models_order(digits, small_net, names):
    train, _ = digits
    net = small_net()
    ordered = kronecker_inverse(net, train, names, kind="ekfac", damping=1e-2)
    messy = kronecker_inverse(net, train, ["4.bias", "0.weight", "4.weight", "0.bias", "4.weight"], kind="ekfac",
                              damping=1e-2)  # fmt: skip
    v = torch.randn(ordered.size, 3, dtype=torch.float64)
    assert messy.size == ordered.size and torch.allclose(messy.apply(v), ordered.apply(v), atol=1e-12)
    assert "separate Kronecker blocks" in ordered.info()["weight_and_bias"]


@pytest.mark.parametrize("kind,names,t", [("ekfac", ["0.weight", "3.weight"], 1), ("kfac", ["3.weight"], 1),
                                          ("kfac", ["0.weight"], 36)])  # fmt: skip
def test_kronecker_equals_kronfluences_on_weight_only_layers(kind, names, t, tmp_path):
    """kronfluence's own K-FAC and EK-FAC (the ``bench`` extra; skipped without it) at matched conventions: empirical
    Fisher, float64, layers without a bias. Its score is ``g_test^T (K + damping I)^-1 g_train``, ours the same with the
    opposite sign. EK-FAC is equal outright, K-FAC on a linear layer; on a convolution with ``T`` output locations
    (36 here) kronfluence divides both factors by the images x ``T``, curvlinops the output gradients' by the images
    alone, so ours is ``T`` times its K-FAC: equal with its damping divided by ``T`` and its scores divided by ``T``.
    ``benchmarks/peer_parity.py`` does the same on a fine-tuned block."""
    pytest.importorskip("kronfluence")
    import warnings

    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task
    from sklearn.datasets import load_digits
    from torch.utils.data import DataLoader, TensorDataset

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0).view(-1, 1, 8, 8)
    train, test = TensorDataset(x[:60], torch.tensor(y[:60])), TensorDataset(x[60:72], torch.tensor(y[60:72]))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10, bias=False)).double()
    damping = 1e-3

    inv = kronecker_inverse(net, DataLoader(train, batch_size=20), names, kind=kind, damping=damping,
                            fisher_type="empirical")  # fmt: skip
    g_tr, g_te = (interp.per_example_grads(net, DataLoader(d, batch_size=20), names) for d in (train, test))
    ours = interp.influence_matrix(g_te, g_tr, inv)

    class Classification(Task):
        def compute_train_loss(self, batch, model, sample=False):
            return nn.functional.cross_entropy(model(batch[0]), batch[1], reduction="sum")

        def compute_measurement(self, batch, model):
            return nn.functional.cross_entropy(model(batch[0]), batch[1], reduction="sum")

        def get_influence_tracked_modules(self):
            return [n.split(".")[0] for n in names]

    f64, task = torch.float64, Classification()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # kronfluence's own GradScaler call
        analyzer = Analyzer("parity", prepare_model(net, task), task, cpu=True, disable_tqdm=True,
                            output_dir=str(tmp_path))  # fmt: skip
        analyzer.fit_all_factors(kind, dataset=train, per_device_batch_size=20, overwrite_output_dir=True,
                                 factor_args=FactorArguments(strategy=kind, use_empirical_fisher=True,
                                                             activation_covariance_dtype=f64,
                                                             gradient_covariance_dtype=f64, lambda_dtype=f64,
                                                             per_sample_gradient_dtype=f64))  # fmt: skip
        analyzer.compute_pairwise_scores("scores", kind, query_dataset=test, train_dataset=train,
                                         per_device_query_batch_size=12, per_device_train_batch_size=20,
                                         overwrite_output_dir=True,
                                         score_args=ScoreArguments(damping_factor=damping / t, score_dtype=f64,
                                                                   per_sample_gradient_dtype=f64,
                                                                   precondition_dtype=f64))  # fmt: skip
    theirs = -analyzer.load_pairwise_scores("scores")["all_modules"] / t
    assert ours.shape == theirs.shape == (12, 60)
    assert (ours - theirs).abs().max() <= 1e-10 * theirs.abs().max()
