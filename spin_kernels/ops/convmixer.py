"""Fused ConvMixer trunk: one custom op per shared-pointwise run, Triton kernels inside (spin_kernels.triton).

Data flow (DESIGN.md §2, levers 1-2). Activations are rows [M = B·H·W, C] of channels-last tensors. Only
pre-activations are stored: q (depthwise output) and z (pointwise output), plus u for SPIN's residual; every
consumer applies ``act`` and the BN affine on load. A layer is two main kernels:

    dw_fwd   x = [u_prev] + BN2_prev(act(z_prev)) (each element rebuilt once) → q = DW(x) + b → write q,
             partial stats of act(q)
    finalize → BN1 affine (a1, b1)
    pw_input u = x + a1·act(q) + b1, once per element → write u (SPIN: saved; timm: a transient)
    pw_fwd   z = u·Wᵀ + b (a plain GEMM) → write z, partial stats of act(z)
    finalize → BN2 affine, applied by the next layer's prologues

Forward HBM passes per layer: timm 7 (dw: hz r, q w; pw_input: hz r, q r, u w; pw: u r, z w), SPIN 9
(+ res twice). Saved for backward per layer: q, z (timm) and u (SPIN) + per-channel stats.
Backward per layer: pw_dz (G, z r; dz w), pw_bwd_dx (dz, q r [+R]; du w), dw_bwd (du, q, hz r [+res]; dx w),
and — once per run — pw_bwd_dw, the shared weight/bias gradient as ONE fp32 GEMM over the concatenated rows of
all layers of the run (dz, u r per layer; a timm run first rebuilds u with pw_input: hz, q r, u w). The
prologues left the GEMMs for their own passes because a GEMM prologue runs once per output tile (C/BLOCK
times per element): the extra passes cost less than the recompute (DESIGN.md §2, cost model).

``spin_kernels::convmixer_run`` is the autograd unit: inputs are the pre-activation ``z_in`` of the layer before
the run (or the stem conv), its BN as (mean, invstd, gamma, beta) tensors, and the run's parameters; outputs the
last layer's z, u and BN2 (mean, invstd) — the differentiable outputs — and, not differentiable, the stacked Z,
Q, U of the other layers and per-layer stats. BN statistics cross op boundaries as differentiable tensors: the consumer
returns d/d(mean, invstd) and the producer folds them into its BN backward, so the batch-statistics gradient is
exact across runs. Running statistics are updated by :func:`convmixer_features` (nn.BatchNorm2d semantics).
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import collectives, cuda
from .._util import warn_once as _warn_once
from ..reference import convmixer_ops as _ref
from ..reference.batchnorm import batch_norm_rows, update_running_stats, update_running_stats_of_layers
from ..sharing import split_runs

DW_IMPLS = ("triton", "cuda")


def _kernels(dw_impl: str = "triton"):
    """(depthwise, pointwise, bn) kernel modules; the depthwise half runs on Triton or the CUDA C++ kernels."""
    from ..triton import bn, dwconv, pointwise  # noqa: WPS433 - triton is imported only when a kernel runs
    if dw_impl == "cuda":
        from . import dwconv_cuda as dwconv
    return dwconv, pointwise, bn


def _act(z: Tensor, act: str) -> Tensor:
    return _ref.act_ref(z, act)


# ------------------------------------------------------------------------------------------------ forward
def run_forward(z_in, u_in, in_mean, in_invstd, in_w, in_b, dw_w, dw_b, pw_w, pw_b, n1_w, n1_b, n1_rm, n1_rv,
                 n2_w, n2_b, n2_rm, n2_rv, B, H, W, eps1, eps2, training, act, spin, dw_impl, sync_bn,
                 eval_affines=None):
    dwconv, pointwise, bn = _kernels(dw_impl)
    # --sync-bn: every rank's per-tile partials, in rank order, go into one finalize (global-batch statistics)
    merge = (lambda part: collectives.all_gather_cat(part, dim=1)) if sync_bn else (lambda part: part)
    R = len(dw_w)
    M, C = z_in.shape
    dev = z_in.device
    # the last layer's z and u are outputs of their own (the differentiable ones); layers 0..R-2 go to stacks
    z = torch.empty((M, C), device=dev, dtype=z_in.dtype)
    Z = z.new_empty((R - 1, M, C))
    Q = z.new_empty((R, M, C))
    u = z.new_empty((M, C) if spin else (0,))
    U = z.new_empty((R - 1, M, C) if spin else (0,))
    stats = torch.empty((R, 6, C), device=dev, dtype=torch.float32)
    z_of = _layer_of(Z, z)
    u_of = _layer_of(U, u)
    ax = (in_w.float() * in_invstd.float()).contiguous()
    bx = (in_b.float() - in_mean.float() * ax).contiguous()
    # BN1's batch statistics finalized inside dw_fwd's launch (Triton, local batch), else by bn_finalize
    fused_finalize = training and not sync_bn and dw_impl == "triton"
    counters = dwconv.finalize_counters(C, dev) if fused_finalize else None
    if training:  # each BN's folded affine (a, b), [R, 2, C] per BN: what the next kernel applies on load
        aff1, aff2 = torch.empty((2, R, 2, C), device=dev, dtype=torch.float32)
    else:  # the running statistics' affines of all 2R BatchNorms, batched over the run (or the caller's cache)
        eval1, eval2 = eval_affines if eval_affines is not None else \
            (_eval_affines(n1_rm, n1_rv, n1_w, n1_b, eps1), _eval_affines(n2_rm, n2_rv, n2_w, n2_b, eps2))
        stats[:, 0:3], stats[:, 3:6] = eval1[:, 0:3], eval2[:, 0:3]
        aff1, aff2 = eval1[:, 3:5], eval2[:, 3:5]
    for i in range(R):
        hz = z_in if i == 0 else z_of(i - 1)
        res = (u_in if i == 0 else u_of(i - 1)) if spin else None
        fin = {"finalize": dwconv.Finalize(n1_w[i], n1_b[i], eps1, stats[i, 0:3], aff1[i], counters)} \
            if fused_finalize else {}
        _, part = dwconv.dw_fwd(hz, res, ax, bx, dw_w[i], dw_b[i], B, H, W, act, act, emit_stats=training,
                                q_out=Q[i], **fin)
        if training and not fused_finalize:  # statistics and affine written where the run keeps them
            bn.bn_finalize(merge(part), n1_w[i], n1_b[i], eps1, out=stats[i, 0:3], affine_out=aff1[i])
        _, _, part = pointwise.pw_fwd(hz, res, ax, bx, Q[i], aff1[i, 0], aff1[i, 1], pw_w, pw_b, act, act, act,
                                      write_u=spin, emit_stats=training, z_out=z_of(i), u_out=u_of(i) if spin else None)
        if training:
            bn.bn_finalize(merge(part), n2_w[i], n2_b[i], eps2, out=stats[i, 3:6], affine_out=aff2[i])
        ax, bx = aff2[i, 0], aff2[i, 1]
    return z, u, stats[R - 1, 3::2].clone(), Z, Q, U, stats


def _layer_of(stack: Tensor, last: Tensor):
    """Layer i's tensor of a run whose layers 0..R-2 live in ``stack`` and layer R-1 in ``last``."""
    return lambda i: stack[i] if i < stack.shape[0] else last


