import numpy as np
import pytest
import torch

from transfer.datasets import dataset_names, dataset_spec, load_raw_splits
from transfer.errors import UserError


@pytest.mark.parametrize("name,n_train,n_test,size", [("mnist5k", 4000, 1000, 28), ("digits", 1437, 360, 8)])
def test_embedded_splits_are_fixed_stratified_and_real(name, n_train, n_test, size):
    train, test = load_raw_splits(name)
    assert (len(train), len(test)) == (n_train, n_test)
    image, label = train[0]
    assert image.dtype == torch.uint8 and image.shape == (1, size, size)
    assert 0 <= label < 10
    full = np.bincount(np.concatenate([train.targets, test.targets]), minlength=10)
    expected = n_test * full / full.sum()
    assert np.abs(np.bincount(test.targets, minlength=10) - expected).max() <= 1  # stratified
    train2, _ = load_raw_splits(name)
    assert np.array_equal(train.targets, train2.targets) and torch.equal(train.images, train2.images)
    assert train.images.float().std() > 50  # real digits, not blank


def test_registry_has_the_papers_six_targets_and_salman_suite():
    names = set(dataset_names())
    assert {"cifar10", "cifar100", "svhn", "mnist", "fmnist", "kmnist"} <= names
    assert {"food101", "aircraft", "caltech101", "caltech256", "pets", "cars", "dtd", "flowers", "sun397"} <= names


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(UserError, match="cifar10.*digits|digits.*cifar10"):
        dataset_spec("imagenette")


def test_missing_torchvision_dataset_names_path_and_layout(tmp_path):
    with pytest.raises(UserError) as err:
        load_raw_splits("cifar10", tmp_path, download=False)
    assert str(tmp_path) in str(err.value) and "cifar-10-batches-py" in str(err.value)


def test_a_dataset_is_one_registry_entry_with_its_split_sizes():
    from transfer.datasets import DATASETS, TensorImages, dataset_spec, load_raw_splits, register_dataset, split_sizes

    def tiny(root, download):
        images = torch.zeros(6, 1, 4, 4, dtype=torch.uint8)
        return TensorImages(images[:4], np.array([0, 1, 0, 1])), TensorImages(images[4:], np.array([0, 1]))

    register_dataset("tiny-test", tiny, num_classes=2, grayscale=True, native_size=4, embedded=True,
                     description="a test's", split_sizes=(4, 2))  # fmt: skip
    try:
        assert dataset_spec("tiny-test").split_sizes == (4, 2) == split_sizes("tiny-test")
        train, test = load_raw_splits("tiny-test")
        assert len(train) == 4 and len(test) == 2
        with pytest.raises(UserError, match="registered already"):
            register_dataset("tiny-test", tiny, num_classes=2, grayscale=True, native_size=4, description="again")
        with pytest.raises(UserError, match="must be callable"):
            register_dataset("other-test", "not a loader", num_classes=2, grayscale=True, native_size=4, description="")
        with pytest.raises(UserError, match="non-empty string"):
            register_dataset("a b", tiny, num_classes=2, grayscale=True, native_size=4, description="")
    finally:
        DATASETS.unregister("tiny-test")
    assert split_sizes("cifar10") == (50000, 10000) and split_sizes("food101") is None
    with pytest.raises(UserError, match="unknown dataset 'tiny-test'; choose one of: mnist5k, digits"):
        dataset_spec("tiny-test")
