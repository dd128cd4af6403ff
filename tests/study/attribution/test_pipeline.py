"""study.attribution: the run -> influence directory pipeline, its recorded choices."""

import json

import numpy as np
import pytest
import torch

import interp
from study.attribution import InfluenceConfig, run_influence


def test_float64_features_are_offered_recorded_and_change_only_round_off(finished_run, influence_out, tmp_path):
    out = tmp_path / "f64"
    meta = run_influence(
        InfluenceConfig(run=str(finished_run), out=str(out), test="30", features_dtype="float64", device="cpu"),
        progress=False,
    )
    assert meta["features_dtype"] == "float64" and meta["config"]["features_dtype"] == "float64"
    assert json.loads((influence_out / "meta.json").read_text())["features_dtype"] == "float32"
    f32, f64 = np.load(influence_out / "influence_test.npy"), np.load(out / "influence_test.npy")
    rel = np.max(np.abs(f32 - f64)) / np.max(np.abs(f64))
    assert 0 < rel < 1e-3  # the float32 network differs from the float64 one in its last bits only


def test_meta_reports_what_was_removed_before_factorising(influence_out):
    meta = json.loads((influence_out / "meta.json").read_text())
    removed = meta["removed"]
    assert removed["softmax_null_space"]["directions"] == 65  # D + 1 for the 64 features of the small ResNet
    dead = removed["dead_features"]
    assert dead["count"] == len(dead["indices"]) and dead["directions"] == 9 * dead["count"]
    assert meta["inverse"]["size"] == 9 * (64 - dead["count"] + 1)
    assert meta["null_space_dim_removed"] == 65 + dead["directions"]


def test_each_setting_of_a_sensitivity_run_equals_a_separate_run(finished_run, tmp_path):
    from study.attribution.store import InfluenceDir

    multi = tmp_path / "multi"
    meta = run_influence(
        InfluenceConfig(
            run=str(finished_run), out=str(multi), test="20", rcond="paper,1e-3,exact", damping="0,0.01", device="cpu"
        ),  # fmt: skip
        progress=False,
    )
    assert [s["label"] for s in meta["settings"]][:3] == [
        "rcond=paper damping=0", "rcond=paper damping=0.01", "rcond=0.001 damping=0"
    ]  # fmt: skip
    res = InfluenceDir(multi).read()
    assert len(res.settings) == 6
    paper = res.settings[0]
    assert paper["rcond"] == 0.05 and paper["rcond_name"] == "paper" and "pinv2" in paper["rcond_meaning"]
    assert 0 < paper["dropped_gradient_norm_share"] < 1 and paper["rank_kept"] < paper["size"]
    assert res.settings[4]["rank_kept"] >= res.settings[2]["rank_kept"] >= paper["rank_kept"]  # exact keeps most
    for st in res.settings:
        single = tmp_path / f"single{st['index']}"
        rcond = st["rcond_name"] or repr(st["rcond"])
        run_influence(
            InfluenceConfig(
                run=str(finished_run),
                out=str(single),
                test="20",
                rcond=rcond,
                damping=str(st["damping"]),
                method="eigh",
                device="cpu",
            ),  # fmt: skip
            progress=False,
        )
        one = InfluenceDir(single).read()
        for got, want in zip(res.setting(st["index"]), (one["influence_test"], one["influence_train"]), strict=True):
            assert np.allclose(got, want, rtol=1e-9, atol=1e-12 * np.abs(want).max()), st["label"]


def test_the_cli_default_cut_off_is_the_papers_and_the_api_is_plain(finished_run, tmp_path):

    assert InfluenceConfig(run="r", out="o").rcond == "paper"
    h = torch.eye(3, dtype=torch.float64)
    assert interp.pseudo_inverse(h, method="eigh").rcond == 3 * np.finfo(np.float64).eps


