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
              (the GELU twice per element — the prologue's and the statistics' — is most of the rest),
              HBM-bound at k = 3. Before this design the k² taps each re-read a staged halo tile (a load and a
              conversion per tap and element): dw_fwd k = 9 at convmixer_1536_20 b64 went from 5.05x to 2.32x
              its floor (eval 4.92x -> 1.77x), k = 7 at convmixer_768_32 5.03x -> 1.89x. Then W and C became
              constexprs (all three kernels; EVEN_C when the channel blocks tile C): strip addresses are
              immediate offsets and the channel masks fold away — the k = 7 row loop 706 -> 620 instructions per
              thread — and the GELU's Φ came from ``_common.gauss_cdf`` instead of libdevice's erf (~21 instead
              of ~40 instructions): k = 9 1.81x (eval 1.48x), k = 7 1.59x (eval 1.40x). (Strips of 16 columns
              would take k = 7 to 1.49x, at 253-255 registers: fp16 GELU with residual and statistics spills.)

dw_bwd_dx_kernel
    given du = dL/du (u = x + BN1(act(q))), rebuilds dq = act'(q)·(a1·du + c1 + c2·ghat) (BN1 backward with the
    batch-stat terms c1, c2; see ``_common.bn_act_bwd``) once per element and computes
        dx  = du + DW_kᵀ(dq)                         (stored when WRITE_DX)
        dhz = act_in'(hz)·ax·dx                      (stored when WRITE_DHZ: grad of the producer's z, direct path)
        per-program partials: sum(dx), sum(dx·xhat_in) (the previous BN's backward and its gamma/beta grads);
        FUSE_DW (k ≤ DW_BWD_FUSED_MAX_K): also dw and dbias (as dw_wgrad_kernel); else dq itself (fp32, the
        tile's own rows) for dw_wgrad_kernel.
    tiling    dw_fwd_kernel's row stream with dq as the input (staged in fp32: rounded to 16 bits before the k²
              products it would cost dx its accuracy) and the taps flipped by the host (DW_kᵀ is a correlation
              with them); row r's du (loaded for dq) is added to the ring slot of output row r at once; a
              completed ring row gives dx, then dhz and the sums. FUSE_DW
              keeps the last 2P + 1 dq rows with their halos and pairs each completed row of x (rebuilt from hz,
              res) with them: k²·SW more FMAs per row, k² + 1 per-thread accumulators.
    bytes     reads du, q and hz (+ res with FUSE_DW) once; writes dx and/or dhz and, unfused,
              dq in fp32.

dw_wgrad_kernel
    computes  dw[i, j, c] = Σ_p dq[p]·x[p + (i - P, j - P)], dbias = Σ dq (fp32 per-program partials [P, k² + 1,
              C], summed by the host in a fixed order: deterministic, no atomics).
    tiling    the same row stream over x (rebuilt once from hz, res; staged for the halos) and dq rows; the last
              P rows of each live in register rings, and a pair (dq row h, x row h + i - P) is taken when the
              later of the two streams by: k²·SW FMAs per thread and row into k² per-thread accumulators, summed
              over the strips once per program.
    bytes     reads dq (fp32), hz (+ res) once.
    cost      (sm_90a SASS, bf16, `spin kernels-report --cost`): the staged-halo kernel this pair replaced (one
              tap loop for dx, one for dw with a cross-position reduction per tap and tile) ran dw_bwd k = 9 at
              convmixer_1536_20 b64 at 9.68x its floor; the pair ran at 1.84x / 2.04x of theirs, k = 7 1.14x /
              1.32x, k = 3 (fused) 1.00x; with W, C built in and ``gauss_cdf``: k = 9 1.39x / 1.79x, k = 7 1.00x /
              1.18x.
"""
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._common import (
    ACT_CODES,
    act_fwd,
    act_grad,
    bn_act_bwd_math,
    load_vec6,
    merge_partials,
    sm_count,
    store_bn_affine,
    store_stats,
)


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
def chan_mask(offs, C, EVEN_C: tl.constexpr):
    """``offs < C``, or all true when EVEN_C (C a multiple of the channel block, known when the kernel is built):
    then every mask, select and predicate on the channel folds away."""
    if EVEN_C:
        return offs == offs
    return offs < C


@triton.jit
def strip_layout(C, G: tl.constexpr, SW: tl.constexpr, BLOCK_C: tl.constexpr, EVEN_C: tl.constexpr):
    """The row-streaming kernels' program and thread layout: grid (persistent programs over tiles, channel
    blocks); one thread per (strip g, channel), so every [G, BLOCK_C] tensor is one register per thread; a thread's
    strip is columns g·SW .. g·SW + SW - 1 of its channel. Returns (pid, n_prog, pid_c, g_idx, lane_c, offs_c,
    cmask, col0, thread_off, oc1, m1): element (row, col0 + u) of the thread is at row·W·C + thread_off + u·C; oc1
    is the channel block as a vector, m1 its mask."""
    pid_c = tl.program_id(1)
    g_idx = tl.arange(0, G)[:, None]
    lane_c = tl.arange(0, BLOCK_C)[None, :]
    offs_c = pid_c * BLOCK_C + lane_c + 0 * g_idx
    col0 = g_idx * SW
    oc1 = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    return (tl.program_id(0), tl.num_programs(0), pid_c, g_idx, lane_c, offs_c, chan_mask(offs_c, C, EVEN_C), col0,
            col0 * C + offs_c, oc1, chan_mask(oc1, C, EVEN_C))


@triton.jit
def zero_strip_of(zero, SW: tl.constexpr):
    """A tuple of SW copies of ``zero``: a fresh strip of accumulators."""
    out = ()
    for u in tl.static_range(SW):
        out = out + (zero,)
    return out


@triton.jit
def row_buffers(buf_ptr, slot, g_idx, lane_c, KS: tl.constexpr, G: tl.constexpr, SW: tl.constexpr,
                BLOCK_C: tl.constexpr):
    """(base, st_off): program ``slot``'s two staged rows (double-buffered: one barrier per row) of
    G·SW + KS - 1 columns × BLOCK_C, with the conv's zero padding columns written here once (never overwritten);
    st_off: the thread's strip in a row."""
    P: tl.constexpr = KS // 2
    BUF_W: tl.constexpr = G * SW + 2 * P
    buf = buf_ptr + slot.to(tl.int64) * (2 * BUF_W * BLOCK_C)
    zero = tl.zeros([G, BLOCK_C], dtype=buf_ptr.dtype.element_ty)
    for b in tl.static_range(2):
        for t in tl.static_range(P):
            tl.store(buf + b * BUF_W * BLOCK_C + t * BLOCK_C + lane_c + 0 * g_idx, zero, mask=g_idx == 0)
            tl.store(buf + b * BUF_W * BLOCK_C + (P + G * SW + t) * BLOCK_C + lane_c + 0 * g_idx, zero,
                     mask=g_idx == 0)
    return buf, (P + g_idx * SW) * BLOCK_C + lane_c