def _eval_affines(rm, rv, w, b, eps):
    """fp32 [R, 5, C] (mean, var, invstd, a, b) of R BatchNorms from their running statistics (eval), in a few
    batched ops for the whole run; the rows are contiguous [C] vectors, as the kernels read them."""
    out = torch.empty((len(rm), 5, rm[0].shape[0]), device=rm[0].device, dtype=torch.float32)
    out[:, 0], out[:, 1] = torch.stack(rm), torch.stack(rv)
    torch.rsqrt(out[:, 1] + eps, out=out[:, 2])
    torch.mul(torch.stack(w), out[:, 2], out=out[:, 3])
    torch.sub(torch.stack(b), out[:, 0] * out[:, 3], out=out[:, 4])
    return out


def _validate_run(z_in, u_in, in_mean, in_invstd, in_w, in_b, dw_w, dw_b, pw_w, pw_b, n1_w, n1_b, n1_rm, n1_rv,
                  n2_w, n2_b, n2_rm, n2_rv, B, H, W, act, spin, dw_impl="triton"):
    """ValueError / TypeError naming the offending argument (DESIGN.md §5)."""
    if dw_impl not in DW_IMPLS:
        raise ValueError(f"dw_impl: expected one of {DW_IMPLS}, got {dw_impl!r}")
    _check_tensor("z_in", z_in)
    if z_in.dim() != 2:
        raise ValueError(f"z_in: expected rows [B*H*W, C], got shape {tuple(z_in.shape)}")
    if z_in.dtype not in (torch.float16, torch.float32, torch.bfloat16):
        raise TypeError(f"z_in: expected float16, bfloat16 or float32, got {z_in.dtype}")
    if not z_in.is_contiguous():
        raise ValueError("z_in: expected a contiguous tensor")
    M, C = z_in.shape
    if min(B, H, W) < 1 or B * H * W != M:
        raise ValueError(f"B, H, W: B*H*W = {B * H * W} does not match z_in's {M} rows")
    if C % 16:
        raise ValueError(f"z_in: channels C={C} must be a multiple of 16 (convmixer_features falls back instead)")
    if act not in ("gelu", "relu"):
        raise ValueError(f"act: expected 'gelu' or 'relu', got {act!r}")
    R = len(dw_w)
    if R < 1:
        raise ValueError("dw_w: a run needs at least one layer")
    for name, lst in (("dw_b", dw_b), ("n1_w", n1_w), ("n1_b", n1_b), ("n1_rm", n1_rm), ("n1_rv", n1_rv),
                      ("n2_w", n2_w), ("n2_b", n2_b), ("n2_rm", n2_rm), ("n2_rv", n2_rv)):
        if len(lst) != R:
            raise ValueError(f"{name}: expected {R} tensors (one per layer, like dw_w), got {len(lst)}")
    dev = z_in.device
    if u_in is not None:
        if not spin:
            raise ValueError("u_in: only the SPIN variant (spin=True) takes a residual input")
        _check_tensor("u_in", u_in, z_in.dtype, dev, (M, C))
        if not u_in.is_contiguous():
            raise ValueError("u_in: expected a contiguous tensor")
    for name, t in (("in_mean", in_mean), ("in_invstd", in_invstd), ("in_w", in_w), ("in_b", in_b),
                    ("pw_b", pw_b)):
        _check_tensor(name, t, None, dev, (C,))
    _check_tensor("pw_w", pw_w, z_in.dtype, dev)
    if tuple(pw_w.shape) not in ((C, C, 1, 1), (C, C)):
        raise ValueError(f"pw_w: expected shape ({C}, {C}, 1, 1), got {tuple(pw_w.shape)}")
    if not pw_w.is_contiguous():
        raise ValueError("pw_w: expected a contiguous tensor")
    for i in range(R):
        _check_tensor(f"dw_w[{i}]", dw_w[i], z_in.dtype, dev)
        k = dw_w[i].shape[-1]
        if dw_w[i].dim() != 4 or tuple(dw_w[i].shape) != (C, 1, k, k) or k % 2 == 0:
            raise ValueError(f"dw_w[{i}]: expected a depthwise weight ({C}, 1, k, k) with odd k, "
                             f"got {tuple(dw_w[i].shape)}")
        for name, t in (("dw_b", dw_b[i]), ("n1_w", n1_w[i]), ("n1_b", n1_b[i]), ("n1_rm", n1_rm[i]),
                        ("n1_rv", n1_rv[i]), ("n2_w", n2_w[i]), ("n2_b", n2_b[i]), ("n2_rm", n2_rm[i]),
                        ("n2_rv", n2_rv[i])):
            _check_tensor(f"{name}[{i}]", t, None, dev, (C,))


