"""A resumable, distributed sampler whose every sample carries its own augmentation seed.

Resuming mid-epoch must reproduce the exact batches and random crops/flips an uninterrupted run
would have seen, with or without data-loader workers. So the order of an epoch is a function of
(seed, epoch), each rank takes every world_size-th index, and each sample's augmentation draws
from an RNG seeded by (seed, epoch, position) rather than from worker RNG state.
"""

from __future__ import annotations

import random
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ccfpse.train.checkpoint import seed_rngs


class ResumableSampler(Sampler):
    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True) -> None:
        self.num_samples, self.batch_size = num_samples, batch_size
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        """Whole batches per rank per epoch (the incomplete last batch is dropped)."""
        return self.num_samples // (self.batch_size * self.world_size)

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        used = self.batches_per_epoch * self.batch_size * self.world_size
        mine = order[:used][self.rank :: self.world_size]
        for position in range(self.start_batch * self.batch_size, len(mine)):
            global_position = position * self.world_size + self.rank
            yield mine[position], hash((self.seed, self.epoch, global_position)) & 0x7FFFFFFF


class SeededSamples(Dataset):
    """Wraps a dataset so that ``dataset[(index, seed)]`` runs its random transforms under ``seed``
    without disturbing the caller's RNG state (which matters when there are no workers)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            seed_rngs(seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
