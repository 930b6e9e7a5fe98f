"""BatchNorm finalize: per-tile partial statistics -> per-channel batch mean/var and the folded affine.

bn_finalize_kernel
    computes  from partials [3, T, C] (count, mean, M2 of each producer tile) the batch mean and biased variance
              by Chan's parallel merge (never sum / sum-of-squares), invstd = 1/sqrt(var + eps), the affine
              a = gamma·invstd, b = beta - mean·a that the consumer applies on load, and (UPDATE_RUNNING) the
              running statistics exactly as nn.BatchNorm2d: rm ← (1-m)·rm + m·mean,
              rv ← (1-m)·rv + m·var·n/(n-1).
    tiling    one program per BLOCK_C (16) channels; the T tiles are merged BLOCK_T (256) at a time in a fixed
              order, so the result is deterministic (no atomics). The merge and the affine (_common.merge_partials,
              store_bn_affine) also run inside dw_fwd_kernel (FINALIZE), where the BN after the depthwise conv is
              finalized without a launch of its own; the statistics (mean, var, invstd) and the affine (a, b) go
              to two buffers, so the fused run writes them where it keeps them.
    bytes     3·T·C·4 read, 5·C·4 written: negligible next to one activation pass.

bn_bwd_vectors_kernel
    computes  the backward glue of one BatchNorm in a fused run, from the partial sums [2, P, C] (sum(g) and
              sum(g·x̂) of each producer program/tile) of the gradient g reaching its output: the sums s1, s2 (fp32),
              the parameter gradients dbeta = s1, dgamma = s2 (in the parameters' dtype) and the 6 per-channel
              vectors of _common.bn_act_bwd that the next backward kernel applies on load:
              (a, 0, -a·s1/n, -a·s2/n, mean, invstd) with a = gamma·invstd (the two middle ones 0 in eval).
    tiling    one program per BLOCK_C (16) channels, the P partials summed BLOCK_P (256) at a time in a fixed order.
    bytes     2·P·C·4 read, ≤ 10·C·4 written. One launch instead of ~20 small PyTorch ops per BN.
"""
import torch
import triton
import triton.language as tl

from ._common import merge_partials, store_bn_affine

# both kernels: channels per program, partial rows merged per step
BN_BLOCK_C = 16
BN_BLOCK_ROWS = 256


