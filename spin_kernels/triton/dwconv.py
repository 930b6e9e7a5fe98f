"""Depthwise k×k convolution (odd k, 'same' padding, stride 1) on channels-last activations, forward and backward.

Activations are [M = B·H·W, C] row-major (channels-last [B, H, W, C], contiguous). The layer input is never
stored: it is rebuilt on load as ``x = [res] + ax·act_in(hz) + bx`` (the previous BN folded into the prologue,
see ``_common.load_x_tile``), so zero padding applies to ``x``. Tiles are BLOCK_P consecutive positions of the
flattened M axis × BLOCK_C channels; the neighbour (di, dj) of position p is row p + di·W + dj when
0 ≤ h+di < H and 0 ≤ w+dj < W (so tiles may span image rows and images; no padding copies).

dw_fwd_kernel
    computes  q = DW_k(x) + bias   (stored: the pre-activation q; consumers apply act on load)
              and, when EMIT_STATS, per-tile partial BN statistics of g = act(q): (count, mean, M2).
    tiling    a tile is TILE_H whole image rows (BLOCK_W ≥ W columns) × BLOCK_C channels; programs are persistent
              (grid[0] programs stride over the B·ceil(H/TILE_H) tiles, grid[1] = channel blocks). Per tile the
              halo — (TILE_H + k - 1) rows × (W + k - 1) columns — is rebuilt ONCE (prologue: BN affine,
              activation, residual; zeros outside the image) and staged in the program's own scratch area in the
              activations' dtype; after a barrier the k² taps are unmasked, 16-byte loads of that staged tile at
              a constant shift (i·(W + k - 1) + j positions), one conversion and one FMA per element.
    bytes     reads hz (+ res) once from HBM (halo rows of neighbouring tiles are cache hits), writes q once:
              2 (3) activation passes; the staging area (programs × region × BLOCK_C) is written and read back by
              the same program and stays in L1/L2; stats: 3·C·4 bytes per tile.
    cost      (sm_90a SASS, bf16, `spin kernels-report --cost`): per tap and element ~3.3 instructions
              (k = 9: LDG.128 per 8 elements, bf16→fp32 conversion, FFMA); the prologue ~43 instructions per
              staged element at GELU, (TILE_H + k - 1)(W + k - 1) / (TILE_H·W) staged elements per output
              (2.5 at k = 9, W = 32, TILE_H = 8). Before this design the prologue ran in the tap loop, k² times
              per element: dw_fwd k = 9 at convmixer_1536_20 b64 went from 43.5x to 5.0x its floor.

dw_bwd_kernel
    given du = dL/du (u = x + BN1(act(q))), rebuilds dq = act'(q)·(a1·du + c1 + c2·ghat) (BN1 backward with the
    batch-stat terms c1, c2; see ``_common.bn_act_bwd``) and computes
        dx  = du + DW_kᵀ(dq)                         (stored when WRITE_DX)
        dhz = act_in'(hz)·ax·dx                      (stored when WRITE_DHZ: grad of the producer's z, direct path)
        per-program partials: sum(dx), sum(dx·xhat_in) (the previous BN's backward and its gamma/beta grads),
        dw[tap, c] = Σ dq·x(shifted), dbias = Σ dq   (fp32, one [k²+1, C] slab per program, reduced by the host
        in a fixed order: deterministic, no atomics).
    tiling    one program = TILES consecutive BLOCK_P-position tiles × BLOCK_C channels; per tile and tap: dq at
              the mirrored neighbour (for dx) and x at the neighbour (for dw); the per-tap weight-gradient
              accumulator is one [KK_PAD, BLOCK_C] register tile updated with a one-hot row select.
    bytes     reads du, q, hz (+ res) once from HBM, writes dx (and/or dhz): 4 (5) activation passes;
              partials (k²+1+2)·C·4 bytes per program.
"""
import torch
import triton
import triton.language as tl

from ._common import (
    ACT_CODES,
    act_fwd,
    act_grad,
    bn_act_bwd,
    load_vec6,
    load_x_tile,
    sm_count,
    store_tile_stats,
)

# dw_bwd: tiles are packed into programs (fp32 weight-gradient partials per program, reduced by the host) so that
# the grid holds about this many programs per SM: enough to fill the card, few partial slabs to sum.
DW_BWD_PROGRAMS_PER_SM = 8


