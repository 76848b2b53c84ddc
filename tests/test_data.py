"""Datasets load through the real readers from files in their real formats."""

import numpy as np
import pytest
import torch

from jobs import data
from jobs.loader import PAD, DeviceLoader

from .formats import write_cifar10, write_cifar100, write_idx


def _as_chw(rows: np.ndarray) -> torch.Tensor:
    # The CIFAR row layout: 1024 red, then 1024 green, then 1024 blue values, row-major.
    return torch.from_numpy(rows.reshape(-1, 3, 32, 32))


def test_cifar10_python_format(tmp_path):
    written = write_cifar10(tmp_path)
    train = data.load("cifar10", tmp_path, train=True)
    test = data.load("cifar10", tmp_path, train=False)
    assert train.images.shape == (100, 3, 32, 32) and train.images.dtype == torch.uint8
    assert torch.equal(train.images, _as_chw(written["train_data"]))
    assert train.labels.tolist() == written["train_labels"]
    assert torch.equal(test.images, _as_chw(written["test_data"]))
    assert test.labels.tolist() == written["test_labels"]
    assert train.num_classes == 10


def test_cifar100_python_format_uses_fine_labels(tmp_path):
    written = write_cifar100(tmp_path)
    train = data.load("cifar100", tmp_path, train=True)
    assert train.num_classes == 100
    assert torch.equal(train.images, _as_chw(written["train_data"]))
    assert train.labels.tolist() == written["train_labels"]
    assert max(train.labels.tolist()) > 20  # fine, not coarse, labels


def test_missing_cifar_names_the_folder_and_the_fix(tmp_path):
    with pytest.raises(data.DataError) as err:
        data.load("cifar10", tmp_path / "empty", train=True)
    message = str(err.value)
    assert str(tmp_path / "empty" / "cifar-10-batches-py") in message
    assert "data_batch_1" in message and "--download" in message


def test_corrupt_cifar_file_is_a_data_error(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x02not a pickle")
    with pytest.raises(data.DataError, match=r"unreadable files in .*cifar-10-batches-py"):
        data.load("cifar10", tmp_path, train=True)


def test_idx_files_become_padded_three_channel_images(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7, dtype=np.uint8)
    write_idx(tmp_path / "fm", "t10k", images, labels)
    loaded = data.load("fashion-mnist", tmp_path / "fm", train=False)
    assert loaded.images.shape == (7, 3, 32, 32)
    assert torch.equal(loaded.images[:, 1, 2:30, 2:30], torch.from_numpy(images))
    assert loaded.images[:, :, :2].sum() == 0 and loaded.images[:, :, :, 30:].sum() == 0
    assert torch.equal(loaded.images[:, 0], loaded.images[:, 2])
    assert loaded.labels.tolist() == labels.tolist()
    with pytest.raises(data.DataError, match="train-images-idx3-ubyte"):
        data.load("fashion-mnist", tmp_path / "fm", train=True)


def test_debian_fashion_mnist_folder_loads_as_it_is():
    folder = data.FASHION_MNIST_SYSTEM_DIR
    assert folder.is_dir(), "install Debian's dataset-fashion-mnist (.ci/run does)"
    test = data.load("fashion-mnist", folder, train=False)
    assert test.images.shape == (10_000, 3, 32, 32)
    assert sorted(set(test.labels.tolist())) == list(range(10))
    assert torch.bincount(test.labels).tolist() == [1000] * 10


def test_unknown_dataset():
    with pytest.raises(data.DataError, match="cifar10, cifar100, fashion-mnist, synthetic"):
        data.load("imagenet", "/nonexistent", train=True)


def _set(n=50):
    images, labels = data.synthetic(train=True, size=n)
    return data.ImageSet(images, labels, 10, (0.5,) * 3, (0.25,) * 3)


def test_device_loader_augments_with_crops_and_flips():
    imageset = _set()
    loader = DeviceLoader(imageset, batch_size=50, device=torch.device("cpu"), train=True, seed=3)
    shard, offsets, flips = loader._epoch_plan(0)
    ((batch, labels),) = list(loader.batches(0))
    padded = torch.nn.functional.pad(imageset.images[shard].float(), (PAD,) * 4)
    for i in range(50):
        oy, ox = offsets[shard[i]].tolist()
        crop = padded[i, :, oy : oy + 32, ox : ox + 32]
        if flips[shard[i]]:
            crop = crop.flip(2)
        expected = (crop - loader.mean[0]) / loader.std[0]
        torch.testing.assert_close(batch[i], expected)
    assert torch.equal(labels, imageset.labels[shard])
    assert 10 < int(flips.sum()) < 40 and len(set(offsets[:, 0].tolist())) > 4


def test_device_loader_shards_like_a_distributed_sampler():
    imageset = _set(51)
    loaders = [
        DeviceLoader(imageset, 5, torch.device("cpu"), train=True, rank=r, world_size=2, seed=1)
        for r in range(2)
    ]
    shards = [loader._epoch_plan(4)[0] for loader in loaders]
    assert len(shards[0]) == len(shards[1]) == 26  # padded to equal length
    assert set(shards[0].tolist()) | set(shards[1].tolist()) == set(range(51))
    assert len(loaders[0]) == 5  # full batches only
    # Each epoch has its own order; the same epoch always the same one.
    assert not torch.equal(loaders[0]._epoch_plan(5)[0], shards[0])
    assert torch.equal(loaders[0]._epoch_plan(4)[0], shards[0])
    # A sample gets the same crop and flip whatever the world size.
    single = DeviceLoader(imageset, 10, torch.device("cpu"), train=True, seed=1)
    _, off_single, flip_single = single._epoch_plan(4)
    _, off_rank, flip_rank = loaders[1]._epoch_plan(4)
    assert torch.equal(off_single, off_rank) and torch.equal(flip_single, flip_rank)


def test_evaluation_sees_every_sample_once_across_ranks():
    imageset = _set(23)
    seen = []
    for rank in range(3):
        loader = DeviceLoader(
            imageset, 4, torch.device("cpu"), train=False, rank=rank, world_size=3
        )
        seen += [label for _, labels in loader.batches(0) for label in labels.tolist()]
    assert sorted(seen) == sorted(imageset.labels.tolist())