@triton.jit
def staged_row(buf, r, KS: tl.constexpr, G: tl.constexpr, SW: tl.constexpr, BLOCK_C: tl.constexpr):
    """The staging buffer of input row ``r`` (of :func:`row_buffers`' two: rows alternate)."""
    return buf + (r & 1) * ((G * SW + 2 * (KS // 2)) * BLOCK_C)


@triton.jit
def stage_row(rb, st_off, vals, KS: tl.constexpr, SW: tl.constexpr, BLOCK_C: tl.constexpr):
    """Stage the thread's strip ``vals`` (a tuple, in the buffer's dtype) in row buffer ``rb``; after a barrier
    return the strip with its halo as fp32: KS // 2 columns either side from the neighbours (or the padding)."""
    P: tl.constexpr = KS // 2
    own = ()
    for u in tl.static_range(SW):
        tl.store(rb + st_off + u * BLOCK_C, vals[u])
        own = own + (vals[u].to(tl.float32),)
    tl.debug_barrier()  # the row is staged (and the buffer written two rows ago is no longer read)
    left = ()
    right = ()
    for t in tl.static_range(P):
        left = left + (tl.load(rb + st_off + (t - P) * BLOCK_C).to(tl.float32),)
        right = right + (tl.load(rb + st_off + (SW + t) * BLOCK_C).to(tl.float32),)
    return left + own + right


@triton.jit
def ring_step(ring, xs, wts, KS: tl.constexpr, SW: tl.constexpr):
    """One input row ``xs`` (the strip with its halo) into the ring of output rows: slot m (output row
    r - KS//2 + m) takes kernel row KS - 1 - m of the taps ``wts`` (tuple of KS² per-channel values):
    KS·KS·SW FMAs per thread."""
    new_ring = ()
    for m in tl.static_range(KS):
        slot = ()
        for u in tl.static_range(SW):
            a = ring[m][u]
            for j in tl.static_range(KS):
                a = a + wts[(KS - 1 - m) * KS + j] * xs[u + j]
            slot = slot + (a,)
        new_ring = new_ring + (slot,)
    return new_ring


@triton.jit
def load_taps(w_ptr, offs_c, cmask, C, KS: tl.constexpr):
    """The k² taps of each thread's channel from fp32 [k², C] (tap-major), held in registers by the caller."""
    wts = ()
    for tap in tl.static_range(KS * KS):
        wts = wts + (tl.load(w_ptr + tap * C + offs_c, mask=cmask, other=0.0),)
    return wts


@triton.jit
def sum_strips(v):
    """A per-thread [G, BLOCK_C] partial summed over the strips: [BLOCK_C]."""
    return tl.sum(v, axis=0)


@triton.jit
def tile_rows(t, row_tiles, H, tile_h, KS: tl.constexpr):
    """Tile ``t`` of a row-streaming kernel: (first batch row of its image, its output rows h0 .. h1 - 1, the input
    rows r_lo .. r_hi - 1 that stream by: the tile's and up to KS // 2 halo rows either side, clipped to the
    image)."""
    h0 = (t % row_tiles) * tile_h
    h1 = tl.minimum(h0 + tile_h, H)
    return (t // row_tiles) * H, h0, h1, tl.maximum(h0 - KS // 2, 0), tl.minimum(h1 + KS // 2, H)


@triton.jit
def rebuild_x(raw, ax, bx, col0, cmask, W, dtype: tl.constexpr, ACT_IN: tl.constexpr, HAS_RES: tl.constexpr,
              SW: tl.constexpr):
    """The layer input x = [res] + ax·act_in(hz) + bx of a thread's strip from its raw row (:func:`load_strip_row`),
    zero past W / C (the conv's padding), rounded to ``dtype`` (as the unfused layer stores x)."""
    xs = ()
    for u in tl.static_range(SW):
        x = ax[None, :] * act_fwd(raw[u].to(tl.float32), ACT_IN) + bx[None, :]
        if HAS_RES:
            x += raw[SW + u].to(tl.float32)
        xs = xs + (tl.where((col0 + u < W) & cmask, x, 0.0).to(dtype),)
    return xs


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
                  H, W: tl.constexpr, C: tl.constexpr, n_tiles, row_tiles, tile_h,
                  KS: tl.constexpr, ACT_IN: tl.constexpr, ACT: tl.constexpr, HAS_RES: tl.constexpr,
                  EMIT_STATS: tl.constexpr, FINALIZE: tl.constexpr, SW: tl.constexpr, G: tl.constexpr,
                  BLOCK_C: tl.constexpr, EVEN_C: tl.constexpr, BLOCK_T: tl.constexpr):
    P: tl.constexpr = KS // 2
    pid, n_prog, pid_c, g_idx, lane_c, offs_c, cmask, col0, thread_off, oc1, m1 = strip_layout(C, G, SW, BLOCK_C,
                                                                                               EVEN_C)
    ax = tl.load(ax_ptr + oc1, mask=m1, other=0.0)
    bx = tl.load(bx_ptr + oc1, mask=m1, other=0.0)
    bias = tl.load(bias_ptr + offs_c, mask=cmask, other=0.0).to(tl.float32)
    zero = tl.zeros([G, BLOCK_C], dtype=tl.float32)
    zero_strip = zero_strip_of(zero, SW)
    wts = load_taps(w_ptr, offs_c, cmask, C, KS)
    # valid columns of the thread's strip (the same every row): the statistics' per-row count
    n_strip = tl.zeros([G, BLOCK_C], dtype=tl.float32)
    for u in tl.static_range(SW):
        n_strip += ((col0 + u < W) & cmask).to(tl.float32)
    inv_n = tl.where(n_strip > 0.0, 1.0 / tl.maximum(n_strip, 1.0), 0.0)
    buf, st_off = row_buffers(buf_ptr, pid_c * n_prog + pid, g_idx, lane_c, KS, G, SW, BLOCK_C)
    for t in range(pid, n_tiles, n_prog):  # persistent: tiles (image, row block) strided over the programs
        img_row0, h0, h1, r_lo, r_hi = tile_rows(t, row_tiles, H, tile_h, KS)
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
            rb = staged_row(buf, r, KS, G, SW, BLOCK_C)
            cur, raw = raw, load_strip_row(hz_ptr, res_ptr, img_row0 + r + 1, W, C, thread_off, col0, cmask,
                                            r + 1 < r_hi, HAS_RES, SW)
            # the input row, each element rebuilt once (x = [res] + ax·act_in(hz) + bx) and rounded to the
            # activations' dtype (as the unfused layer stores x); staged for the neighbours' halos
            xs = rebuild_x(cur, ax, bx, col0, cmask, W, buf_ptr.dtype.element_ty, ACT_IN, HAS_RES, SW)
            new_ring = ring_step(ring, stage_row(rb, st_off, xs, KS, SW, BLOCK_C), wts, KS, SW)
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
            n_b = sum_strips(n_s)
            mean_b = sum_strips(n_s * mean_s) / tl.maximum(n_b, 1.0)
            d = mean_s - mean_b[None, :]
            m2_b = sum_strips(m2_s + n_s * d * d)
            store_stats(part_ptr, t, n_tiles, oc1, m1, C, n_b, mean_b, m2_b)
        tl.debug_barrier()  # the next tile's first row may reuse this tile's last staged row: all reads done
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
def dw_bwd_dx_kernel(du_ptr, q_ptr, qvec_ptr, w_ptr, hz_ptr, res_ptr, xvec_ptr, dx_ptr, dhz_ptr, dq_ptr, spart_ptr,
                     wpart_ptr, buf_ptr, H, W: tl.constexpr, C: tl.constexpr, n_tiles, row_tiles, tile_h,
                     KS: tl.constexpr, ACT_IN: tl.constexpr, ACT: tl.constexpr, HAS_RES: tl.constexpr,
                     WRITE_DX: tl.constexpr, WRITE_DHZ: tl.constexpr, FUSE_DW: tl.constexpr, SW: tl.constexpr,
                     G: tl.constexpr, BLOCK_C: tl.constexpr, EVEN_C: tl.constexpr):
    P: tl.constexpr = KS // 2
    pid, n_prog, pid_c, g_idx, lane_c, offs_c, cmask, col0, thread_off, oc1, m1 = strip_layout(C, G, SW, BLOCK_C,
                                                                                               EVEN_C)
    zero = tl.zeros([G, BLOCK_C], dtype=tl.float32)
    zero_strip = zero_strip_of(zero, SW)
    wts = load_taps(w_ptr, offs_c, cmask, C, KS)      # flipped by the host: dx is a correlation with them
    buf, st_off = row_buffers(buf_ptr, pid_c * n_prog + pid, g_idx, lane_c, KS, G, SW, BLOCK_C)
    s1 = zero
    s2 = zero
    # FUSE_DW (small k): the weight gradient here too, from the last 2P + 1 dq rows (with halos) and each row of x
    # as it completes — no dq round trip through HBM and no second kernel
    zero_halo = zero_strip_of(zero, SW + 2 * P)
    dw_acc = zero_strip_of(zero, KS * KS if FUSE_DW else 0)
    db = zero
    for t in range(pid, n_tiles, n_prog):  # persistent: tiles (image, row block) strided over the programs
        img_row0, h0, h1, r_lo, r_hi = tile_rows(t, row_tiles, H, tile_h, KS)
        ring = ()
        for m in tl.static_range(KS):
            ring = ring + (zero_strip,)
        dq_ring = ()   # FUSE_DW: slot s holds dq row r - 2P + s (with its halo) at row r
        if FUSE_DW:
            for m in tl.static_range(2 * P + 1):
                dq_ring = dq_ring + (zero_halo,)
        raw = load_strip_row(du_ptr, q_ptr, img_row0 + r_lo, W, C, thread_off, col0, cmask, r_lo < r_hi, True, SW)
        for r in range(r_lo, r_hi):
            rb = staged_row(buf, r, KS, G, SW, BLOCK_C)
            cur, raw = raw, load_strip_row(du_ptr, q_ptr, img_row0 + r + 1, W, C, thread_off, col0, cmask,
                                            r + 1 < r_hi, True, SW)
            # dq = d/dq through BN1 and act, once per element (fp32: rounded to 16 bits before the k² products
            # it would cost dx its accuracy); the tile's own rows also go to dq_ptr for the weight gradient
            dq_row = img_row0 + r
            own_row = (r >= h0) & (r < h1)
            # (the BN1/act vectors are re-read from L1 each row: six registers fewer across the ring step keep
            # k = 9 spill-free)
            alpha, beta, c1, c2, mean, invstd = load_vec6(qvec_ptr, oc1, m1, C)
            dqs = ()
            for u in tl.static_range(SW):
                ok = (col0 + u < W) & cmask
                dq = bn_act_bwd_math(cur[u].to(tl.float32), cur[SW + u].to(tl.float32), alpha, beta, c1, c2,
                                     mean, invstd, ACT)
                dq = tl.where(ok, dq, 0.0)
                if not FUSE_DW:
                    tl.store(dq_ptr + dq_row.to(tl.int64) * W * C + thread_off + u * C, dq, mask=ok & own_row)
                dqs = dqs + (dq,)
            dq_halo = stage_row(rb, st_off, dqs, KS, SW, BLOCK_C)
            new_ring = ring_step(ring, dq_halo, wts, KS, SW)
            # dx = du + ...: row r's du, loaded for dq, goes into slot P (output row r) now, not re-read later
            slot = ()
            for u in tl.static_range(SW):
                slot = slot + (new_ring[P][u] + cur[u].to(tl.float32),)
            new_ring = new_ring[:P] + (slot,) + new_ring[P + 1:]
            if FUSE_DW:
                dq_ring = dq_ring[1:] + (dq_halo,)
            h = r - P
            if (h >= h0) & (h < h1):
                s1, s2, xs = emit_dx_row(new_ring[0], img_row0 + h, W, C, hz_ptr, res_ptr, xvec_ptr, dx_ptr,
                                         dhz_ptr, thread_off, col0, cmask, oc1, m1, s1, s2, ACT_IN, HAS_RES, WRITE_DX,
                                         WRITE_DHZ, FUSE_DW, SW)
                if FUSE_DW:
                    dw_acc, db = dw_pairs(dw_acc, db, xs, dq_ring, KS, SW)
            ring = new_ring[1:] + (zero_strip,)
        for m in tl.static_range(P):  # the image's last rows, complete with its last input row
            h = r_hi - P + m
            if FUSE_DW:
                dq_ring = dq_ring[1:] + (zero_halo,)   # the rows past the image: zero
            if (h >= h0) & (h < h1):
                s1, s2, xs = emit_dx_row(ring[m], img_row0 + h, W, C, hz_ptr, res_ptr, xvec_ptr, dx_ptr,
                                         dhz_ptr, thread_off, col0, cmask, oc1, m1, s1, s2, ACT_IN, HAS_RES, WRITE_DX,
                                         WRITE_DHZ, FUSE_DW, SW)
                if FUSE_DW:
                    dw_acc, db = dw_pairs(dw_acc, db, xs, dq_ring, KS, SW)
        tl.debug_barrier()  # the next tile's first row may reuse this tile's last staged row: all reads done
    tl.store(spart_ptr + pid * C + oc1, sum_strips(s1), mask=m1)
    tl.store(spart_ptr + (n_prog + pid) * C + oc1, sum_strips(s2), mask=m1)
    if FUSE_DW:
        store_wgrad_partial(wpart_ptr, pid, dw_acc, db, oc1, m1, C, KS)


@triton.jit
def dw_pairs(dw_acc, db, xs, dq_ring, KS: tl.constexpr, SW: tl.constexpr):
    """dw[i, j] += Σ_u x[u]·dq[row - i + P, u - j + P] for one completed row of x (``xs``, the strip) against the
    2P + 1 dq rows of ``dq_ring`` (slot 2P - i, strips with halos); dbias += the row's own dq (slot P)."""
    P: tl.constexpr = KS // 2
    new_acc = ()
    for i in tl.static_range(KS):
        for j in tl.static_range(KS):
            a = dw_acc[i * KS + j]
            for u in tl.static_range(SW):
                a = a + xs[u] * dq_ring[2 * P - i][u + 2 * P - j]
            new_acc = new_acc + (a,)
    for u in tl.static_range(SW):
        db += dq_ring[P][u + P]
    return new_acc, db


@triton.jit
def store_wgrad_partial(wpart_ptr, pid, dw_acc, db, oc1, m1, C, KS: tl.constexpr):
    """This program's dw (k² per-thread accumulators) and dbias, summed over the strips, as entry ``pid`` of the
    partials [programs, k² + 1, C] (the host sums them in a fixed order: deterministic, no atomics)."""
    wbase = wpart_ptr + pid.to(tl.int64) * (KS * KS + 1) * C
    for tap in tl.static_range(KS * KS):
        tl.store(wbase + tap * C + oc1, sum_strips(dw_acc[tap]), mask=m1)
    tl.store(wbase + KS * KS * C + oc1, sum_strips(db), mask=m1)


@triton.jit
def emit_dx_row(acc, row, W, C, hz_ptr, res_ptr, xvec_ptr, dx_ptr, dhz_ptr, thread_off, col0, cmask, oc1, m1, s1, s2,
                ACT_IN: tl.constexpr, HAS_RES: tl.constexpr, WRITE_DX: tl.constexpr,
                WRITE_DHZ: tl.constexpr, WITH_X: tl.constexpr, SW: tl.constexpr):
    """Finish batch row ``row`` of the thread's strip: dx = ``acc`` (du is already in it; stored when WRITE_DX),
    dhz = act_in'(hz)·ax·dx (WRITE_DHZ); returns the running sums s1 += dx, s2 += dx·xhat_in (the previous BN's
    backward) and, WITH_X, the row's x as the forward rebuilt it (rounded to the activations' dtype; else an empty
    tuple)."""
    ax = tl.load(xvec_ptr + oc1, mask=m1, other=0.0)
    mean_in = tl.load(xvec_ptr + 2 * C + oc1, mask=m1, other=0.0)
    invstd_in = tl.load(xvec_ptr + 3 * C + oc1, mask=m1, other=0.0)
    base = row.to(tl.int64) * W * C
    hzs = ()
    for u in tl.static_range(SW):
        hzs = hzs + (tl.load(hz_ptr + base + thread_off + u * C, mask=(col0 + u < W) & cmask, other=0.0),)
    for u in tl.static_range(SW):
        ok = (col0 + u < W) & cmask
        dx = tl.where(ok, acc[u], 0.0)
        hz = hzs[u].to(tl.float32)
        if WRITE_DX:
            tl.store(dx_ptr + base + thread_off + u * C, dx.to(dx_ptr.dtype.element_ty), mask=ok)
        xhat = (act_fwd(hz, ACT_IN) - mean_in[None, :]) * invstd_in[None, :]
        s1 += dx
        s2 += tl.where(ok, dx * xhat, 0.0)
        if WRITE_DHZ:
            tl.store(dhz_ptr + base + thread_off + u * C, (act_grad(hz, ACT_IN) * ax[None, :] * dx).to(
                dhz_ptr.dtype.element_ty), mask=ok)
    xs = ()
    if WITH_X:
        bx = tl.load(xvec_ptr + C + oc1, mask=m1, other=0.0)
        for u in tl.static_range(SW):
            ok = (col0 + u < W) & cmask
            x = ax[None, :] * act_fwd(hzs[u].to(tl.float32), ACT_IN) + bx[None, :]
            if HAS_RES:
                x += tl.load(res_ptr + base + thread_off + u * C, mask=ok, other=0.0).to(tl.float32)
            xs = xs + (tl.where(ok, x, 0.0).to(hz_ptr.dtype.element_ty).to(tl.float32),)
    return s1, s2, xs


@triton.jit
def dw_wgrad_kernel(dq_ptr, hz_ptr, res_ptr, xvec_ptr, wpart_ptr, buf_ptr, H, W: tl.constexpr, C: tl.constexpr,
                    n_tiles, row_tiles, tile_h, KS: tl.constexpr, ACT_IN: tl.constexpr, HAS_RES: tl.constexpr,
                    SW: tl.constexpr, G: tl.constexpr, BLOCK_C: tl.constexpr, EVEN_C: tl.constexpr):
    P: tl.constexpr = KS // 2
    pid, n_prog, pid_c, g_idx, lane_c, offs_c, cmask, col0, thread_off, oc1, m1 = strip_layout(C, G, SW, BLOCK_C,
                                                                                               EVEN_C)
    ax = tl.load(xvec_ptr + oc1, mask=m1, other=0.0)
    bx = tl.load(xvec_ptr + C + oc1, mask=m1, other=0.0)
    zero = tl.zeros([G, BLOCK_C], dtype=tl.float32)
    zero_strip = zero_strip_of(zero, SW)
    zero_halo = zero_strip_of(zero, SW + 2 * P)
    buf, st_off = row_buffers(buf_ptr, pid_c * n_prog + pid, g_idx, lane_c, KS, G, SW, BLOCK_C)
    # dw[i, j] accumulated per thread over all of its rows and tiles (summed over the strips once, at the end)
    acc = zero_strip_of(zero, KS * KS)
    db = zero
    for t in range(pid, n_tiles, n_prog):  # persistent: tiles (image, row block) strided over the programs
        img_row0, h0, h1, r_lo, r_hi = tile_rows(t, row_tiles, H, tile_h, KS)
        # the last P rows of x (with halos) and of dq: a pair (dq row h, x row h + i - P) is taken when the later
        # of the two streams by
        x_ring = ()
        dq_ring = ()
        for m in tl.static_range(P):
            x_ring = x_ring + (zero_halo,)
            dq_ring = dq_ring + (zero_strip,)
        raw = load_strip_row(hz_ptr, res_ptr, img_row0 + r_lo, W, C, thread_off, col0, cmask, r_lo < r_hi,
                             HAS_RES, SW)
        for r in range(r_lo, r_hi):
            cur, raw = raw, load_strip_row(hz_ptr, res_ptr, img_row0 + r + 1, W, C, thread_off, col0, cmask,
                                            r + 1 < r_hi, HAS_RES, SW)
            rb = staged_row(buf, r, KS, G, SW, BLOCK_C)
            # dq of the tile's own rows (zero on its halo rows: those belong to the neighbouring tiles)
            base = (img_row0 + r).to(tl.int64) * W * C
            own_row = (r >= h0) & (r < h1)
            dq = ()
            for u in tl.static_range(SW):
                v = tl.load(dq_ptr + base + thread_off + u * C, mask=(col0 + u < W) & cmask & own_row, other=0.0)
                dq = dq + (v,)
                db += v
            # x as the forward rebuilt it (rounded to the activations' dtype), staged for the halos in fp32 (with
            # the taps' fp16 conversions in the loop, ptxas spills this kernel wholesale at k = 9)
            xs = rebuild_x(cur, ax, bx, col0, cmask, W, hz_ptr.dtype.element_ty, ACT_IN, HAS_RES, SW)
            xs = stage_row(rb, st_off, xs, KS, SW, BLOCK_C)
            # this dq row with x rows r - P .. r (kernel rows 0 .. P), this x row with dq rows r - P .. r - 1
            # (kernel rows 2P .. P + 1): KS·KS·SW FMAs per thread and row
            new_acc = ()
            for i in tl.static_range(KS):
                for j in tl.static_range(KS):
                    a = acc[i * KS + j]
                    for u in tl.static_range(SW):
                        if i < P:
                            a = a + dq[u] * x_ring[i][u + j]
                        elif i == P:
                            a = a + dq[u] * xs[u + j]
                        else:
                            a = a + dq_ring[2 * P - i][u] * xs[u + j]
                    new_acc = new_acc + (a,)
            acc = new_acc
            x_ring = x_ring[1:] + (xs,)
            dq_ring = dq_ring[1:] + (dq,)
        tl.debug_barrier()  # the next tile's first row may reuse this tile's last staged row: all reads done
    store_wgrad_partial(wpart_ptr, pid, acc, db, oc1, m1, C, KS)


# dw_fwd: a thread's strip of columns (its sliding window: SW + KS - 1 inputs feed SW·KS² FMAs per row), the
# threads of a program (G strips × BLOCK_C channels), the fewest rows a tile is split to at small batch
DW_FWD_STRIP = 8
DW_FWD_THREADS = 128
DW_FWD_MIN_ROWS = 2
# the backward kernels' strip from k = DW_*_NARROW_FROM_K on: k² taps (or dw accumulators) beside rings of
# 8-column strips spill at 255 registers (k = 7 GELU dx: 8 bytes; k = 9 dw_wgrad_kernel in fp16 wholesale: ptxas
# settles on 168 registers and 4.8 KB of spills)
DW_BWD_STRIP_K9 = 4
DW_BWD_DX_NARROW_FROM_K = 7
DW_WGRAD_NARROW_FROM_K = 9
# up to this k the weight gradient runs inside dw_bwd_dx_kernel (its extra 2P + 1 dq rows and k² accumulators
# fit the registers; from k = 5 on they would not beside the dx ring and taps)
DW_BWD_FUSED_MAX_K = 3
# in-kernel finalize: the tile partials merged this many at a time (as bn_finalize does); the smallest channel
# block any tiling picks (sizes the counter buffer)
DW_FWD_FINALIZE_BLOCK = 32
DW_MIN_BLOCK_C = 8


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
    strip = DW_FWD_STRIP if strip is None else strip
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


class StripLaunch(NamedTuple):
    """The grid, kernel arguments and row-buffer size of one launch of a row-streaming depthwise kernel."""

    grid: tuple
    args: dict
    buffer_elems: int
    device: torch.device

    def row_buffers(self, dtype) -> torch.Tensor:
        """The programs' double-buffered staged rows (scratch: every element read is written first)."""
        return torch.empty((self.buffer_elems,), device=self.device, dtype=dtype)


def _strip_launch(t, B, H, W, C, KS, tile_h, block_c, strip, programs) -> StripLaunch:
    """Tiling (:func:`dw_fwd_tiling`) → grid (programs × channel blocks), the tiling arguments and launch options
    of a row-streaming kernel over B images of H×W×C like ``t``."""
    tile_h, strip, strips, block_c, num_warps = dw_fwd_tiling(H, W, C, KS, t.is_cuda, tile_h, block_c, B,
                                                              sm_count(t), strip)
    row_tiles = triton.cdiv(H, tile_h)
    n_tiles = B * row_tiles
    n_cblk = triton.cdiv(C, block_c)
    programs = max(1, min(programs or n_tiles, n_tiles))
    args = dict(n_tiles=n_tiles, row_tiles=row_tiles, tile_h=tile_h, SW=strip, G=strips, BLOCK_C=block_c,
                EVEN_C=C % block_c == 0)
    if t.is_cuda:
        args.update(num_warps=num_warps, num_stages=1)
    return StripLaunch((programs, n_cblk), args, n_cblk * programs * 2 * (strips * strip + KS - 1) * block_c,
                       t.device)


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
    launch = _strip_launch(hz, B, H, W, C, KS, tile_h, block_c, strip, programs)
    n_tiles = launch.args["n_tiles"]
    emit_stats = emit_stats or finalize is not None
    if finalize is not None:
        _check_finalize(finalize, C, launch.grid[1], hz.device)
    q = torch.empty_like(hz) if q_out is None else q_out
    part = torch.empty((3, n_tiles, C), device=hz.device, dtype=torch.float32) if emit_stats else q
    fin = finalize or Finalize(bias, bias, 0.0, part, part, part)  # placeholders: FINALIZE=False never reads them
    # the staged rows in the activations' dtype (as x would be stored by PyTorch)
    dw_fwd_kernel[launch.grid](hz_ptr=hz, res_ptr=res if res is not None else hz, ax_ptr=ax, bx_ptr=bx, w_ptr=wt,
                               bias_ptr=bias, q_ptr=q, part_ptr=part, buf_ptr=launch.row_buffers(hz.dtype),
                               count_ptr=fin.counters, gamma_ptr=fin.gamma, beta_ptr=fin.beta, eps=float(fin.eps),
                               stat_ptr=fin.stats_out, ab_ptr=fin.affine_out, H=H, W=W, C=C, KS=KS,
                               ACT_IN=ACT_CODES[act_in], ACT=ACT_CODES[act], HAS_RES=res is not None,
                               EMIT_STATS=emit_stats, FINALIZE=finalize is not None,
                               BLOCK_T=DW_FWD_FINALIZE_BLOCK, **launch.args)
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
           write_dx=True, write_dhz=False, dx_out=None, tile_h=None, block_c=None, programs=None, strip=None):
    """Launch dw_bwd_dx_kernel, then dw_wgrad_kernel.

    du, q, hz, res: [M, C]; qvec: fp32 [6, C] (BN1/act backward vectors, see _common.bn_act_bwd); xvec: fp32
    [4, C] (ax, bx, mean_in, invstd_in of the BN that produced x from hz). Returns
    (dx or None, dhz or None, dweight fp32 [C, KS, KS], dbias fp32 [C], partial sums fp32 [2, P, C] of dx and
    dx·xhat_in, one row per program: reduced by spin_kernels.triton.bn.bn_bwd_vectors).
    ``tile_h``, ``block_c``, ``strip``, ``programs`` override the tiling rules of both kernels (see dw_fwd).
    """
    M, C = du.shape
    KS = weight.shape[-1]
    # dx is the correlation of dq with the flipped taps; tap-major fp32, one register per tap and thread
    wt_flip = weight.reshape(C, KS, KS).flip(-1, -2).reshape(C, KS * KS).t().float().contiguous()
    dx = (torch.empty_like(du) if dx_out is None else dx_out) if write_dx else None
    dhz = torch.empty_like(hz) if write_dhz else None
    # small k: the weight gradient in the dx kernel (FUSE_DW); else dq makes one fp32 round trip to dw_wgrad_kernel
    fuse = KS <= DW_BWD_FUSED_MAX_K
    dq = torch.empty((M, C) if not fuse else (1,), device=du.device, dtype=torch.float32)
    # narrower strips for large k (spill-free)
    def narrow(from_k):
        return strip if strip is not None else (DW_BWD_STRIP_K9 if KS >= from_k else DW_FWD_STRIP)

    dx_launch = _strip_launch(du, B, H, W, C, KS, tile_h, block_c, narrow(DW_BWD_DX_NARROW_FROM_K), programs)
    wg_launch = _strip_launch(du, B, H, W, C, KS, tile_h, block_c, narrow(DW_WGRAD_NARROW_FROM_K), programs)
    spart = torch.empty((2, dx_launch.grid[0], C), device=du.device, dtype=torch.float32)
    wpart = torch.empty(((dx_launch if fuse else wg_launch).grid[0], KS * KS + 1, C), device=du.device,
                        dtype=torch.float32)
    # outputs a WRITE_* switch turns off still need a tensor: du (never written then)
    dw_bwd_dx_kernel[dx_launch.grid](
        du_ptr=du, q_ptr=q, qvec_ptr=qvec, w_ptr=wt_flip, hz_ptr=hz, res_ptr=res if res is not None else hz,
        xvec_ptr=xvec, dx_ptr=dx if dx is not None else du, dhz_ptr=dhz if dhz is not None else du, dq_ptr=dq,
        spart_ptr=spart, wpart_ptr=wpart, buf_ptr=dx_launch.row_buffers(torch.float32), H=H, W=W, C=C, KS=KS,
        ACT_IN=ACT_CODES[act_in], ACT=ACT_CODES[act], HAS_RES=res is not None, WRITE_DX=write_dx,
        WRITE_DHZ=write_dhz, FUSE_DW=fuse, **dx_launch.args)
    if not fuse:
        dw_wgrad_kernel[wg_launch.grid](
            dq_ptr=dq, hz_ptr=hz, res_ptr=res if res is not None else hz, xvec_ptr=xvec, wpart_ptr=wpart,
            buf_ptr=wg_launch.row_buffers(torch.float32), H=H, W=W, C=C, KS=KS, ACT_IN=ACT_CODES[act_in],
            # (EVEN_C off: it saves this kernel ~3 of ~565 instructions per row, and with it ptxas spills 340 bytes
            # in fp16 at k = 9)
            HAS_RES=res is not None, **dict(wg_launch.args, EVEN_C=False))
    # one fixed-order reduction over the programs (deterministic); tap-major rows back to [C, KS, KS]
    wsum = wpart.sum(0)
    return dx, dhz, wsum[:KS * KS].t().contiguous().reshape(C, KS, KS), wsum[KS * KS], spart
