"""BatchNorm pieces in plain PyTorch: running-statistics updates and synchronised BatchNorm across processes.

``convert_sync_batchnorm(model)`` is what ``spin train --sync-bn`` does: every ``nn.BatchNorm2d`` of the model
normalises with the statistics of the global batch (all ranks) while training. Unlike ``nn.SyncBatchNorm`` it works
on CPU process groups (gloo) too, and it keeps each module object (its class is swapped in place), so layer views
that refer to the modules and state_dict keys stay exactly as they were. The fused ConvMixer kernels read the
model's ``sync_bn`` flag and merge their partial statistics across ranks the same way
(:mod:`spin_kernels.collectives` states the conventions).
"""
from __future__ import annotations

import torch
from torch import nn

from .. import collectives


def update_running_stats(bn: nn.modules.batchnorm._BatchNorm, mean: torch.Tensor, var: torch.Tensor,
                         n: int) -> None:
    """nn.BatchNorm2d's running-statistics update from a batch's ``mean`` and biased ``var`` over ``n`` values per
    channel: unbiased variance, momentum (or the cumulative average when ``momentum`` is None)."""
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        rm, rv = bn.running_mean, bn.running_var
        unbiased = var * (n / max(n - 1, 1))
        if bn.momentum is not None:
            m = bn.momentum
            rm.mul_(1 - m).add_(mean.to(rm.dtype), alpha=m)
            rv.mul_(1 - m).add_(unbiased.to(rv.dtype), alpha=m)
        else:  # cumulative moving average; a tensor factor keeps torch.compile(fullgraph=True) free of .item()
            m = 1.0 / bn.num_batches_tracked.to(torch.float32)
            rm.copy_(rm * (1 - m) + mean * m)
            rv.copy_(rv * (1 - m) + unbiased * m)


def update_running_stats_of_layers(bns, means, variances, n: int) -> None:
    """:func:`update_running_stats` for several BatchNorms in list order (a fused run's layers): with distinct
    modules, one float momentum and one buffer dtype it is five multi-tensor (``torch._foreach_*``) updates in all
    instead of about six PyTorch ops per BatchNorm — each a kernel launch on a GPU; otherwise one at a time."""
    bns = list(bns)
    momenta = {bn.momentum for bn in bns}
    dtypes = {bn.running_mean.dtype for bn in bns} | {bn.running_var.dtype for bn in bns}
    # one module listed twice (an ablation that shares BatchNorms across layers) is updated twice in list order,
    # which the multi-tensor form would not reproduce
    if len(momenta) != 1 or None in momenta or len(dtypes) != 1 or len({id(bn) for bn in bns}) != len(bns):
        for bn, mean, var in zip(bns, means, variances, strict=True):
            update_running_stats(bn, mean, var, n)
        return
    (m,) = momenta
    (dtype,) = dtypes
    with torch.no_grad():
        torch._foreach_add_([bn.num_batches_tracked for bn in bns], 1)
        rms, rvs = [bn.running_mean for bn in bns], [bn.running_var for bn in bns]
        torch._foreach_mul_(rms, 1 - m)
        torch._foreach_add_(rms, [mean.to(dtype) for mean in means], alpha=m)
        torch._foreach_mul_(rvs, 1 - m)
        torch._foreach_add_(rvs, [var.to(dtype) for var in variances], alpha=m * n / max(n - 1, 1))


class SyncBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training-mode statistics are those of the global batch over all ranks.

    On one process, in eval mode, or without running statistics it is exactly ``nn.BatchNorm2d``. The gradient is
    exact for the sum of every rank's loss (the collectives' backward sums the statistics' gradients over ranks).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` [B, C, H, W] with global-batch statistics in training (all ranks take part)."""
        if not (self.training and self.track_running_stats) or collectives.world_size() == 1:
            return super().forward(x)
        self._check_input_dim(x)
        xf = x.float()  # statistics in fp32 whatever the activation dtype (autocast)
        mean, var, n = collectives.batch_moments(xf, (0, 2, 3))
        update_running_stats(self, mean.detach(), var.detach(), n)
        shape = (1, -1, 1, 1)
        y = (xf - mean.reshape(shape)) * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            y = y * self.weight.float().reshape(shape) + self.bias.float().reshape(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Make every ``nn.BatchNorm2d`` of ``model`` a :class:`SyncBatchNorm2d` in place; mark ``model.sync_bn``.

    Returns ``model``. The fused backends see ``model.sync_bn`` and synchronise their own statistics.
    """
    for m in model.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = SyncBatchNorm2d
    model.sync_bn = True
    return model


def batch_norm_rows(h: torch.Tensor, sync: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-channel mean and biased variance of rows ``h`` [M, C] — over the global batch of all ranks when ``sync``
    — differentiable, and the row count they cover."""
    if not sync or collectives.world_size() == 1:
        return h.mean(0), h.var(0, unbiased=False), h.shape[0]
    return collectives.batch_moments(h, (0,))
