"""Depthwise k×k convolution (odd k, 'same' padding, stride 1) on channels-last activations, forward and backward.

Activations are [M = B·H·W, C] row-major (channels-last [B, H, W, C], contiguous). The layer input is never
stored: it is rebuilt on load as ``x = [res] + ax·act_in(hz) + bx`` (the previous BN folded into the prologue,
see ``_common.load_x_tile``), so zero padding applies to ``x``. Tiles are whole image rows of one image × a
block of channels; the neighbour (di, dj) of position p is row p + di·W + dj when 0 ≤ h+di < H and
0 ≤ w+dj < W (no padding copies).

dw_fwd_kernel
    computes  q = DW_k(x) + bias   (stored: the pre-activation q; consumers apply act on load)
              and, when EMIT_STATS, per-tile partial BN statistics of g = act(q): (count, mean, M2); with
              FINALIZE also the BN itself (bn_finalize's merge, mean/var/invstd and the folded affine a, b), done
              by the last program of each channel block to finish: a per-block counter (acq_rel atomic after a
              barrier) elects it, so the layer's forward needs no separate finalize launch.
    tiling    a register sliding window. A thread owns a strip of SW (8) columns of one channel; a program's
              threads are G strips × BLOCK_C channels (one value per thread in every [G, BLOCK_C] tensor; tuples
              hold the strip's columns, so a column shift is free). A tile is tile_h rows of one image (the
              whole image unless the batch is too small to fill the card); its input rows stream by once, top to
              bottom: each element is rebuilt once (prologue: BN affine, activation, residual, rounded to the
              activations' dtype) and staged in a double-buffered row (one barrier per row) from which a thread
              takes the KS - 1 halo columns of its neighbours. Input row r then feeds the KS output rows
              r - k//2 .. r + k//2 (kernel row KS - 1 - m into ring slot m): KS²·SW FMAs per thread from SW +
              KS - 1 inputs and KS² weights held in registers; the ring's first slot is a finished output row,
              stored (and its act(q) merged into the thread's statistics), then the ring rotates. The next
              row's raw inputs are loaded while the current one is computed.
    bytes     reads hz (+ res) once from HBM (tile_h < H: the k//2 halo rows either side twice), writes q once:
              2 (3) activation passes; the staged rows (2·(G·SW + KS - 1)·BLOCK_C elements per program) stay in
              L1; stats: 3·C·4 bytes per tile, read back once by the finalize.
    cost      (sm_90a SASS, bf16, `spin kernels-report --cost`): per row and thread KS²·SW FFMAs plus ~SW·(2
              activations + prologue + store) and the ring rotation (KS·SW moves). Issue-bound at k = 7 / 9
              (the exact-erf GELU twice per element — the prologue's and the statistics' — is most of the rest),
              HBM-bound at k = 3. Before this design the k² taps each re-read a staged halo tile (a load and a
              conversion per tap and element): dw_fwd k = 9 at convmixer_1536_20 b64 went from 5.05x to 2.32x
              its floor (eval 4.92x -> 1.77x), k = 7 at convmixer_768_32 5.03x -> 1.89x.

dw_bwd_kernel
    given du = dL/du (u = x + BN1(act(q))), rebuilds dq = act'(q)·(a1·du + c1 + c2·ghat) (BN1 backward with the
    batch-stat terms c1, c2; see ``_common.bn_act_bwd``) and computes
        dx  = du + DW_kᵀ(dq)                         (stored when WRITE_DX)
        dhz = act_in'(hz)·ax·dx                      (stored when WRITE_DHZ: grad of the producer's z, direct path)
        per-program partials: sum(dx), sum(dx·xhat_in) (the previous BN's backward and its gamma/beta grads),
        dw[tap, c] = Σ dq·x(shifted), dbias = Σ dq   (fp32, one [k²+1, C] slab per program, reduced by the host
        in a fixed order: deterministic, no atomics).
    tiling    persistent programs over TILE_H-row tiles (BLOCK_W ≥ W columns) × BLOCK_C channels, at most
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
    store_stats,
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
def strip_row_stats(g, ok, n_r, inv_n, frac, n_a, mean_a, m2_a, SW: tl.constexpr):
    """Chan-merge one output row's part of a thread's strip — the SW values ``g`` (tuple), valid where ``ok``,
    ``n_r`` of them (``inv_n`` = 1 / n_r, 0 for none) — into its running (count, mean, M2); ``frac`` = 1 / (rows
    merged so far + 1): the same count every row, so no division per row or element."""
    s = tl.zeros_like(mean_a)
    for u in tl.static_range(SW):
        s += tl.where(ok[u], g[u], 0.0)
    mean_r = s * inv_n
    m2_r = tl.zeros_like(mean_a)
    for u in tl.static_range(SW):
        d = tl.where(ok[u], g[u] - mean_r, 0.0)
        m2_r += d * d
    delta = mean_r - mean_a
    return n_a + n_r, mean_a + delta * frac, m2_a + m2_r + delta * delta * n_a * frac


@triton.jit
def load_strip_row(hz_ptr, res_ptr, row, W, C, thread_off, col0, cmask, valid, HAS_RES: tl.constexpr,
                   SW: tl.constexpr):
    """The raw inputs of a thread's strip in batch row ``row``: SW values of hz, then SW of res (HAS_RES), zero
    where the column is past W, the channel past C or the row not ``valid`` — all loads issued before any use."""
    base = row.to(tl.int64) * W * C
    out = ()
    for u in tl.static_range(SW):
        out = out + (tl.load(hz_ptr + base + thread_off + u * C, mask=(col0 + u < W) & cmask & valid, other=0.0),)
    if HAS_RES:
        for u in tl.static_range(SW):
            out = out + (tl.load(res_ptr + base + thread_off + u * C, mask=(col0 + u < W) & cmask & valid,
                                 other=0.0),)
    return out


@triton.jit
def emit_row(slot, h, img_row0, W, C, q_ptr, thread_off, col0, offs_c, cmask, bias,
             EMIT_STATS: tl.constexpr, ACT: tl.constexpr, SW: tl.constexpr):
    """Store output row ``h`` of the thread's strip — q = acc + bias for the SW accumulators of ``slot`` — and
    return (act(q) per column, column valid) for the statistics (the act of q as stored, rounded)."""
    row = q_ptr + (img_row0 + h).to(tl.int64) * W * C
    g = ()
    ok = ()
    for u in tl.static_range(SW):
        m = (col0 + u < W) & cmask
        qv = (slot[u] + bias).to(q_ptr.dtype.element_ty)
        tl.store(row + thread_off + u * C, qv, mask=m)
        if EMIT_STATS:
            g = g + (act_fwd(qv.to(tl.float32), ACT),)
            ok = ok + (m,)
    return g, ok


@triton.jit
def dw_fwd_kernel(hz_ptr, res_ptr, ax_ptr, bx_ptr, w_ptr, bias_ptr, q_ptr, part_ptr, buf_ptr,
                  count_ptr, gamma_ptr, beta_ptr, eps, stat_ptr, ab_ptr,
                  H, W, C, n_tiles, row_tiles, tile_h,
                  KS: tl.constexpr, ACT_IN: tl.constexpr, ACT: tl.constexpr, HAS_RES: tl.constexpr,
                  EMIT_STATS: tl.constexpr, FINALIZE: tl.constexpr, SW: tl.constexpr, G: tl.constexpr,
                  BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr):
    P: tl.constexpr = KS // 2
    BUF_W: tl.constexpr = G * SW + 2 * P          # one staged row: the strips and the conv's zero padding
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    pid_c = tl.program_id(1)
    # one thread per (strip g, channel): tensors are [G, BLOCK_C] with G·BLOCK_C = the program's threads, so every
    # value below is one register; a thread's strip is columns g·SW .. g·SW + SW - 1 of its channel
    g_idx = tl.arange(0, G)[:, None]
    lane_c = tl.arange(0, BLOCK_C)[None, :]
    offs_c = pid_c * BLOCK_C + lane_c + 0 * g_idx
    cmask = offs_c < C
    col0 = g_idx * SW
    thread_off = col0 * C + offs_c              # element (row, col0 + u) is row base + thread_off + u·C
    oc1 = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    ax = tl.load(ax_ptr + oc1, mask=oc1 < C, other=0.0)
    bx = tl.load(bx_ptr + oc1, mask=oc1 < C, other=0.0)
    bias = tl.load(bias_ptr + offs_c, mask=cmask, other=0.0).to(tl.float32)
    zero = tl.zeros([G, BLOCK_C], dtype=tl.float32)
    zero_strip = ()   # a ring slot: the SW accumulators of a strip
    for u in tl.static_range(SW):
        zero_strip = zero_strip + (zero,)
    # the k² taps of the thread's channel, in registers for the whole kernel (fp32 [k², C], tap-major)
    wts = ()
    for tap in tl.static_range(KS * KS):
        wts = wts + (tl.load(w_ptr + tap * C + offs_c, mask=cmask, other=0.0),)
    # valid columns of the thread's strip (the same every row): the statistics' per-row count
    n_strip = tl.zeros([G, BLOCK_C], dtype=tl.float32)
    for u in tl.static_range(SW):
        n_strip += ((col0 + u < W) & cmask).to(tl.float32)
    inv_n = tl.where(n_strip > 0.0, 1.0 / tl.maximum(n_strip, 1.0), 0.0)
    # this program's two staged rows (double-buffered: one barrier per row), zero padding columns written once
    buf = buf_ptr + (pid_c * n_prog + pid).to(tl.int64) * (2 * BUF_W * BLOCK_C)
    st_off = (P + col0) * BLOCK_C + lane_c      # the thread's strip in a staged row
    for b in tl.static_range(2):
        for t in tl.static_range(P):
            tl.store(buf + b * BUF_W * BLOCK_C + t * BLOCK_C + lane_c + 0 * g_idx,
                     zero.to(buf_ptr.dtype.element_ty), mask=g_idx == 0)
            tl.store(buf + b * BUF_W * BLOCK_C + (P + G * SW + t) * BLOCK_C + lane_c + 0 * g_idx,
                     zero.to(buf_ptr.dtype.element_ty), mask=g_idx == 0)
    for t in range(pid, n_tiles, n_prog):  # persistent: tiles (image, row block) strided over the programs
        img_row0 = (t // row_tiles) * H            # first image row of the tile's image, in rows of the batch
        h0 = (t % row_tiles) * tile_h
        h1 = tl.minimum(h0 + tile_h, H)
        r_lo = tl.maximum(h0 - P, 0)
        r_hi = tl.minimum(h1 + P, H)
        # the ring: slot m accumulates output row r - P + m while input row r streams by
        ring = ()
        for m in tl.static_range(KS):
            ring = ring + (zero_strip,)
        n_s = zero
        mean_s = zero
        m2_s = zero
        rows_done = 0
        # software pipelining by hand: row r + 1's raw inputs are in flight while row r is computed
        raw = load_strip_row(hz_ptr, res_ptr, img_row0 + r_lo, W, C, thread_off, col0, cmask, r_lo < r_hi,
                             HAS_RES, SW)
        for r in range(r_lo, r_hi):
            rb = buf + (r & 1) * (BUF_W * BLOCK_C)
            cur = raw
            raw = load_strip_row(hz_ptr, res_ptr, img_row0 + r + 1, W, C, thread_off, col0, cmask, r + 1 < r_hi,
                                 HAS_RES, SW)
            # the input row, each element rebuilt once (x = [res] + ax·act_in(hz) + bx) and rounded to the
            # activations' dtype (as the unfused layer stores x); staged for the neighbours' halos
            xs = ()
            for u in tl.static_range(SW):
                x = ax[None, :] * act_fwd(cur[u].to(tl.float32), ACT_IN) + bx[None, :]
                if HAS_RES:
                    x += cur[SW + u].to(tl.float32)
                xr = tl.where((col0 + u < W) & cmask, x, 0.0).to(buf_ptr.dtype.element_ty)
                tl.store(rb + st_off + u * BLOCK_C, xr)
                xs = xs + (xr.to(tl.float32),)
            tl.debug_barrier()  # the row is staged (and the buffer written two rows ago is no longer read)
            # the strip with its halo: P columns either side from the neighbours (or the zero padding)
            left = ()
            right = ()
            for t2 in tl.static_range(P):
                left = left + (tl.load(rb + st_off + (t2 - P) * BLOCK_C).to(tl.float32),)
                right = right + (tl.load(rb + st_off + (SW + t2) * BLOCK_C).to(tl.float32),)
            xs = left + xs + right
            # input row r feeds output row r - P + m through kernel row KS - 1 - m: KS·KS·SW FMAs per thread
            new_ring = ()
            for m in tl.static_range(KS):
                slot = ()
                for u in tl.static_range(SW):
                    a = ring[m][u]
                    for j in tl.static_range(KS):
                        a = a + wts[(KS - 1 - m) * KS + j] * xs[u + j]
                    slot = slot + (a,)
                new_ring = new_ring + (slot,)
            # slot 0 (output row r - P) is complete: stored when it belongs to the tile
            h = r - P
            if (h >= h0) & (h < h1):
                g_row, ok = emit_row(new_ring[0], h, img_row0, W, C, q_ptr, thread_off, col0, offs_c, cmask, bias,
                                     EMIT_STATS, ACT, SW)
                if EMIT_STATS:
                    n_s, mean_s, m2_s = strip_row_stats(g_row, ok, n_strip, inv_n, 1.0 / (rows_done + 1.0), n_s,
                                                        mean_s, m2_s, SW)
                rows_done += 1
            ring = new_ring[1:] + (zero_strip,)
        # the last P rows of the image complete with its last input row: still in slots 0 .. P - 1
        for m in tl.static_range(P):
            h = r_hi - P + m
            if (h >= h0) & (h < h1):
                g_row, ok = emit_row(ring[m], h, img_row0, W, C, q_ptr, thread_off, col0, offs_c, cmask, bias,
                                     EMIT_STATS, ACT, SW)
                if EMIT_STATS:
                    n_s, mean_s, m2_s = strip_row_stats(g_row, ok, n_strip, inv_n, 1.0 / (rows_done + 1.0), n_s,
                                                        mean_s, m2_s, SW)
                rows_done += 1
        if EMIT_STATS:
            # the tile's partial: the strips' (count, mean, M2) merged over G (Chan, as merge_partials)
            n_b = tl.sum(n_s, axis=0)
            mean_b = tl.sum(n_s * mean_s, axis=0) / tl.maximum(n_b, 1.0)
            d = mean_s - mean_b[None, :]
            m2_b = tl.sum(m2_s + n_s * d * d, axis=0)
            store_stats(part_ptr, t, n_tiles, oc1, oc1 < C, C, n_b, mean_b, m2_b)
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
        for tap in range(n_taps):  # dx; a runtime trip count: never unrolled (register use independent of k)
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


# dw_fwd: a thread's strip of columns (its sliding window: SW + KS - 1 inputs feed SW·KS² FMAs per row), the
# threads of a program (G strips × BLOCK_C channels), the fewest rows a tile is split to at small batch
DW_FWD_STRIP = 8
DW_FWD_THREADS = 128
DW_FWD_MIN_ROWS = 2
# dw_bwd tiling: an output tile is TILE_H whole image rows (BLOCK_W ≥ W columns) × BLOCK_C channels with
# DW_BWD_TILE_POSITIONS positions; programs are persistent (DW_FWD_PROGRAMS_PER_SM per SM), each with its own
# staging area that stays in L1/L2; the halo is staged in chunks of DW_FWD_STAGE positions.
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


def dw_bwd_tiling(H, W, C, KS, on_gpu, tile_h=None, block_c=None, batch=None, sms=0,
                  positions=DW_BWD_TILE_POSITIONS, min_positions=DW_BWD_MIN_POSITIONS):
    """(TILE_H, BLOCK_W, BLOCK_C, halo_w, region) of dw_bwd_kernel for ``batch`` H×W images with C channels.

    TILE_H: as many rows as ``positions`` allow, halved while the batch gives fewer (tile, channel
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


def dw_fwd_tiling(H, W, C, KS, on_gpu, tile_h=None, block_c=None, batch=None, sms=0, strip=None):
    """(tile_h, SW, G, BLOCK_C, num_warps) of dw_fwd_kernel for ``batch`` H×W images with C channels.

    A thread owns a strip of SW columns of one channel (G = next_pow2(ceil(W / SW)) strips per row), a program
    G·BLOCK_C threads (one register per value: 4 warps, more only for rows wider than 16 strips). A tile is
    ``tile_h`` rows of one image: the whole image (each input element rebuilt once), halved while the batch gives
    fewer (tile, channel block) programs than the card has ``sms`` (batch 1: latency, not the halo rows each tile
    rebuilds, is the cost). ``tile_h`` / ``block_c`` / ``strip`` override the rule (tests force GPU tilings in the
    interpreter)."""
    for name, v in (("block_c", block_c), ("strip", strip)):
        if v is not None and (v < 1 or v & (v - 1)):
            raise ValueError(f"{name}: expected a power of 2, got {v}")
    if tile_h is not None and tile_h < 1:
        raise ValueError(f"tile_h: expected a positive number of rows, got {tile_h}")
    strip = strip or DW_FWD_STRIP
    strips = triton.next_power_of_2(triton.cdiv(W, strip))
    if block_c is None:
        block_c = max(DW_MIN_BLOCK_C, DW_FWD_THREADS // strips)
        if not on_gpu:  # the interpreter: one program per tile covers the test shapes' channels
            block_c = min(64, triton.next_power_of_2(C))
    num_warps = max(1, strips * block_c // 32)
    if tile_h is None:
        tile_h = H
        while batch and tile_h > DW_FWD_MIN_ROWS and batch * triton.cdiv(H, tile_h) * triton.cdiv(C, block_c) < sms:
            tile_h = triton.cdiv(tile_h, 2)
    return tile_h, strip, strips, block_c, num_warps


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
           tile_h=None, block_c=None, programs=None, finalize: Finalize | None = None, strip=None):
    """Launch dw_fwd_kernel.

    hz, res: [M, C] (res may be None); ax, bx: fp32 [C]; weight: [C, 1, KS, KS] (or [C, KS, KS]); bias: [C].
    Returns (q [M, C] in hz's dtype, partial stats fp32 [3, T, C] or None), T = B · ceil(H / tile_h) tiles. With
    ``finalize`` (implies emit_stats) the BN is also finalized in the same launch (:class:`Finalize`). ``tile_h``,
    ``block_c``, ``strip`` (columns per thread) and ``programs`` (persistent programs along the tile axis)
    override the tiling rules (:func:`dw_fwd_tiling`).
    """
    M, C = hz.shape
    KS = weight.shape[-1]
    wt = weight.reshape(C, KS * KS).t().float().contiguous()   # tap-major fp32: one register per tap and thread
    tile_h, strip, strips, block_c, num_warps = dw_fwd_tiling(H, W, C, KS, hz.is_cuda, tile_h, block_c, B,
                                                              sm_count(hz), strip)
    row_tiles = triton.cdiv(H, tile_h)
    n_tiles = B * row_tiles
    n_cblk = triton.cdiv(C, block_c)
    programs = max(1, min(programs or n_tiles, n_tiles))
    emit_stats = emit_stats or finalize is not None
    if finalize is not None:
        _check_finalize(finalize, C, n_cblk, hz.device)
    # two staged rows per program, in the activations' dtype (as x would be stored by PyTorch)
    buf = torch.empty((n_cblk * programs * 2 * (strips * strip + KS - 1) * block_c,), device=hz.device,
                      dtype=hz.dtype)
    q = torch.empty_like(hz) if q_out is None else q_out
    part = torch.empty((3, n_tiles, C), device=hz.device, dtype=torch.float32) if emit_stats else q
    fin = finalize or Finalize(bias, bias, 0.0, part, part, part)  # placeholders: FINALIZE=False never reads them
    grid = (programs, n_cblk)
    dw_fwd_kernel[grid](hz_ptr=hz, res_ptr=res if res is not None else hz, ax_ptr=ax, bx_ptr=bx, w_ptr=wt,
                        bias_ptr=bias, q_ptr=q, part_ptr=part, buf_ptr=buf, count_ptr=fin.counters,
                        gamma_ptr=fin.gamma, beta_ptr=fin.beta, eps=float(fin.eps), stat_ptr=fin.stats_out,
                        ab_ptr=fin.affine_out, H=H, W=W, C=C, n_tiles=n_tiles, row_tiles=row_tiles, tile_h=tile_h,
                        KS=KS, ACT_IN=ACT_CODES[act_in], ACT=ACT_CODES[act], HAS_RES=res is not None,
                        EMIT_STATS=emit_stats, FINALIZE=finalize is not None, SW=strip, G=strips,
                        BLOCK_C=block_c, BLOCK_T=DW_FWD_FINALIZE_BLOCK,
                        **(dict(num_warps=num_warps, num_stages=1) if hz.is_cuda else {}))
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
    tile_h, block_w, block_c, halo_w, region = dw_bwd_tiling(H, W, C, KS, du.is_cuda, tile_h, block_c, B,
                                                             sm_count(du))
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
