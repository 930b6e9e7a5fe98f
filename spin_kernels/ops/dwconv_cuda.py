"""The depthwise half of the fused ConvMixer op on the CUDA C++ kernels (``backend="cuda"``).

``dw_fwd`` and ``dw_bwd`` have the signatures and contracts of :mod:`spin_kernels.triton.dwconv`'s (rows
[M = B·H·W, C] in, pre-activation q out, partial BN statistics of act(q); the backward rebuilds dq from du through
the BatchNorm + activation backward and returns dx / dhz, the filter and bias gradients and the previous
BatchNorm's sums), so :mod:`spin_kernels.ops.convmixer` runs either. The work is done by csrc/depthwise_conv.cu:
one forward kernel, one input-side backward kernel and one deterministic weight-gradient kernel pair.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import cuda


def _view(t: Optional[Tensor], B: int, H: int, W: int) -> Optional[Tensor]:
    return None if t is None else t.view(B, H, W, t.shape[-1])


def supports(t: Tensor) -> Optional[str]:
    """Why the CUDA depthwise kernels cannot take activation rows like ``t`` here, or None when they can."""
    if not cuda.runs_here(t):
        return "the CUDA kernels do not run on this device (no GPU / extension, and no emulation)"
    if t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"dtype {t.dtype}"
    if t.shape[-1] % (16 // t.element_size()):
        return f"C={t.shape[-1]} is not a multiple of {16 // t.element_size()} (16-byte vector access)"
    return None


def dw_fwd(hz, res, ax, bx, weight, bias, B, H, W, act_in="gelu", act="gelu", emit_stats=True, q_out=None):
    """q = DW(x) + bias with x = [res] + ax·act_in(hz) + bx; returns (q [M, C], stats [3, T, C] of act(q) or None)."""
    M, C = hz.shape
    q, stats = cuda.dwconv_forward(_view(hz, B, H, W), weight, bias, ax, bx, act="none", res=_view(res, B, H, W),
                                   act_in=act_in, stats_act=act, with_stats=emit_stats, out=_view(q_out, B, H, W))
    return q.view(M, C), stats


def dw_bwd(du, q, qvec, weight, hz, res, xvec, B, H, W, act_in="gelu", act="gelu",
           write_dx=True, write_dhz=False, dx_out=None, tile_h=None, block_c=None, programs=None):
    """Backward of a layer's depthwise half (see spin_kernels.triton.dwconv.dw_bwd for the contract).

    Returns (dx or None, dhz or None, dweight fp32 [C, K, K], dbias fp32 [C], partial sums fp32 [2, P, C] of dx and
    dx·xhat_in).
    ``tile_h``, ``block_c``, ``programs`` (the Triton kernel's tiling overrides) are accepted for signature
    compatibility; the CUDA kernels size their own grids.
    """
    M, C = du.shape
    K = weight.shape[-1]
    du4, q4, hz4 = _view(du, B, H, W), _view(q, B, H, W), _view(hz, B, H, W)
    dx, dhz, sums = cuda.dwconv_backward_data(du4, weight, hz4, xvec, q=q4, vec6=qvec, act=act, act_in=act_in,
                                              write_dx=write_dx, write_dhz=write_dhz, with_sums=True,
                                              dx_out=_view(dx_out, B, H, W))
    dweight, dbias = cuda.dwconv_backward_weight(du4, hz4, K, xvec[0], xvec[1], q=q4, vec6=qvec, act=act,
                                                 res=_view(res, B, H, W), act_in=act_in)
    return (None if dx is None else dx.view(M, C), None if dhz is None else dhz.view(M, C),
            dweight.reshape(C, K, K), dbias, sums)