def test_leave_one_out_validation_on_a_refitted_head(finished_run, tmp_path):
    from study.attribution.leave_one_out import ValidateConfig, validate_influence

    report = validate_influence(
        ValidateConfig(run=str(finished_run), out=str(tmp_path / "val"), tests=1, removals=6, random=2, test="30"),
        progress=False,
    )
    assert report["refit"]["grad_norm"] < 1e-6 < report["refit"]["grad_norm_before"]
    exact, paper = report["settings"]
    assert exact["setting"].startswith("rcond=exact") and exact["rank_kept"] == exact["size"]
    assert exact["n_pairs"] == 6 + 2
    # at the optimum, with the exact inverse and damping = weight decay, influence tracks retraining
    # (measured here: Pearson 0.84 on this 80-image, 2-epoch run; 0.94 on a 200-image run)
    assert exact["pearson"] >= 0.75
    assert paper["rank_kept"] < paper["size"] and paper["pearson"] < exact["pearson"]
    for name in ("validate.json", "validate.csv", "validate.png"):
        assert (tmp_path / "val" / name).stat().st_size > 0


def test_meta_says_how_far_from_stationary_the_fine_tuned_head_is(influence_out):
    stat = json.loads((influence_out / "meta.json").read_text())["stationarity"]
    assert stat["refit"] is None and stat["weight_decay_as_l2"] == 5e-4
    assert stat["grad_norm_used"] == stat["grad_norm_of_fine_tuned_head"] > 1e-3  # 2 epochs: far from the optimum


def test_refit_head_moves_to_the_optimum_and_influence_is_taken_there(finished_run, tmp_path):
    from interp.loo import gradient_norm
    from study.attribution import load_run

    out = tmp_path / "refit"
    cfg = InfluenceConfig(
        run=str(finished_run), out=str(out), test="20", rcond="exact", damping="wd", refit_head=True, device="cpu"
    )
    meta = run_influence(cfg, progress=False)
    stat = meta["stationarity"]
    assert stat["refit"]["grad_norm"] < 1e-6 < stat["refit"]["grad_norm_before"]
    assert meta["settings"][0]["damping"] == 5e-4 and meta["settings"][0]["label"] == "rcond=exact damping=0.0005"
    w, b = (torch.from_numpy(np.load(out / f"head_refit_{n}.npy")) for n in ("weight", "bias"))
    # the same numbers from the API alone: features of the run, the refitted head, the exact inverse
    _, model, train, test, _, _ = load_run(cfg)
    head = model.model.fc
    z_tr, _, y_tr = interp.head_features(
        model, head, [(torch.stack([x for x, _ in train]), torch.tensor(train.targets))]
    )
    z_te, _, y_te = interp.head_features(model, head, [(torch.stack([x for x, _ in test]), torch.tensor(test.targets))])
    z_tr, z_te = z_tr.double(), z_te.double()
    assert gradient_norm(w, b, z_tr, y_tr, 5e-4) < 1e-6
    ref = interp.head_influence(z_tr, z_tr @ w.T + b, y_tr, z_te, z_te @ w.T + b, y_te, rcond="exact", damping=5e-4)
    got = np.load(out / "influence_test.npy")
    assert np.allclose(got, ref["test"].numpy(), rtol=1e-5, atol=1e-8 * np.abs(got).max())


def test_refit_head_is_refused_off_the_head(finished_run, tmp_path):
    import pytest

    from transfer.errors import UserError

    with pytest.raises(UserError, match="--refit-head applies to the head alone"):
        InfluenceConfig(run=str(finished_run), out=str(tmp_path / "x"), params="layer3.1.bn2,fc", refit_head=True)


