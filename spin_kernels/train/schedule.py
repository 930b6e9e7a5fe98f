"""Learning-rate schedules as pure functions of the optimizer-update count, so resuming needs only the count."""
from __future__ import annotations

import math

import numpy as np


class StepSchedule:
    """lr(update) for ``total`` optimizer updates.

    Kinds:
        ``onecycle``: SPIN / ConvMixer's piecewise-linear one-cycle: 0 -> lr at 40%, lr/20 at 80%, 0 at the end.
        ``cosine``: linear warmup over ``warmup`` updates from 0, then cosine from lr to ``min_lr``.
        ``constant``: lr after the warmup.
    """

    def __init__(self, kind: str, lr: float, total: int, warmup: int = 0, min_lr: float = 0.0):
        if kind not in ("onecycle", "cosine", "constant"):
            raise ValueError(f"sched: expected 'onecycle', 'cosine' or 'constant', got {kind!r}")
        if total < 1:
            raise ValueError(f"total: the schedule needs at least one update, got {total}")
        self.kind, self.lr, self.total, self.warmup, self.min_lr = kind, lr, total, warmup, min_lr

    def __call__(self, update: int) -> float:
        t = min(max(update, 0), self.total)
        if self.kind == "onecycle":
            return float(np.interp(t, [0, 0.4 * self.total, 0.8 * self.total, self.total],
                                   [0.0, self.lr, self.lr / 20.0, 0.0]))
        if self.warmup and t < self.warmup:
            return self.lr * (t + 1) / self.warmup
        if self.kind == "constant":
            return self.lr
        p = (t - self.warmup) / max(1, self.total - self.warmup)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * p))

    def apply(self, optimizer, update: int) -> float:
        """Set every param group's lr for ``update`` (respecting timm's per-group ``lr_scale``); return the lr."""
        lr = self(update)
        for g in optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        return lr
