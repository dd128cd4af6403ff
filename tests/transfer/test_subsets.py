import numpy as np
import pytest

from transfer.errors import UserError
from transfer.subsets import class_covering_subset, paper_seeds


def test_paper_seeds_follow_the_formula():
    assert paper_seeds(3) == [20_000_000, 20_100_000, 20_200_000]


@pytest.mark.parametrize("n", [10, 11, 57, 300])
def test_subset_covers_every_class_without_repeats(n):
    labels = np.repeat(np.arange(10), 30)
    rng = np.random.default_rng(1)
    rng.shuffle(labels)
    idx = class_covering_subset(labels, n, seed=20_000_000)
    assert len(idx) == n == len(set(idx.tolist()))
    assert set(labels[idx].tolist()) == set(range(10))


def test_subset_is_deterministic_for_a_seed_and_changes_with_it():
    labels = np.repeat(np.arange(5), 100)
    a = class_covering_subset(labels, 40, seed=7)
    assert np.array_equal(a, class_covering_subset(labels, 40, seed=7))
    assert not np.array_equal(a, class_covering_subset(labels, 40, seed=8))


def test_rare_class_is_still_covered():
    labels = np.array([0] * 999 + [1])
    for seed in range(5):
        assert 999 in class_covering_subset(labels, 2, seed).tolist()


@pytest.mark.parametrize("n", [3, 1001])
def test_bad_subset_sizes_are_refused(n):
    with pytest.raises(UserError):
        class_covering_subset(np.repeat(np.arange(4), 250), n, seed=0)
