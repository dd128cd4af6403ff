import pytest
import torch

from transfer.checkpoints import save_checkpoint
from transfer.models import build_model


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` are skipped where torch sees no CUDA device (CI never has one)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory):
    """A randomly initialised small ResNet saved in the robust-transfer format (28x28 inputs)."""
    path = tmp_path_factory.mktemp("ckpt") / "small.pt"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        save_checkpoint(path, build_model("small_resnet", 10), "small_resnet", 28, {"note": "random"})
    return path


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """A finished fine-tuning run: the shipped robust source on 80 digits, head only, 2 epochs."""
    from transfer.finetune import FinetuneConfig, finetune

    out = tmp_path_factory.mktemp("runs") / "rob"
    cfg = FinetuneConfig(
        source="mnist5k-l2", target="digits", blocks="0", subset="80", epochs="2", augment="none", device="cpu"
    )
    finetune(cfg, out, progress=False)
    return out


@pytest.fixture(scope="session")
def influence_out(finished_run, tmp_path_factory):
    """A complete influence directory of :func:`finished_run` (30 test images)."""
    from study.attribution import InfluenceConfig, run_influence

    out = tmp_path_factory.mktemp("influence") / "rob"
    run_influence(InfluenceConfig(run=str(finished_run), out=str(out), test="30", device="cpu"), progress=False)
    return out


SWEEP_GRID = 'name = "t"\nsources = ["mnist5k-natural", "mnist5k-l2"]\ntargets = ["digits"]\nblocks = [0]\n[seeds]\n100 = 2\n'


def make_sweep(root, done: int) -> "Path":  # noqa: F821
    """A sweep directory (marked, with its ledger) of a 2-source x 2-seed grid whose first ``done`` of 4
    runs finished with made-up accuracies; the rest pending. Nothing is trained: for readers of ledgers."""
    from study.sweeps.coordinator import SweepDir
    from study.sweeps.grid import parse_grid
    from study.sweeps.ledger import Ledger

    grid = parse_grid(SWEEP_GRID)
    sweep = SweepDir(root)
    with sweep.owned(), Ledger(sweep.ledger) as ledger:
        ledger.bind_grid(grid.digest, grid.name)
        sweep.grid.write_text(SWEEP_GRID)
        ledger.add(grid.runs())
        for i, (spec, _) in enumerate(ledger.claim(done)):
            acc = 0.6 + 0.05 * i
            summary = {"n_train": 100, "final_test_acc": acc, "best_test_acc": acc, "best_epoch": 2, "wall_time_s": 1.0}
            ledger.finish(spec.key, summary, "cpu", "test")
    return root


@pytest.fixture
def sweep_factory(tmp_path):
    return lambda name, done: make_sweep(tmp_path / name, done)


class Killed(Exception):
    """Raised by :func:`kill_after`'s hook: a run stopped as a kill would stop it, after an epoch."""


def kill_after(epoch):
    """An ``on_epoch_end`` hook that raises :class:`Killed` after ``epoch``."""

    def hook(e):
        if e == epoch:
            raise Killed

    return hook
