"""Helpers shared by the Triton kernels (ConvMixer and ViT): activation and its derivative, the fused BN/act
backward, BatchNorm partial statistics and their merge, tile ordering, and the NaN-poisoned output buffer.

Activation codes (constexpr ``ACT``): 0 identity, 1 GELU (the exact, erf form x·Φ(x), with Φ from
:func:`gauss_cdf`), 2 ReLU. Everything here works on fp32 register tiles.
"""
import functools
import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

ACT_CODES = {"identity": 0, "none": 0, "gelu": 1, "relu": 2}


def new_output(shape, device, dtype) -> torch.Tensor:
    """An output buffer for a kernel: NaN-poisoned on the CPU (interpreter tests) or when SPIN_KERNELS_POISON=1,
    so an element a kernel fails to write fails the test; plain torch.empty otherwise (no extra memset pass)."""
    device = torch.device(device)
    if device.type == "cpu" or os.environ.get("SPIN_KERNELS_POISON") == "1":
        return torch.full(shape, float("nan"), device=device, dtype=dtype)
    return torch.empty(shape, device=device, dtype=dtype)


def sm_count(t: torch.Tensor) -> int:
    """Multiprocessors of the GPU holding ``t``: grid and split rules scale with the card, not with an H100's
    132. 0 for CPU tensors (the interpreter: callers pick their CPU tiles instead)."""
    return torch.cuda.get_device_properties(t.device).multi_processor_count if t.is_cuda else 0


# An H100's dense 16-bit tensor rate of one SM over the card's HBM bandwidth (989 TFLOP/s / 132 / 3.35 TB/s, in
# FLOPs per byte): converts the bytes of split-K partials into K steps of one SM (an H200: 1.6; the choice below
# is flat near its optimum, so one value serves both).
SM_FLOPS_PER_HBM_BYTE = 2.2