@torch.library.custom_op("spin_kernels::convmixer_run", mutates_args=())
def convmixer_run(z_in: Tensor, u_in: Optional[Tensor], in_mean: Tensor, in_invstd: Tensor, in_w: Tensor,
                  in_b: Tensor, dw_w: List[Tensor], dw_b: List[Tensor], pw_w: Tensor, pw_b: Tensor,
                  n1_w: List[Tensor], n1_b: List[Tensor], n1_rm: List[Tensor], n1_rv: List[Tensor],
                  n2_w: List[Tensor], n2_b: List[Tensor], n2_rm: List[Tensor], n2_rv: List[Tensor],
                  B: int, H: int, W: int, eps1: float, eps2: float, training: bool, act: str,
                  spin: bool, dw_impl: str = "triton", sync_bn: bool = False,
                  bn_count: int = 0, eval_affines: Optional[Tensor] = None,
                  ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """All R layers of a run sharing one pointwise weight (see the module docstring and
    spin_kernels.reference.convmixer_ops.convmixer_run_ref for the exact math).

    Returns ``(z, u, bn, Z, Q, U, stats)``. Differentiable — what the run's consumer reads: ``z`` [M, C] the last
    layer's pre-activation, ``u`` [M, C] its SPIN input (empty for timm), ``bn`` fp32 [2, C] the last layer's
    BN2 (mean, invstd). Not differentiable (saved for backward and for inspection; gradients never flow back
    through them): ``Z`` [R-1, M, C] and ``U`` the same of layers 0..R-2, ``Q`` [R, M, C] the depthwise
    pre-activations, ``stats`` fp32 [R, 6, C] (mean1, var1, invstd1, mean2, var2, invstd2 of every layer).

    ``dw_impl`` picks the depthwise kernels: "triton" (spin_kernels.triton.dwconv) or "cuda" (csrc/, through
    spin_kernels.ops.dwconv_cuda); the pointwise GEMMs and BN finalize are Triton either way.
    ``sync_bn`` (training, torch.distributed): BatchNorm statistics of the global batch of ``bn_count`` rows over
    all ranks (spin_kernels.collectives states the conventions); ``bn_count`` 0 means this rank's rows.
    ``eval_affines`` (eval only): fp32 [2, R, 5, C], the 2R BatchNorms' (mean, var, invstd, a, b) from their
    running statistics, exactly what the op would compute from the running buffers — a caller that caches them
    (convmixer_features does) saves ~20 small ops per run and call."""
    _validate_run(z_in, u_in, in_mean, in_invstd, in_w, in_b, dw_w, dw_b, pw_w, pw_b, n1_w, n1_b, n1_rm, n1_rv,
                  n2_w, n2_b, n2_rm, n2_rv, B, H, W, act, spin, dw_impl)
    if eval_affines is not None:
        _check_eval_affines(eval_affines, training, len(dw_w), z_in)
    return run_forward(z_in, u_in, in_mean, in_invstd, in_w, in_b, dw_w, dw_b, pw_w, pw_b, n1_w, n1_b, n1_rm,
                        n1_rv, n2_w, n2_b, n2_rm, n2_rv, B, H, W, eps1, eps2, training, act, spin, dw_impl,
                        sync_bn and training, eval_affines)


def _check_eval_affines(t, training, R, z_in):
    C = z_in.shape[1]
    if training:
        raise ValueError("eval_affines: only an eval run (training=False) takes them; training uses batch statistics")
    if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or tuple(t.shape) != (2, R, 5, C) \
            or t.device != z_in.device:
        got = f"{t.dtype} {tuple(t.shape)} on {t.device}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"eval_affines: expected fp32 [2, {R}, 5, {C}] on {z_in.device}, got {got}")


@convmixer_run.register_fake
def _(z_in, u_in, in_mean, in_invstd, in_w, in_b, dw_w, dw_b, pw_w, pw_b, n1_w, n1_b, n1_rm, n1_rv, n2_w, n2_b,
      n2_rm, n2_rv, B, H, W, eps1, eps2, training, act, spin, dw_impl="triton", sync_bn=False, bn_count=0,
      eval_affines=None):
    R = len(dw_w)
    M, C = z_in.shape
    e = z_in.new_empty
    return (e((M, C)), e((M, C) if spin else (0,)), e((2, C), dtype=torch.float32), e((R - 1, M, C)), e((R, M, C)),
            e((R - 1, M, C) if spin else (0,)), e((R, 6, C), dtype=torch.float32))


# ------------------------------------------------------------------------------------------------ backward
def _setup_context(ctx, inputs, output):
    (z_in, u_in, in_mean, in_invstd, in_w, in_b, dw_w, dw_b, pw_w, pw_b, n1_w, n1_b, n1_rm, n1_rv, n2_w, n2_b,
     n2_rm, n2_rv, B, H, W, eps1, eps2, training, act, spin, dw_impl, sync_bn, bn_count, _affines) = inputs
    z, u, _, Z, Q, U, stats = output
    # gradients flow through z, u and bn only: the stacks are saved state, not outputs to differentiate
    ctx.mark_non_differentiable(Z, Q, U, stats)
    ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None, not an activation of zeros
    R = len(dw_w)
    ctx.meta = dict(R=R, B=B, H=H, W=W, training=training, act=act, spin=spin, has_u_in=u_in is not None,
                    dw_impl=dw_impl, sync_bn=sync_bn and training, bn_count=bn_count)
    saved = [z_in, in_mean, in_invstd, in_w, in_b, pw_w, z, Z, Q, stats, *dw_w, *n1_w, *n1_b, *n2_w, *n2_b]
    if spin:
        saved += [u, U] + ([u_in] if u_in is not None else [])
    ctx.save_for_backward(*saved)


def _backward(ctx, gz, gu, gbn, *_non_differentiable):
    meta = ctx.meta
    R, spin = meta["R"], meta["spin"]
    saved = list(ctx.saved_tensors)
    z_in, in_mean, in_invstd, in_w, in_b, pw_w, z, Z, Q, stats = saved[:10]
    rest = saved[10:]
    dw_w, n1_w, n1_b, n2_w, n2_b = (rest[j * R:(j + 1) * R] for j in range(5))
    rest = rest[5 * R:]
    empty = z_in.new_empty((0,))
    u, U = (rest[0], rest[1]) if spin else (empty, empty)
    u_in = rest[2] if spin and meta["has_u_in"] else None
    (g_z_in, g_u_in, g_in_mean, g_in_invstd, g_in_w, g_in_b, g_dw_w, g_dw_b, dW, dB, g_n1_w, g_n1_b, g_n2_w,
     g_n2_b) = torch.ops.spin_kernels.convmixer_run_backward(
        gz, gu if spin else None, gbn, z_in, u_in, in_mean, in_invstd, in_w, in_b, pw_w, z, Z, Q, u, U, stats,
        dw_w, n1_w, n1_b, n2_w, n2_b, meta["B"], meta["H"], meta["W"], meta["training"], meta["act"], spin,
        meta["dw_impl"], meta["sync_bn"], meta["bn_count"])
    none_r = [None] * R
    return (g_z_in, g_u_in if u_in is not None else None, g_in_mean, g_in_invstd, g_in_w, g_in_b, g_dw_w, g_dw_b,
            dW, dB, g_n1_w, g_n1_b, none_r, none_r, g_n2_w, g_n2_b, none_r, none_r,
            None, None, None, None, None, None, None, None, None, None, None, None)


def run_backward(gz, gu, gbn, z_in, u_in, in_mean, in_invstd, in_w, in_b, pw_w, z, Z, Q, u, U, stats, dw_w, n1_w,
                 n1_b, n2_w, n2_b, B, H, W, training, act, spin, dw_impl="triton", sync_bn=False, bn_count=0):
    """The body of ``spin_kernels::convmixer_run_backward`` (a plain function: the cost model traces its launches
    without the dispatcher)."""
    dwconv, pointwise, bn = _kernels(dw_impl)
    R = len(dw_w)
    z_of = _layer_of(Z, z)
    u_of = _layer_of(U, u) if spin else None
    M, C = z_in.shape
    dev, f32 = z_in.device, torch.float32
    N = bn_count or M  # rows the batch statistics were taken over
    if gbn is not None and sync_bn:
        gbn = collectives.all_reduce_sum(gbn)

    def bn_vectors(part, gamma, mean, invstd, vec, grad_w, grad_b):
        """Reduce a BN's partial gradient sums, write its parameter gradients and bn_act_bwd vectors (one launch;
        with --sync-bn the vectors take the sums over all ranks, the parameter gradients stay this rank's)."""
        if not sync_bn:
            return bn.bn_bwd_vectors(part, gamma, mean, invstd, N, training, vec, grad_w, grad_b)
        local = bn.bn_bwd_vectors(part, grad_w=grad_w, grad_b=grad_b)
        bn.bn_bwd_vectors(collectives.all_reduce_sum(local)[:, None], gamma, mean, invstd, N, training, vec)
        return local

    # per-run vectors, batched over the R layers: the BN affines, and each layer's input BN (ax, bx, mean, invstd)
    mean1, invstd1, mean2, invstd2 = stats[:, 0], stats[:, 2], stats[:, 3], stats[:, 5]
    a1 = torch.stack(n1_w).float() * invstd1
    b1 = torch.stack(n1_b).float() - mean1 * a1
    ax0 = in_w.float() * in_invstd.float()
    xvecs = torch.empty((R, 4, C), device=dev, dtype=f32)
    xvecs[0] = torch.stack([ax0, in_b.float() - in_mean.float() * ax0, in_mean.float(), in_invstd.float()])
    if R > 1:
        xvecs[1:, 0] = torch.stack(n2_w[:-1]).float() * invstd2[:-1]
        xvecs[1:, 1] = torch.stack(n2_b[:-1]).float() - mean2[:-1] * xvecs[1:, 0]
        xvecs[1:, 2:] = stats[:-1, 3::2]
    zvecs = torch.empty((R, 6, C), device=dev, dtype=f32)  # BN2/act backward of each layer (pw_dz)
    qvecs = torch.empty((R, 6, C), device=dev, dtype=f32)  # BN1/act backward (pw_bwd_dx reads rows 4, 5 first)
    qvecs[:, 4:] = stats[:, 0:3:2]
    last = zvecs[R - 1]  # the last layer's BN2 is the consumer's: its gradient arrives as gz and gbn
    last[0], last[1], last[4:] = 0.0, 1.0, stats[R - 1, 3::2]
    if training and gbn is not None:
        last[2] = gbn[0] / N
        last[3] = -gbn[1] * invstd2[R - 1] ** 2 / N
    else:
        last[2:4] = 0.0

    G_last = gz.contiguous() if gz is not None else torch.zeros_like(z_in)
    R_last = None
    if spin:
        R_last = gu.contiguous() if gu is not None else torch.zeros_like(z_in)
    grun = torch.empty((R - 1, M, C), device=dev, dtype=z_in.dtype) if R > 1 else G_last[None]
    dz_last = torch.empty_like(G_last)
    dz_run = (torch.empty_like(grun) if spin else grun) if R > 1 else dz_last[None]
    # u of every layer for the run's single weight-gradient GEMM: saved by a SPIN forward; a timm forward does not
    # save it, so pw_dz rebuilds it once per element in the same launch (a transient of R activations)
    if spin:
        u_run = U if R > 1 else u[None]
    else:
        u_run = z_in.new_empty((R, M, C))
        uvecs = torch.cat([xvecs[:, :2], a1[:, None], b1[:, None]], dim=1)  # ax, bx, a1, b1 of each layer
    g_dw_w, g_dw_b = [None] * R, [None] * R
    g_n1_w, g_n1_b = [torch.empty_like(t) for t in n1_w], [torch.empty_like(t) for t in n1_b]
    g_n2_w, g_n2_b = [torch.empty_like(t) for t in n2_w[:-1]], [torch.empty_like(t) for t in n2_b[:-1]]
    g_n2_w.append(torch.zeros_like(n2_w[-1]))
    g_n2_b.append(torch.zeros_like(n2_b[-1]))
    s_part = None  # partial sums of dx of the layer after i (set by its dw_bwd): BN2_i's backward
    g_z_in = g_u_in = None
    for i in reversed(range(R)):
        if i == R - 1:
            G, Rr = G_last, R_last
        else:
            bn_vectors(s_part, n2_w[i], mean2[i], invstd2[i], zvecs[i], g_n2_w[i], g_n2_b[i])
            G = grun[i]
            Rr = G if spin else None
        # dz once per element, kept for the run's weight gradient below: a timm layer i < R-1 overwrites its G in
        # grun (pw_dz is its last reader); a SPIN layer's G is also the residual's gradient, added by pw_bwd_dx,
        # so its dz goes to a buffer of its own; the last layer's too (G_last may be the caller's gradient)
        hz = z_in if i == 0 else z_of(i - 1)
        dz = pointwise.pw_dz(G, z_of(i), zvecs[i], act, out=dz_run[i] if i < R - 1 else dz_last,
                             u_inputs=None if spin else (hz, Q[i], uvecs[i]), u_out=None if spin else u_run[i])
        du, t_part = pointwise.pw_bwd_dx(dz, pw_w, Rr, Q[i], qvecs[i], act)
        bn_vectors(t_part, n1_w[i], mean1[i], invstd1[i], qvecs[i], g_n1_w[i], g_n1_b[i])
        res = (u_in if i == 0 else u_of(i - 1)) if spin else None
        if i > 0:
            _, _, dw, db, s_part = dwconv.dw_bwd(du, Q[i], qvecs[i], dw_w[i], hz, res, xvecs[i], B, H, W, act, act,
                                                 write_dx=True, dx_out=grun[i - 1])
        else:
            dx, g_z_in, dw, db, s_part = dwconv.dw_bwd(du, Q[i], qvecs[i], dw_w[i], hz, res, xvecs[i], B, H, W,
                                                       act, act, write_dx=spin and u_in is not None,
                                                       write_dhz=True)
            g_u_in = dx
        g_dw_w[i] = dw.reshape(dw_w[i].shape).to(dw_w[i].dtype)
        g_dw_b[i] = db.to(dw_w[i].dtype)
    dW, dB = pointwise.pw_bwd_dw(dz_run, dz_last, u_run, u if spin else u_run[R - 1], R)
    # the run's input BN (the caller's): its parameter and statistics gradients, once per run
    g_in_w, g_in_b = torch.empty_like(in_w), torch.empty_like(in_b)
    S1, S2 = bn.bn_bwd_vectors(s_part, grad_w=g_in_w, grad_b=g_in_b)
    g_in_mean = (-ax0 * S1).to(in_mean.dtype)
    g_in_invstd = (in_w.float() * S2 / in_invstd.float()).to(in_invstd.dtype)
    g_u_in = g_u_in if g_u_in is not None else z_in.new_empty((0,))
    return (g_z_in, g_u_in, g_in_mean, g_in_invstd, g_in_w, g_in_b, g_dw_w, g_dw_b,
            dW.reshape(pw_w.shape).to(pw_w.dtype), dB.to(pw_w.dtype), g_n1_w, g_n1_b, g_n2_w, g_n2_b)


@torch.library.custom_op("spin_kernels::convmixer_run_backward", mutates_args=())
def convmixer_run_backward(gz: Optional[Tensor], gu: Optional[Tensor], gbn: Optional[Tensor], z_in: Tensor,
                           u_in: Optional[Tensor], in_mean: Tensor, in_invstd: Tensor, in_w: Tensor, in_b: Tensor,
                           pw_w: Tensor, z: Tensor, Z: Tensor, Q: Tensor, u: Tensor, U: Tensor, stats: Tensor,
                           dw_w: List[Tensor],
                           n1_w: List[Tensor], n1_b: List[Tensor], n2_w: List[Tensor], n2_b: List[Tensor],
                           B: int, H: int, W: int, training: bool, act: str, spin: bool,
                           dw_impl: str = "triton", sync_bn: bool = False, bn_count: int = 0,
                           ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, List[Tensor], List[Tensor],
                                      Tensor, Tensor, List[Tensor], List[Tensor], List[Tensor], List[Tensor]]:
    """Backward of convmixer_run (its own op so that AOT autograd traces it through the fake below).

    Gradients flow only through the differentiable outputs z, u and bn (mean2, invstd2 of the last layer);
    the statistics gradient is folded in training mode only (in eval the statistics are running buffers).
    Returns the gradients of z_in, u_in (empty without), in_mean, in_invstd,
    in_w, in_b, dw_w, dw_b, pw_w, pw_b, n1_w, n1_b, n2_w, n2_b (n2 of the last layer: zeros — the consumer
    applies that BN).

    With ``sync_bn`` the batch-statistics terms use sums over all ranks and the global count ``bn_count``;
    parameter gradients and the returned statistics gradients stay this rank's own (spin_kernels.collectives).
    """
    return run_backward(gz, gu, gbn, z_in, u_in, in_mean, in_invstd, in_w, in_b, pw_w, z, Z, Q, u, U, stats,
                        dw_w, n1_w, n1_b, n2_w, n2_b, B, H, W, training, act, spin, dw_impl, sync_bn, bn_count)


@convmixer_run_backward.register_fake
def _(gz, gu, gbn, z_in, u_in, in_mean, in_invstd, in_w, in_b, pw_w, z, Z, Q, u, U, stats, dw_w, n1_w, n1_b, n2_w,
      n2_b, B, H, W, training, act, spin, dw_impl="triton", sync_bn=False, bn_count=0):
    e = torch.empty_like
    return (e(z_in), e(u_in) if (spin and u_in is not None) else z_in.new_empty((0,)), e(in_mean), e(in_invstd),
            e(in_w), e(in_b), [e(t) for t in dw_w], [t.new_empty(t.shape[0]) for t in dw_w], e(pw_w),
            pw_w.new_empty(pw_w.shape[0]), [e(t) for t in n1_w], [e(t) for t in n1_b], [e(t) for t in n2_w],
            [e(t) for t in n2_b])


convmixer_run.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------------------------ the trunk
def _check_tensor(name, t, dtype=None, device=None, shape=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device}, got {t.device}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}")


