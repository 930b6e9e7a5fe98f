"""Device helpers shared by the ConvMixer kernels (activation, its derivative, the fused BN/act backward).

Activation codes (constexpr ``ACT``): 0 identity, 1 GELU (erf form, ``tl.math.erf`` so it also runs in the
interpreter), 2 ReLU. Everything here works on fp32 register tiles.
"""
import torch
import triton
import triton.language as tl

ACT_CODES = {"identity": 0, "none": 0, "gelu": 1, "relu": 2}


def sm_count(t: torch.Tensor) -> int:
    """Multiprocessors of the GPU holding ``t``: grid and split rules scale with the card, not with an H100's
    132. 0 for CPU tensors (the interpreter: callers pick their CPU tiles instead)."""
    return torch.cuda.get_device_properties(t.device).multi_processor_count if t.is_cuda else 0


@triton.jit
def act_fwd(z, ACT: tl.constexpr):
    """act(z) for a fp32 tile."""
    if ACT == 1:
        y = 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))
    elif ACT == 2:
        y = tl.maximum(z, 0.0)
    else:
        y = z
    return y


@triton.jit
def act_grad(z, ACT: tl.constexpr):
    """d act(z) / dz for a fp32 tile."""
    if ACT == 1:
        cdf = 0.5 * (1.0 + tl.math.erf(z * 0.7071067811865476))
        d = cdf + z * tl.exp(-0.5 * z * z) * 0.3989422804014327
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
    d = act_grad(z, ACT)
    xhat = (act_fwd(z, ACT) - mean[None, :]) * invstd[None, :]
    dz = g * (d * alpha[None, :] + beta[None, :]) + d * (c1[None, :] + c2[None, :] * xhat)
    return tl.where(mask, dz, 0.0)


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
def store_tile_stats(part_ptr, tile, n_tiles, offs_c, cmask, C, v, vmask, rmask):
    """Store one tile's partial BatchNorm statistics of ``v`` [rows, cols] (fp32) into ``part`` [3, n_tiles, C]:
    count of valid rows (``rmask``), mean and M2 over the valid elements (``vmask``) — merged later with Chan's
    formula (spin_kernels.triton.bn)."""
    g = tl.where(vmask, v, 0.0)
    n = tl.sum(rmask.to(tl.float32), axis=0)
    mean = tl.sum(g, axis=0) / n
    d = tl.where(vmask, g - mean[None, :], 0.0)
    m2 = tl.sum(d * d, axis=0)
    tl.store(part_ptr + tile * C + offs_c, tl.zeros_like(mean) + n, mask=cmask)  # the count, per channel
    tl.store(part_ptr + (n_tiles + tile) * C + offs_c, mean, mask=cmask)
    tl.store(part_ptr + (2 * n_tiles + tile) * C + offs_c, m2, mask=cmask)
