"""Pointwise (1×1) convolution as a tiled GEMM on channels-last rows, with BN / activation fused around it.

Rows are the M = B·H·W positions, weight W is the conv weight as [N = C_out, K = C_in] (row-major).

pw_input_kernel
    computes  u = [res] + ax·act(hz) + bx + a1·act(q) + b1   (the layer input x and BN1(act(DW)) rebuilt from the
              stored pre-activations hz and q), once per element, stored in the activations' dtype: the SPIN
              layer's saved u, or a temporary for a timm layer.
    tiling    elementwise, PW_INPUT_BLOCK_M rows × ≤ 128 channels per program.
    bytes     reads hz, q (+ res), writes u: 3 (4) passes.

pw_fwd_kernel
    computes  z = u·Wᵀ + bias  (stored pre-activation), per-row-tile partial BN stats of act(z) (count, mean, M2).
    tiling    BLOCK_M × BLOCK_N output tile, K loop in BLOCK_K steps, tl.dot in the activation dtype (fp16/bf16 →
              wgmma on sm_90) with fp32 accumulation; fp32 operands (all three GEMMs) take input_precision="ieee"
              (FFMA: ~1e-7 relative error, within the fp32 tolerance 1e-5, where the default single-pass TF32
              truncates to ~8e-4; tf32x3 overflows sm_90's shared memory at some shipped tiles, see
              tests/triton/test_dot_precision.py); grouped (GROUP_M) tile order for L2 reuse of the A rows.
    bytes     reads u once (re-reads across the N/BLOCK_N column programs hit L2), W once per tile, writes z:
              2 passes. Until this split the u prologue (two erfs per element at GELU) ran in the GEMM's K loop,
              once per N tile — 24× per element at C = 1536 — and pw_fwd was 17.4x its floor (cost model,
              convmixer_1536_20 b64); now pw_input + pw_fwd cost 1.24x and 1.29x their floors, for one extra pass.

pw_dz_kernel
    computes  dz = d/dz of BN2(act(z)) given G (_common.bn_act_bwd's modes A / B), once per element, stored in the
              activations' dtype: the A operand of both backward GEMMs. WRITE_U (a timm layer, whose forward does
              not save u): also u as pw_input_kernel, the weight gradient's B operand, in the same launch.
    tiling    elementwise, PW_INPUT_BLOCK_M rows × ≤ 128 channels per program.
    bytes     reads G, z, writes dz: 3 passes (in place over G for a timm layer); WRITE_U + 3 (hz, q r, u w).

pw_bwd_dx_kernel
    computes  du = dz·W [+ R], and per-row-tile partials sum(du), sum(du·ghat1) with
              ghat1 = (act(q) - mean1)·invstd1 (BN1 backward: also dgamma1 / dbeta1).
    tiling    BLOCK_M × BLOCK_K output tile over C_in, loop over C_out in BLOCK_N steps; grouped order.
    bytes     reads dz, q (+ R), writes du: 3 (4) passes.

pw_bwd_dw_kernel (the shared-run weight gradient)
    computes  dW = Σ_layers Σ_rows dzᵀ·u and dbias = Σ dz over the CONCATENATED rows of all R layers of a run that
              share W: one GEMM with reduction length R·M, split in ``split`` row ranges (a runtime value: no
              recompile per batch; fp32 partials [split, N, K], summed in a fixed order by the host:
              deterministic). u is the SPIN forward's saved u, or rebuilt once per element by pw_dz_kernel
              (WRITE_U) for a timm run (a transient of R activations).
    tiling    BLOCK_N × BLOCK_K output tile per program, BLOCK_M row steps; layer l's dz is the stacked buffer's
              slice l (l < R-1) or the separate last-layer buffer (l = R-1).
    bytes     reads dz and u once per (N, K) tile column / row (L2 re-reads): 2 passes per layer.

Until the dz and u passes existed the backward GEMMs rebuilt them in their loops once per output tile (24× per
element for pw_bwd_dx at C = 1536, 12× for pw_bwd_dw, twice more with complementary masks): 13.3x and 46.9x
their floors (cost model, convmixer_1536_20 b64); now ~1.95x and 1.6x, plus ~1.0x for each pass; pw_bwd_dw's split
chosen to fill its waves (``_common.split_for_waves``): 1.23x.
"""
import torch
import triton
import triton.language as tl

