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
    from study.influence import InfluenceConfig, run_influence

    out = tmp_path_factory.mktemp("influence") / "rob"
    run_influence(InfluenceConfig(run=str(finished_run), out=str(out), test="30", device="cpu"), progress=False)
    return out
