import pytest
import torch

from transfer.checkpoints import save_checkpoint
from transfer.models import build_model


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory):
    """A randomly initialised small ResNet saved in the robust-transfer format (28x28 inputs)."""
    path = tmp_path_factory.mktemp("ckpt") / "small.pt"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        save_checkpoint(path, build_model("small_resnet", 10), "small_resnet", 28, {"note": "random"})
    return path
