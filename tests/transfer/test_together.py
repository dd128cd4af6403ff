"""Several fine-tunes in one loop (transfer.together) train what each would alone, resume, and group only what may
share a loop."""

import json

import numpy as np
import pytest
import torch

from tests.conftest import Killed, kill_after
from transfer.finetune import FinetuneConfig, finetune
from transfer.runs import RunDir
from transfer.together import finetune_together


def _cfg(seed, **kw):
    # the shipped robust source: a trained network, where round-off stays round-off over a few epochs (a randomly
    # initialised one amplifies it to percents, in another memory order of the same training as much as here)
    base = dict(source="mnist5k-l2", target="digits", blocks="1", subset="100", epochs="3", eval_every="2",
                batch_size=32, seed=seed, device="cpu")  # fmt: skip
    return FinetuneConfig(**(base | kw))


def _runs(k=3, **kw):
    rng = np.random.default_rng(0)
    indices = [np.sort(rng.choice(1000, 100, replace=False)) for _ in range(k)]
    return [_cfg(20_000_000 + i, **kw) for i in range(k)], indices


def _weights(run_dir):
    return torch.load(RunDir(run_dir).model, weights_only=True)["state_dict"]


def _close(a, b, scale=1e-3):
    """Equal up to float32 round-off amplified by SGD at lr 0.1: 1e-3 of each tensor's scale (the bound the test of
    channels_last, another memory order of the same training, holds)."""
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            assert float((a[k] - b[k]).abs().max()) <= scale * max(float(b[k].abs().max()), 1e-12), k
        else:
            assert torch.equal(a[k], b[k]), k


def test_models_trained_together_are_the_models_trained_alone(tmp_path):
    """Different training images and seeds (head initialisation, batch order, per-image augmentation), frozen
    BatchNorm in train mode (each model's own running statistics): the same weights, statistics and histories."""
    cfgs, indices = _runs()
    alone = [finetune(c, tmp_path / f"alone{k}", progress=False, indices=indices[k]) for k, c in enumerate(cfgs)]
    together = finetune_together(cfgs, [tmp_path / f"tog{k}" for k in range(3)], indices, progress=False)
    for k in range(3):
        _close(_weights(tmp_path / f"tog{k}"), _weights(tmp_path / f"alone{k}"))
        assert together[k]["together"] == 3 and "together" not in alone[k]
        assert together[k]["final_test_acc"] == pytest.approx(alone[k]["final_test_acc"], abs=1 / 360 + 1e-9)
        rows = [[json.loads(line) for line in RunDir(tmp_path / f"{w}{k}").metrics.read_text().splitlines()]
                for w in ("alone", "tog")]  # fmt: skip
        assert [r["epoch"] for r in rows[0]] == [r["epoch"] for r in rows[1]] == [1, 3]
        for a, b in zip(*rows, strict=True):
            assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3) and b["lr"] == a["lr"]
        assert json.loads(RunDir(tmp_path / f"tog{k}").subset.read_text())["indices"] == indices[k].tolist()
    # the models differ from one another: each trained on its own images and seed
    assert not torch.allclose(_weights(tmp_path / "tog0")["model.fc.weight"], _weights(tmp_path / "tog1")["model.fc.weight"])


def test_a_killed_loop_resumes_together_or_alone(tmp_path):
    cfgs, indices = _runs(k=2, save_every=1e9)
    outs = [tmp_path / f"full{k}" for k in range(2)]
    finetune_together(cfgs, outs, indices, progress=False)
    for name in ("again", "alone"):
        killed = [tmp_path / f"{name}{k}" for k in range(2)]
        with pytest.raises(Killed):  # after epoch 2: the states saved at the evaluation after epoch 1
            finetune_together(cfgs, killed, indices, progress=False, on_epoch_end=kill_after(2))
        assert all(RunDir(d).state.exists() and not RunDir(d).finished() for d in killed)
        if name == "again":
            finetune_together(cfgs, killed, indices, resume=True, progress=False)
            for k in range(2):
                a, b = _weights(outs[k]), _weights(killed[k])
                assert all(torch.equal(a[n], b[n]) for n in a)  # the same computation, resumed
                assert RunDir(outs[k]).metrics.read_text() == RunDir(killed[k]).metrics.read_text()
        else:
            for k in range(2):  # a loop's saved state is an ordinary run's: one run resumes it on its own
                finetune(cfgs[k], killed[k], resume=True, progress=False, indices=indices[k])
                _close(_weights(killed[k]), _weights(outs[k]))


def test_only_runs_that_may_share_a_loop_share_one(tmp_path):
    """Runs with another batch size, or with their splits transformed by the data loader, train alone; finished
    runs return their summaries; ``at_once`` bounds a loop."""
    cfgs, indices = _runs(k=4)
    cfgs[3] = _cfg(20_000_003, batch_size=16)
    outs = [tmp_path / f"r{k}" for k in range(4)]
    first = finetune_together(cfgs, outs, indices, progress=False, at_once=2)
    assert [s.get("together") for s in first] == [2, 2, None, None]
    again = finetune_together(cfgs, outs, indices, resume=True, progress=False)
    assert again == first
    loader = [_cfg(20_000_000 + k, augment_on="loader") for k in range(2)]
    alone = finetune_together(loader, [tmp_path / f"l{k}" for k in range(2)], indices[:2], progress=False)
    assert all("together" not in s for s in alone)