def test_leave_one_out_reaches_the_target_on_a_500_image_run(tmp_path):
    """Issue 10's target, Pearson >= 0.95 at the refitted head with the exact inverse and damping = weight
    decay, on a 500-image head-only run (measured 0.962 here; 0.988 and 0.990 on the README quick-start runs)."""
    from study.attribution.leave_one_out import ValidateConfig, validate_influence
    from transfer.finetune import FinetuneConfig, finetune

    run = tmp_path / "run"
    finetune(FinetuneConfig(source="mnist5k-l2", target="digits", blocks="0", subset="500", epochs="3",
                            augment="none", device="cpu"), run, progress=False)  # fmt: skip
    report = validate_influence(
        ValidateConfig(run=str(run), out=str(tmp_path / "v"), tests=3, removals=6, random=4, rcond="exact", test="100"),
        progress=False,
    )
    (exact,) = report["settings"]
    assert exact["rank_kept"] == exact["size"] and exact["n_pairs"] == 3 * (6 + 4)
    assert exact["pearson"] >= 0.95 and exact["spearman"] >= 0.95


def test_validate_refuses_too_few_removals_and_flags_few_or_constant_ones():
    import pytest

    from study.attribution.leave_one_out import FEW_PAIRS, ValidateConfig, correlations
    from transfer.errors import UserError

    with pytest.raises(UserError, match=r"= 1 removal\(s\): a correlation needs at least 3"):
        ValidateConfig(run="r", out="o", tests=1, removals=1, random=0)
    with pytest.raises(UserError, match="cannot give a correlation"):
        correlations(np.array([1.0, 2.0]), np.array([2.0, 1.0]))  # two points always lie on a line
    few = correlations(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.5, 3.5]))
    assert few["pearson"] > 0.9 and "only 3 removals" in few["warning"]
    flat = correlations(np.array([1.0, 2.0, 3.0, 4.0]), np.zeros(4))
    assert np.isnan(flat["pearson"]) and "actual changes are all equal" in flat["warning"]
    many = correlations(np.arange(FEW_PAIRS, dtype=float), np.arange(FEW_PAIRS, dtype=float) ** 2)
    assert "warning" not in many


def test_influence_reads_the_data_root_the_run_recorded_unless_given_one(finished_run, tmp_path, monkeypatch):
    import shutil

    import study.attribution.inputs as inputs
    from study.attribution import load_run
    from study.attribution.leave_one_out import ValidateConfig
    from study.attribution.over_seeds import InfluenceStudyConfig

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    config = json.loads((run / "config.json").read_text())
    config["settings"]["data_root"] = str(tmp_path / "recorded")
    (run / "config.json").write_text(json.dumps(config))
    roots = []
    real = inputs.load_raw_splits
    monkeypatch.setattr(inputs, "load_raw_splits", lambda name, root=None: roots.append(root) or real(name, root))
    load_run(InfluenceConfig(run=str(run), out="unused", test="20"))
    load_run(InfluenceConfig(run=str(run), out="unused", test="20", data_root=str(tmp_path / "given")))
    assert roots == [str(tmp_path / "recorded"), str(tmp_path / "given")]
    # the commands built on influence pass --data-root through
    assert ValidateConfig(run=str(run), out="o", data_root="/d").influence_config().data_root == "/d"
    assert InfluenceStudyConfig(sweep="s", size="100", data_root="/d").influence_config("r", "o").data_root == "/d"


