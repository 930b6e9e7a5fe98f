"""BatchNorm finalize: per-tile partial statistics -> per-channel batch mean/var and the folded affine.

bn_finalize_kernel
    computes  from partials [3, T, C] (count, mean, M2 of each producer tile) the batch mean and biased variance
              by Chan's parallel merge (never sum / sum-of-squares), invstd = 1/sqrt(var + eps), the affine
              a = gamma·invstd, b = beta - mean·a that the consumer applies on load, and (UPDATE_RUNNING) the
              running statistics exactly as nn.BatchNorm2d: rm ← (1-m)·rm + m·mean, rv ← (1-m)·rv + m·var·n/(n-1).
    tiling    one program per BLOCK_C channels; the T tiles are merged BLOCK_T at a time in a fixed order, so the
              result is deterministic (no atomics).
    bytes     3·T·C·4 read, 5·C·4 written: negligible next to one activation pass.

bn_bwd_vectors_kernel
    computes  the backward glue of one BatchNorm in a fused run, from the partial sums [2, P, C] (sum(g) and
              sum(g·x̂) of each producer program/tile) of the gradient g reaching its output: the sums s1, s2 (fp32),
              the parameter gradients dbeta = s1, dgamma = s2 (in the parameters' dtype) and the 6 per-channel
              vectors of _common.bn_act_bwd that the next backward kernel applies on load:
              (a, 0, -a·s1/n, -a·s2/n, mean, invstd) with a = gamma·invstd (the two middle ones 0 in eval).
    tiling    one program per BLOCK_C (32) channels, the P partials summed BLOCK_P at a time in a fixed order.
    bytes     2·P·C·4 read, ≤ 10·C·4 written. One launch instead of ~20 small PyTorch ops per BN.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def bn_finalize_kernel(part_ptr, n_tiles, C, gamma_ptr, beta_ptr, eps, out_ptr, rm_ptr, rv_ptr, momentum,
                       UPDATE_RUNNING: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    offs_c = pid * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs_c < C
    n_a = tl.zeros([BLOCK_C], dtype=tl.float32)
    mean_a = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2_a = tl.zeros([BLOCK_C], dtype=tl.float32)
    for t0 in range(0, n_tiles, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        m = (offs_t < n_tiles)[:, None] & cmask[None, :]
        offs = offs_t[:, None] * C + offs_c[None, :]
        nb = tl.load(part_ptr + offs, mask=m, other=0.0)
        mb = tl.load(part_ptr + n_tiles * C + offs, mask=m, other=0.0)
        qb = tl.load(part_ptr + 2 * n_tiles * C + offs, mask=m, other=0.0)
        n_blk = tl.sum(nb, axis=0)
        mean_blk = tl.sum(nb * mb, axis=0) / tl.maximum(n_blk, 1.0)
        d = tl.where(m, mb - mean_blk[None, :], 0.0)
        m2_blk = tl.sum(qb + nb * d * d, axis=0)
        n_new = n_a + n_blk
        frac = n_blk / tl.maximum(n_new, 1.0)
        delta = mean_blk - mean_a
        mean_a = mean_a + delta * frac
        m2_a = m2_a + m2_blk + delta * delta * n_a * frac
        n_a = n_new
    var = m2_a / tl.maximum(n_a, 1.0)
    invstd = 1.0 / tl.sqrt(var + eps)
    gamma = tl.load(gamma_ptr + offs_c, mask=cmask, other=0.0).to(tl.float32)
    beta = tl.load(beta_ptr + offs_c, mask=cmask, other=0.0).to(tl.float32)
    a = gamma * invstd
    tl.store(out_ptr + offs_c, mean_a, mask=cmask)
    tl.store(out_ptr + C + offs_c, var, mask=cmask)
    tl.store(out_ptr + 2 * C + offs_c, invstd, mask=cmask)
    tl.store(out_ptr + 3 * C + offs_c, a, mask=cmask)
    tl.store(out_ptr + 4 * C + offs_c, beta - mean_a * a, mask=cmask)
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
    # narrow channel blocks: more programs share the P-long reduction (a GEMM's row tiles: P up to ~512)
    block_c = min(32, triton.next_power_of_2(C))
    block_p = max(1, min(64, triton.next_power_of_2(P)))
    bn_bwd_vectors_kernel[(triton.cdiv(C, block_c),)](
        part, P, C, gamma if write_vec else sums, mean if write_vec else sums, invstd if write_vec else sums,
        1.0 / count, sums, vec_out if write_vec else sums, grad_w if write_grads else sums,
        grad_b if write_grads else sums, TRAINING=training, WRITE_VEC=write_vec, WRITE_GRADS=write_grads,
        BLOCK_P=block_p, BLOCK_C=block_c, **(dict(num_warps=4, num_stages=1) if part.is_cuda else {}))
    return sums


def bn_finalize(part, gamma, beta, eps, running_mean=None, running_var=None, momentum=0.1, out=None):
    """Launch bn_finalize_kernel on partials [3, T, C].

    Returns fp32 [5, C]: mean, var (biased), invstd, a, b. When running_mean/var are given they are updated in
    place (nn.BatchNorm2d semantics; momentum must be a float here, resolve ``None`` on the host).
    """
    _, T, C = part.shape
    out = torch.empty((5, C), device=part.device, dtype=torch.float32) if out is None else out
    block_c = min(128, triton.next_power_of_2(C))
    block_t = max(1, min(32, triton.next_power_of_2(T), 4096 // block_c))
    update = running_mean is not None
    bn_finalize_kernel[(triton.cdiv(C, block_c),)](
        part, T, C, gamma, beta, float(eps), out,
        running_mean if update else out, running_var if update else out, float(momentum),
        UPDATE_RUNNING=update, BLOCK_T=block_t, BLOCK_C=block_c,
        **(dict(num_warps=4, num_stages=1) if part.is_cuda else {}))
    return out
