"""Fused ViT (DeiT) trunk: one custom op per shared run of blocks, Triton kernels inside (spin_kernels.triton).

A *run* is a maximal stretch of consecutive layers that use the same unique attention AND the same unique MLP
weights (the LayerNorms stay per layer: they are per-layer inputs of the op). Per layer (rows M = B·N, C channels):

    xn = LN1(x)                                   one pass, written once    (layernorm.ln_fwd; mean1, rstd1)
    qkv = xn·Wqkvᵀ + b                            bias epilogue             (vit_gemm)
    o, lse = flash_attn(qkv)                      q/k/v read in place from qkv  (attention.attn_fwd)
    y = x + s1·(o·Wpᵀ + bp)                       bias + residual + drop-path   (vit_gemm, HAS_RES/HAS_SCALE)
    yn = LN2(y)                                   one pass                  (mean2, rstd2)
    h = gelu(yn·W1ᵀ + b1)                         bias + GELU epilogue (+ z1 = the pre-activation when saved)
    x' = y + s2·(h·W2ᵀ + b2)                      bias + residual + drop-path

The LayerNorm outputs are materialised (an extra write and read of M·C) rather than applied in the GEMM prologue:
there they were recomputed for every N tile of the GEMM and of its weight gradient, and the machine-code cost model
put those GEMMs at 2.5-9x their floor against ~1.2x for a materialising pass plus a plain GEMM.

HBM traffic per layer forward, in activation passes of N·C: ln1 2, qkv 1 + 3, attention 3 + 1, proj 3, ln2 2,
fc1 1 + 4, fc2 4 + 2 = 26 (eager PyTorch: ~38, with GELU and residual adds materialised).

``recompute`` chooses, per model, what the backward recomputes instead of keeping from the forward:

    "all" (default)  saves x, y, o (3 tensors of M·C) + row statistics + the attention lse; the backward redoes
                     LN1 and the qkv GEMM, LN2 and the fc1 GEMM (+2 GEMMs of 2·M·C·3C and 2·M·C·4C FLOPs).
    "qkv"            recompute qkv only: also saves LN2(y) and z1 (+5 M·C per layer).
    "fc1"            recompute fc1 only: also saves LN1(x) and qkv (+4 M·C per layer).
    "none"           saves both (+9 M·C per layer, 12 in all): no recompute, the fastest backward.
(perf.roofline.vit_recompute_costs gives the memory and time of each mode.) Backward per layer, in reverse:

    z1 (saved, or LN2 + GEMM) ; dz1 = (g·s2)·W2 ⊙ gelu'(z1), h = gelu(z1) from the same epilogue ;
    dy = LN2_bwd(dz1·W1) + g ; do = (dy·s1)·Wp ; qkv (saved, or LN1 + GEMM) ; dqkv = flash_attn_bwd(do) ;
    dx = LN1_bwd(dqkv·Wqkv) + dy

and once per run, each shared weight's gradient as ONE fp32 GEMM over the concatenated rows of all its layers
(dW2 = [g·s2]ᵀ·[h], dW1 = [dz1]ᵀ·[LN2(y)], dWp = [dy·s1]ᵀ·[o], dWqkv = [dqkv]ᵀ·[LN1(x)]: plain GEMMs on the
materialised operands; bias gradients from the same GEMMs' row sums).

Attention dropout (training): Philox keep masks generated inside the attention kernels from a per-layer seed
(drawn from torch's CPU generator, so torch.manual_seed makes runs reproducible), regenerated in backward.

Unsupported-but-valid cases run the reference PyTorch blocks with a one-time warning: head_dim not a power of two
in 16..128, CPU tensors without
TRITON_INTERPRET=1, bfloat16 in the interpreter, mixed activation / weight dtypes, non-LayerNorm norms.
"""
import os
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from .._util import warn_once as _warn_once
from ..recompute import vit_recomputed
from ..sharing import split_runs


def _kernels():
    from ..triton import attention, layernorm, vit_gemm  # noqa: WPS433 - triton imported only when a kernel runs
    return attention, layernorm, vit_gemm


