"""study.influence: the run -> influence directory pipeline, its recorded choices."""

import json

import numpy as np

from study.influence import InfluenceConfig, run_influence


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
