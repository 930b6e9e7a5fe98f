"""Samplers that make training resumable to the exact sample, and distributed evaluation exact.

* :class:`ResumableSampler` wraps any epoch-seeded sampler (torch's DistributedSampler, timm's RepeatAugSampler)
  and skips the samples already consumed in the current epoch, so a mid-epoch checkpoint resumes with the very
  next batch.
* :class:`EvalShardSampler` gives each rank a contiguous shard without padding, so every sample is counted exactly
  once (torch's DistributedSampler pads with duplicates to equalize shards, which biases the metrics).
* :class:`EpochSeededDataset` makes augmentation a pure function of (seed, epoch, index): identical whatever the
  number of workers, the number of ranks or the resume point.
"""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler


class ResumableSampler(Sampler):
    """Iterate ``base`` (set to ``epoch``), skipping the first ``skip`` indices; ``set_epoch`` resets the skip.

    Args:
        base: a sampler with ``set_epoch`` whose order depends only on the epoch and its seed.
    """

    def __init__(self, base: Sampler):
        self.base = base
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Start epoch ``epoch`` after its first ``skip`` samples (on this rank)."""
        self.epoch, self.skip = epoch, skip
        self.base.set_epoch(epoch)

    def __iter__(self):
        it = iter(self.base)
        for _ in range(self.skip):
            next(it, None)
        return it

    def __len__(self) -> int:
        return len(self.base) - self.skip


def train_sampler(dataset, *, world_size: int = 1, rank: int = 0, seed: int = 0, repeats: int = 0) -> ResumableSampler:
    """Shuffling train sampler for ``world_size`` ranks, resumable mid-epoch.

    With ``repeats`` > 1 uses timm's RepeatAugSampler (DeiT's repeated augmentation: each image ``repeats`` times,
    the copies spread over ranks); otherwise torch's DistributedSampler (also for one rank: the same permutation
    for the same (seed, epoch), so a single-process run and a DDP run see the same global batches).
    """
    if repeats and repeats > 1:
        from timm.data.distributed_sampler import RepeatAugSampler
        base = RepeatAugSampler(dataset, num_replicas=world_size, rank=rank, num_repeats=repeats)
    else:
        base = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                  drop_last=False)
    return ResumableSampler(base)


class EvalShardSampler(Sampler):
    """Contiguous, unpadded shard of ``range(len(dataset))`` for ``rank``; shards differ in size by at most one."""

    def __init__(self, dataset, world_size: int = 1, rank: int = 0):
        n = len(dataset)
        self.start = n * rank // world_size
        self.stop = n * (rank + 1) // world_size

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


class EpochSeededDataset(Dataset):
    """Wrap ``dataset`` so item ``i`` of epoch ``e`` is transformed under RNGs seeded from (seed, e, i).

    The global RNG states of the calling process are saved and restored around each item, so the training
    process's own random stream (dropout, mixup) is untouched when loading runs in the main process.
    Set :attr:`epoch` before creating the DataLoader iterator (workers are forked per epoch and copy it).
    """

    def __init__(self, dataset, seed: int = 0):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):
        # Expose num_classes / classes / reader of the wrapped dataset.
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int):
        item_seed = (self.seed * 1_000_003 + self.epoch) * 10_000_019 + int(index)
        if torch.utils.data.get_worker_info() is not None:
            # A loader worker: its RNGs serve only this loading, so seed them directly (cheap).
            _seed_all(item_seed)
            return self.dataset[index]
        # The main process: isolate, because the training step draws from the same global RNGs.
        # (torch.default_generator.manual_seed, not torch.manual_seed: the latter also seeds every accelerator
        # and costs ~180 us per call.)
        torch_state, py_state, np_state = torch.get_rng_state(), random.getstate(), np.random.get_state()
        try:
            _seed_all(item_seed)
            return self.dataset[index]
        finally:
            torch.set_rng_state(torch_state)
            random.setstate(py_state)
            np.random.set_state(np_state)


def _seed_all(seed: int) -> None:
    """Seed the CPU torch, python and numpy global RNGs (augmentations draw from all three)."""
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