def test_trainable_parameters_through_every_model_method(tmp_path):
    """--params trainable of a 1-block run: the unfrozen block and the head; EK-FAC, K-FAC, the block-diagonal
    GGN and Arnoldi run through the pipeline; BatchNorm is named as the Kronecker methods' fallback."""
    import pytest

    from study.attribution.store import InfluenceDir
    from transfer.errors import UserError
    from transfer.finetune import FinetuneConfig, finetune

    run = tmp_path / "run"
    finetune(FinetuneConfig(source="mnist5k-l2", target="digits", blocks="1", subset="40", epochs="1",
                            augment="none", device="cpu"), run, progress=False)  # fmt: skip
    with pytest.raises(UserError, match="--damping > 0"):
        InfluenceConfig(run=str(run), out=str(tmp_path / "x"), method="ekfac")
    metas = {}
    for method, extra in (("ekfac", {}), ("kfac", {}), ("arnoldi", {"arnoldi_rank": 20})):
        metas[method] = run_influence(
            InfluenceConfig(run=str(run), out=str(tmp_path / method), params="trainable", test="20", method=method,
                            damping="wd,1e-2", device="cpu", **extra),  # fmt: skip
            progress=False,
        )
    names = metas["ekfac"]["params"]
    assert names[-2:] == ["model.fc.weight", "model.fc.bias"] and all(
        n.startswith(("model.layer3.1.", "model.fc.")) for n in names
    )
    info = metas["ekfac"]["inverse"]
    assert info["method"] == "ekfac" and info["damping"] == 5e-4
    assert info["fallback_names"] == [n for n in names if ".bn" in n] and info["fallback_params"] == 4 * 64
    assert [s["label"] for s in metas["kfac"]["settings"]] == ["damping=0.0005", "damping=0.01"]
    arn = metas["arnoldi"]["inverse"]
    assert arn["rank_kept"] == 20 and arn["size"] == info["size"] and "GGN factor" in arn["curvature"]
    res = InfluenceDir(tmp_path / "ekfac").read()
    assert res["influence_test"].shape == (20, 40) and np.isfinite(res["influence_test"]).all()
    head = run_influence(InfluenceConfig(run=str(run), out=str(tmp_path / "bd"), params="layer3.1.bn2,fc",
                                         method="blockdiag", rcond="exact", damping="1e-3", test="20", device="cpu"),
                         progress=False)  # fmt: skip
    assert [b["params"][0] for b in head["inverse"]["blocks"]] == ["model.layer3.1.bn2.weight", "model.fc.weight"]


def test_streamed_gradients_give_the_held_ones_matrices(finished_run, tmp_path):
    from study.attribution.store import InfluenceDir

    common = dict(run=str(finished_run), params="layer3.1.bn2,fc", test="12", method="ggn", rcond="exact",
                  damping="1e-3", device="cpu")  # fmt: skip
    held = run_influence(InfluenceConfig(out=str(tmp_path / "held"), gradients="memory", **common), progress=False)
    streamed = run_influence(InfluenceConfig(out=str(tmp_path / "stream"), gradients="stream", **common), progress=False)
    assert held["gradients"] == "held in memory" and streamed["gradients"].startswith("streamed")
    assert streamed["settings"][0]["gradient_passes"] == {"test x train": 1, "train x train": 1}
    a, b = InfluenceDir(tmp_path / "held").read(), InfluenceDir(tmp_path / "stream").read()
    for name in ("influence_test", "influence_train"):
        np.testing.assert_allclose(b[name], a[name], rtol=1e-10, atol=1e-14)
    for normalize in ("relatif", "cosine"):  # normalised too: the same matrices as with the gradients held
        kept = InfluenceConfig(out=str(tmp_path / f"{normalize}-held"), gradients="memory", normalize=normalize, **common)
        run_influence(kept, progress=False)
        run_influence(InfluenceConfig(out=str(tmp_path / normalize), gradients="stream", normalize=normalize, **common),
                      progress=False)  # fmt: skip
        a, b = InfluenceDir(tmp_path / f"{normalize}-held").read(), InfluenceDir(tmp_path / normalize).read()
        for name in ("influence_test", "influence_train"):
            np.testing.assert_allclose(b[name], a[name], rtol=1e-10, atol=1e-14)


def test_streamed_gradients_report_the_dropped_share_the_held_path_reports(finished_run, tmp_path):
    common = dict(run=str(finished_run), params="layer3.1.bn2,fc", test="12", method="ggn", rcond="paper,1e-4",
                  device="cpu")  # fmt: skip
    held = run_influence(InfluenceConfig(out=str(tmp_path / "held"), gradients="memory", **common), progress=False)
    streamed = run_influence(InfluenceConfig(out=str(tmp_path / "stream"), gradients="stream", **common), progress=False)
    shares = [(a["dropped_gradient_norm_share"], b["dropped_gradient_norm_share"])
              for a, b in zip(held["settings"], streamed["settings"], strict=True)]  # fmt: skip
    assert 0 < shares[0][0] < 1
    for a, b in shares:
        assert b == pytest.approx(a, rel=1e-9, abs=1e-12)


