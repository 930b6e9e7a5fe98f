"""Depthwise convolution as a standalone op on the CUDA kernels: a drop-in for ``F.conv2d(x, w, b, padding=k // 2,
groups=C)`` with odd k from 3 to 9 (where PyTorch falls back to a slow native kernel for k ≥ 7 or bf16).

``spin_kernels::dwconv2d`` is a ``torch.library`` custom op with a fake (meta) implementation and an autograd
formula whose backward is the op ``spin_kernels::dwconv2d_backward``, so ``torch.compile(fullgraph=True)`` traces
forward and backward. Activations run channels-last (csrc/depthwise_conv.cu: 16-byte vector loads along C, the
tile plus halo staged in shared memory once per CTA, fp32 accumulation, a deterministic weight gradient).
:func:`depthwise_conv2d` is the entry point users call: it validates, and takes PyTorch's own convolution (with a
one-time warning) where the kernels cannot run.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import cuda
from .._util import warn_once


def _nhwc(t: Tensor) -> Tensor:
    """[B, C, H, W] (any memory format) -> contiguous [B, H, W, C] (free when t is channels-last)."""
    return t.permute(0, 2, 3, 1).contiguous()


def _nchw(t: Tensor) -> Tensor:
    """Contiguous [B, H, W, C] -> the [B, C, H, W] view of it (channels-last memory)."""
    return t.permute(0, 3, 1, 2)


@torch.library.custom_op("spin_kernels::dwconv2d", mutates_args=())
def dwconv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """'same' depthwise convolution of x [B, C, H, W] with weight [C, 1, k, k] (+ bias [C]) on the CUDA kernels;
    returns [B, C, H, W] in channels-last memory, x's dtype."""
    y, _ = cuda.dwconv_forward(_nhwc(x), weight.contiguous(), bias, act="none", with_stats=False)
    return _nchw(y)


@dwconv2d.register_fake
def _(x, weight, bias):
    return torch.empty_like(x, memory_format=torch.channels_last)


@torch.library.custom_op("spin_kernels::dwconv2d_backward", mutates_args=())
def dwconv2d_backward(grad: Tensor, x: Tensor, weight: Tensor, has_bias: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight, dbias) of :func:`dwconv2d`; dbias is empty without a bias. Weight / bias gradients are
    reduced in fp32 in a fixed order (bit-identical run to run) and returned in weight's dtype."""
    g = _nhwc(grad)
    dx = cuda.dwconv_backward_input(g, weight.contiguous())
    dw, db = cuda.dwconv_backward_weight(g, _nhwc(x), weight.shape[-1])
    dbias = db.to(weight.dtype) if has_bias else weight.new_empty((0,))
    return _nchw(dx), dw.to(weight.dtype), dbias


@dwconv2d_backward.register_fake
def _(grad, x, weight, has_bias):
    dbias = weight.new_empty((weight.shape[0],)) if has_bias else weight.new_empty((0,))
    return torch.empty_like(x, memory_format=torch.channels_last), torch.empty_like(weight), dbias


def _setup_context(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, weight)


def _backward(ctx, grad):
    x, weight = ctx.saved_tensors
    dx, dw, db = torch.ops.spin_kernels.dwconv2d_backward(grad, x, weight, ctx.has_bias)
    return dx, dw, (db if ctx.has_bias else None)


dwconv2d.register_autograd(_backward, setup_context=_setup_context)


def _check(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> None:
    """TypeError / ValueError naming the argument (DESIGN.md §5) for input no convolution accepts."""
    if not isinstance(x, Tensor) or not isinstance(weight, Tensor):
        raise TypeError("x, weight: expected tensors")
    if x.dim() != 4:
        raise ValueError(f"x: expected [B, C, H, W], got shape {tuple(x.shape)}")
    C = x.shape[1]
    k = weight.shape[-1] if weight.dim() == 4 else -1
    if weight.dim() != 4 or tuple(weight.shape) != (C, 1, k, k):
        raise ValueError(f"weight: expected a depthwise weight [{C}, 1, k, k], got {tuple(weight.shape)}")
    if k % 2 == 0:
        raise ValueError(f"weight: 'same' padding needs an odd kernel size, got {k}")
    if bias is not None and tuple(bias.shape) != (C,):
        raise ValueError(f"bias: expected [{C}], got {tuple(bias.shape)}")


def _unsupported(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Optional[str]:
    """Why the CUDA kernels cannot take this valid call, or None."""
    from .dwconv_cuda import supports

    reason = supports(x.permute(0, 2, 3, 1))  # device, dtype and channel alignment, on the NHWC view
    if reason is not None:
        return reason
    if weight.dtype != x.dtype or weight.device != x.device or (bias is not None and bias.device != x.device):
        return "weight / bias dtype or device differs from x's"
    if not 3 <= weight.shape[-1] <= 9:
        return f"kernel size {weight.shape[-1]} (the kernels take 3 to 9)"
    return None


def depthwise_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=k // 2, groups=C)`` for odd k, on the CUDA kernels when they can run
    (CUDA tensors, float32 / float16 / bfloat16, k ≤ 9, C a multiple of 16 bytes of channels), else PyTorch's own
    convolution with a one-time warning. Differentiable in x, weight and bias."""
    _check(x, weight, bias)
    reason = _unsupported(x, weight, bias)
    if reason is not None:
        warn_once(f"dwconv2d:{reason}", f"depthwise_conv2d: {reason}; using F.conv2d")
        return F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2, groups=x.shape[1])
    return torch.ops.spin_kernels.dwconv2d(x, weight, bias)