@triton.jit
def dw_fwd_kernel(hz_ptr, res_ptr, ax_ptr, bx_ptr, w_ptr, bias_ptr, q_ptr, part_ptr, scratch_ptr,
                  H, W, C, n_tiles, row_tiles, halo_w, region, n_taps,
                  KS: tl.constexpr, ACT_IN: tl.constexpr, ACT: tl.constexpr, HAS_RES: tl.constexpr,
                  EMIT_STATS: tl.constexpr, TILE_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
                  STAGE: tl.constexpr):
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    pid_c = tl.program_id(1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs_c < C
    lane_c = tl.arange(0, BLOCK_C)
    ax = tl.load(ax_ptr + offs_c, mask=cmask, other=0.0)
    bx = tl.load(bx_ptr + offs_c, mask=cmask, other=0.0)
    bias = tl.load(bias_ptr + offs_c, mask=cmask, other=0.0).to(tl.float32)
    # this program's staging area: `region` halo positions × BLOCK_C channels, reused for each of its tiles
    scr = scratch_ptr + (pid_c * n_prog + pid).to(tl.int64) * region * BLOCK_C
    offs_s = tl.arange(0, STAGE)
    # output tile: TILE_H rows × BLOCK_W columns; (r, c) reads halo position (r + i)·halo_w + (c + j) at tap (i, j)
    o = tl.arange(0, TILE_H * BLOCK_W)
    o_row = o // BLOCK_W
    o_col = o % BLOCK_W
    taps0 = scr + ((o_row * halo_w + o_col) * BLOCK_C)[:, None] + lane_c[None, :]
    for t in range(pid, n_tiles, n_prog):  # persistent: tiles (image, row block) strided over the programs
        img_row0 = (t // row_tiles) * H              # first image row of the tile's image, in rows of the batch
        h0 = (t % row_tiles) * TILE_H
        # stage the halo once: x = [res] + ax·act_in(hz) + bx, zero outside the image (the conv's padding)
        for s0 in range(0, region, STAGE):
            f = s0 + offs_s
            hh = h0 - KS // 2 + f // halo_w
            ww = f % halo_w - KS // 2
            valid = (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W) & (f < (TILE_H + KS - 1) * halo_w)
            m = valid[:, None] & cmask[None, :]
            offs = ((img_row0 + hh).to(tl.int64) * W + ww)[:, None] * C + offs_c[None, :]
            x = load_x_tile(hz_ptr, res_ptr, offs, m, ax, bx, ACT_IN, HAS_RES)
            tl.store(scr + (f * BLOCK_C)[:, None] + lane_c[None, :], x.to(scratch_ptr.dtype.element_ty))
        tl.debug_barrier()  # the tile's halo is visible to every thread of the program
        acc = tl.zeros([TILE_H * BLOCK_W, BLOCK_C], dtype=tl.float32)
        # runtime tap loop over n_taps = KS² (a runtime value, so it is never unrolled: register use and compile
        # time independent of k); each tap is one unmasked, 16-byte-vectorised load of the staged tile, a
        # conversion and an FMA per element
        for tap in range(n_taps):
            shift = (tap // KS) * halo_w + tap % KS
            x = tl.load(taps0 + shift * BLOCK_C).to(tl.float32)
            wv = tl.load(w_ptr + tap * C + offs_c, mask=cmask, other=0.0).to(tl.float32)
            acc += x * wv[None, :]
        tl.debug_barrier()  # every thread is done with the halo before the next tile overwrites it
        hh = h0 + o_row
        pmask = (hh < H) & (o_col < W)
        omask = pmask[:, None] & cmask[None, :]
        offs_o = ((img_row0 + hh).to(tl.int64) * W + o_col)[:, None] * C + offs_c[None, :]
        q = (acc + bias[None, :]).to(q_ptr.dtype.element_ty)
        tl.store(q_ptr + offs_o, q, mask=omask)
        if EMIT_STATS:
            store_tile_stats(part_ptr, t, n_tiles, offs_c, cmask, C, act_fwd(q.to(tl.float32), ACT), omask, pmask)


@triton.jit
def dw_bwd_kernel(du_ptr, q_ptr, qvec_ptr, w_ptr, hz_ptr, res_ptr, xvec_ptr,
                  dx_ptr, dhz_ptr, wpart_ptr, spart_ptr,
                  M, H, W, C, tiles_per_prog, n_prog,
                  KS: tl.constexpr, KK_PAD: tl.constexpr, ACT_IN: tl.constexpr, ACT: tl.constexpr,
                  HAS_RES: tl.constexpr, WRITE_DX: tl.constexpr, WRITE_DHZ: tl.constexpr,
                  BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs_c < C
    alpha, beta, c1, c2, mean1, invstd1 = load_vec6(qvec_ptr, offs_c, cmask, C)
    ax = tl.load(xvec_ptr + offs_c, mask=cmask, other=0.0)
    bx = tl.load(xvec_ptr + C + offs_c, mask=cmask, other=0.0)
    mean_in = tl.load(xvec_ptr + 2 * C + offs_c, mask=cmask, other=0.0)
    invstd_in = tl.load(xvec_ptr + 3 * C + offs_c, mask=cmask, other=0.0)
    taps = tl.arange(0, KK_PAD)
    s1 = tl.zeros([BLOCK_C], dtype=tl.float32)
    s2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    db = tl.zeros([BLOCK_C], dtype=tl.float32)
    dwacc = tl.zeros([KK_PAD, BLOCK_C], dtype=tl.float32)
    for t in range(pid * tiles_per_prog, (pid + 1) * tiles_per_prog):
        offs_p = t * BLOCK_P + tl.arange(0, BLOCK_P)
        pmask = offs_p < M
        w_i = offs_p % W
        h_i = (offs_p // W) % H
        omask = pmask[:, None] & cmask[None, :]
        offs_o = offs_p.to(tl.int64)[:, None] * C + offs_c[None, :]
        dq_c = bn_act_bwd(du_ptr, q_ptr, offs_o, omask, alpha, beta, c1, c2, mean1, invstd1, ACT)
        db += tl.sum(dq_c, axis=0)
        acc = tl.load(du_ptr + offs_o, mask=omask, other=0.0).to(tl.float32)
        for tap in range(KS * KS):  # runtime loop (see dw_fwd_kernel)
            di = tap // KS - KS // 2
            dj = tap % KS - KS // 2
            # dx[p] += w[i, j] · dq[p - (di, dj)]
            hm = h_i - di
            wm = w_i - dj
            vm = pmask & (hm >= 0) & (hm < H) & (wm >= 0) & (wm < W)
            mm = vm[:, None] & cmask[None, :]
            offs_m = (offs_p - (di * W + dj)).to(tl.int64)[:, None] * C + offs_c[None, :]
            dq = bn_act_bwd(du_ptr, q_ptr, offs_m, mm, alpha, beta, c1, c2, mean1, invstd1, ACT)
            wv = tl.load(w_ptr + tap * C + offs_c, mask=cmask, other=0.0).to(tl.float32)
            acc += dq * wv[None, :]
            # dw[i, j] += Σ_p dq[p] · x[p + (di, dj)]
            hp = h_i + di
            wp = w_i + dj
            vp = pmask & (hp >= 0) & (hp < H) & (wp >= 0) & (wp < W)
            mp = vp[:, None] & cmask[None, :]
            offs_x = (offs_p + (di * W + dj)).to(tl.int64)[:, None] * C + offs_c[None, :]
            x = load_x_tile(hz_ptr, res_ptr, offs_x, mp, ax, bx, ACT_IN, HAS_RES)
            contrib = tl.sum(dq_c * x, axis=0)
            dwacc += tl.where(taps[:, None] == tap, contrib[None, :], 0.0)
        dx = tl.where(omask, acc, 0.0)
        if WRITE_DX:
            tl.store(dx_ptr + offs_o, dx.to(dx_ptr.dtype.element_ty), mask=omask)
        hz = tl.load(hz_ptr + offs_o, mask=omask, other=0.0).to(tl.float32)
        xhat = (act_fwd(hz, ACT_IN) - mean_in[None, :]) * invstd_in[None, :]
        s1 += tl.sum(dx, axis=0)
        s2 += tl.sum(tl.where(omask, dx * xhat, 0.0), axis=0)
        if WRITE_DHZ:
            dhz = act_grad(hz, ACT_IN) * ax[None, :] * dx
            tl.store(dhz_ptr + offs_o, dhz.to(dhz_ptr.dtype.element_ty), mask=omask)
    tl.store(spart_ptr + pid * C + offs_c, s1, mask=cmask)
    tl.store(spart_ptr + (n_prog + pid) * C + offs_c, s2, mask=cmask)
    wbase = wpart_ptr + pid * (KS * KS + 1) * C
    tl.store(wbase + taps[:, None] * C + offs_c[None, :], dwacc, mask=(taps < KS * KS)[:, None] & cmask[None, :])
    tl.store(wbase + KS * KS * C + offs_c, db, mask=cmask)


def _tiles(t, M, C):
    if t.is_cuda:  # sm_90: 212 registers (bwd, k=9), no spills at 4 warps
        return 32, min(32, triton.next_power_of_2(C))
    # interpreter: big tiles (cost is per tile operation, not per element)
    return min(128, triton.next_power_of_2(M)), min(64, triton.next_power_of_2(C))


def _launch_opts(t):
    # the options the AOT report checks (spin_kernels.triton.AOT_KERNELS): no software pipelining of the tap loop
    return dict(num_warps=4, num_stages=1) if t.is_cuda else {}


# dw_fwd tiling: an output tile is TILE_H whole image rows (BLOCK_W ≥ W columns) × BLOCK_C channels with
# DW_FWD_TILE_POSITIONS positions; programs are persistent (DW_FWD_PROGRAMS_PER_SM per SM), each with its own
# staging area that stays in L1/L2; the halo is staged in chunks of DW_FWD_STAGE positions.
DW_FWD_TILE_POSITIONS = 256
DW_FWD_MIN_POSITIONS = 32
DW_FWD_PROGRAMS_PER_SM = 4
DW_FWD_STAGE = 64


def dw_fwd_tiling(H, W, C, KS, on_gpu, tile_h=None, block_c=None, batch=None, sms=0):
    """(TILE_H, BLOCK_W, BLOCK_C, halo_w, region) of dw_fwd_kernel for ``batch`` H×W images with C channels.

    TILE_H: as many rows as DW_FWD_TILE_POSITIONS allow, halved while the batch gives fewer (tile, channel
    block) pairs than the card has ``sms`` (batch 1: latency, not halo overhead, is the cost). ``region`` is the
    staging area per program in positions: the halo of one tile, (TILE_H + KS - 1) rows of ``halo_w = W + KS - 1``
    columns, plus the BLOCK_W - W columns the padded tile reads past it, rounded up to whole staging chunks.
    ``tile_h`` / ``block_c`` override the rule (tests force GPU tilings in the interpreter)."""
    for name, v in (("tile_h", tile_h), ("block_c", block_c)):
        if v is not None and (v < 1 or v & (v - 1)):
            raise ValueError(f"{name}: expected a power of 2, got {v}")
    block_w = triton.next_power_of_2(W)
    if block_c is None:  # rows wider than a tile: fewer channels, so a tile stays within the registers
        block_c = min(32 if on_gpu else 64, triton.next_power_of_2(C),
                      max(8, 32 * DW_FWD_TILE_POSITIONS // block_w))
    if tile_h is None:
        tile_h = min(triton.next_power_of_2(H), max(1, DW_FWD_TILE_POSITIONS // block_w))
        # (no tile below DW_FWD_MIN_POSITIONS: with a few elements per thread the tap loop's fixed work dominates)
        while batch and tile_h * block_w > DW_FWD_MIN_POSITIONS and \
                batch * triton.cdiv(H, tile_h) * triton.cdiv(C, block_c) < sms:
            tile_h //= 2
    halo_w = W + KS - 1
    region = triton.cdiv((tile_h + KS - 1) * halo_w + block_w - W, DW_FWD_STAGE) * DW_FWD_STAGE
    return tile_h, block_w, block_c, halo_w, region


def dw_fwd(hz, res, ax, bx, weight, bias, B, H, W, act_in="gelu", act="gelu", emit_stats=True, q_out=None,
           tile_h=None, block_c=None, programs=None):
    """Launch dw_fwd_kernel.

    hz, res: [M, C] (res may be None); ax, bx: fp32 [C]; weight: [C, 1, KS, KS] (or [C, KS, KS]); bias: [C].
    Returns (q [M, C] in hz's dtype, partial stats fp32 [3, T, C] or None), T = B · ceil(H / TILE_H) tiles.
    ``tile_h``, ``block_c``, ``programs`` (persistent programs along the tile axis) override the tiling rules.
    """
    M, C = hz.shape
    KS = weight.shape[-1]
    wt = weight.reshape(C, KS * KS).t().contiguous()
    tile_h, block_w, block_c, halo_w, region = dw_fwd_tiling(H, W, C, KS, hz.is_cuda, tile_h, block_c, B,
                                                             sm_count(hz))
    row_tiles = triton.cdiv(H, tile_h)
    n_tiles = B * row_tiles
    n_cblk = triton.cdiv(C, block_c)
    if programs is None:  # fill the card once (persistent); the interpreter runs one program per tile
        programs = min(n_tiles, triton.cdiv(DW_FWD_PROGRAMS_PER_SM * sm_count(hz), n_cblk)) if hz.is_cuda \
            else n_tiles
    programs = max(1, min(programs, n_tiles))
    # the staged layer input, in the activations' dtype (as x would be stored by PyTorch)
    scratch = torch.empty((n_cblk * programs * region * block_c,), device=hz.device, dtype=hz.dtype)
    q = torch.empty_like(hz) if q_out is None else q_out
    part = torch.empty((3, n_tiles, C), device=hz.device, dtype=torch.float32) if emit_stats else q
    grid = (programs, n_cblk)
    dw_fwd_kernel[grid](hz_ptr=hz, res_ptr=res if res is not None else hz, ax_ptr=ax, bx_ptr=bx, w_ptr=wt,
                        bias_ptr=bias, q_ptr=q, part_ptr=part, scratch_ptr=scratch, H=H, W=W, C=C,
                        n_tiles=n_tiles, row_tiles=row_tiles, halo_w=halo_w, region=region, n_taps=KS * KS,
                        KS=KS, ACT_IN=ACT_CODES[act_in], ACT=ACT_CODES[act], HAS_RES=res is not None,
                        EMIT_STATS=emit_stats, TILE_H=tile_h, BLOCK_W=block_w, BLOCK_C=block_c,
                        STAGE=DW_FWD_STAGE, **_launch_opts(hz))
    return q, (part if emit_stats else None)


def dw_bwd(du, q, qvec, weight, hz, res, xvec, B, H, W, act_in="gelu", act="gelu",
           write_dx=True, write_dhz=False, dx_out=None, tiles_per_prog=None):
    """Launch dw_bwd_kernel.

    du, q, hz, res: [M, C]; qvec: fp32 [6, C] (BN1/act backward vectors, see _common.bn_act_bwd); xvec: fp32
    [4, C] (ax, bx, mean_in, invstd_in of the BN that produced x from hz). Returns
    (dx or None, dhz or None, dweight fp32 [C, KS, KS], dbias fp32 [C], sum(dx) fp32 [C], sum(dx·xhat_in) fp32 [C]).
    """
    M, C = du.shape
    KS = weight.shape[-1]
    wt = weight.reshape(C, KS * KS).t().contiguous()
    block_p, block_c = _tiles(du, M, C)
    n_cblk = triton.cdiv(C, block_c)
    n_tiles = triton.cdiv(M, block_p)
    if tiles_per_prog is None:  # enough programs to fill a GPU, few enough that the fp32 partials stay small
        # at most DW_BWD_PROGRAMS_PER_SM programs per SM: whole waves (floor division would overshoot into a
        # partial extra wave)
        tiles_per_prog = (max(1, triton.cdiv(n_tiles * n_cblk, DW_BWD_PROGRAMS_PER_SM * sm_count(du)))
                          if du.is_cuda else n_tiles)
    n_prog = triton.cdiv(n_tiles, tiles_per_prog)
    dx = (torch.empty_like(du) if dx_out is None else dx_out) if write_dx else None
    dhz = torch.empty_like(hz) if write_dhz else None
    wpart = torch.empty((n_prog, KS * KS + 1, C), device=du.device, dtype=torch.float32)
    spart = torch.empty((2, n_prog, C), device=du.device, dtype=torch.float32)
    grid = (n_prog, n_cblk)
    # outputs a WRITE_* switch turns off still need a tensor: du (never written then)
    dw_bwd_kernel[grid](du_ptr=du, q_ptr=q, qvec_ptr=qvec, w_ptr=wt, hz_ptr=hz,
                        res_ptr=res if res is not None else hz, xvec_ptr=xvec,
                        dx_ptr=dx if dx is not None else du, dhz_ptr=dhz if dhz is not None else du,
                        wpart_ptr=wpart, spart_ptr=spart, M=M, H=H, W=W, C=C, tiles_per_prog=tiles_per_prog,
                        n_prog=n_prog, KS=KS, KK_PAD=triton.next_power_of_2(KS * KS), ACT_IN=ACT_CODES[act_in],
                        ACT=ACT_CODES[act], HAS_RES=res is not None, WRITE_DX=write_dx, WRITE_DHZ=write_dhz,
                        BLOCK_P=block_p, BLOCK_C=block_c, **_launch_opts(du))
    # separate reductions (fixed order: deterministic) so that no two results alias
    dweight = wpart[:, :KS * KS].sum(0).t().contiguous().reshape(C, KS, KS)
    return dx, dhz, dweight, wpart[:, KS * KS].sum(0), spart[0].sum(0), spart[1].sum(0)
