"""Depthwise k×k convolution (odd k, 'same' padding, stride 1) on channels-last activations, forward and backward.

Activations are [M = B·H·W, C] row-major (channels-last [B, H, W, C], contiguous). The layer input is never
stored: it is rebuilt on load as ``x = [res] + ax·act_in(hz) + bx`` (the previous BN folded into the prologue,
see ``_common.load_x_tile``), so zero padding applies to ``x``. Tiles are BLOCK_P consecutive positions of the
flattened M axis × BLOCK_C channels; the neighbour (di, dj) of position p is row p + di·W + dj when
0 ≤ h+di < H and 0 ≤ w+dj < W (so tiles may span image rows and images; no padding copies).

dw_fwd_kernel
    computes  q = DW_k(x) + bias   (stored: the pre-activation q; consumers apply act on load)
              and, when EMIT_STATS, per-tile partial BN statistics of g = act(q): (count, mean, M2); with
              FINALIZE also the BN itself (bn_finalize's merge, mean/var/invstd and the folded affine a, b), done
              by the last program of each channel block to finish: a per-block counter (acq_rel atomic after a
              barrier) elects it, so the layer's forward needs no separate finalize launch.
    tiling    a tile is TILE_H whole image rows (BLOCK_W ≥ W columns) × BLOCK_C channels; programs are persistent
              (grid[0] programs stride over the B·ceil(H/TILE_H) tiles, grid[1] = channel blocks). Per tile the
              halo — (TILE_H + k - 1) rows × (W + k - 1) columns — is rebuilt ONCE (prologue: BN affine,
              activation, residual; zeros outside the image) and staged in the program's own scratch area in the
              activations' dtype; after a barrier the k² taps are unmasked, 16-byte loads of that staged tile at
              a constant shift (i·(W + k - 1) + j positions), one conversion and one FMA per element.
    bytes     reads hz (+ res) once from HBM (halo rows of neighbouring tiles are cache hits), writes q once:
              2 (3) activation passes; the staging area (programs × region × BLOCK_C) is written and read back by
              the same program and stays in L1/L2; stats: 3·C·4 bytes per tile, read back once by the finalize.
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
    tiling    dw_fwd_kernel's (persistent programs over TILE_H-row tiles × BLOCK_C channels, at most
              DW_BWD_TILE_POSITIONS positions: two register tiles, dx and the tile's own dq). Per tile both halos
              are staged once — dq in fp32 (BN1 + act backward, recomputed from du and q) and x in the
              activations' dtype (the prologue) — then
              per tap: dx += w·dq at the mirrored shift; then per tap: the tap's dw partial += Σ_positions
              dq·x(shift), a read-modify-write of the program's own fp32 slab (zeroed by the host, accumulated
              over its tiles).
    bytes     reads du, q, hz (+ res) once from HBM, writes dx (and/or dhz): 4 (5) activation passes; the
              staging areas stay in L1/L2; partials (k²+1+2)·C·4 bytes per program, reduced by the host in a
              fixed order (deterministic, no atomics).
    cost      (sm_90a SASS, bf16, `spin kernels-report --cost`): two tap loops, dx (one fp32 load and an FMA per
              element) and dw (a load, conversion and FMA per element, plus the reduction across the tile's
              positions — shuffles, a shared-memory round and barriers — per tap); dx's accumulator is dead in the
              second loop, which keeps the kernel spill-free with the fp32 dq halo. dw_bwd k = 9 at
              convmixer_1536_20 b64 went from 58.2x to 9.7x its floor when the prologues left the tap loop.
"""
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._common import (
    ACT_CODES,
    act_fwd,
    act_grad,
    bn_act_bwd_tile,
    load_x_tile,
    merge_partials,
    sm_count,
    store_bn_affine,
    store_tile_stats,
)


@triton.jit
def halo_chunk(f, h0, img_row0, H, W, C, halo_w, offs_c, cmask, KS: tl.constexpr, TILE_H: tl.constexpr):
    """(mask, offsets) into the [M, C] activations of halo positions ``f`` of the tile whose first output row is
    ``h0`` of the image starting at batch row ``img_row0``: position f is halo row f // halo_w, column
    f % halo_w, shifted by -(KS // 2); masked outside the image (the conv's zero padding) and past the halo."""
    hh = h0 - KS // 2 + f // halo_w
    ww = f % halo_w - KS // 2
    valid = (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W) & (f < (TILE_H + KS - 1) * halo_w)
    offs = ((img_row0 + hh).to(tl.int64) * W + ww)[:, None] * C + offs_c[None, :]
    return valid[:, None] & cmask[None, :], offs


