"""The ground truth of the LDS: repeats, the measured outputs, their reliability, TRAK's layout; paired comparisons."""

import json

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from study.attribution.ground_truth import reliability, spearman_columns
from study.attribution.lds import paired_difference, score
from study.attribution.retraining import measured


def test_spearman_columns_is_scipys_per_column():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(12, 5)), rng.normal(size=(12, 5))
    a[:, 1] = np.round(a[:, 1])  # ties
    expected = [spearmanr(a[:, i], b[:, i])[0] for i in range(5)]
    np.testing.assert_allclose(spearman_columns(a, b), expected, rtol=1e-12)
    assert np.isnan(spearman_columns(np.ones((4, 1)), b[:4, :1]))[0]


def test_the_score_is_the_mean_per_test_image_spearman_as_dattri_defines_it():
    """dattri's lds: per test example, Spearman over the subsets of the summed scores with the ground truth; the mean
    over test examples. Computed here from scipy alone, on the same arrays."""
    rng = np.random.default_rng(1)
    inf = rng.normal(size=(6, 40))
    chosen = [np.sort(rng.choice(40, 20, replace=False)) for _ in range(15)]
    actual = rng.normal(size=(15, 6))
    per, predicted = score(inf, chosen, actual)
    masks = np.zeros((15, 40))
    for k, c in enumerate(chosen):
        masks[k, c] = 1
    reference = [spearmanr((masks @ inf.T)[:, i], actual[:, i])[0] for i in range(6)]
    np.testing.assert_allclose(per, reference, rtol=1e-12)
    np.testing.assert_allclose(predicted, masks @ inf.T)


def test_loss_and_trak_margin_are_measured_from_the_logits():
    z = torch.tensor([[2.0, 1.0, -1.0], [0.0, 3.0, 0.5]], dtype=torch.float64)
    y = np.array([0, 2])
    loss = measured(z.numpy(), y, "loss")
    np.testing.assert_allclose(loss, torch.nn.functional.cross_entropy(z, torch.tensor(y), reduction="none"))
    margin = measured(z.numpy(), y, "margin")
    np.testing.assert_allclose(margin, [2.0 - np.log(np.exp(1.0) + np.exp(-1.0)), 0.5 - np.log(np.exp(0.0) + np.exp(3.0))])
    np.testing.assert_allclose(loss, np.log1p(np.exp(-margin)))  # for one model the two carry the same ranking
    assert measured(np.stack([z.numpy()] * 3), y, "loss").shape == (3, 2)


@pytest.mark.parametrize("repeats,noise", [(4, 1.0), (2, 0.5), (6, 2.0)])
def test_the_reliability_is_the_spearman_brown_of_the_split_half_correlation(repeats, noise):
    """Outputs = subset effect + seed noise: with signal variance 1 and noise variance s^2 per retraining, the average
    of R repeats has reliability 1 / (1 + s^2 / R), and the ceiling is its square root (within sampling error)."""
    rng = np.random.default_rng(2)
    m, q = 400, 40
    signal = rng.normal(size=(m, 1, q))
    outputs = signal + noise * rng.normal(size=(m, repeats, q))
    rel = reliability(outputs)
    expected = 1 / (1 + noise**2 / repeats)
    assert rel["repeats"] == repeats and rel["reliability"] == pytest.approx(expected, abs=0.05)
    assert rel["ceiling"] == pytest.approx(np.sqrt(expected), abs=0.04)
    lo, hi = rel["ceiling_interval"]
    assert lo <= rel["ceiling"] <= hi
    # and a perfect attribution (the subset effect itself) reaches about the ceiling against the averaged outputs
    reached = np.nanmean(spearman_columns(signal[:, 0], outputs.mean(1)))
    assert reached == pytest.approx(rel["ceiling"], abs=0.05)
    assert reliability(outputs[:, :1]) is None  # one repeat: nothing to split


def test_a_paired_difference_resamples_subsets_and_test_images():
    rng = np.random.default_rng(3)
    actual = rng.normal(size=(30, 20))
    good = actual + 0.3 * rng.normal(size=actual.shape)
    poor = actual + 3.0 * rng.normal(size=actual.shape)
    d, lo, hi = paired_difference(good, poor, actual, n_boot=300)
    assert 0 < lo <= d <= hi
    d, lo, hi = paired_difference(good, good, actual, n_boot=50)
    assert d == lo == hi == 0


def test_validate_lds_with_repeats_reports_the_ceiling_and_saves_traks_layout(finished_run, influence_out, tmp_path):
    from study.attribution.leave_one_out import ValidateConfig, validate_influence
    from transfer.errors import UserError

    with pytest.raises(UserError, match="--repeats and --target describe the ground truth of --lds"):
        ValidateConfig(run=str(finished_run), out=str(tmp_path / "x"), repeats=2)
    with pytest.raises(UserError, match="--target must be one of loss, margin"):
        ValidateConfig(run=str(finished_run), out=str(tmp_path / "x"), lds=5, target="max-margin")
    cfg = ValidateConfig(run=str(finished_run), out=str(tmp_path / "v"), tests=1, removals=2, random=1, lds=5,
                         repeats=2, target="margin", influence=str(influence_out), executor="inline",
                         device="cpu")  # fmt: skip
    report = validate_influence(cfg, progress=False)["lds"]
    assert report["repeats"] == 2 and report["target"] == "margin" and len(report["seeds"]) == 2
    rel = report["reliability"]
    assert -1 <= rel["split_half"] <= 1 and 0 <= rel["ceiling"] <= 1
    (row,) = report["scores"]
    assert row["ceiling"] is not None and "lds_loss" in row
    gt = tmp_path / "v" / "lds" / "ground_truth"
    masks, targets, outputs = (np.load(gt / f"{n}.npy") for n in ("masks", "targets", "outputs"))
    test_idx, train_idx = np.load(gt / "test_indices.npy"), np.load(gt / "train_indices.npy")
    assert masks.shape == (5, 80) and masks.dtype == bool and masks.sum(1).tolist() == [40] * 5
    assert outputs.shape == (5, 2, len(test_idx)) and targets.shape == (5, len(test_idx))
    np.testing.assert_allclose(targets, outputs.mean(1))
    assert len(train_idx) == 80 and json.loads((gt / "ground_truth.json").read_text())["target"] == "margin"
    runs = sorted(p.name for p in (tmp_path / "v" / "lds" / "runs").iterdir())
    assert runs == ["m000", "m000r1", "m001", "m001r1", "m002", "m002r1", "m003", "m003r1", "m004", "m004r1"]
    # the score on the saved arrays is the report's: any library can be scored on this ground truth
    inf = np.load(influence_out / "influence_test.npy")
    per, _ = score(inf, [np.flatnonzero(r) for r in masks], targets, sign=-1.0)
    assert float(np.nanmean(per)) == pytest.approx(row["lds"], rel=1e-12)


def test_the_score_equals_dattris_own_lds():
    """dattri's own ``lds`` (the ``bench`` extra; skipped without it) on the same arrays, its score signed the same."""
    pytest.importorskip("dattri")
    from dattri.metric import lds

    rng = np.random.default_rng(3)
    inf = rng.normal(size=(7, 50))
    chosen = [np.sort(rng.choice(50, 25, replace=False)) for _ in range(12)]
    actual = rng.normal(size=(12, 7))
    for sign in (1.0, -1.0):
        per, _ = score(inf, chosen, actual, sign)
        theirs, _ = lds(torch.tensor(sign * inf.T), (torch.tensor(actual), torch.tensor(np.stack(chosen))))
        np.testing.assert_allclose(per, theirs.numpy(), rtol=0, atol=1e-12)
