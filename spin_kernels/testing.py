"""Helpers for tests of spin_kernels and of code built on it (like ``torch.testing``)."""
from __future__ import annotations

import torch


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Relative Frobenius error ‖actual − expected‖ / ‖expected‖, computed in float64."""
    expected = expected.double()
    return ((actual.double() - expected).norm() / expected.norm().clamp_min(1e-300)).item()


@torch.no_grad()
def randomise_batchnorm(model: torch.nn.Module, shift: float = 0.3) -> torch.nn.Module:
    """Give every BatchNorm non-trivial affine parameters and running statistics (so eval mode means something)."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, shift)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0, shift)
    return model