from ._common import (
    ACT_CODES,
    act_fwd,
    bn_act_bwd_tile,
    load_x_tile,
    new_output,
    sm_count,
    split_for_waves,
    store_tile_stats,
    tile_coords,
)


@triton.jit
def pw_input_kernel(hz_ptr, res_ptr, ax_ptr, bx_ptr, q_ptr, a1_ptr, b1_ptr, u_ptr, M, K,
                    ACT_IN: tl.constexpr, ACT_G: tl.constexpr, HAS_RES: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    kmask = offs_k < K
    m = (offs_m < M)[:, None] & kmask[None, :]
    offs = offs_m.to(tl.int64)[:, None] * K + offs_k[None, :]
    store_input_tile(hz_ptr, res_ptr, ax_ptr, bx_ptr, q_ptr, a1_ptr, b1_ptr, u_ptr, offs, m, offs_k, kmask,
                     ACT_IN, ACT_G, HAS_RES)


@triton.jit
def store_input_tile(hz_ptr, res_ptr, ax_ptr, bx_ptr, q_ptr, a1_ptr, b1_ptr, u_ptr, offs, m, offs_k, kmask,
                     ACT_IN: tl.constexpr, ACT_G: tl.constexpr, HAS_RES: tl.constexpr):
    """u = [res] + ax·act_in(hz) + bx + a1·act_g(q) + b1 of one tile, stored in u's dtype."""
    ax = tl.load(ax_ptr + offs_k, mask=kmask, other=0.0)
    bx = tl.load(bx_ptr + offs_k, mask=kmask, other=0.0)
    a1 = tl.load(a1_ptr + offs_k, mask=kmask, other=0.0)
    b1 = tl.load(b1_ptr + offs_k, mask=kmask, other=0.0)
    u = load_x_tile(hz_ptr, res_ptr, offs, m, ax, bx, ACT_IN, HAS_RES)
    g = act_fwd(tl.load(q_ptr + offs, mask=m, other=0.0).to(tl.float32), ACT_G)
    tl.store(u_ptr + offs, (u + a1[None, :] * g + b1[None, :]).to(u_ptr.dtype.element_ty), mask=m)


@triton.jit
def pw_fwd_kernel(u_ptr, w_ptr, bias_ptr, z_ptr, part_ptr, M, N, K,
                  ACT: tl.constexpr, EMIT_STATS: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid_m, pid_n, offs_m, offs_n, mmask, nmask = tile_coords(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    rows = offs_m.to(tl.int64)[:, None] * K
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        kmask = offs_k < K
        u = tl.load(u_ptr + rows + offs_k[None, :], mask=mmask[:, None] & kmask[None, :], other=0.0)
        wt = tl.load(w_ptr + offs_n[None, :] * K + offs_k[:, None], mask=kmask[:, None] & nmask[None, :], other=0.0)
        acc = tl.dot(u, wt, acc, input_precision="ieee" if u.dtype == tl.float32 else "tf32")
    bias = tl.load(bias_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)
    z = (acc + bias[None, :]).to(z_ptr.dtype.element_ty)
    omask = mmask[:, None] & nmask[None, :]
    tl.store(z_ptr + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :], z, mask=omask)
    if EMIT_STATS:
        store_tile_stats(part_ptr, pid_m, num_pid_m, offs_n, nmask, N, act_fwd(z.to(tl.float32), ACT), omask, mmask)


@triton.jit
def pw_dz_kernel(g_ptr, z_ptr, zvec_ptr, dz_ptr, hz_ptr, uvec_ptr, q_ptr, u_ptr, M, N,
                 ACT: tl.constexpr, WRITE_U: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = offs_n < N
    m = (offs_m < M)[:, None] & nmask[None, :]
    offs = offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    dz = bn_act_bwd_tile(g_ptr, z_ptr, zvec_ptr, offs, m, offs_n, nmask, N, ACT)
    tl.store(dz_ptr + offs, dz.to(dz_ptr.dtype.element_ty), mask=m)
    if WRITE_U:  # a timm layer's u (not saved by the forward) for the run's weight gradient, in the same launch
        store_input_tile(hz_ptr, hz_ptr, uvec_ptr, uvec_ptr + N, q_ptr, uvec_ptr + 2 * N, uvec_ptr + 3 * N, u_ptr,
                         offs, m, offs_n, nmask, ACT, ACT, False)


@triton.jit
def pw_bwd_dx_kernel(dz_ptr, w_ptr, r_ptr, q_ptr, qvec_ptr, du_ptr, part_ptr,
                     M, N, K,
                     ACT_G: tl.constexpr, HAS_R: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    # output tile over (M, K = C_in); the loop reduces over N = C_out
    pid_m, _, offs_m, offs_k, mmask, kmask = tile_coords(tl.program_id(0), M, K, BLOCK_M, BLOCK_K, GROUP_M)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    acc = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        nmask = offs_n < N
        dz = tl.load(dz_ptr + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :],
                     mask=mmask[:, None] & nmask[None, :], other=0.0)
        w = tl.load(w_ptr + offs_n[:, None] * K + offs_k[None, :], mask=nmask[:, None] & kmask[None, :], other=0.0)
        acc = tl.dot(dz, w, acc, input_precision="ieee" if dz.dtype == tl.float32 else "tf32")
    omask = mmask[:, None] & kmask[None, :]
    offs_o = offs_m.to(tl.int64)[:, None] * K + offs_k[None, :]
    if HAS_R:
        acc += tl.load(r_ptr + offs_o, mask=omask, other=0.0).to(tl.float32)
    du = acc.to(du_ptr.dtype.element_ty)
    tl.store(du_ptr + offs_o, du, mask=omask)
    mean1 = tl.load(qvec_ptr + 4 * K + offs_k, mask=kmask, other=0.0)
    invstd1 = tl.load(qvec_ptr + 5 * K + offs_k, mask=kmask, other=0.0)
    ghat = (act_fwd(tl.load(q_ptr + offs_o, mask=omask, other=0.0).to(tl.float32), ACT_G) - mean1[None, :]) \
        * invstd1[None, :]
    duf = tl.where(omask, du.to(tl.float32), 0.0)
    tl.store(part_ptr + pid_m * K + offs_k, tl.sum(duf, axis=0), mask=kmask)
    tl.store(part_ptr + (num_pid_m + pid_m) * K + offs_k, tl.sum(duf * ghat, axis=0), mask=kmask)


@triton.jit
def pw_bwd_dw_kernel(dzrun_ptr, dzlast_ptr, urun_ptr, ulast_ptr, dw_ptr, db_ptr, M, N, K, R, split,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    pid_s = tl.program_id(1)
    num_pid_k = tl.cdiv(K, BLOCK_K)
    pid_n = pid // num_pid_k
    pid_k = pid % num_pid_k
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    nmask = offs_n < N
    kmask = offs_k < K
    tiles = tl.cdiv(M, BLOCK_M)
    total = R * tiles
    per = tl.cdiv(total, split)
    t_start = pid_s * per
    t_end = tl.minimum(total, t_start + per)
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    dbias = tl.zeros([BLOCK_N], dtype=tl.float32)
    for t in range(t_start, t_end):
        layer = t // tiles
        offs_m = (t % tiles) * BLOCK_M + tl.arange(0, BLOCK_M)
        mmask = offs_m < M
        mz = mmask[:, None] & nmask[None, :]
        offs_z = offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
        # dz and u of layer l: slice l of the stacked buffers (l < R-1) or the run's last layer's (l = R-1)
        dz_src = tl.where(layer < R - 1, dzrun_ptr + layer.to(tl.int64) * M * N, dzlast_ptr)
        dz = tl.load(dz_src + offs_z, mask=mz, other=0.0)
        u_src = tl.where(layer < R - 1, urun_ptr + layer.to(tl.int64) * M * K, ulast_ptr)
        u = tl.load(u_src + offs_m.to(tl.int64)[:, None] * K + offs_k[None, :],
                    mask=mmask[:, None] & kmask[None, :], other=0.0)
        acc = tl.dot(tl.trans(dz), u, acc, input_precision="ieee" if u.dtype == tl.float32 else "tf32")
        if pid_k == 0:  # the bias gradient: one column of programs
            dbias += tl.sum(dz.to(tl.float32), axis=0)
    tl.store(dw_ptr + (pid_s * N + offs_n)[:, None] * K + offs_k[None, :], acc,
             mask=nmask[:, None] & kmask[None, :])
    tl.store(db_ptr + pid_s * N + offs_n, dbias, mask=nmask & (pid_k == 0))


# ---------------------------------------------------------------------------------------------- launch helpers
# Shipped GPU configs, checked on sm_90 (tests/triton/test_aot.py): wgmma, zero spills; the first entry serves
# large M, the second small M (more programs). The interpreter uses small fixed tiles.
# pw_fwd is a plain GEMM with a statistics epilogue (its input u comes from pw_input_kernel): 128×128×64 tiles
# (cost model, convmixer_1536_20 b64: 1.29x the floor; 128×64×32 1.96x; 128×256×64 spills 704 bytes).
PW_FWD_GPU_CONFIGS = [
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3),
    dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=3),
]
# pw_bwd_dx: output tile BLOCK_M × BLOCK_K (over C_in), reduction over C_out in BLOCK_N steps; a plain GEMM
# with the residual + BN1-sums epilogue since dz has its own pass (cost model, convmixer_1536_20 b64: 1.25x;
# 128×256 output tiles spill)
PW_DX_GPU_CONFIGS = [
    dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=128, GROUP_M=8, num_warps=8, num_stages=3),
    dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=3),
]
# pw_bwd_dw: the run's rows are split in as many row ranges as fill the waves best against the fp32 partials
# (split_for_waves; the partials are summed by the host in a fixed order). It was ~2 programs per SM: 15 slices
# of 18 tiles at C = 768 are 270 programs, three waves with the last 5% busy (cost model, convmixer_768_32 b64:
# 1.75x the floor).
# a plain GEMM now (dz and u come from their own passes): 64×128×256 (cost model, convmixer_1536_20 b64: 1.60x
# the floor; 16×128×128 4.38x; 128×128×256 would need 294 KiB of shared memory at 3 stages)
PW_DW_GPU_CONFIG = dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=256, num_warps=8, num_stages=3)


