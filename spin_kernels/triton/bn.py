"""BatchNorm finalize: per-tile partial statistics -> per-channel batch mean/var and the folded affine.

bn_finalize_kernel
    computes  from partials [3, T, C] (count, mean, M2 of each producer tile) the batch mean and biased variance
              by Chan's parallel merge (never sum / sum-of-squares), invstd = 1/sqrt(var + eps), the affine
              a = gamma·invstd, b = beta - mean·a that the consumer applies on load, and (UPDATE_RUNNING) the
              running statistics exactly as nn.BatchNorm2d: rm ← (1-m)·rm + m·mean, rv ← (1-m)·rv + m·var·n/(n-1).
    tiling    one program per BLOCK_C channels; the T tiles are merged BLOCK_T at a time in a fixed order, so the
              result is deterministic (no atomics).
    bytes     3·T·C·4 read, 5·C·4 written: negligible next to one activation pass.
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