@functools.lru_cache(maxsize=256)  # called per backward with the same shapes: the search runs once per shape
def split_for_waves(tiles: int, steps: int, block_k: int, sms: int, max_split: int) -> int:
    """Slices of a split-K GEMM (``tiles`` output tiles, a reduction of ``steps`` steps of ``block_k``) on ``sms``
    SMs: the split minimising the busiest SM's work, ceil(tiles·s / sms)·ceil(steps / s) K steps, plus the fp32
    partials each slice adds (4 bytes per output element written and read back once: tiles·4·s·
    SM_FLOPS_PER_HBM_BYTE / block_k K steps). Ties go to the smaller split; at most ``max_split``, and at most 8
    programs per SM (past that a last wave idles under 1/8 of the work, whatever the split).

    Why: a wave that is not full costs as much as a full one — 72 tiles in 4 slices are 288 programs, three waves
    of 132 of which the last is 18% busy (the tensor bound 1.37x the floor); 7 slices fill 4 waves to 95%."""
    if sms <= 0 or max_split <= 1 or tiles <= 0:
        return 1
    partial_steps = tiles * 4 * SM_FLOPS_PER_HBM_BYTE / block_k
    max_split = min(max_split, -(-8 * sms // tiles))
    best, best_cost = 1, float("inf")
    for s in range(1, max_split + 1):
        if s * partial_steps >= best_cost:  # the partials alone cost more from here on: O(best), not O(max_split)
            break
        cost = -(-tiles * s // sms) * -(-steps // s) + s * partial_steps
        if cost < best_cost:
            best, best_cost = s, cost
    return best


# compiled kernels divide with libdevice's fast_dividef (MUFU.RCP without the IEEE division's range fix-ups: 7
# instructions fewer); the interpreter has no libdevice, and its plain division is exact. Triton's own switch
# (it also takes TRITON_INTERPRET=true / on / yes), read once at import as triton.jit itself does.
_COMPILED = tl.constexpr(not triton.knobs.runtime.interpret)


@triton.jit
def gauss_cdf(x):
    """Φ(x), the standard normal CDF, for a fp32 tile: ½·erfc(|x|/√2), or 1 minus that for x >= 0, with Numerical
    Recipes' fit erfc(z) = t·exp(P(t) - z²), t = 1/(1 + z/2) (fractional error < 1.2e-7 for every z >= 0),
    evaluated in base 2 (P's coefficients times log2 e, ln ½ folded into its constant): one reciprocal, 9 FMAs
    and one exp2 per element, no branch and no coefficient select.

    Why not libdevice's erf: 0.5·(1 + erf(x/√2)) costs about twice the instructions in the depthwise and GEMM
    loops (its two-range polynomial selects its coefficients with a move each, per element), and in fp32 loses
    the left tail to cancellation. Measured against float64 over [-12, 12] in numpy-fp32: GELU max abs error
    3.8e-7 here, 4.5e-7 the erf form; relative, where |GELU| > 1e-3, 1.8e-6 here and 5.1e-5 the erf form
    (tests/triton/test_gelu.py holds both bounds)."""
    a = tl.abs(x)
    d = 1.0 + 0.35355339059327373 * a                       # 1 + z/2, z = |x|/√2
    if _COMPILED:
        t = libdevice.fast_dividef(1.0, d)
    else:
        t = 1.0 / d
    p = 0.24651729790196045                                 # P(t)·log2 e + log2 ½, Horner from the top
    p = p * t - 1.1861149450768025
    p = p * t + 2.147474463933521
    p = p * t - 1.637753152343414
    p = p * t + 0.40232158165127635
    p = p * t - 0.2687568603388257
    p = p * t + 0.1396300565225048
    p = p * t + 0.5397006155284324
    p = p * t + 1.4427292039075317
    p = p * t - 2.825748218405333
    half_erfc = t * tl.math.exp2(p - (a * 0.7213475204444817) * a)   # z²·log2 e = x²·(log2 e)/2
    return tl.where(x >= 0.0, 1.0 - half_erfc, half_erfc)


@triton.jit
def act_fwd(z, ACT: tl.constexpr):
    """act(z) for a fp32 tile."""
    if ACT == 1:
        y = z * gauss_cdf(z)
    elif ACT == 2:
        y = tl.maximum(z, 0.0)
    else:
        y = z
    return y


@triton.jit
def act_grad(z, ACT: tl.constexpr):
    """d act(z) / dz for a fp32 tile."""
    if ACT == 1:
        # Φ(z) + z·φ(z), φ(z) = 2^(-z²·(log2 e)/2) / √(2π)
        d = gauss_cdf(z) + z * tl.math.exp2(z * z * -0.7213475204444817) * 0.3989422804014327
    elif ACT == 2:
        d = tl.where(z > 0.0, 1.0, 0.0)
    else:
        d = tl.zeros_like(z) + 1.0
    return d


@triton.jit
def load_vec6(vec_ptr, offs_c, cmask, C):
    """The 6 per-channel fp32 vectors (alpha, beta, c1, c2, mean, invstd) of bn_act_bwd, stored as [6, C]."""
    alpha = tl.load(vec_ptr + offs_c, mask=cmask, other=0.0)
    beta = tl.load(vec_ptr + C + offs_c, mask=cmask, other=0.0)
    c1 = tl.load(vec_ptr + 2 * C + offs_c, mask=cmask, other=0.0)
    c2 = tl.load(vec_ptr + 3 * C + offs_c, mask=cmask, other=0.0)
    mean = tl.load(vec_ptr + 4 * C + offs_c, mask=cmask, other=0.0)
    invstd = tl.load(vec_ptr + 5 * C + offs_c, mask=cmask, other=0.0)
    return alpha, beta, c1, c2, mean, invstd


@triton.jit
def bn_act_bwd(g_ptr, z_ptr, offs, mask, alpha, beta, c1, c2, mean, invstd, ACT: tl.constexpr):
    """Gradient w.r.t. the pre-activation ``z`` of ``y = BN(act(z))`` for one tile (fp32, zero where masked).

    With ``h = act(z)`` and ``xhat = (h - mean) * invstd`` (per-channel vectors, see load_vec6):
        dz = G * (act'(z) * alpha + beta) + act'(z) * (c1 + c2 * xhat).
    Mode A (G = dL/dy, batch stats inside):   alpha = gamma*invstd, beta = 0, c1 = -alpha*sum(G)/n,
                                              c2 = -alpha*sum(G*xhat)/n   (eval: c1 = c2 = 0).
    Mode B (G = dL/dz through the direct path, stats grads dmean/dinvstd from outside):
                                              alpha = 0, beta = 1, c1 = dmean/n, c2 = -dinvstd*invstd^2/n.
    """
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return tl.where(mask, bn_act_bwd_math(g, z, alpha, beta, c1, c2, mean, invstd, ACT), 0.0)


@triton.jit
def bn_act_bwd_math(g, z, alpha, beta, c1, c2, mean, invstd, ACT: tl.constexpr):
    """bn_act_bwd's formula on loaded fp32 tiles ``g``, ``z`` [rows, cols] and per-column vectors [cols]."""
    d = act_grad(z, ACT)
    xhat = (act_fwd(z, ACT) - mean[None, :]) * invstd[None, :]
    return g * (d * alpha[None, :] + beta[None, :]) + d * (c1[None, :] + c2[None, :] * xhat)


@triton.jit
def bn_act_bwd_tile(g_ptr, z_ptr, vec_ptr, offs, mask, offs_c, cmask, C, ACT: tl.constexpr):
    """bn_act_bwd with the vectors loaded from ``vec_ptr`` ([6, C] fp32)."""
    alpha, beta, c1, c2, mean, invstd = load_vec6(vec_ptr, offs_c, cmask, C)
    return bn_act_bwd(g_ptr, z_ptr, offs, mask, alpha, beta, c1, c2, mean, invstd, ACT)


@triton.jit
def load_x_tile(hz_ptr, res_ptr, offs, mask, ax, bx, ACT_IN: tl.constexpr, HAS_RES: tl.constexpr):
    """Rebuild the layer input ``x = [res] + ax * act_in(hz) + bx`` for one tile (fp32, 0 where masked).

    ``hz`` is the stored pre-activation of the producer and ``ax, bx`` the per-channel affine of the BN that
    follows it, so the zero padding of a convolution applies to ``x`` (post-affine), as in PyTorch.
    """
    hz = tl.load(hz_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    x = ax[None, :] * act_fwd(hz, ACT_IN) + bx[None, :]
    if HAS_RES:
        x += tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return tl.where(mask, x, 0.0)


@triton.jit
def grouped_pid(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of program ``pid`` in grouped ordering: GROUP_M row blocks sweep the column blocks together,
    so the operand tiles they share stay in L2 (Triton tutorial 03's swizzle)."""
    width = GROUP_M * num_pid_n
    group = pid // width
    first_m = group * GROUP_M
    size_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m
    return pid_m, pid_n


@triton.jit
def tile_coords(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Program ``pid``'s BLOCK_M × BLOCK_N output tile of an M × N result in grouped order (:func:`grouped_pid`):
    (pid_m, pid_n, offs_m, offs_n, mmask, nmask) — tile indices, row / column offsets, in-bounds masks."""
    pid_m, pid_n = grouped_pid(pid, tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    return pid_m, pid_n, offs_m, offs_n, offs_m < M, offs_n < N


@triton.jit
def tile_stats(v, vmask, rmask):
    """(count, mean, M2) per column of ``v`` [rows, cols] (fp32) over its valid elements (``vmask``); the count is
    the number of valid rows (``rmask``), the same for every column."""
    g = tl.where(vmask, v, 0.0)
    n = tl.sum(rmask.to(tl.float32), axis=0)
    mean = tl.sum(g, axis=0) / n
    d = tl.where(vmask, g - mean[None, :], 0.0)
    return tl.zeros_like(mean) + n, mean, tl.sum(d * d, axis=0)


@triton.jit
def chan_merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Chan's parallel merge of two (count, mean, M2) statistics (never sum / sum of squares: no cancellation)."""
    n = n_a + n_b
    frac = n_b / tl.maximum(n, 1.0)
    delta = mean_b - mean_a
    return n, mean_a + delta * frac, m2_a + m2_b + delta * delta * n_a * frac


@triton.jit
def store_stats(part_ptr, idx, n_part, offs_c, cmask, C, n, mean, m2):
    """Store one (count, mean, M2) partial as entry ``idx`` of ``part`` [3, n_part, C]."""
    tl.store(part_ptr + idx * C + offs_c, n, mask=cmask)
    tl.store(part_ptr + (n_part + idx) * C + offs_c, mean, mask=cmask)
    tl.store(part_ptr + (2 * n_part + idx) * C + offs_c, m2, mask=cmask)


@triton.jit
def store_tile_stats(part_ptr, tile, n_tiles, offs_c, cmask, C, v, vmask, rmask):
    """Store one tile's partial BatchNorm statistics of ``v`` (:func:`tile_stats`) into ``part`` [3, n_tiles, C],
    merged later with Chan's formula (spin_kernels.triton.bn)."""
    n, mean, m2 = tile_stats(v, vmask, rmask)
    store_stats(part_ptr, tile, n_tiles, offs_c, cmask, C, n, mean, m2)


@triton.jit
def merge_partials(part_ptr, n_part, C, offs_p, offs_c, cmask, n_a, mean_a, m2_a):
    """Merge the partials ``offs_p`` (a block of entries) of ``part`` [3, n_part, C] into the running (count, mean,
    M2) of the channels ``offs_c``. Through L2 (``.cg``): dw_fwd_kernel's in-kernel finalize reads partials
    that other programs of the same launch wrote."""
    m = (offs_p < n_part)[:, None] & cmask[None, :]
    offs = offs_p[:, None] * C + offs_c[None, :]
    nb = tl.load(part_ptr + offs, mask=m, other=0.0, cache_modifier=".cg")
    mb = tl.load(part_ptr + n_part * C + offs, mask=m, other=0.0, cache_modifier=".cg")
    qb = tl.load(part_ptr + 2 * n_part * C + offs, mask=m, other=0.0, cache_modifier=".cg")
    n_blk = tl.sum(nb, axis=0)
    mean_blk = tl.sum(nb * mb, axis=0) / tl.maximum(n_blk, 1.0)
    d = tl.where(m, mb - mean_blk[None, :], 0.0)
    m2_blk = tl.sum(qb + nb * d * d, axis=0)
    return chan_merge(n_a, mean_a, m2_a, n_blk, mean_blk, m2_blk)


@triton.jit
def store_bn_affine(n, mean, m2, offs_c, cmask, C, gamma_ptr, beta_ptr, eps, stat_ptr, ab_ptr):
    """From merged (count, mean, M2): the biased variance, invstd = 1/sqrt(var + eps) and the folded affine
    a = gamma·invstd, b = beta - mean·a. Stores mean, var, invstd as the rows of ``stat`` [3, C] and a, b as the
    rows of ``ab`` [2, C]; returns var."""
    var = m2 / tl.maximum(n, 1.0)
    invstd = 1.0 / tl.sqrt(var + eps)
    gamma = tl.load(gamma_ptr + offs_c, mask=cmask, other=0.0).to(tl.float32)
    beta = tl.load(beta_ptr + offs_c, mask=cmask, other=0.0).to(tl.float32)
    a = gamma * invstd
    tl.store(stat_ptr + offs_c, mean, mask=cmask)
    tl.store(stat_ptr + C + offs_c, var, mask=cmask)
    tl.store(stat_ptr + 2 * C + offs_c, invstd, mask=cmask)
    tl.store(ab_ptr + offs_c, a, mask=cmask)
    tl.store(ab_ptr + C + offs_c, beta - mean * a, mask=cmask)
    return var