def _on_gpu(t):
    return t.is_cuda


# The GPU config rule: the first config (big tiles) from this many rows on, the second (more programs) below.
BIG_TILE_MIN_ROWS = 8192


def _pw_cfg(t, M, out_dim, red_dim, gpu_configs, out_block, red_block):
    """Tile config of a pointwise GEMM with output tile BLOCK_M × ``out_block`` (over ``out_dim``) and the
    reduction over ``red_dim`` in ``red_block`` steps (the kernels name these BLOCK_N / BLOCK_K by the conv's
    C_out / C_in, so forward and input-gradient GEMMs swap the roles)."""
    if _on_gpu(t):
        return dict(gpu_configs[0] if M >= BIG_TILE_MIN_ROWS else gpu_configs[1])
    # interpreter: small fixed tiles
    return {"BLOCK_M": 32, out_block: max(16, min(64, triton.next_power_of_2(out_dim))),
            red_block: max(16, min(32, triton.next_power_of_2(red_dim))), "GROUP_M": 4}


# pw_input_kernel: an elementwise pass, BLOCK_M rows × up to 128 channels per program
PW_INPUT_BLOCK_M = 32


def pw_input(hz, res, ax, bx, q, a1, b1, act_in="gelu", act_g="gelu", out=None):
    """u = [res] + ax·act_in(hz) + bx + a1·act_g(q) + b1 (pw_input_kernel), into ``out`` or a new tensor."""
    M, K = hz.shape
    u = torch.empty_like(hz) if out is None else out
    block_k = min(128, triton.next_power_of_2(K))
    pw_input_kernel[(triton.cdiv(M, PW_INPUT_BLOCK_M), triton.cdiv(K, block_k))](
        hz_ptr=hz, res_ptr=res if res is not None else hz, ax_ptr=ax, bx_ptr=bx, q_ptr=q, a1_ptr=a1, b1_ptr=b1,
        u_ptr=u, M=M, K=K, ACT_IN=ACT_CODES[act_in], ACT_G=ACT_CODES[act_g], HAS_RES=res is not None,
        BLOCK_M=PW_INPUT_BLOCK_M, BLOCK_K=block_k)
    return u