def test_a_curvature_that_does_not_fit_is_refused_before_any_gradient(finished_run, tmp_path, monkeypatch):
    import interp.curvature.grads
    import interp.curvature.memory

    def no_gradients(*args, **kwargs):
        raise AssertionError("per-example gradients were computed before the refusal")

    monkeypatch.setattr(interp.curvature.memory, "device_free_bytes", lambda device=None: 2**20)
    monkeypatch.setattr(interp.curvature.grads, "per_example_grad_batches", no_gradients)
    for method in ("ggn", "blockdiag"):
        with pytest.raises(interp.InterpError, match="exact GGN.*--method ekfac"):
            run_influence(InfluenceConfig(run=str(finished_run), out=str(tmp_path / method), params="layer3.1.bn2,fc",
                                          method=method, gradients="memory", test="12", device="cpu"), progress=False)
        assert not (tmp_path / method / "meta.json").exists()


def test_overlapping_or_reordered_paths_name_each_tensor_once_in_the_models_order(finished_run, tmp_path):
    from study.attribution.store import InfluenceDir

    common = dict(run=str(finished_run), test="10", damping="1e-3", device="cpu")
    metas = {}
    for tag, params in (("plain", "layer3.1.bn2,fc"), ("messy", "fc,layer3.1.bn2,model.layer3.1.bn2,model.fc")):
        for method in ("ggn", "ekfac", "blockdiag"):
            metas[tag, method] = run_influence(InfluenceConfig(out=str(tmp_path / f"{tag}-{method}"), params=params,
                                                               method=method, **common), progress=False)  # fmt: skip
    for method in ("ggn", "ekfac", "blockdiag"):
        plain, messy = metas["plain", method], metas["messy", method]
        assert messy["params"] == plain["params"] == ["model.layer3.1.bn2.weight", "model.layer3.1.bn2.bias",
                                                      "model.fc.weight", "model.fc.bias"]  # fmt: skip
        assert messy["inverse"]["size"] == plain["inverse"]["size"] == 2 * 64 + 650
        a, b = InfluenceDir(tmp_path / f"plain-{method}").read(), InfluenceDir(tmp_path / f"messy-{method}").read()
        np.testing.assert_allclose(b["influence_test"], a["influence_test"], rtol=1e-9, atol=1e-12)


def test_each_method_takes_its_own_default_cut_off_and_refuses_others_options(finished_run):
    from transfer.errors import UserError

    run = dict(run=str(finished_run), out="unused")
    assert InfluenceConfig(**run).rcond == "paper"  # the head's Hessian: the paper's choice
    for method in ("ggn", "blockdiag", "arnoldi"):  # the exact references are not cut at 5% unasked
        assert InfluenceConfig(**run, method=method).rcond == "exact"
    assert InfluenceConfig(**run, method="ekfac", damping="1e-3").rconds() == [None]
    for kwargs, flag in (({"method": "ekfac", "damping": "1e-3", "rcond": "paper"}, "--rcond"),
                         ({"method": "kfac", "damping": "1e-3", "rcond": "exact"}, "--rcond"),
                         ({"method": "ekfac", "damping": "1e-3", "arnoldi_rank": 50}, "--arnoldi-rank"),
                         ({"method": "ggn", "fisher": "mc"}, "--fisher"),
                         ({"method": "arnoldi", "cg_tol": 1e-6}, "--cg-tol")):  # fmt: skip
        with pytest.raises(UserError, match=flag):
            InfluenceConfig(**run, **kwargs)
    cfg = InfluenceConfig(**run, method="ekfac", damping="1e-3")
    assert cfg.options == {"fisher": "type-2", "mc_samples": 1}  # its own options, resolved; no other method's
    legacy = InfluenceConfig(**run, method="arnoldi", arnoldi_rank=50)  # the keyword earlier versions took
    assert legacy.options == {"arnoldi_rank": 50, "arnoldi_curvature": "ggn"}
