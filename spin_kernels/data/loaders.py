"""DataLoaders for training (resumable, distributed) and evaluation (exact distributed shards)."""
from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, IterableDataset

from .samplers import EpochSeededDataset, EvalShardSampler, train_sampler


def default_workers(cap: int = 4) -> int:
    """Loader worker processes when none are asked for: up to ``cap``, never more than the CPU cores this process
    may use (more workers than cores only adds context switches)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cap, cores))


def build_train_loader(dataset, batch_size: int, *, world_size: int = 1, rank: int = 0, seed: int = 0,
                       workers: int = 0, repeats: int = 0, pin_memory: bool = False) -> DataLoader:
    """Shuffling, drop-last loader of per-rank ``batch_size``; resumable via ``loader.sampler.set_epoch(e, skip)``.

    Augmentation is seeded per (seed, epoch, index) (:class:`EpochSeededDataset`); call
    ``loader.dataset.epoch = e`` together with ``set_epoch`` (``set_loader_epoch`` does both).
    drop_last keeps every step's global batch the same size (timm's Mixup needs even batches; resumed step counts
    stay aligned).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    if isinstance(dataset, IterableDataset):
        # Streaming datasets (timm wds/tfds readers) shard and shuffle themselves; they resume per epoch only.
        return DataLoader(dataset, batch_size=batch_size, num_workers=workers, drop_last=True,
                          pin_memory=pin_memory)
    seeded = EpochSeededDataset(dataset, seed=seed)
    sampler = train_sampler(seeded, world_size=world_size, rank=rank, seed=seed, repeats=repeats)
    if len(sampler) < batch_size:
        raise ValueError(f"--batch-size {batch_size * world_size} is larger than the training set "
                         f"({len(dataset)} images); lower the batch size")
    # A private generator: creating the iterator must not draw from the global torch RNG, or a resumed run
    # (which creates its iterator at a different point of the random stream) would diverge.
    return DataLoader(seeded, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True,
                      pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed),
                      persistent_workers=False)


def set_loader_epoch(loader: DataLoader, epoch: int, skip_batches: int = 0) -> None:
    """Position ``loader`` at the start of ``epoch`` after ``skip_batches`` already-consumed batches."""
    if hasattr(loader.sampler, "base"):
        loader.dataset.epoch = epoch
        loader.sampler.set_epoch(epoch, skip_batches * loader.batch_size)
    elif hasattr(loader.dataset, "set_epoch"):  # timm's IterableImageDataset
        loader.dataset.set_epoch(epoch)


def build_eval_loader(dataset, batch_size: int, *, world_size: int = 1, rank: int = 0, workers: int = 0,
                      pin_memory: bool = False) -> DataLoader:
    """In-order loader over this rank's unpadded shard (every sample evaluated exactly once across ranks)."""
    if isinstance(dataset, IterableDataset):
        return DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=pin_memory)
    return DataLoader(dataset, batch_size=batch_size, sampler=EvalShardSampler(dataset, world_size, rank),
                      num_workers=workers, drop_last=False, pin_memory=pin_memory)
