"""The kernels' GELU (``_common.act_fwd`` / ``act_grad`` with ACT = 1, Φ from ``gauss_cdf``) against float64.

The bounds are the ones ``gauss_cdf``'s docstring states (measured in numpy-fp32: 3.8e-7 absolute, 1.8e-6 relative
where |GELU| > 1e-3), with headroom for the interpreter's rounding; the erf form it replaced errs 5.1e-5 relative in
the left tail, so the relative bound is one the old formula would fail.
"""
import math

import pytest
import torch
import triton
import triton.language as tl

from spin_triton_testutils import DEVICE
from spin_kernels.triton._common import act_fwd, act_grad


@triton.jit
def _gelu_kernel(x_ptr, y_ptr, n, GRAD: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    if GRAD:
        y = act_grad(x, 1)
    else:
        y = act_fwd(x, 1)
    tl.store(y_ptr + offs, y, mask=mask)


def _run(x, grad):
    y = torch.full_like(x, float("nan"))
    _gelu_kernel[(triton.cdiv(x.numel(), 1024),)](x, y, x.numel(), GRAD=grad, BLOCK=1024)
    return y.double()


def _inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.linspace(-12, 12, 40001, dtype=torch.float64),
                   torch.logspace(-6, 1.1, 2001, dtype=torch.float64) * torch.tensor([1.0, -1.0]).repeat(1001)[:2001],
                   torch.randn(5003, generator=g, dtype=torch.float64) * 3, torch.tensor([0.0, -0.0, 1e-30, -40.0])])
    return x.float().to(DEVICE)


def test_gelu_against_float64():
    x = _inputs()
    x64 = x.double()
    ref = x64 * 0.5 * torch.erfc(-x64 / math.sqrt(2.0))
    y = _run(x, grad=False)
    assert torch.isfinite(y).all()
    assert (y - ref).abs().max().item() <= 1e-6
    big = ref.abs() > 1e-3
    assert ((y - ref).abs()[big] / ref.abs()[big]).max().item() <= 5e-6


def test_gelu_grad_against_float64():
    x = _inputs()
    x64 = x.double()
    ref = 0.5 * torch.erfc(-x64 / math.sqrt(2.0)) + x64 * torch.exp(-0.5 * x64 * x64) / math.sqrt(2 * math.pi)
    y = _run(x, grad=True)
    assert torch.isfinite(y).all()
    assert (y - ref).abs().max().item() <= 1e-6


@pytest.mark.parametrize("x,phi", [(0.0, 0.5), (-40.0, 0.0), (40.0, 1.0), (1.0, 0.8413447460685429)])
def test_gelu_fixed_points(x, phi):
    y = _run(torch.tensor([x], device=DEVICE), grad=False)
    assert abs(y.item() - x * phi) <= 1e-6 * max(1.0, abs(x))