def _unsupported_reason(model, images) -> Optional[str]:
    """Why the fused path cannot run this valid case (the caller falls back to the reference path), or None."""
    C = model.arch["dim"]
    if C % 16:
        return f"dim={C} is not a multiple of 16 (tensor-core tiles)"
    if images.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "CPU tensors need TRITON_INTERPRET=1 (the Triton interpreter)"
    if images.device.type not in ("cpu", "cuda"):
        return f"device {images.device} is not supported"
    if images.dtype not in (torch.float16, torch.float32, torch.bfloat16):
        return f"dtype {images.dtype} is not supported"
    if images.device.type == "cpu" and images.dtype == torch.bfloat16:
        return "bfloat16 is wrong in the Triton interpreter"
    if model.arch["act"] not in ("gelu", "relu"):
        return f"act={model.arch['act']!r}"
    bns = [model.stem[2], *model.norm1, *model.norm2]
    for m in bns:
        if not (m.affine and m.track_running_stats) or m.training != model.training:
            return "BatchNorm without affine / running stats, or in a different train/eval mode than the model"
    if len({m.eps for m in model.norm1}) > 1 or len({m.eps for m in model.norm2}) > 1:
        return "BatchNorms of one family use different eps"
    for m in [*model.depthwise, *model.pointwise, model.stem[0]]:
        if m.bias is None:
            return "a conv without bias"
    return None


