"""Plain-PyTorch references of the ViT kernels (spin_kernels/triton/{attention,layernorm,vit_gemm}.py).

Same signatures and return conventions as the Triton launch helpers, any dtype (float64 for ground truth), any
device. Explicit formulas (no autograd), so each backward is checked on its own.
"""
from __future__ import annotations

import math

import torch

LOG2E = 1.4426950408889634


# ----------------------------------------------------------------------------------------------- attention
def _split(qkv: torch.Tensor, num_heads: int):
    b, n, c3 = qkv.shape
    d = c3 // (3 * num_heads)
    q, k, v = qkv.reshape(b, n, 3, num_heads, d).permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, N, D]
    return q, k, v, d


def _keep_mask(qkv, num_heads, dropout_p, seed):
    """The kernels' Philox keep mask (the random stream is the Triton one; the math here is plain PyTorch)."""
    from ..triton.attention import attn_dropout_mask
    b, n, _ = qkv.shape
    return attn_dropout_mask(seed, b, num_heads, n, dropout_p, device=qkv.device)


def attn_fwd(qkv: torch.Tensor, num_heads: int, sm_scale: float | None = None, out=None, lse=None,
             dropout_p: float = 0.0, seed: int = 0):
    """o [B, N, C] and lse [B, H, N] (log2 domain, fp32 unless qkv is float64) from the packed qkv [B, N, 3C]."""
    q, k, v, d = _split(qkv, num_heads)
    scale = d ** -0.5 if sm_scale is None else sm_scale
    acc = torch.float64 if qkv.dtype == torch.float64 else torch.float32
    s = (q.to(acc) @ k.to(acc).transpose(-1, -2)) * scale
    lse_e = torch.logsumexp(s, -1)
    p = torch.exp(s - lse_e[..., None])
    if dropout_p > 0:
        p = p * _keep_mask(qkv, num_heads, dropout_p, seed).to(acc) / (1.0 - dropout_p)
    o = (p @ v.to(acc)).transpose(1, 2).reshape(qkv.shape[0], qkv.shape[1], -1).to(qkv.dtype)
    lse2 = lse_e * LOG2E
    if out is not None:
        o = out.copy_(o)
    if lse is not None:
        lse2 = lse.copy_(lse2)
    return o, lse2


def attn_bwd(do: torch.Tensor, qkv: torch.Tensor, o: torch.Tensor, lse: torch.Tensor, num_heads: int,
             sm_scale: float | None = None, out=None, dropout_p: float = 0.0, seed: int = 0):
    """dqkv [B, N, 3C] from dO [B, N, C] (o and lse as returned by attn_fwd)."""
    q, k, v, d = _split(qkv, num_heads)
    b, n, c3 = qkv.shape
    scale = d ** -0.5 if sm_scale is None else sm_scale
    acc = torch.float64 if qkv.dtype == torch.float64 else torch.float32
    q, k, v = q.to(acc), k.to(acc), v.to(acc)
    dov = do.to(acc).reshape(b, n, num_heads, d).transpose(1, 2)
    ov = o.to(acc).reshape(b, n, num_heads, d).transpose(1, 2)
    p = torch.exp2((q @ k.transpose(-1, -2)) * (scale * LOG2E) - lse.to(acc)[..., None])
    delta = (dov * ov).sum(-1)
    dp = dov @ v.transpose(-1, -2)
    if dropout_p > 0:
        keep = _keep_mask(qkv, num_heads, dropout_p, seed).to(acc) / (1.0 - dropout_p)
        dv = (p * keep).transpose(-1, -2) @ dov
        dp = dp * keep
    else:
        dv = p.transpose(-1, -2) @ dov
    ds = p * (dp - delta[..., None])
    dq = ds @ k * scale
    dk = ds.transpose(-1, -2) @ q * scale
    dqkv = torch.stack([dq, dk, dv], 0).permute(1, 3, 0, 2, 4).reshape(b, n, c3).to(qkv.dtype)
    return out.copy_(dqkv) if out is not None else dqkv


def attention(qkv: torch.Tensor, num_heads: int, sm_scale: float | None = None, keep=None,
              dropout_p: float = 0.0) -> torch.Tensor:
    """softmax attention output [B, N, C] (autograd-friendly); keep: dropout keep mask [B, H, N, N]."""
    q, k, v, d = _split(qkv, num_heads)
    scale = d ** -0.5 if sm_scale is None else sm_scale
    p = torch.softmax((q @ k.transpose(-1, -2)) * scale, -1)
    if keep is not None:
        p = p * keep / (1.0 - dropout_p)
    return (p @ v).transpose(1, 2).reshape(qkv.shape[0], qkv.shape[1], -1)


