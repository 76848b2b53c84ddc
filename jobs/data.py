"""Datasets as whole uint8 tensors: CIFAR-10/100, Fashion-MNIST and a synthetic set.

Every dataset is returned as ``(images, labels)`` with images ``N x 3 x 32 x 32`` uint8 and
labels int64, so the training device can hold it whole and augment it there.
"""

from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from records.spec import DATASETS

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


class DataError(Exception):
    """A dataset is missing or unreadable; the message says where and what to do."""


@dataclass(frozen=True)
class ImageSet:
    images: torch.Tensor  # N x 3 x H x W, uint8
    labels: torch.Tensor  # N, int64
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __len__(self) -> int:
        return self.labels.shape[0]


_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "fashion-mnist": ((0.2860,) * 3, (0.3530,) * 3),
    "synthetic": ((0.5,) * 3, (0.25,) * 3),
}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "fashion-mnist": 10, "synthetic": 10}


def load(name: str, root: str | Path, train: bool, download: bool = False) -> ImageSet:
    """Load one split of a dataset from ``root``."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    if name in ("cifar10", "cifar100"):
        images, labels = _load_cifar(name, Path(root), train, download)
    elif name == "fashion-mnist":
        images, labels = _load_fashion_mnist(Path(root), train)
    else:
        images, labels = synthetic(train)
    mean, std = _STATS[name]
    return ImageSet(images, labels, NUM_CLASSES[name], mean, std)


def _cifar_class(name: str):
    from torchvision import datasets

    base = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100

    class Cifar(base):
        # torchvision checks each file's md5 against the published archive. Presence is
        # checked here instead, so that files in the same python format (small ones that the
        # tests write, or a curated subset) load through the same reader.
        def _check_integrity(self) -> bool:
            folder = Path(self.root) / self.base_folder
            files = [f for f, _ in self.train_list + self.test_list] + [self.meta["filename"]]
            return all((folder / f).is_file() for f in files)

        def _load_meta(self) -> None:
            with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return Cifar


def _load_cifar(name: str, root: Path, train: bool, download: bool):
    cls = _cifar_class(name)
    folder = root / cls.base_folder
    try:
        dataset = cls(str(root), train=train, download=download)
    except RuntimeError as exc:
        if "not found" not in str(exc):
            raise
        files = ", ".join([f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]])
        raise DataError(
            f"{name} not found in {folder}: expected the python-format files {files}; "
            f"pass --download to fetch them, or put them there"
        ) from None
    except OSError as exc:
        raise DataError(f"{name}: could not download into {root}: {exc}") from None
    except Exception as exc:  # a truncated or foreign pickle
        raise DataError(f"{name}: unreadable files in {folder}: {exc}") from None
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor(dataset.targets, dtype=torch.int64)
    return images, labels


def _load_fashion_mnist(root: Path, train: bool):
    from torchvision.datasets.mnist import read_image_file, read_label_file

    prefix = "train" if train else "t10k"
    candidates = [root, root / "FashionMNIST" / "raw"]
    for folder in candidates:
        image_path = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
        label_path = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
        if image_path and label_path:
            break
    else:
        raise DataError(
            f"fashion-mnist not found in {root}: expected {prefix}-images-idx3-ubyte[.gz] and "
            f"{prefix}-labels-idx1-ubyte[.gz] (Debian's dataset-fashion-mnist installs them "
            f"in {FASHION_MNIST_SYSTEM_DIR})"
        )
    try:
        images = read_image_file(str(image_path))
        labels = read_label_file(str(label_path))
    except Exception as exc:
        raise DataError(f"fashion-mnist: unreadable IDX file in {folder}: {exc}") from None
    # 28x28 grey -> 32x32 with 3 channels, the shape the CIFAR networks take.
    images = torch.nn.functional.pad(images, (2, 2, 2, 2)).unsqueeze(1).expand(-1, 3, -1, -1)
    return images.contiguous(), labels.to(torch.int64)


def _find_idx(folder: Path, stem: str) -> Path | None:
    plain, packed = folder / stem, folder / f"{stem}.gz"
    if plain.is_file():
        return plain
    if packed.is_file():
        # torchvision's reader takes uncompressed files; unpack next to a cache, not in place:
        # the system folder is read-only.
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "resnest-bench"
        target = cache / f"fashion-mnist-{packed.stat().st_size}-{stem}"
        if not target.is_file():
            cache.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(f".tmp{os.getpid()}")
            with gzip.open(packed, "rb") as src, open(tmp, "wb") as dst:
                dst.write(src.read())
            os.replace(tmp, target)
        return target
    return None


def synthetic(train: bool, size: int | None = None, num_classes: int = 10, seed: int = 0):
    """A learnable set: each class is a fixed random low-frequency pattern plus noise."""
    gen = torch.Generator().manual_seed(seed)
    templates = torch.rand(num_classes, 3, 4, 4, generator=gen)
    templates = torch.nn.functional.interpolate(templates, size=32, mode="bilinear")
    n = size if size is not None else (5000 if train else 1000)
    split_gen = torch.Generator().manual_seed(seed + (1 if train else 2))
    labels = torch.randint(num_classes, (n,), generator=split_gen)
    noise = torch.randn(n, 3, 32, 32, generator=split_gen) * 0.15
    images = ((templates[labels] + noise).clamp(0, 1) * 255).round().to(torch.uint8)
    return images, labels


def normalise(images: torch.Tensor, image_set: ImageSet) -> torch.Tensor:
    """uint8 NCHW images as the network sees them: fp32, normalised as in training."""
    mean = torch.tensor(image_set.mean).view(1, 3, 1, 1)
    std = torch.tensor(image_set.std).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def test_batch(dataset: str, root: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``size`` real test images, normalised, and their labels."""
    images = load(dataset, root, train=False)
    return normalise(images.images[:size], images), images.labels[:size]
