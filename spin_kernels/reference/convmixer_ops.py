"""Plain-PyTorch reference of the fused ConvMixer ops (spin_kernels.ops.convmixer / spin_kernels.triton).

Same signatures and outputs as the fused versions, any float dtype (float64 for ground truth), differentiable by
autograd. Activations are [M = B·H·W, C] rows of a channels-last [B, H, W, C] tensor.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def act_ref(z: Tensor, act: str) -> Tensor:
    if act == "gelu":
        return F.gelu(z)
    if act == "relu":
        return F.relu(z)
    if act in ("identity", "none"):
        return z
    raise ValueError(f"act: expected 'gelu', 'relu' or 'identity', got {act!r}")


def x_ref(hz: Tensor, res: Optional[Tensor], ax: Tensor, bx: Tensor, act_in: str) -> Tensor:
    """x = [res] + ax·act_in(hz) + bx."""
    x = ax * act_ref(hz, act_in) + bx
    return x if res is None else x + res


def dwconv_ref(x: Tensor, weight: Tensor, bias: Tensor, B: int, H: int, W: int) -> Tensor:
    """Depthwise k×k 'same' conv of rows x [M, C] -> [M, C]."""
    C = x.shape[1]
    k = weight.shape[-1]
    xi = x.reshape(B, H, W, C).permute(0, 3, 1, 2)
    q = F.conv2d(xi, weight.reshape(C, 1, k, k), bias, padding=k // 2, groups=C)
    return q.permute(0, 2, 3, 1).reshape(B * H * W, C)


def dw_fwd_ref(hz, res, ax, bx, weight, bias, B, H, W, act_in="gelu", act="gelu"):
    """q = DW(x) + bias and the batch (mean, biased var) of act(q), per channel."""
    q = dwconv_ref(x_ref(hz, res, ax, bx, act_in), weight, bias, B, H, W)
    g = act_ref(q, act)
    return q, g.mean(0), g.var(0, unbiased=False)


def pw_fwd_ref(hz, res, ax, bx, q, a1, b1, weight, bias, act_in="gelu", act_g="gelu", act="gelu"):
    """u = x + a1·act_g(q) + b1 ; z = u·Wᵀ + bias ; returns (z, u, mean(act(z)), var(act(z)))."""
    u = x_ref(hz, res, ax, bx, act_in) + a1 * act_ref(q, act_g) + b1
    z = u @ weight.reshape(weight.shape[0], -1).t() + bias
    h = act_ref(z, act)
    return z, u, h.mean(0), h.var(0, unbiased=False)


def bn_finalize_ref(h: Tensor, gamma, beta, eps, running_mean=None, running_var=None, momentum=0.1):
    """[5, C] (mean, var, invstd, a, b) of rows h, updating running stats in place like nn.BatchNorm2d."""
    mean = h.mean(0)
    var = h.var(0, unbiased=False)
    invstd = torch.rsqrt(var + eps)
    a = gamma * invstd
    if running_mean is not None:
        n = h.shape[0]
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(momentum * mean)
            running_var.mul_(1 - momentum).add_(momentum * var * n / max(n - 1, 1))
    return torch.stack([mean, var, invstd, a, beta - mean * a])


def _norm_stats(h: Tensor, running_mean: Tensor, running_var: Tensor, eps: float, training: bool):
    """(mean, var, invstd) a BatchNorm normalises rows ``h`` [M, C] with: the batch's (biased var) in training,
    the running statistics (cast to ``h``'s dtype) in eval."""
    if training:
        mean, var = h.mean(0), h.var(0, unbiased=False)
    else:
        mean, var = running_mean.to(h.dtype), running_var.to(h.dtype)
    return mean, var, torch.rsqrt(var + eps)


def convmixer_run_ref(z_in: Tensor, u_in: Optional[Tensor], in_mean: Tensor, in_invstd: Tensor, in_w: Tensor,
                      in_b: Tensor, dw_w: List[Tensor], dw_b: List[Tensor], pw_w: Tensor, pw_b: Tensor,
                      n1_w: List[Tensor], n1_b: List[Tensor], n1_rm: List[Tensor], n1_rv: List[Tensor],
                      n2_w: List[Tensor], n2_b: List[Tensor], n2_rm: List[Tensor], n2_rv: List[Tensor],
                      B: int, H: int, W: int, eps1: float, eps2: float, training: bool, act: str, spin: bool):
    """Reference of ``spin_kernels::convmixer_run``: the R layers of one shared-pointwise run.

    Input x of the run: ``x = [u_in] + in_w·(act(z_in) - in_mean)·in_invstd + in_b``. Layer i:
    ``q = DW_i(x)``, ``u = x + BN1_i(act(q))``, ``z = PW(u)``; next ``x = [u] + BN2_i(act(z))``, where BN2 of the
    last layer is applied by the consumer (only its statistics are returned).
    Returns ``(z, u, bn, Z, Q, U, stats)``: z [M, C] and u [M, C] (SPIN; else empty) of the last layer, bn [2, C]
    its BN2 mean and invstd; Z [R-1, M, C] and U (SPIN; else empty) of layers 0..R-2; Q [R, M, C]; stats
    [R, 6, C]: mean1, var1, invstd1, mean2, var2, invstd2 (batch stats in training, running stats in eval).
    Pre-activations throughout (z = PW(u), q = DW(x)).
    """
    R = len(dw_w)
    x = (act_ref(z_in, act) - in_mean) * in_invstd * in_w + in_b
    if u_in is not None:
        x = x + u_in
    Zs, Qs, Us, stats = [], [], [], []
    for i in range(R):
        q = dwconv_ref(x, dw_w[i], dw_b[i], B, H, W)
        g = act_ref(q, act)
        m1, v1, i1 = _norm_stats(g, n1_rm[i], n1_rv[i], eps1, training)
        u = x + (g - m1) * i1 * n1_w[i] + n1_b[i]
        z = u @ pw_w.reshape(pw_w.shape[0], -1).t() + pw_b
        h = act_ref(z, act)
        m2, v2, i2 = _norm_stats(h, n2_rm[i], n2_rv[i], eps2, training)
        Zs.append(z)
        Qs.append(q)
        Us.append(u)
        stats.append(torch.stack([m1, v1, i1, m2, v2, i2]))
        if i < R - 1:
            x = (h - m2) * i2 * n2_w[i] + n2_b[i]
            if spin:
                x = x + u
    empty = z_in.new_empty((0,))
    stats = torch.stack(stats)
    z_rest = torch.stack(Zs[:-1]) if R > 1 else z_in.new_empty((0, *z_in.shape))
    u_rest = (torch.stack(Us[:-1]) if R > 1 else z_in.new_empty((0, *z_in.shape))) if spin else empty
    return (Zs[-1], Us[-1] if spin else empty, stats[-1, 3::2], z_rest, torch.stack(Qs), u_rest, stats)


def convmixer_features_ref(model, images: Tensor) -> Tensor:
    """The model's own PyTorch trunk (the reference backend)."""
    return model._run_blocks(model.stem(images))