# ----------------------------------------------------------------------------------------------- layer norm
def ln_stats(x: torch.Tensor, eps: float = 1e-6):
    """Row mean and rstd (fp32, or float64 for float64 input) of x [..., C], flattened to [M]."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    x2 = x.reshape(-1, x.shape[-1]).to(acc)
    mean = x2.mean(-1)
    var = ((x2 - mean[:, None]) ** 2).mean(-1)
    return mean, torch.rsqrt(var + eps)


def ln_fwd(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
           eps: float = 1e-6, write_y: bool = True):
    """(y or None, mean, rstd): y = LayerNorm(x) in x's dtype, statistics as in ln_stats."""
    mean, rstd = ln_stats(x, eps)
    if not write_y:
        return None, mean, rstd
    x2 = x.reshape(-1, x.shape[-1]).to(mean.dtype)
    y = (x2 - mean[:, None]) * rstd[:, None] * weight.to(mean.dtype) + bias.to(mean.dtype)
    return y.to(x.dtype).reshape(x.shape), mean, rstd


def ln_bwd(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
           dres: torch.Tensor | None = None, num_programs: int | None = None, out: torch.Tensor | None = None):
    """(dx [+ dres], dweight, dbias) of y = LayerNorm(x)."""
    acc = mean.dtype
    c = x.shape[-1]
    x2 = x.reshape(-1, c).to(acc)
    g = dy.reshape(-1, c).to(acc)
    xhat = (x2 - mean[:, None]) * rstd[:, None]
    gw = g * weight.to(acc)
    dx = rstd[:, None] * (gw - gw.mean(-1, keepdim=True) - xhat * (gw * xhat).mean(-1, keepdim=True))
    if dres is not None:
        dx = dx + dres.reshape(-1, c).to(acc)
    dw = (g * xhat).sum(0)
    db = g.sum(0)
    dx = dx.to(x.dtype).reshape(x.shape)
    if out is not None:
        dx = out.view(x.shape).copy_(dx)
    return dx, dw.to(weight.dtype), db.to(weight.dtype)


# ----------------------------------------------------------------------------------------------- GEMMs
def gelu(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * z * (1.0 + torch.erf(z * (1.0 / math.sqrt(2.0))))


def gelu_grad(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(z * (1.0 / math.sqrt(2.0)))) + z * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def ln_linear(x, mean, rstd, ln_w, ln_b, weight, bias, act: str = "none"):
    """z = LN(x) Wᵀ + b (LN from the given row statistics); returns (z, act(z)) — act 'none' or 'gelu'."""
    acc = mean.dtype
    c = x.shape[-1]
    x2 = x.reshape(-1, c).to(acc)
    a = (x2 - mean[:, None]) * rstd[:, None] * ln_w.to(acc) + ln_b.to(acc)
    z = a @ weight.to(acc).t() + bias.to(acc)
    y = gelu(z) if act == "gelu" else z
    shape = x.shape[:-1] + (weight.shape[0],)
    return z.to(x.dtype).reshape(shape), y.to(x.dtype).reshape(shape)


def linear_residual(a, weight, bias, res, scale=None):
    """out = res + scale_b * (a Wᵀ + b); scale [B] per-sample drop-path scale (or None)."""
    acc = torch.float64 if a.dtype == torch.float64 else torch.float32
    z = a.to(acc) @ weight.to(acc).t() + bias.to(acc)
    if scale is not None:
        z = z * scale.to(acc).reshape(-1, *([1] * (z.dim() - 1)))
    return (res.to(acc) + z).to(a.dtype)


def gemm(a: torch.Tensor, b: torch.Tensor, out_dtype=None, *, bias=None, act: str = "none", pre_out=None,
         gelu_grad_z=None, gelu_out=None, res=None, scale=None, rows_per_sample: int = 1, rowsum: bool = False,
         config=None, out=None, split_k=None):
    """Reference of spin_kernels.triton.vit_gemm.gemm (same arguments; config / split_k are ignored)."""
    acc = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
    m = a.shape[0]
    A, B = a.to(acc), b.to(acc)
    c = A @ B
    if bias is not None:
        c = c + bias.to(acc)
    if act == "gelu":
        if pre_out is not None:
            pre_out.copy_(c)
        c = gelu(c)
    if gelu_grad_z is not None:
        z = gelu_grad_z.to(acc)
        if gelu_out is not None:
            gelu_out.copy_(gelu(z))
        c = c * gelu_grad(z)
    if res is not None:
        if scale is not None:
            c = c * scale.to(acc).repeat_interleave(rows_per_sample)[:m, None]
        c = c + res.to(acc)
    c = c.to(out_dtype or b.dtype)
    if out is not None:
        c = out.copy_(c)
    return (c, A.sum(1).to(torch.float64 if acc == torch.float64 else torch.float32)) if rowsum else c
