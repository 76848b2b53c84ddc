"""Writers of small dataset files in the exact on-disk formats of the real datasets."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def _cifar_batch(rng: np.random.Generator, n: int, num_classes: int, label_key: str) -> dict:
    data = rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, num_classes, size=n)]
    batch = {
        "batch_label": "testing batch",
        "data": data,
        "filenames": [f"img{i}.png" for i in range(n)],
    }
    batch[label_key] = labels
    if label_key == "fine_labels":
        batch["coarse_labels"] = [v // 5 for v in labels]
    return batch


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, per_batch: int = 20, test: int = 30, seed: int = 0) -> dict:
    """cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}; returns the arrays."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    batches = [_cifar_batch(rng, per_batch, 10, "labels") for _ in range(5)]
    for i, batch in enumerate(batches, 1):
        _dump(folder / f"data_batch_{i}", batch)
    test_batch = _cifar_batch(rng, test, 10, "labels")
    _dump(folder / "test_batch", test_batch)
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    _dump(
        folder / "batches.meta",
        {"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072},
    )
    return {
        "train_data": np.concatenate([b["data"] for b in batches]),
        "train_labels": [v for b in batches for v in b["labels"]],
        "test_data": test_batch["data"],
        "test_labels": test_batch["labels"],
    }


def write_cifar100(root: Path, train: int = 100, test: int = 40, seed: int = 1) -> dict:
    """cifar-100-python/{train,test,meta}; returns the arrays."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    train_batch = _cifar_batch(rng, train, 100, "fine_labels")
    test_batch = _cifar_batch(rng, test, 100, "fine_labels")
    _dump(folder / "train", train_batch)
    _dump(folder / "test", test_batch)
    _dump(
        folder / "meta",
        {
            "fine_label_names": [f"class{i}" for i in range(100)],
            "coarse_label_names": [f"super{i}" for i in range(20)],
        },
    )
    return {
        "train_data": train_batch["data"],
        "train_labels": train_batch["fine_labels"],
        "test_data": test_batch["data"],
        "test_labels": test_batch["fine_labels"],
    }


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    """MNIST-style IDX files, gzipped as distributed: PREFIX-images-idx3-ubyte.gz etc."""
    folder.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 0x00000803, n, h, w) + images.astype(np.uint8).tobytes())
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 0x00000801, n) + labels.astype(np.uint8).tobytes())
