"""Input pipelines: the fast on-device loader and the study's torchvision DataLoader.

The fast loader holds the whole dataset as uint8 on the training device and augments whole
batches there with tensor ops. Its randomness is drawn once per epoch for every sample index
(order, crop offsets, flips) from ``(seed, epoch)`` alone, so:

- every rank draws the same permutation and shards it like ``DistributedSampler``;
- a sample gets the same crop whichever rank or batch size processes it, which makes a DDP
  run comparable with one process holding the same global batch;
- a resumed run needs no loader state beyond the epoch and the step.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from jobs.data import ImageSet

PAD = 4


class DeviceLoader:
    def __init__(
        self,
        data: ImageSet,
        batch_size: int,
        device: torch.device,
        train: bool,
        augment: bool = True,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        channels_last: bool = False,
    ) -> None:
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.batch_size = batch_size
        self.device = device
        self.train = train
        self.augment = train and augment
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.channels_last = channels_last
        self.mean = torch.tensor(data.mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(data.std, device=device).view(1, 3, 1, 1) * 255
        n = len(data)
        if train:
            # Pad the shards to equal length, as DistributedSampler does, and drop the last
            # partial batch so that every step has the same batch size on every rank.
            self.shard_size = math.ceil(n / world_size)
            self.num_batches = self.shard_size // batch_size
        else:
            # Evaluation sees every sample exactly once across the ranks.
            self.shard_size = len(range(rank, n, world_size))
            self.num_batches = math.ceil(self.shard_size / batch_size)
        if self.num_batches == 0:
            raise ValueError(
                f"batch size {batch_size} is larger than the {self.shard_size} training samples "
                f"of each of the {world_size} ranks"
            )

    def __len__(self) -> int:
        return self.num_batches

    def _epoch_plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = self.labels.shape[0]
        if not self.train:
            return torch.arange(self.rank, n, self.world_size), None, None
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=gen)
        offsets = torch.randint(0, 2 * PAD + 1, (n, 2), generator=gen)
        flips = torch.rand(n, generator=gen) < 0.5
        total = self.shard_size * self.world_size
        order = torch.cat([order, order[: total - n]])
        return order[self.rank :: self.world_size], offsets, flips

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch`` from step ``start`` on."""
        shard, offsets, flips = self._epoch_plan(epoch)
        for step in range(start, self.num_batches):
            index = shard[step * self.batch_size : (step + 1) * self.batch_size]
            index_dev = index.to(self.device, non_blocking=True)
            images = self.images[index_dev]
            if self.augment:
                images = _augment(images, offsets[index].to(self.device), flips[index])
            images = (images.float() - self.mean) / self.std
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, self.labels[index_dev]


def _augment(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Pad-4 random crop and horizontal flip of a whole uint8 batch, as gathers."""
    b, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (PAD, PAD, PAD, PAD))
    rows = offsets[:, 0, None] + torch.arange(h, device=images.device)  # b x h
    cols = offsets[:, 1, None] + torch.arange(w, device=images.device)  # b x w
    flips = flips.to(images.device)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch_index = torch.arange(b, device=images.device)[:, None, None]
    # Gather rows then columns: padded[b, :, rows[b], :][..., cols[b]]
    out = padded.permute(0, 2, 3, 1)[batch_index, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


class TorchvisionLoader:
    """The study's pipeline: PIL images through torchvision transforms in DataLoader workers,
    sharded by ``DistributedSampler``. Same interface as ``DeviceLoader``."""

    def __init__(
        self,
        data: ImageSet,
        batch_size: int,
        device: torch.device,
        train: bool,
        augment: bool = True,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        channels_last: bool = False,
        num_workers: int = 2,
    ) -> None:
        from torch.utils.data import DataLoader, DistributedSampler
        from torchvision import transforms

        steps = [transforms.RandomCrop(32, padding=PAD), transforms.RandomHorizontalFlip()]
        transform = transforms.Compose(
            [
                *(steps if train and augment else []),
                transforms.ToTensor(),
                transforms.Normalize(data.mean, data.std),
            ]
        )
        self.device = device
        self.seed = seed
        self.channels_last = channels_last
        self.sampler = DistributedSampler(
            _PilDataset(data, transform),
            num_replicas=world_size,
            rank=rank,
            shuffle=train,
            seed=seed,
        )
        self.generator = torch.Generator()
        self.loader = DataLoader(
            self.sampler.dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            drop_last=train,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=num_workers > 0,
            generator=self.generator,
        )

    def __len__(self) -> int:
        return len(self.loader)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.set_epoch(epoch)
        # The workers' augmentation seeds derive from this generator: fixed per epoch.
        self.generator.manual_seed(self.seed * 1_000_003 + epoch)
        for step, (images, labels) in enumerate(self.loader):
            if step < start:
                continue
            images = images.to(self.device, non_blocking=True)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, labels.to(self.device, non_blocking=True)


class _PilDataset(torch.utils.data.Dataset):
    def __init__(self, data: ImageSet, transform) -> None:
        self.data = data
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        from PIL import Image

        image = Image.fromarray(self.data.images[i].permute(1, 2, 0).numpy())
        return self.transform(image), int(self.data.labels[i])


PIPELINES = {"device": DeviceLoader, "torchvision": TorchvisionLoader}
