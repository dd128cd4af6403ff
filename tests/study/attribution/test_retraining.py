"""The retrained models' outputs on test images."""

import numpy as np
import torch

from study.attribution import retraining
from study.attribution.retraining import logits_of
from transfer.datasets import load_raw_splits
from transfer.runs import RunDir
from transfer.transforms import build_transform
from transfer.zoo import load_source


def test_logits_are_each_runs_model_on_the_test_images_whether_kept_or_transformed_per_run(finished_run, monkeypatch):
    """The transformed test images kept across runs give the same logits, bit for bit, as transforming them per run,
    and both are the run's model applied to the test transform's images."""
    idx_test = np.array([0, 5, 17, 300])
    target = RunDir(finished_run).recorded()["target"]
    kept = logits_of([finished_run, finished_run], target, None, idx_test, "cpu")
    monkeypatch.setattr(retraining, "KEEP_TEST_BYTES", 0)
    again = logits_of([finished_run, finished_run], target, None, idx_test, "cpu")
    assert kept.shape == (2, 4, 10) and kept.dtype == np.float64
    np.testing.assert_array_equal(kept, again)
    src = load_source(finished_run)
    _, test_raw = load_raw_splits(target)
    transform = build_transform(src.input_size, train=False)
    x = torch.stack([transform(test_raw[int(i)][0]) for i in idx_test])
    with torch.no_grad():
        direct = src.model.eval()(x).double().numpy()
    np.testing.assert_allclose(kept[0], direct, rtol=1e-5, atol=1e-6)
