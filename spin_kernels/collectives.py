"""The few collectives BatchNorm needs across processes (torch.distributed); each is the identity on one process.

Synchronised BatchNorm (``--sync-bn``) normalises with statistics of the global batch. Two conventions hold
everywhere it is implemented (:mod:`spin_kernels.models.sync_bn` for the PyTorch path, the fused ConvMixer op):

* forward: statistics are merged from every rank's partial statistics, in rank order (deterministic);
* backward: a gradient with respect to a *statistic* (mean / invstd) is a per-rank contribution; whoever consumes
  it for an input gradient sums it over ranks first. Parameter gradients stay per-rank: DDP averages them.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    """Processes in the default group (1 when torch.distributed is not initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """A new tensor: ``t`` summed over ranks (not differentiable; ``t`` is left as it was)."""
    out = t.clone()
    if world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_gather_cat(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Every rank's ``t`` (same shape on all ranks) concatenated along ``dim`` in rank order."""
    n = world_size()
    if n == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(n)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=dim)


def global_count(local: int, device: torch.device) -> int:
    """The sum over ranks of an integer count (e.g. rows in this rank's batch)."""
    if world_size() == 1:
        return int(local)
    return int(all_reduce_sum(torch.tensor([float(local)], dtype=torch.float64, device=device)).item())


class _SumOverRanks(torch.autograd.Function):
    """y = Σ_ranks x; the backward is the same sum of the incoming gradients (each rank's loss depends on y)."""

    @staticmethod
    def forward(ctx, x):
        return all_reduce_sum(x)

    @staticmethod
    def backward(ctx, grad):
        return all_reduce_sum(grad)


def differentiable_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over ranks; its backward sums the incoming gradient over ranks too."""
    return t if world_size() == 1 else _SumOverRanks.apply(t)


def batch_moments(x: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean and biased variance of ``x`` over ``dims`` of the global batch (all ranks), differentiable, and the
    global element count per channel.

    Two passes (mean, then the centred second moment), never sum / sum-of-squares: no cancellation.
    """
    local = 1
    for d in dims:
        local *= x.shape[d]
    n = global_count(local, x.device)
    mean = differentiable_sum(x.sum(dims)) / n
    shape = [1] * x.dim()
    for d in range(x.dim()):
        if d not in dims:
            shape[d] = x.shape[d]
    var = differentiable_sum(((x - mean.reshape(shape)) ** 2).sum(dims)) / n
    return mean, var, n