def pw_fwd(hz, res, ax, bx, q, a1, b1, weight, bias, act_in="gelu", act_g="gelu", act="gelu",
           write_u=False, emit_stats=True, z_out=None, u_out=None):
    """The pointwise half of a layer: u = [res] + ax·act_in(hz) + bx + a1·act_g(q) + b1 (pw_input_kernel, one
    pass), then z = u·Wᵀ + bias with BN statistics of act(z) (pw_fwd_kernel, a plain GEMM).

    Activations [M, C]; weight [C_out, C_in(, 1, 1)]; vectors fp32 [C]. ``write_u``: u is returned (into ``u_out``
    when given); otherwise it is a temporary. Returns (z [M, N], u [M, K] or None, partial stats fp32 [3, T, N] or
    None).
    """
    M, K = hz.shape
    w = weight.reshape(weight.shape[0], -1)
    N = w.shape[0]
    u = pw_input(hz, res, ax, bx, q, a1, b1, act_in, act_g, out=u_out if write_u else None)
    cfg = _pw_cfg(hz, M, N, K, PW_FWD_GPU_CONFIGS, out_block="BLOCK_N", red_block="BLOCK_K")
    z = torch.empty((M, N), device=hz.device, dtype=hz.dtype) if z_out is None else z_out
    n_tiles = triton.cdiv(M, cfg["BLOCK_M"])
    part = torch.empty((3, n_tiles, N), device=hz.device, dtype=torch.float32) if emit_stats else z
    grid = (n_tiles * triton.cdiv(N, cfg["BLOCK_N"]),)
    # part: a tensor EMIT_STATS=False leaves unused still needs one (z, never written then)
    pw_fwd_kernel[grid](u_ptr=u, w_ptr=w, bias_ptr=bias, z_ptr=z, part_ptr=part, M=M, N=N, K=K,
                        ACT=ACT_CODES[act], EMIT_STATS=emit_stats, **cfg)
    return z, (u if write_u else None), (part if emit_stats else None)


