"""What the interp tests share: a small conv net with BatchNorm and a linear head, and real digits to fit it on."""

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 10)
    ).double().eval()


@pytest.fixture
def small_net():
    """``small_net(seed=0)``: a fresh copy of the net, float64, eval mode."""
    return _net


@pytest.fixture
def names():
    """The net's conv and head parameters (2,610 of them), in model order."""
    return ["0.weight", "0.bias", "4.weight", "4.bias"]


@pytest.fixture
def exact_inverse():
    """``exact_inverse(G, damping)``: ``(G + damping I)^-1`` by a dense solve."""
    return lambda g, damping: torch.linalg.inv(g + damping * torch.eye(len(g), dtype=torch.float64))


@pytest.fixture(scope="session")
def digits():
    """60 training and 20 test 8x8 digits, as loaders."""
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0).view(-1, 1, 8, 8)
    y = torch.tensor(y)
    return (DataLoader(TensorDataset(x[:60], y[:60]), batch_size=25),
            DataLoader(TensorDataset(x[60:80], y[60:80]), batch_size=20))  # fmt: skip