def _depthwise_impl(backend: str, rows: Tensor) -> str:
    """"cuda" when the model asks for backend="cuda" and the CUDA depthwise kernels take these rows, else "triton".

    backend="auto" keeps the Triton depthwise kernels until a GPU benchmark shows the CUDA ones ahead.
    """
    if backend != "cuda":
        return "triton"
    from . import dwconv_cuda

    reason = dwconv_cuda.supports(rows)
    if reason is not None:
        _warn_once(f"dwconv_cuda:{reason}", f"backend='cuda': the CUDA depthwise kernels are not used ({reason}); "
                                            "the depthwise half runs on the Triton kernels")
        return "triton"
    return "cuda"


class _EvalAffineCache:
    """A model's eval BatchNorm affines per run (fp32 [2, R, 5, C]) and the watch that says when they are stale."""

    def __init__(self, token, watch):
        self.token, self.watch, self.runs = token, watch, {}

    def __reduce__(self):  # a copied or pickled model builds its own (the watch follows these tensors)
        return _no_cache, ()


def _no_cache():
    return None


def cached_eval_affines(model, start: int, end: int, n1: list, n2: list) -> Optional[Tensor]:
    """The ``eval_affines`` of convmixer_run for layers ``start..end-1`` (BatchNorms ``n1``, ``n2``) of ``model``,
    computed once and kept until a BatchNorm parameter or running statistic of the model changes (in place, new
    data, swapped: a tensor watch, a few microseconds per call) or the BatchNorm modules are replaced. Saves an
    eval call ~20 small ops per run — at batch 1 as many launches as the run's kernels. None under torch.compile
    (the op computes them itself)."""
    if torch.compiler.is_compiling():
        return None
    norms = [*model.norm1, *model.norm2]
    token = tuple(map(id, norms))
    cache = model.__dict__.get("_eval_affine_cache")
    if cache is None or cache.token != token or not cache.watch.unchanged():
        tensors = [t for m in norms for t in (m.weight, m.bias, m.running_mean, m.running_var)]
        cache = _EvalAffineCache(token, cuda.tensor_watch(tensors))
        model.__dict__["_eval_affine_cache"] = cache
    key = (start, end)
    if key not in cache.runs:
        with torch.no_grad():  # constants of the eval call: no graph kept alive by the cache
            cache.runs[key] = torch.stack([
                _eval_affines([m.running_mean for m in n1], [m.running_var for m in n1], [m.weight for m in n1],
                              [m.bias for m in n1], n1[0].eps),
                _eval_affines([m.running_mean for m in n2], [m.running_var for m in n2], [m.weight for m in n2],
                              [m.bias for m in n2], n2[0].eps)])
    return cache.runs[key]