@triton.jit
def bn_finalize_kernel(part_ptr, n_tiles, C, gamma_ptr, beta_ptr, eps, stat_ptr, ab_ptr, rm_ptr, rv_ptr, momentum,
                       UPDATE_RUNNING: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    offs_c = pid * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs_c < C
    n_a = tl.zeros([BLOCK_C], dtype=tl.float32)
    mean_a = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2_a = tl.zeros([BLOCK_C], dtype=tl.float32)
    for t0 in range(0, n_tiles, BLOCK_T):
        n_a, mean_a, m2_a = merge_partials(part_ptr, n_tiles, C, t0 + tl.arange(0, BLOCK_T), offs_c, cmask,
                                           n_a, mean_a, m2_a)
    var = store_bn_affine(n_a, mean_a, m2_a, offs_c, cmask, C, gamma_ptr, beta_ptr, eps, stat_ptr, ab_ptr)
    if UPDATE_RUNNING:
        rm = tl.load(rm_ptr + offs_c, mask=cmask, other=0.0).to(tl.float32)
        rv = tl.load(rv_ptr + offs_c, mask=cmask, other=0.0).to(tl.float32)
        unbiased = var * n_a / tl.maximum(n_a - 1.0, 1.0)
        rm = (1.0 - momentum) * rm + momentum * mean_a
        rv = (1.0 - momentum) * rv + momentum * unbiased
        tl.store(rm_ptr + offs_c, rm.to(rm_ptr.dtype.element_ty), mask=cmask)
        tl.store(rv_ptr + offs_c, rv.to(rv_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def bn_bwd_vectors_kernel(part_ptr, n_part, C, gamma_ptr, mean_ptr, invstd_ptr, inv_count, sums_ptr, vec_ptr,
                          gw_ptr, gb_ptr, TRAINING: tl.constexpr, WRITE_VEC: tl.constexpr,
                          WRITE_GRADS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs_c < C
    s1 = tl.zeros([BLOCK_C], dtype=tl.float32)
    s2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    for p0 in range(0, n_part, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        m = (offs_p < n_part)[:, None] & cmask[None, :]
        offs = offs_p[:, None] * C + offs_c[None, :]
        s1 += tl.sum(tl.load(part_ptr + offs, mask=m, other=0.0), axis=0)
        s2 += tl.sum(tl.load(part_ptr + n_part * C + offs, mask=m, other=0.0), axis=0)
    tl.store(sums_ptr + offs_c, s1, mask=cmask)
    tl.store(sums_ptr + C + offs_c, s2, mask=cmask)
    if WRITE_GRADS:
        tl.store(gb_ptr + offs_c, s1.to(gb_ptr.dtype.element_ty), mask=cmask)
        tl.store(gw_ptr + offs_c, s2.to(gw_ptr.dtype.element_ty), mask=cmask)
    if WRITE_VEC:
        mean = tl.load(mean_ptr + offs_c, mask=cmask, other=0.0)
        invstd = tl.load(invstd_ptr + offs_c, mask=cmask, other=0.0)
        a = tl.load(gamma_ptr + offs_c, mask=cmask, other=0.0).to(tl.float32) * invstd
        zero = tl.zeros_like(a)
        tl.store(vec_ptr + offs_c, a, mask=cmask)
        tl.store(vec_ptr + C + offs_c, zero, mask=cmask)
        if TRAINING:  # the batch statistics' own gradient terms
            tl.store(vec_ptr + 2 * C + offs_c, -a * s1 * inv_count, mask=cmask)
            tl.store(vec_ptr + 3 * C + offs_c, -a * s2 * inv_count, mask=cmask)
        else:
            tl.store(vec_ptr + 2 * C + offs_c, zero, mask=cmask)
            tl.store(vec_ptr + 3 * C + offs_c, zero, mask=cmask)
        tl.store(vec_ptr + 4 * C + offs_c, mean, mask=cmask)
        tl.store(vec_ptr + 5 * C + offs_c, invstd, mask=cmask)


def bn_bwd_vectors(part, gamma=None, mean=None, invstd=None, count=1, training=True, vec_out=None, grad_w=None,
                   grad_b=None):
    """Launch bn_bwd_vectors_kernel on partial sums ``part`` fp32 [2, P, C].

    Returns the sums fp32 [2, C] (sum(g), sum(g·x̂)). With ``vec_out`` (fp32 [6, C]) it also writes the
    bn_act_bwd vectors of the BN with weight ``gamma``, statistics ``mean`` / ``invstd`` (fp32 [C]) over ``count``
    rows; with ``grad_w`` / ``grad_b`` (both or neither) the BN's parameter gradients s2 / s1 in their dtype.
    """
    _, P, C = part.shape
    sums = torch.empty((2, C), device=part.device, dtype=torch.float32)
    write_vec, write_grads = vec_out is not None, grad_w is not None
    if write_vec and (gamma is None or mean is None or invstd is None):
        raise ValueError("vec_out: the BN vectors need gamma, mean and invstd")
    if write_grads != (grad_b is not None):
        raise ValueError("grad_w, grad_b: give both parameter gradients or neither")
    # narrow channel blocks, long partial blocks (as bn_finalize): more programs, a shorter serial chain over the
    # P partials (a GEMM's row tiles: P up to ~512; convmixer_768_32 b64: 2.9 -> 1.1 us; was 32 × 64)
    block_c = min(BN_BLOCK_C, triton.next_power_of_2(C))
    block_p = max(1, min(BN_BLOCK_ROWS, triton.next_power_of_2(P)))
    bn_bwd_vectors_kernel[(triton.cdiv(C, block_c),)](
        part, P, C, gamma if write_vec else sums, mean if write_vec else sums, invstd if write_vec else sums,
        1.0 / count, sums, vec_out if write_vec else sums, grad_w if write_grads else sums,
        grad_b if write_grads else sums, TRAINING=training, WRITE_VEC=write_vec, WRITE_GRADS=write_grads,
        BLOCK_P=block_p, BLOCK_C=block_c, **(dict(num_warps=4, num_stages=1) if part.is_cuda else {}))
    return sums


def bn_finalize(part, gamma, beta, eps, running_mean=None, running_var=None, momentum=0.1, out=None,
                affine_out=None):
    """Launch bn_finalize_kernel on partials [3, T, C].

    Returns ``out``, fp32 [5, C]: mean, var (biased), invstd, a, b. With ``affine_out`` (fp32 [2, C], receives a, b)
    ``out`` is [3, C] (mean, var, invstd): the fused run writes the statistics and the affine where it keeps them.
    When running_mean/var are given they are updated in place (nn.BatchNorm2d semantics; momentum must be a float
    here, resolve ``None`` on the host).
    """
    _, T, C = part.shape
    rows = 5 if affine_out is None else 3
    out = torch.empty((rows, C), device=part.device, dtype=torch.float32) if out is None else out
    _check_stat_buffer("out", out, rows, C)
    if affine_out is not None:
        _check_stat_buffer("affine_out", affine_out, 2, C)
    # narrow channel blocks, long tile blocks: the merge is a serial chain of T / BLOCK_T dependent loads, and few
    # programs; 16 × 256 (3 · 4096 values: 96 per thread) is one or two links at T = 512 (cost model,
    # convmixer_768_32 b64: 7.3 -> 1.6 us, 4.6x -> 1.0x its floor; was 128 × 32)
    block_c = min(BN_BLOCK_C, triton.next_power_of_2(C))
    block_t = max(1, min(BN_BLOCK_ROWS, triton.next_power_of_2(T)))
    update = running_mean is not None
    bn_finalize_kernel[(triton.cdiv(C, block_c),)](
        part, T, C, gamma, beta, float(eps), out, out[3] if affine_out is None else affine_out,
        running_mean if update else out, running_var if update else out, float(momentum),
        UPDATE_RUNNING=update, BLOCK_T=block_t, BLOCK_C=block_c,
        **(dict(num_warps=4, num_stages=1) if part.is_cuda else {}))
    return out


def _check_stat_buffer(name, t, rows, C):
    if t.dtype != torch.float32 or tuple(t.shape) != (rows, C) or not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous fp32 [{rows}, {C}] buffer, got {t.dtype} "
                         f"{tuple(t.shape)}{'' if t.is_contiguous() else ' (not contiguous)'}")