def pw_dz(g, z, zvec, act="gelu", out=None, u_inputs=None, u_out=None):
    """dz = d/dz of y = BN(act(z)) given G (``_common.bn_act_bwd``'s modes, vectors ``zvec`` fp32 [6, N]), once per
    element (pw_dz_kernel), into ``out`` (may be ``g`` itself: elementwise, in place) or a new tensor.

    With ``u_inputs`` = (hz, q, uvec fp32 [4, N] = ax, bx, a1, b1) the same launch also writes a timm layer's
    u = ax·act(hz) + bx + a1·act(q) + b1 (as pw_input) into ``u_out``."""
    M, N = g.shape
    dz = torch.empty_like(g) if out is None else out
    hz, q, uvec = u_inputs if u_inputs is not None else (g, g, zvec)
    block_n = min(128, triton.next_power_of_2(N))
    pw_dz_kernel[(triton.cdiv(M, PW_INPUT_BLOCK_M), triton.cdiv(N, block_n))](
        g_ptr=g, z_ptr=z, zvec_ptr=zvec, dz_ptr=dz, hz_ptr=hz, uvec_ptr=uvec, q_ptr=q,
        u_ptr=u_out if u_inputs is not None else dz, M=M, N=N, ACT=ACT_CODES[act], WRITE_U=u_inputs is not None,
        BLOCK_M=PW_INPUT_BLOCK_M, BLOCK_N=block_n)
    return dz


