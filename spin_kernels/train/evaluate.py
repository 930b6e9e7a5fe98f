"""Evaluation: loss, top-1 and top-5 over a loader, summed over ranks (each sample counted exactly once)."""
from __future__ import annotations

import contextlib
import time

import torch
import torch.nn.functional as F

from .distributed import all_reduce_sum


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device: torch.device, *, amp_dtype: torch.dtype | None = None,
             channels_last: bool = False, progress=None) -> dict:
    """Return ``{"loss", "top1", "top5", "count", "img_per_s", "time_s"}`` over ``loader`` (all ranks).

    Sums (not per-rank means) are all-reduced, so uneven shards from the unpadded eval sampler weigh correctly.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, correct1, correct5, count
    amp = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext())
    t0 = time.perf_counter()
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)
        with amp:
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top.eq(targets[:, None])
        sums += torch.stack([F.cross_entropy(logits, targets, reduction="sum").double(),
                             hit[:, :1].sum().double(), hit.sum().double(),
                             torch.tensor(float(len(targets)), dtype=torch.float64, device=device)])
        if progress is not None:
            progress.update(1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    all_reduce_sum(sums)
    model.train(was_training)
    loss, c1, c5, n = sums.tolist()
    n = max(n, 1.0)
    return {"loss": loss / n, "top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "count": int(n),
            "img_per_s": n / elapsed if elapsed > 0 else float("nan"), "time_s": elapsed}