def convmixer_features(model, images: Tensor, taps: Optional[Sequence[int]] = None, stop: Optional[int] = None):
    """Trunk of a ConvMixer (stem + all layers) with the fused kernels: images [B, in_chans, H, W] ->
    features [B, dim, H/p, W/p] (an NCHW-shaped tensor in channels_last memory format).

    With ``taps`` (layer positions) it returns ``(features, [outputs of those layers, in layer order])``: runs are
    cut so that each tapped layer ends one (gradients reach the kernels through a run's last layer only). With
    ``stop`` it runs layers ``0..stop-1`` only (``forward_intermediates(stop_early=True)``).
    """
    _check_tensor("images", images)
    if images.dim() != 4:
        raise ValueError(f"images: expected a 4-d tensor [B, C, H, W], got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images: expected a floating-point tensor, got {images.dtype}")
    a = model.arch
    if images.shape[1] != a["in_chans"]:
        raise ValueError(f"images: expected {a['in_chans']} channels, got {images.shape[1]}")
    p = a["patch_size"]
    if images.shape[2] < p or images.shape[3] < p:
        raise ValueError(f"images: spatial size {tuple(images.shape[2:])} is smaller than the patch size {p}")
    reason = _unsupported_reason(model, images)
    if reason is not None:
        _warn_once(reason, f"convmixer_features: {reason}; running the reference PyTorch path")
        return model._reference_blocks(model.stem(images), taps, stop)
    act, spin, training = a["act"], bool(a["spin_residual"]), model.training
    conv, _, bn_s = model.stem
    z = F.conv2d(images, conv.weight, conv.bias, stride=conv.stride, padding=conv.padding)
    # the trunk runs in the stem output's dtype (the autocast dtype under torch.autocast, else the model's)
    if z.dtype not in (torch.float16, torch.float32, torch.bfloat16) or (
            z.device.type == "cpu" and z.dtype == torch.bfloat16):
        reason = f"trunk dtype {z.dtype} is not supported on {z.device.type}"
        _warn_once(reason, f"convmixer_features: {reason}; running the reference PyTorch path")
        return model._reference_blocks(model.stem(images), taps, stop)
    dt = z.dtype

    def cast(t):  # differentiable cast of conv weights to the trunk dtype (autocast / mixed precision)
        return t if t.dtype == dt else t.to(dt)

    B, C, H, W = z.shape
    M = B * H * W
    z_in = z.permute(0, 2, 3, 1).reshape(M, C).contiguous()  # at B = 1 reshape may return a strided view
    # --sync-bn (model.sync_bn, torch.distributed): statistics of the global batch of bn_count rows
    sync_bn = training and bool(getattr(model, "sync_bn", False)) and collectives.world_size() > 1
    bn_count = M
    if training:
        in_mean, var, bn_count = batch_norm_rows(_act(z_in.float(), act), sync_bn)
        update_running_stats(bn_s, in_mean.detach(), var.detach(), bn_count)
        in_invstd = torch.rsqrt(var + bn_s.eps)
    else:
        in_mean = bn_s.running_mean.float()
        in_invstd = torch.rsqrt(bn_s.running_var.float() + bn_s.eps)
    in_w, in_b = bn_s.weight, bn_s.bias
    u_in = None
    eps1, eps2 = model.norm1[0].eps, model.norm2[0].eps
    dw_impl = _depthwise_impl(model.backend, z_in)
    tapped = set(taps or ())
    outs = []

    def layer_output(z, u, mean, invstd, w, b):  # x = BN(act(z)) (+ u), the layer output the kernels keep implicit
        x = (_act(z.float(), act) - mean) * invstd * w.float() + b.float()
        if u is not None:
            x = x + u.float()
        return x.to(dt).reshape(B, H, W, C).permute(0, 3, 1, 2)

    for start, end in split_runs(model.pw_plan.runs, sorted(tapped), stop):
        layers = range(start, end)
        dws = [model.depthwise[model.dw_plan.layer_to_unique[l]] for l in layers]
        n1 = [model.norm1[model.norm_plan.layer_to_unique[l]] for l in layers]
        n2 = [model.norm2[model.norm_plan.layer_to_unique[l]] for l in layers]
        pw = model.pointwise[model.pw_plan.layer_to_unique[start]]
        z_in, u_in, bn, _, _, _, stats = torch.ops.spin_kernels.convmixer_run(
            z_in, u_in, in_mean, in_invstd, in_w, in_b, [cast(m.weight) for m in dws],
            [cast(m.bias) for m in dws], cast(pw.weight), cast(pw.bias), [m.weight for m in n1],
            [m.bias for m in n1], [m.running_mean for m in n1], [m.running_var for m in n1],
            [m.weight for m in n2], [m.bias for m in n2],
            [m.running_mean for m in n2], [m.running_var for m in n2], B, H, W, eps1, eps2, training, act, spin,
            dw_impl, sync_bn, bn_count, None if training else cached_eval_affines(model, start, end, n1, n2))
        if training:  # the run's 2R BatchNorms in a few multi-tensor updates
            sd = stats.detach()
            update_running_stats_of_layers([bn for pair in zip(n1, n2) for bn in pair],
                                           [*sd[:, [0, 3]].reshape(-1, C)], [*sd[:, [1, 4]].reshape(-1, C)], bn_count)
        u_in = u_in if spin else None
        in_mean, in_invstd = bn[0], bn[1]
        in_w, in_b = n2[-1].weight, n2[-1].bias
        if end - 1 in tapped:
            outs.append(layer_output(z_in, u_in, in_mean, in_invstd, in_w, in_b))
    last_tapped = bool(outs) and end - 1 in tapped
    x = outs[-1] if last_tapped else layer_output(z_in, u_in, in_mean, in_invstd, in_w, in_b)
    return x if taps is None else (x, outs)
