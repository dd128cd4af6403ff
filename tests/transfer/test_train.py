import json

import pytest
import torch

from tests.conftest import Killed, kill_after
from transfer.finetune import FinetuneConfig, finetune
from transfer.runs import RunDir
from transfer.train import eval_epochs, lr_milestones, paper_epochs, paper_eval_every


def test_schedule_rules():
    assert lr_milestones(150) == [50, 100] and lr_milestones(3) == [1, 2]
    assert eval_epochs(100, 20) == {1, 21, 41, 61, 81, 100}  # the paper's appendix B, word for word
    assert eval_epochs(150, 10) == {1, 11, 21, 31, 41, 51, 61, 71, 81, 91, 101, 111, 121, 131, 141, 150}
    assert eval_epochs(10, None) == {10}  # --eval-every last
    assert paper_eval_every(100) == 20 and paper_eval_every(150) == 10  # Table 2
    assert paper_epochs(1600) == 100 and paper_epochs(1601) == 150


def _cfg(ckpt, **kw):
    base = dict(
        source=str(ckpt),
        target="digits",
        blocks="1",
        subset="120",
        epochs="4",
        eval_every="1",
        batch_size=32,
        seed=20_000_000,
        device="cpu",
    )
    return FinetuneConfig(**(base | kw))


def _state(run_dir):
    return torch.load(RunDir(run_dir).model, weights_only=True)["state_dict"]


@pytest.mark.parametrize(
    "augment,eval_every,save_every",
    [("paper", "1", 60.0), ("none", "4", 1e9)],  # the second resumes from epoch 1, its last saved state
)
def test_resumed_run_equals_uninterrupted_run(tmp_path, small_checkpoint, augment, eval_every, save_every):
    cfg = _cfg(small_checkpoint, augment=augment, eval_every=eval_every, save_every=save_every)
    full = finetune(cfg, tmp_path / "full", progress=False)
    with pytest.raises(Killed):
        finetune(cfg, tmp_path / "killed", progress=False, on_epoch_end=kill_after(2))
    assert not RunDir(tmp_path / "killed").finished()
    resumed = finetune(cfg, tmp_path / "killed", resume=True, progress=False)
    a, b = _state(tmp_path / "full"), _state(tmp_path / "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["final_test_acc"] == full["final_test_acc"]
    assert RunDir(tmp_path / "full").metrics.read_text() == RunDir(tmp_path / "killed").metrics.read_text()
    assert not RunDir(tmp_path / "killed").state.exists()


def test_run_directory_contents(tmp_path, small_checkpoint):
    finetune(_cfg(small_checkpoint, epochs="2"), tmp_path / "r", progress=False)
    run = RunDir(tmp_path / "r")
    config = json.loads(run.config.read_text())
    assert config["settings"]["target"] == "digits" and "torch" in config["versions"]
    subset = json.loads(run.subset.read_text())
    assert len(subset["indices"]) == 120 and set(subset["labels"]) == set(range(10))
    rows = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and all({"train_loss", "test_acc"} <= r.keys() for r in rows)
    summary = json.loads(run.summary.read_text())
    assert summary["final_test_acc"] == rows[-1]["test_acc"] and summary["wall_time_s"] > 0


def test_testing_after_the_last_epoch_alone_trains_the_same_model(tmp_path, small_checkpoint):
    """--eval-every last (what retrainings use) skips the evaluations along the way and nothing else."""
    every = finetune(_cfg(small_checkpoint, epochs="3", eval_every="3"), tmp_path / "every", progress=False)
    last = finetune(_cfg(small_checkpoint, epochs="3", eval_every="last"), tmp_path / "last", progress=False)
    a, b = _state(tmp_path / "every"), _state(tmp_path / "last")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert last["final_test_acc"] == every["final_test_acc"]
    rows = [json.loads(line) for line in RunDir(tmp_path / "last").metrics.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [3]
    assert [json.loads(line)["epoch"] for line in RunDir(tmp_path / "every").metrics.read_text().splitlines()] == [1, 3]


def test_cached_prefix_gives_the_same_training_as_running_it(tmp_path, small_checkpoint):
    """With frozen BN in eval mode and no augmentation the prefix is cached; the result must not change."""
    from transfer.datasets import Subset, Transformed, load_raw_splits
    from transfer.train import TrainConfig, fit
    from transfer.transforms import build_transform
    from transfer.zoo import load_source

    train, test = load_raw_splits("digits")
    t = build_transform(28, train=False)
    data = Transformed(Subset(train, range(100)), t), Transformed(Subset(test, range(50)), t)
    states = []
    for cache in (False, True):
        model = load_source(small_checkpoint).model
        cfg = TrainConfig(epochs=2, batch_size=25, frozen_bn="eval", cache_train_prefix=cache, eval_every=1)
        hist, _ = fit(model, 1, *data, cfg, RunDir(tmp_path / str(cache)), torch.device("cpu"), progress=False)
        states.append((model.state_dict(), hist))
    (a, ha), (b, hb) = states
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    assert [r["test_acc"] for r in ha] == [r["test_acc"] for r in hb]


def test_existing_run_is_not_overwritten_and_resume_checks_settings(tmp_path, small_checkpoint):
    from transfer.errors import UserError

    finetune(_cfg(small_checkpoint, epochs="1"), tmp_path / "r", progress=False)
    with pytest.raises(UserError, match="already holds a run"):
        finetune(_cfg(small_checkpoint, epochs="1"), tmp_path / "r", progress=False)
    with pytest.raises(UserError, match=r"differ \(lr: recorded 0.1, asked 0.5\)"):  # a finished run is checked too
        finetune(_cfg(small_checkpoint, epochs="1", lr=0.5), tmp_path / "r", resume=True, progress=False)
    (tmp_path / "r" / "summary.json").unlink()
    with pytest.raises(UserError, match=r"differ \(lr: recorded 0.1, asked 0.5\)"):
        finetune(_cfg(small_checkpoint, epochs="1", lr=0.5), tmp_path / "r", resume=True, progress=False)


def test_a_diverging_loss_stops_the_run_and_says_where(tmp_path, small_checkpoint):
    from transfer.errors import UserError

    with pytest.raises(UserError, match=r"training diverged: the loss became (nan|inf) in epoch 1 .*lower --lr"):
        finetune(_cfg(small_checkpoint, epochs="2", lr=1e30, blocks="all"), tmp_path / "r", progress=False)
    assert not RunDir(tmp_path / "r").finished()
