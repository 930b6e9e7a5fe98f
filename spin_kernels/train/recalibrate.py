"""BatchNorm recalibration: running statistics re-estimated for the weights a model has now.

A compressed model computes with fused weights, but each BatchNorm still holds the running mean / variance it
collected under the unshared weights — in eval mode it normalises with the wrong statistics, and a fused
ConvMixer can fall to chance accuracy. Re-estimating them on a few hundred training images (no gradient step, the
eval transform, a cumulative average over the batches: ``torch.optim.swa_utils.update_bn``) restores much of the
accuracy; fine-tuning restores the rest.
"""
from __future__ import annotations

import itertools

import torch
from torch import nn


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` has BatchNorm layers (whose running statistics depend on the weights before them)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class _Images:
    """The first ``batches`` batches of a loader, images only, counted (update_bn takes any iterable)."""

    def __init__(self, loader, batches: int):
        self.loader, self.batches, self.images = loader, batches, 0

    def __iter__(self):
        for images, _ in itertools.islice(self.loader, self.batches):
            self.images += len(images)
            yield images


def recalibrate_batchnorm(model: nn.Module, loader, batches: int, device: torch.device | str = "cpu") -> int:
    """Reset every BatchNorm's running statistics and re-estimate them as the cumulative average over the first
    ``batches`` batches of ``loader`` (``(images, targets)`` pairs), without a gradient step; the model's
    train / eval mode and the BatchNorms' momenta are restored. Returns the number of images used."""
    if batches < 1:
        raise ValueError(f"batches: expected at least 1, got {batches}")
    images = _Images(loader, batches)
    torch.optim.swa_utils.update_bn(images, model, device=torch.device(device))
    if images.images == 0:
        raise ValueError("the calibration data yielded no images")
    return images.images