@triton.jit(noinline=True)
def finalize_block(part_ptr, n_part, C, pid_c, gamma_ptr, beta_ptr, eps, stat_ptr, ab_ptr,
                   BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """bn_finalize_kernel's work for channel block ``pid_c`` inside dw_fwd_kernel (FINALIZE): merge the n_part
    tile partials, store the statistics and the folded affine. A real call (noinline, scalar arguments only), so
    that its [BLOCK_T, BLOCK_C] tiles stay out of the register allocation of the kernel's tile loop (inlined, they
    tip it into spills at 255 registers)."""
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs_c < C
    n_f = tl.zeros([BLOCK_C], dtype=tl.float32)
    mean_f = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2_f = tl.zeros([BLOCK_C], dtype=tl.float32)
    for p0 in range(0, n_part, BLOCK_T):
        n_f, mean_f, m2_f = merge_partials(part_ptr, n_part, C, p0 + tl.arange(0, BLOCK_T), offs_c, cmask,
                                           n_f, mean_f, m2_f)
    store_bn_affine(n_f, mean_f, m2_f, offs_c, cmask, C, gamma_ptr, beta_ptr, eps, stat_ptr, ab_ptr)


@triton.jit
def dw_fwd_kernel(hz_ptr, res_ptr, ax_ptr, bx_ptr, w_ptr, bias_ptr, q_ptr, part_ptr, scratch_ptr,
                  count_ptr, gamma_ptr, beta_ptr, eps, stat_ptr, ab_ptr,
                  H, W, C, n_tiles, row_tiles, halo_w, region, n_taps,
                  KS: tl.constexpr, ACT_IN: tl.constexpr, ACT: tl.constexpr, HAS_RES: tl.constexpr,
                  EMIT_STATS: tl.constexpr, FINALIZE: tl.constexpr, TILE_H: tl.constexpr, BLOCK_W: tl.constexpr,
                  BLOCK_C: tl.constexpr, STAGE: tl.constexpr, BLOCK_T: tl.constexpr):
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
            m, offs = halo_chunk(f, h0, img_row0, H, W, C, halo_w, offs_c, cmask, KS, TILE_H)
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
            # the BN statistics of act(q), merged over the program's tiles into its own partial (one per program,
            # not per tile) by a read-modify-write: nothing is carried in registers across the tap loop (255
            # registers at k = 9); the first tile reads zeros, which the merge leaves exact
            store_tile_stats(part_ptr, t, n_tiles, offs_c, cmask, C, act_fwd(q.to(tl.float32), ACT), omask, pmask)
    if FINALIZE:
        # the last program of this channel block to finish merges every tile's partial (bn_finalize in the same
        # launch): the barrier orders all threads' partial stores before the acq_rel ticket (thread 0: MEMBAR.GPU,
        # atomic, L1 invalidate: the pattern of a cooperative grid sync), the winner reads the partials through L2
        # and re-arms the counter for the next launch
        tl.debug_barrier()
        ticket = tl.atomic_add(count_ptr + pid_c, 1, sem="acq_rel", scope="gpu")
        if ticket == n_prog - 1:
            finalize_block(part_ptr, n_tiles, C, pid_c, gamma_ptr, beta_ptr, eps, stat_ptr, ab_ptr, BLOCK_T,
                           BLOCK_C)
            tl.store(count_ptr + pid_c, 0)


@triton.jit
def dw_bwd_kernel(du_ptr, q_ptr, qvec_ptr, w_ptr, hz_ptr, res_ptr, xvec_ptr,
                  dx_ptr, dhz_ptr, wpart_ptr, spart_ptr, scratch_ptr, dq_scratch_ptr,
                  H, W, C, n_tiles, row_tiles, halo_w, region, n_taps,
                  KS: tl.constexpr, ACT_IN: tl.constexpr, ACT: tl.constexpr,
                  HAS_RES: tl.constexpr, WRITE_DX: tl.constexpr, WRITE_DHZ: tl.constexpr,
                  TILE_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr, STAGE: tl.constexpr):
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    pid_c = tl.program_id(1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs_c < C
    lane_c = tl.arange(0, BLOCK_C)
    # (the per-channel vectors are loaded where they are used, from L1: ten of them live through the whole
    # kernel would cost 80 registers and spills)
    # this program's staging areas, `region` positions × BLOCK_C channels each: the dq halo in fp32 (a gradient
    # rounded to 16 bits before the k² products would cost dx its accuracy), the x halo in the activations' dtype
    scr_dq = dq_scratch_ptr + (pid_c * n_prog + pid).to(tl.int64) * region * BLOCK_C
    scr_x = scratch_ptr + (pid_c * n_prog + pid).to(tl.int64) * region * BLOCK_C
    offs_s = tl.arange(0, STAGE)
    o = tl.arange(0, TILE_H * BLOCK_W)
    o_row = o // BLOCK_W
    o_col = o % BLOCK_W
    # output (r, c) finds halo position (r + i)·halo_w + (c + j) at offset shift(i, j) = i·halo_w + j
    base = ((o_row * halo_w + o_col) * BLOCK_C)[:, None] + lane_c[None, :]
    centre = ((KS // 2) * halo_w + KS // 2) * BLOCK_C
    wbase = wpart_ptr + pid.to(tl.int64) * (n_taps + 1) * C   # this program's fp32 partials (zeroed by the host)
    s1 = tl.zeros([BLOCK_C], dtype=tl.float32)
    s2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    db = tl.zeros([BLOCK_C], dtype=tl.float32)
    for t in range(pid, n_tiles, n_prog):  # persistent: tiles (image, row block) strided over the programs
        img_row0 = (t // row_tiles) * H
        h0 = (t % row_tiles) * TILE_H
        # stage both halos once: dq = d/dq through BN1 and act (zero outside the image) and the layer input x
        for s0 in range(0, region, STAGE):
            f = s0 + offs_s
            m, offs = halo_chunk(f, h0, img_row0, H, W, C, halo_w, offs_c, cmask, KS, TILE_H)
            dq = bn_act_bwd_tile(du_ptr, q_ptr, qvec_ptr, offs, m, offs_c, cmask, C, ACT)
            ax = tl.load(xvec_ptr + offs_c, mask=cmask, other=0.0)
            bx = tl.load(xvec_ptr + C + offs_c, mask=cmask, other=0.0)
            x = load_x_tile(hz_ptr, res_ptr, offs, m, ax, bx, ACT_IN, HAS_RES)
            st = (f * BLOCK_C)[:, None] + lane_c[None, :]
            tl.store(scr_dq + st, dq)
            tl.store(scr_x + st, x.to(scratch_ptr.dtype.element_ty))
        tl.debug_barrier()  # both halos visible to every thread of the program
        hh = h0 + o_row
        pmask = (hh < H) & (o_col < W)
        omask = pmask[:, None] & cmask[None, :]
        offs_o = ((img_row0 + hh).to(tl.int64) * W + o_col)[:, None] * C + offs_c[None, :]
        acc = tl.load(du_ptr + offs_o, mask=omask, other=0.0).to(tl.float32)
        for tap in range(n_taps):  # dx; runtime trip count: never unrolled (see dw_fwd_kernel)
            ti = tap // KS
            tj = tap % KS
            # dx[p] += w[i, j] · dq[p - (i - k//2, j - k//2)]: the mirrored shift in the dq halo
            dq = tl.load(scr_dq + base + ((KS - 1 - ti) * halo_w + (KS - 1 - tj)) * BLOCK_C)
            wv = tl.load(w_ptr + tap * C + offs_c, mask=cmask, other=0.0).to(tl.float32)
            acc += dq * wv[None, :]
        dx = tl.where(omask, acc, 0.0)
        if WRITE_DX:
            tl.store(dx_ptr + offs_o, dx.to(dx_ptr.dtype.element_ty), mask=omask)
        hz = tl.load(hz_ptr + offs_o, mask=omask, other=0.0).to(tl.float32)
        mean_in = tl.load(xvec_ptr + 2 * C + offs_c, mask=cmask, other=0.0)
        invstd_in = tl.load(xvec_ptr + 3 * C + offs_c, mask=cmask, other=0.0)
        xhat = (act_fwd(hz, ACT_IN) - mean_in[None, :]) * invstd_in[None, :]
        s1 += tl.sum(dx, axis=0)
        s2 += tl.sum(tl.where(omask, dx * xhat, 0.0), axis=0)
        if WRITE_DHZ:
            ax = tl.load(xvec_ptr + offs_c, mask=cmask, other=0.0)
            dhz = act_grad(hz, ACT_IN) * ax[None, :] * dx
            tl.store(dhz_ptr + offs_o, dhz.to(dhz_ptr.dtype.element_ty), mask=omask)
        # the tile's own dq (padded columns would read the next halo row: masked)
        dq_c = tl.where(omask, tl.load(scr_dq + base + centre), 0.0)
        db += tl.sum(dq_c, axis=0)
        # a second tap loop (dx's accumulator is dead here: two loops need fewer registers than one)
        for tap_w in range(n_taps):
            # dw[i, j] += Σ_p dq[p] · x[p + (i - k//2, j - k//2)], into this program's partial slab
            x = tl.load(scr_x + base + ((tap_w // KS) * halo_w + tap_w % KS) * BLOCK_C).to(tl.float32)
            wp = wbase + tap_w * C + offs_c
            tl.store(wp, tl.load(wp, mask=cmask, other=0.0) + tl.sum(dq_c * x, axis=0), mask=cmask)
        tl.debug_barrier()  # halos and partial slab settled before the next tile
    tl.store(spart_ptr + pid * C + offs_c, s1, mask=cmask)
    tl.store(spart_ptr + (n_prog + pid) * C + offs_c, s2, mask=cmask)
    tl.store(wbase + n_taps * C + offs_c, db, mask=cmask)


def _launch_opts(t):
    # the options the AOT report checks (spin_kernels.triton.AOT_KERNELS): no software pipelining of the tap loop
    return dict(num_warps=4, num_stages=1) if t.is_cuda else {}


# dw_fwd tiling: an output tile is TILE_H whole image rows (BLOCK_W ≥ W columns) × BLOCK_C channels with
# DW_FWD_TILE_POSITIONS positions; programs are persistent (DW_FWD_PROGRAMS_PER_SM per SM), each with its own
# staging area that stays in L1/L2; the halo is staged in chunks of DW_FWD_STAGE positions.
DW_FWD_TILE_POSITIONS = 256
DW_FWD_MIN_POSITIONS = 32
# dw_bwd (same tiling, two staged halos and two register tiles: dx and the tile's own dq); its tiles are never
# shrunk at small batch: below 128 positions ptxas settles on 128-168 registers and spills
DW_BWD_TILE_POSITIONS = 128
DW_BWD_MIN_POSITIONS = 128
# staging chunk (two prologues per element; divides DW_FWD_STAGE): 32 positions, 16 from k = 9 on, where 32
# spills a few bytes at 255 registers (16 costs ~13% more by the cost model, so it is not the default)
DW_BWD_STAGE = 32
DW_BWD_STAGE_K9 = 16
DW_FWD_PROGRAMS_PER_SM = 4
DW_FWD_STAGE = 64
# in-kernel finalize: the tile partials merged this many at a time (as bn_finalize does); the smallest channel
# block any tiling picks (sizes the counter buffer)
DW_FWD_FINALIZE_BLOCK = 32
DW_MIN_BLOCK_C = 8


def dw_fwd_tiling(H, W, C, KS, on_gpu, tile_h=None, block_c=None, batch=None, sms=0,
                  positions=DW_FWD_TILE_POSITIONS, min_positions=DW_FWD_MIN_POSITIONS):
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
                      max(DW_MIN_BLOCK_C, 32 * positions // block_w))
    if tile_h is None:
        tile_h = min(triton.next_power_of_2(H), max(1, positions // block_w))
        # (no tile below min_positions: with a few elements per thread the tap loop's fixed work dominates)
        while batch and tile_h * block_w > min_positions and \
                batch * triton.cdiv(H, tile_h) * triton.cdiv(C, block_c) < sms:
            tile_h //= 2
    halo_w = W + KS - 1
    region = triton.cdiv((tile_h + KS - 1) * halo_w + block_w - W, DW_FWD_STAGE) * DW_FWD_STAGE
    return tile_h, block_w, block_c, halo_w, region


class Finalize(NamedTuple):
    """dw_fwd's BatchNorm of act(q) finalized in the same launch (bn_finalize's math, by the last program of each
    channel block): the BN's ``gamma``, ``beta``, ``eps``; ``stats_out`` fp32 [3, C] receives mean, var (biased),
    invstd and ``affine_out`` fp32 [2, C] the folded a, b; ``counters``: int32, at least one per channel block
    (``ceil(C / 8)`` always suffice), all zero on entry and left zero (one buffer serves every launch of a
    stream)."""

    gamma: torch.Tensor
    beta: torch.Tensor
    eps: float
    stats_out: torch.Tensor
    affine_out: torch.Tensor
    counters: torch.Tensor


def finalize_counters(C: int, device) -> torch.Tensor:
    """A zeroed counter buffer for :class:`Finalize` (enough for any channel blocking of C channels)."""
    return torch.zeros(triton.cdiv(C, DW_MIN_BLOCK_C), device=device, dtype=torch.int32)


def dw_fwd(hz, res, ax, bx, weight, bias, B, H, W, act_in="gelu", act="gelu", emit_stats=True, q_out=None,
           tile_h=None, block_c=None, programs=None, finalize: Finalize | None = None):
    """Launch dw_fwd_kernel.

    hz, res: [M, C] (res may be None); ax, bx: fp32 [C]; weight: [C, 1, KS, KS] (or [C, KS, KS]); bias: [C].
    Returns (q [M, C] in hz's dtype, partial stats fp32 [3, T, C] or None), T = B · ceil(H / TILE_H) tiles. With
    ``finalize`` (implies emit_stats) the BN is also finalized in the same launch (:class:`Finalize`). ``tile_h``,
    ``block_c``, ``programs`` (persistent programs along the tile axis) override the tiling rules.
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
    emit_stats = emit_stats or finalize is not None
    if finalize is not None:
        _check_finalize(finalize, C, n_cblk, hz.device)
    # the staged layer input, in the activations' dtype (as x would be stored by PyTorch)
    scratch = torch.empty((n_cblk * programs * region * block_c,), device=hz.device, dtype=hz.dtype)
    q = torch.empty_like(hz) if q_out is None else q_out
    part = torch.empty((3, n_tiles, C), device=hz.device, dtype=torch.float32) if emit_stats else q
    fin = finalize or Finalize(bias, bias, 0.0, part, part, part)  # placeholders: FINALIZE=False never reads them
    grid = (programs, n_cblk)
    dw_fwd_kernel[grid](hz_ptr=hz, res_ptr=res if res is not None else hz, ax_ptr=ax, bx_ptr=bx, w_ptr=wt,
                        bias_ptr=bias, q_ptr=q, part_ptr=part, scratch_ptr=scratch, count_ptr=fin.counters,
                        gamma_ptr=fin.gamma, beta_ptr=fin.beta, eps=float(fin.eps), stat_ptr=fin.stats_out,
                        ab_ptr=fin.affine_out, H=H, W=W, C=C,
                        n_tiles=n_tiles, row_tiles=row_tiles, halo_w=halo_w, region=region, n_taps=KS * KS,
                        KS=KS, ACT_IN=ACT_CODES[act_in], ACT=ACT_CODES[act], HAS_RES=res is not None,
                        EMIT_STATS=emit_stats, FINALIZE=finalize is not None, TILE_H=tile_h, BLOCK_W=block_w,
                        BLOCK_C=block_c, STAGE=DW_FWD_STAGE, BLOCK_T=DW_FWD_FINALIZE_BLOCK,
                        **_launch_opts(hz))
    return q, (part if emit_stats else None)


def _check_finalize(fin: Finalize, C: int, n_cblk: int, device) -> None:
    for name, t, rows in (("finalize.stats_out", fin.stats_out, 3), ("finalize.affine_out", fin.affine_out, 2)):
        if t.dtype != torch.float32 or tuple(t.shape) != (rows, C) or not t.is_contiguous() or t.device != device:
            raise ValueError(f"{name}: expected a contiguous fp32 [{rows}, {C}] tensor on {device}, got {t.dtype} "
                             f"{tuple(t.shape)} on {t.device}")
    for name, t in (("finalize.gamma", fin.gamma), ("finalize.beta", fin.beta)):
        if tuple(t.shape) != (C,) or t.device != device:
            raise ValueError(f"{name}: expected a [{C}] tensor on {device}, got {tuple(t.shape)} on {t.device}")
    cnt = fin.counters
    if cnt.dtype != torch.int32 or cnt.dim() != 1 or cnt.numel() < n_cblk or not cnt.is_contiguous() \
            or cnt.device != device:
        raise ValueError(f"finalize.counters: expected a contiguous zeroed int32 vector of >= {n_cblk} entries on "
                         f"{device} (finalize_counters), got {cnt.dtype} {tuple(cnt.shape)} on {cnt.device}")


def dw_bwd(du, q, qvec, weight, hz, res, xvec, B, H, W, act_in="gelu", act="gelu",
           write_dx=True, write_dhz=False, dx_out=None, tile_h=None, block_c=None, programs=None):
    """Launch dw_bwd_kernel.

    du, q, hz, res: [M, C]; qvec: fp32 [6, C] (BN1/act backward vectors, see _common.bn_act_bwd); xvec: fp32
    [4, C] (ax, bx, mean_in, invstd_in of the BN that produced x from hz). Returns
    (dx or None, dhz or None, dweight fp32 [C, KS, KS], dbias fp32 [C], partial sums fp32 [2, P, C] of dx and
    dx·xhat_in, one row per program: reduced by spin_kernels.triton.bn.bn_bwd_vectors).
    ``tile_h``, ``block_c``, ``programs`` override the tiling rules (see dw_fwd).
    """
    M, C = du.shape
    KS = weight.shape[-1]
    wt = weight.reshape(C, KS * KS).t().contiguous()
    tile_h, block_w, block_c, halo_w, region = dw_fwd_tiling(H, W, C, KS, du.is_cuda, tile_h, block_c, B,
                                                             sm_count(du), DW_BWD_TILE_POSITIONS,
                                                             DW_BWD_MIN_POSITIONS)
    row_tiles = triton.cdiv(H, tile_h)
    n_tiles = B * row_tiles
    n_cblk = triton.cdiv(C, block_c)
    if programs is None:  # fill the card once (persistent): few fp32 partial slabs to sum
        programs = min(n_tiles, triton.cdiv(DW_FWD_PROGRAMS_PER_SM * sm_count(du), n_cblk)) if du.is_cuda \
            else n_tiles
    programs = max(1, min(programs, n_tiles))
    dx = (torch.empty_like(du) if dx_out is None else dx_out) if write_dx else None
    dhz = torch.empty_like(hz) if write_dhz else None
    # the program's dw partials are accumulated in place over its tiles: they start at zero
    wpart = torch.zeros((programs, KS * KS + 1, C), device=du.device, dtype=torch.float32)
    spart = torch.empty((2, programs, C), device=du.device, dtype=torch.float32)
    scratch = torch.empty((n_cblk * programs * region * block_c,), device=du.device, dtype=du.dtype)
    dq_scratch = torch.empty((n_cblk * programs * region * block_c,), device=du.device, dtype=torch.float32)
    grid = (programs, n_cblk)
    # outputs a WRITE_* switch turns off still need a tensor: du (never written then)
    dw_bwd_kernel[grid](du_ptr=du, q_ptr=q, qvec_ptr=qvec, w_ptr=wt, hz_ptr=hz,
                        res_ptr=res if res is not None else hz, xvec_ptr=xvec,
                        dx_ptr=dx if dx is not None else du, dhz_ptr=dhz if dhz is not None else du,
                        wpart_ptr=wpart, spart_ptr=spart, scratch_ptr=scratch, dq_scratch_ptr=dq_scratch, H=H,
                        W=W, C=C, n_tiles=n_tiles, row_tiles=row_tiles, halo_w=halo_w, region=region,
                        n_taps=KS * KS, KS=KS,
                        ACT_IN=ACT_CODES[act_in], ACT=ACT_CODES[act], HAS_RES=res is not None, WRITE_DX=write_dx,
                        WRITE_DHZ=write_dhz, TILE_H=tile_h, BLOCK_W=block_w, BLOCK_C=block_c,
                        STAGE=DW_BWD_STAGE_K9 if KS >= 9 else DW_BWD_STAGE,
                        **_launch_opts(du))
    # one fixed-order reduction (deterministic); the tap-major weight rows go back to [C, KS, KS] in one copy
    wsum = wpart.sum(0)
    return dx, dhz, wsum[:KS * KS].t().contiguous().reshape(C, KS, KS), wsum[KS * KS], spart