def pw_bwd_dx(dz, weight, r, q, qvec, act_g="gelu"):
    """Launch pw_bwd_dx_kernel: du = dz·W [+ r]. Returns (du [M, K], partial sums fp32 [2, T, K]: sum(du) and
    sum(du·ghat1) of each of the T row tiles, reduced by spin_kernels.triton.bn.bn_bwd_vectors)."""
    M, N = dz.shape
    w = weight.reshape(weight.shape[0], -1)
    K = w.shape[1]
    # output tile M × K (C_in), reduction over N (C_out)
    cfg = _pw_cfg(dz, M, K, N, PW_DX_GPU_CONFIGS, out_block="BLOCK_K", red_block="BLOCK_N")
    du = torch.empty((M, K), device=dz.device, dtype=dz.dtype)
    n_tiles = triton.cdiv(M, cfg["BLOCK_M"])
    part = torch.empty((2, n_tiles, K), device=dz.device, dtype=torch.float32)
    grid = (n_tiles * triton.cdiv(K, cfg["BLOCK_K"]),)
    pw_bwd_dx_kernel[grid](dz_ptr=dz, w_ptr=w, r_ptr=r if r is not None else dz, q_ptr=q, qvec_ptr=qvec, du_ptr=du,
                           part_ptr=part, M=M, N=N, K=K, ACT_G=ACT_CODES[act_g], HAS_R=r is not None, **cfg)
    return du, part


def pw_bwd_dw(dzrun, dzlast, urun, ulast, R, split=None):
    """Launch pw_bwd_dw_kernel: dW = Σ dzᵀ·u and dbias = Σ dz over the concatenated rows of the R layers of a run.

    dzrun / urun: [≥ R-1, M, N / K] dz and u of layers 0..R-2 (any tensor when R = 1: not read);
    dzlast / ulast: [M, N / K] those of layer R-1. Returns (dW fp32 [N, K], dbias fp32 [N]).
    """
    M, K = ulast.shape
    N = dzlast.shape[1]
    if _on_gpu(ulast):
        cfg = dict(PW_DW_GPU_CONFIG)
    else:
        cfg = dict(BLOCK_M=32, BLOCK_N=max(16, min(32, triton.next_power_of_2(N))),
                   BLOCK_K=max(16, min(32, triton.next_power_of_2(K))))
    n_prog = triton.cdiv(N, cfg["BLOCK_N"]) * triton.cdiv(K, cfg["BLOCK_K"])
    total = R * triton.cdiv(M, cfg["BLOCK_M"])
    if split is None:  # waves filled against partials (split_for_waves; the interpreter: 2 splits)
        split = split_for_waves(n_prog, total, cfg["BLOCK_M"], sm_count(ulast), total) \
            if _on_gpu(ulast) else max(1, min(total, 2))
    if not 1 <= split <= 65535:  # (grid axis 1: CUDA's limit)
        raise ValueError(f"split: expected 1 to 65535 row ranges, got {split}")
    # every program stores its slice's partial, an empty slice zeros (poisoned on the CPU: a missed store shows)
    dw = new_output((split, N, K), ulast.device, torch.float32)
    db = new_output((split, N), ulast.device, torch.float32)
    pw_bwd_dw_kernel[(n_prog, split)](dzrun_ptr=dzrun, dzlast_ptr=dzlast, urun_ptr=urun, ulast_ptr=ulast, dw_ptr=dw,
                                      db_ptr=db, M=M, N=N, K=K, R=R, split=split, **cfg)
    return dw.sum(0), db.sum(0)