# ------------------------------------------------------------------------------------------------ forward
def _validate(x, qkv_w, qkv_b, proj_w, proj_b, fc1_w, fc1_b, fc2_w, fc2_b, n1_w, n1_b, n2_w, n2_b, dp_scale,
              num_heads):
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3 or not x.is_contiguous():
        raise ValueError(f"x: expected a contiguous [B, N, C] tensor, got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"x: expected float32, float16 or bfloat16, got {x.dtype}")
    b, _n, c = x.shape
    if not isinstance(num_heads, int) or num_heads < 1 or c % num_heads:
        raise ValueError(f"num_heads: expected a positive divisor of C={c}, got {num_heads!r}")
    hid = fc1_w.shape[0] if isinstance(fc1_w, Tensor) else None
    shapes = dict(qkv_w=(3 * c, c), qkv_b=(3 * c,), proj_w=(c, c), proj_b=(c,), fc1_w=(hid, c), fc1_b=(hid,),
                  fc2_w=(c, hid), fc2_b=(c,))
    given = dict(qkv_w=qkv_w, qkv_b=qkv_b, proj_w=proj_w, proj_b=proj_b, fc1_w=fc1_w, fc1_b=fc1_b, fc2_w=fc2_w,
                 fc2_b=fc2_b)
    for name, t in given.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if tuple(t.shape) != shapes[name]:
            raise ValueError(f"{name}: expected shape {shapes[name]}, got {tuple(t.shape)}")
        if t.dtype != x.dtype or t.device != x.device:
            raise TypeError(f"{name}: expected {x.dtype} on {x.device} like x, got {t.dtype} on {t.device}")
    r = len(n1_w)
    for name, lst in (("n1_w", n1_w), ("n1_b", n1_b), ("n2_w", n2_w), ("n2_b", n2_b)):
        if len(lst) != r or r == 0:
            raise ValueError(f"{name}: expected {max(r, 1)} per-layer tensors (one per layer of the run), "
                             f"got {len(lst)}")
        for t in lst:
            if tuple(t.shape) != (c,) or t.dtype != x.dtype or t.device != x.device:
                raise ValueError(f"{name}: expected [{c}] {x.dtype} tensors on {x.device}, got {tuple(t.shape)} "
                                 f"{t.dtype}")
    if dp_scale is not None and (tuple(dp_scale.shape) != (r, 2, b) or dp_scale.dtype != torch.float32):
        raise ValueError(f"dp_scale: expected fp32 [{r}, 2, {b}], got {tuple(dp_scale.shape)} {dp_scale.dtype}")


def saved_shapes(r: int, m: int, c: int, hidden: int, recompute: str) -> dict:
    """Shapes of the optional saved tensors of a run (XN1 = LN1(x), QKV, YN = LN2(y), Z1 = fc1 pre-activation):
    [R, M, ·] when mode ``recompute`` keeps them, (0,) when the backward recomputes them."""
    redo = vit_recomputed(recompute)
    keep_qkv, keep_fc1 = "qkv" not in redo, "fc1" not in redo
    return dict(XN1=(r, m, c) if keep_qkv else (0,), QKV=(r, m, 3 * c) if keep_qkv else (0,),
                YN=(r, m, c) if keep_fc1 else (0,), Z1=(r, m, hidden) if keep_fc1 else (0,))


def run_forward(x, qkv_w, qkv_b, proj_w, proj_b, fc1_w, fc1_b, fc2_w, fc2_b, n1_w, n1_b, n2_w, n2_b, dp_scale,
                num_heads, eps, attn_drop, seed, recompute="all"):
    _validate(x, qkv_w, qkv_b, proj_w, proj_b, fc1_w, fc1_b, fc2_w, fc2_b, n1_w, n1_b, n2_w, n2_b, dp_scale,
              num_heads)
    attention, layernorm, vit_gemm = _kernels()
    gemm = vit_gemm.gemm
    b, n, c = x.shape
    m = b * n
    r = len(n1_w)
    new = layernorm.new_output  # (_common.new_output) NaN-poisoned on the CPU / with SPIN_KERNELS_POISON=1
    X = new((r, m, c), x.device, x.dtype)
    Y = new((r, m, c), x.device, x.dtype)
    O = new((r, m, c), x.device, x.dtype)
    stats = new((r, 4, m), x.device, torch.float32)
    lse = new((r, b, num_heads, n), x.device, torch.float32)
    kept = {k: new(v, x.device, x.dtype) for k, v in saved_shapes(r, m, c, fc1_w.shape[0], recompute).items()}
    XN1, QKV, YN, Z1 = kept["XN1"], kept["QKV"], kept["YN"], kept["Z1"]
    X[0].copy_(x.reshape(m, c))
    out = None
    for i in range(r):
        xi = X[i]
        s1 = dp_scale[i, 0] if dp_scale is not None else None
        s2 = dp_scale[i, 1] if dp_scale is not None else None
        xn = layernorm.ln_fwd(xi, n1_w[i], n1_b[i], eps, out=XN1[i] if XN1.numel() else None,
                              mean_out=stats[i, 0], rstd_out=stats[i, 1])[0]
        qkv = gemm(xn, qkv_w.t(), bias=qkv_b, out=QKV[i] if QKV.numel() else None)
        attention.attn_fwd(qkv.view(b, n, 3 * c), num_heads, out=O[i].view(b, n, c), lse=lse[i],
                           dropout_p=attn_drop, seed=seed + i)
        gemm(O[i], proj_w.t(), bias=proj_b, res=xi, scale=s1, rows_per_sample=n, out=Y[i])
        yn = layernorm.ln_fwd(Y[i], n2_w[i], n2_b[i], eps, out=YN[i] if YN.numel() else None,
                              mean_out=stats[i, 2], rstd_out=stats[i, 3])[0]
        h = gemm(yn, fc1_w.t(), bias=fc1_b, act="gelu", pre_out=Z1[i] if Z1.numel() else None)
        nxt = gemm(h, fc2_w.t(), bias=fc2_b, res=Y[i], scale=s2, rows_per_sample=n,
                   out=X[i + 1] if i + 1 < r else None)
        if i + 1 == r:
            out = nxt.view(b, n, c)
    return out, X, Y, O, stats, lse, XN1, QKV, YN, Z1


@torch.library.custom_op("spin_kernels::vit_run", mutates_args=())
def vit_run(x: Tensor, qkv_w: Tensor, qkv_b: Tensor, proj_w: Tensor, proj_b: Tensor, fc1_w: Tensor, fc1_b: Tensor,
            fc2_w: Tensor, fc2_b: Tensor, n1_w: List[Tensor], n1_b: List[Tensor], n2_w: List[Tensor],
            n2_b: List[Tensor], dp_scale: Optional[Tensor], num_heads: int, eps: float, attn_drop: float = 0.0,
            seed: int = 0, recompute: str = "all"
            ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """A run of R ViT blocks sharing (qkv, proj, fc1, fc2); per-layer LayerNorms n1/n2 (lists of R).

    x [B, N, C]; dp_scale [R, 2, B] fp32 per-sample drop-path scales (attn, mlp branch) or None;
    attn_drop: attention-dropout probability, layer i of the run uses Philox seed ``seed + i``;
    recompute: what the backward recomputes instead of saving ('all', 'qkv', 'fc1', 'none'; module docstring).
    Returns (out [B, N, C], X, Y, O [R, B·N, C], stats [R, 4, B·N] fp32 (mean1, rstd1, mean2, rstd2),
    lse [R, B, H, N] fp32, XN1, QKV, YN, Z1 (saved_shapes: empty unless ``recompute`` keeps them));
    everything but ``out`` is saved state for the backward.
    """
    return run_forward(x, qkv_w, qkv_b, proj_w, proj_b, fc1_w, fc1_b, fc2_w, fc2_b, n1_w, n1_b, n2_w, n2_b,
                       dp_scale, num_heads, eps, attn_drop, seed, recompute)


@vit_run.register_fake
def _(x, qkv_w, qkv_b, proj_w, proj_b, fc1_w, fc1_b, fc2_w, fc2_b, n1_w, n1_b, n2_w, n2_b, dp_scale, num_heads, eps,
      attn_drop=0.0, seed=0, recompute="all"):
    b, n, c = x.shape
    r = len(n1_w)
    big = x.new_empty((r, b * n, c))
    kept = [x.new_empty(s) for s in saved_shapes(r, b * n, c, fc1_w.shape[0], recompute).values()]
    return (x.new_empty((b, n, c)), big, torch.empty_like(big), torch.empty_like(big),
            x.new_empty((r, 4, b * n), dtype=torch.float32), x.new_empty((r, b, num_heads, n), dtype=torch.float32),
            *kept)


# ------------------------------------------------------------------------------------------------ backward
def run_backward(g, X, Y, O, stats, lse, XN1, QKV, YN, Z1, qkv_w, qkv_b, proj_w, proj_b, fc1_w, fc1_b, fc2_w,
                 fc2_b, n1_w, n1_b, n2_w, n2_b, dp_scale, num_heads, eps, attn_drop=0.0, seed=0):
    """The body of ``spin_kernels::vit_run_backward`` (a plain function: the cost model traces its launches
    without the dispatcher). XN1 / QKV and YN / Z1 are the forward's saved tensors, or empty when the mode
    recomputes them (LN pass + GEMM, bit-identical to the forward's: same kernels, same inputs)."""
    attention, layernorm, vit_gemm = _kernels()
    gemm = vit_gemm.gemm
    r, m, c = X.shape
    b, h, n = lse.shape[1:]
    hidden = fc1_w.shape[0]
    dev, dt = X.device, X.dtype
    # run buffers: the operands of the run-wide weight-gradient GEMMs (rows of all R layers concatenated)
    new = layernorm.new_output
    G2 = new((r, m, c), dev, dt)          # g·s2: gradient of the fc2 output
    H = new((r, m, hidden), dev, dt)      # gelu(z1): fc2's input, written by the fc1 dgrad epilogue
    DZ1 = new((r, m, hidden), dev, dt)    # gradient of the fc1 pre-activation (holds z1 first when recomputed)
    GY = new((r, m, c), dev, dt)          # dy·s1: gradient of the proj output
    DQKV = new((r, m, 3 * c), dev, dt)    # gradient of the qkv output
    redo_qkv, redo_fc1 = XN1.numel() == 0, YN.numel() == 0
    XN1 = new((r, m, c), dev, dt) if redo_qkv else XN1   # LN1(x): qkv's input
    YN = new((r, m, c), dev, dt) if redo_fc1 else YN     # LN2(y): fc1's input
    scratch = new((2, m), dev, torch.float32) if redo_qkv or redo_fc1 else None  # recomputed row statistics
    dn = [[None] * r for _ in range(4)]
    gi = g.reshape(m, c).contiguous()
    if dp_scale is None:
        G2[r - 1].copy_(gi)
    for i in reversed(range(r)):
        xi, yi = X[i], Y[i]
        m1, r1, m2, r2 = stats[i, 0], stats[i, 1], stats[i, 2], stats[i, 3]
        if redo_fc1:
            layernorm.ln_fwd(yi, n2_w[i], n2_b[i], eps, out=YN[i], mean_out=scratch[0], rstd_out=scratch[1])
            z1 = gemm(YN[i], fc1_w.t(), bias=fc1_b, out=DZ1[i])
        else:
            z1 = Z1[i]
        if dp_scale is not None:
            torch.mul(gi, dp_scale[i, 1].repeat_interleave(n)[:, None].to(dt), out=G2[i])
        gemm(G2[i], fc2_w, gelu_grad_z=z1, gelu_out=H[i], out=DZ1[i])  # in place over z1 when recomputed
        dln2 = gemm(DZ1[i], fc1_w)
        # without drop-path the gradients land directly in the run buffers (no copy pass)
        dy, dn[2][i], dn[3][i] = layernorm.ln_bwd(dln2, yi, n2_w[i], m2, r2, dres=gi,
                                                  out=GY[i] if dp_scale is None else None)
        if dp_scale is not None:
            torch.mul(dy, dp_scale[i, 0].repeat_interleave(n)[:, None].to(dt), out=GY[i])
        do = gemm(GY[i], proj_w)
        if redo_qkv:
            layernorm.ln_fwd(xi, n1_w[i], n1_b[i], eps, out=XN1[i], mean_out=scratch[0], rstd_out=scratch[1])
            qkv = gemm(XN1[i], qkv_w.t(), bias=qkv_b)
        else:
            qkv = QKV[i]
        attention.attn_bwd(do.view(b, n, c), qkv.view(b, n, 3 * c), O[i].view(b, n, c), lse[i], h,
                           out=DQKV[i].view(b, n, 3 * c), dropout_p=attn_drop, seed=seed + i)
        dln1 = gemm(DQKV[i], qkv_w)
        gi, dn[0][i], dn[1][i] = layernorm.ln_bwd(dln1, xi, n1_w[i], m1, r1, dres=dy,
                                                  out=G2[i - 1] if dp_scale is None and i > 0 else None)
    # the shared weights' gradients: one fp32 GEMM each over the R·M concatenated rows
    f32 = torch.float32
    rm = r * m
    dfc2_w, dfc2_b = gemm(G2.view(rm, c).t(), H.view(rm, hidden), f32, rowsum=True)
    dfc1_w, dfc1_b = gemm(DZ1.view(rm, hidden).t(), YN.view(rm, c), f32, rowsum=True)
    dproj_w, dproj_b = gemm(GY.view(rm, c).t(), O.view(rm, c), f32, rowsum=True)
    dqkv_w, dqkv_b = gemm(DQKV.view(rm, 3 * c).t(), XN1.view(rm, c), f32, rowsum=True)
    grads = [gi.view(b, n, c), dqkv_w.to(qkv_w.dtype), dqkv_b.to(qkv_b.dtype), dproj_w.to(proj_w.dtype),
             dproj_b.to(proj_b.dtype), dfc1_w.to(fc1_w.dtype), dfc1_b.to(fc1_b.dtype), dfc2_w.to(fc2_w.dtype),
             dfc2_b.to(fc2_b.dtype)]
    return grads + dn[0] + dn[1] + dn[2] + dn[3]


@torch.library.custom_op("spin_kernels::vit_run_backward", mutates_args=())
def vit_run_backward(g: Tensor, X: Tensor, Y: Tensor, O: Tensor, stats: Tensor, lse: Tensor, XN1: Tensor,
                     QKV: Tensor, YN: Tensor, Z1: Tensor, qkv_w: Tensor, qkv_b: Tensor, proj_w: Tensor,
                     proj_b: Tensor, fc1_w: Tensor, fc1_b: Tensor, fc2_w: Tensor, fc2_b: Tensor, n1_w: List[Tensor],
                     n1_b: List[Tensor], n2_w: List[Tensor], n2_b: List[Tensor], dp_scale: Optional[Tensor],
                     num_heads: int, eps: float, attn_drop: float = 0.0, seed: int = 0) -> List[Tensor]:
    """Gradients of vit_run: [dx, dqkv_w, dqkv_b, dproj_w, dproj_b, dfc1_w, dfc1_b, dfc2_w, dfc2_b,
    dn1_w × R, dn1_b × R, dn2_w × R, dn2_b × R]."""
    return run_backward(g, X, Y, O, stats, lse, XN1, QKV, YN, Z1, qkv_w, qkv_b, proj_w, proj_b, fc1_w, fc1_b,
                        fc2_w, fc2_b, n1_w, n1_b, n2_w, n2_b, dp_scale, num_heads, eps, attn_drop, seed)


@vit_run_backward.register_fake
def _(g, X, Y, O, stats, lse, XN1, QKV, YN, Z1, qkv_w, qkv_b, proj_w, proj_b, fc1_w, fc1_b, fc2_w, fc2_b, n1_w,
      n1_b, n2_w, n2_b, dp_scale, num_heads, eps, attn_drop=0.0, seed=0):
    out = [torch.empty_like(g)] + [torch.empty_like(t) for t in (qkv_w, qkv_b, proj_w, proj_b, fc1_w, fc1_b,
                                                                 fc2_w, fc2_b)]
    return out + [torch.empty_like(t) for lst in (n1_w, n1_b, n2_w, n2_b) for t in lst]


def _setup_context(ctx, inputs, output):
    (_x, qkv_w, qkv_b, proj_w, proj_b, fc1_w, fc1_b, fc2_w, fc2_b, n1_w, n1_b, n2_w, n2_b, dp_scale, num_heads,
     eps, attn_drop, seed, _recompute) = inputs
    ctx.attn_drop, ctx.seed, ctx.eps = attn_drop, seed, eps
    saved_state = output[1:]  # X, Y, O, stats, lse, XN1, QKV, YN, Z1
    ctx.r = len(n1_w)
    ctx.num_heads = num_heads
    ctx.has_dp = dp_scale is not None
    ctx.save_for_backward(*saved_state, qkv_w, qkv_b, proj_w, proj_b, fc1_w, fc1_b, fc2_w, fc2_b,
                          *n1_w, *n1_b, *n2_w, *n2_b, *([dp_scale] if dp_scale is not None else []))


def _backward(ctx, g, *_state_grads):
    saved = ctx.saved_tensors
    state, w = saved[:9], saved[9:17]
    X, lse = state[0], state[4]
    r = ctx.r
    norms = [list(saved[17 + k * r: 17 + (k + 1) * r]) for k in range(4)]
    dp_scale = saved[17 + 4 * r] if ctx.has_dp else None
    if g is None:
        g = torch.zeros_like(X[0]).view(lse.shape[1], lse.shape[3], X.shape[2])
    grads = vit_run_backward(g.contiguous(), *state, *w, *norms, dp_scale, ctx.num_heads, ctx.eps,
                             ctx.attn_drop, ctx.seed)
    dx, dw = grads[0], grads[1:9]
    dn = [grads[9 + k * r: 9 + (k + 1) * r] for k in range(4)]
    return (dx, *dw, dn[0], dn[1], dn[2], dn[3], None, None, None, None, None, None)


vit_run.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------------------------ model entry
def _model_runs(model) -> list[tuple[int, int]]:
    """Maximal stretches of layers using the same unique attention and the same unique MLP."""
    a, f = model.attn_plan.layer_to_unique, model.mlp_plan.layer_to_unique
    runs, start = [], 0
    for l in range(1, len(a) + 1):
        if l == len(a) or a[l] != a[start] or f[l] != f[start]:
            runs.append((start, l))
            start = l
    return runs


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype the blocks run in: autocast's on this device when it is on (weights are cast, as autocast would
    cast them for F.linear), else the tokens' dtype."""
    dev = x.device.type
    try:
        if torch.is_autocast_enabled(dev):
            return torch.get_autocast_dtype(dev)
    except (TypeError, AttributeError, RuntimeError):  # older torch: CUDA-only autocast queries
        if dev == "cuda" and torch.is_autocast_enabled():
            return torch.get_autocast_gpu_dtype()
    return x.dtype


def _unsupported_reason(model, x: Tensor) -> Optional[str]:
    from torch import nn

    if x.dim() != 3 or x.shape[2] != model.embed_dim:
        return f"tokens: expected [B, N, {model.embed_dim}], got {tuple(x.shape)}"
    dt = _compute_dtype(x)
    if dt not in (torch.float32, torch.float16, torch.bfloat16):
        return f"dtype {dt} is not supported by the Triton kernels"
    if x.device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            return "CPU tensors need TRITON_INTERPRET=1 (the Triton interpreter)"
        if dt == torch.bfloat16:
            return "the Triton interpreter has no bfloat16 arithmetic"
    elif x.device.type != "cuda":
        return f"device {x.device} is not supported"
    c = model.embed_dim
    for attn in model.attn:
        d = c // attn.num_heads
        if d < 16 or d > 128 or d & (d - 1):
            return f"head_dim {d} (needs a power of two in 16..128)"
    for mod in list(model.norm1) + list(model.norm2):
        if not isinstance(mod, nn.LayerNorm) or mod.weight is None or mod.bias is None:
            return "norm layers must be affine nn.LayerNorm"
        if abs(mod.eps - model.norm1[0].eps) > 0:
            return "all block LayerNorms must share one eps"
    for mod in list(model.attn) + list(model.mlp):
        for lin in ((mod.qkv, mod.proj) if hasattr(mod, "qkv") else (mod.fc1, mod.fc2)):
            if not lin.weight.is_floating_point() or lin.bias is None or lin.weight.device != x.device:
                return "Linear weights must be floating point, have biases and sit on the tokens' device"
    return None


def _check_tokens(x: Tensor):
    if not isinstance(x, Tensor):
        raise TypeError(f"tokens: expected a torch.Tensor, got {type(x).__name__}")


def vit_blocks(model, x: Tensor, taps: Optional[Sequence[int]] = None, stop: Optional[int] = None):
    """Tokens [B, N, C] after the embedding -> tokens after all blocks (before the final norm).

    Runs in autocast's dtype when autocast is on for the tokens' device, else in the tokens' dtype; weights in
    another dtype are cast (differentiably) to it. With ``taps`` (layer positions) it returns
    ``(tokens, [outputs of those layers, in layer order])``, runs cut so that each tapped layer ends one
    (gradients reach the kernels through a run's last layer only); with ``stop`` it runs layers ``0..stop-1``.
    """
    _check_tokens(x)
    reason = _unsupported_reason(model, x)
    if reason is not None:
        _warn_once(f"vit:{reason}", f"vit_blocks: {reason}; running the reference PyTorch blocks")
        return model._reference_blocks(x, taps, stop)
    dt = _compute_dtype(x)
    x = x.to(dt).contiguous()
    b = x.shape[0]

    def cast(t):  # a no-op unless the model's weights are in another dtype (autocast, fp32 master weights)
        return t.to(dt)

    eps = float(model.norm1[0].eps)
    # keeping tensors for a backward only pays when there will be one
    recompute = getattr(model, "recompute", "all") if torch.is_grad_enabled() and model.training else "all"
    tapped = set(taps or ())
    outs = []
    for start, end in split_runs(_model_runs(model), sorted(tapped), stop):
        attn = model.attn[model.attn_plan.layer_to_unique[start]]
        mlp = model.mlp[model.mlp_plan.layer_to_unique[start]]
        layers = range(start, end)
        n1 = [model.norm1[model.norm_plan.layer_to_unique[l]] for l in layers]
        n2 = [model.norm2[model.norm_plan.layer_to_unique[l]] for l in layers]
        dp = None
        if model.training and any(model.blocks[l].drop_path.rate > 0 for l in layers):
            keep = torch.tensor([1.0 - model.blocks[l].drop_path.rate for l in layers], device=x.device)
            mask = torch.bernoulli(keep[:, None, None].expand(-1, 2, b).contiguous())
            dp = (mask / keep[:, None, None]).contiguous()
        p_attn = float(attn.attn_drop) if model.training else 0.0
        seed = int(torch.randint(0, 2 ** 30, (), device="cpu")) if p_attn > 0 else 0  # reproducible seeds
        lin = [cast(t) for t in (attn.qkv.weight, attn.qkv.bias, attn.proj.weight, attn.proj.bias,
                                 mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias)]
        out = vit_run(x, *lin, [cast(m.weight) for m in n1], [cast(m.bias) for m in n1],
                      [cast(m.weight) for m in n2], [cast(m.bias) for m in n2], dp, attn.num_heads, eps, p_attn,
                      seed, recompute)
        x = out[0]
        if end - 1 in tapped:
            outs.append(x)
    return x if taps is None else (x, outs)
