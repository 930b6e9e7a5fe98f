"""Flash attention (forward and backward) for ViT blocks, reading q/k/v straight out of the packed qkv GEMM output.

Layouts (no permute / contiguous copies anywhere):
    qkv  [B, N, 3, H, D]  (= the qkv Linear output [B, N, 3C] viewed; q, k, v of head h are column slices)
    o    [B, N, H, D]     (= [B, N, C], exactly what the proj Linear consumes)
    lse  [B, H, N] fp32   log2-domain row statistic  m2 + log2(l)  (the only thing saved besides o)
    dqkv [B, N, 3, H, D]  (dq, dk, dv written into their slices of one buffer: the gradient of the qkv output)

N needs not be a multiple of the tile (ViT: N = 197): keys past N are masked to -inf in the scores, query rows
past N are loaded as zeros and never stored. head_dim D is a constexpr power of two in 16..128.
Softmax statistics (running max, running sum, lse, delta) are fp32; both tl.dot of each step take operands in
the activation dtype (fp16/bf16 -> wgmma on sm_90) and accumulate in fp32; fp32 operands are multiplied in IEEE
fp32 (constexpr PREC, :func:`dot_precision`), never single-pass TF32.

Attention dropout (constexpr DROPOUT; runtime seed, p): the keep mask comes from Philox (tl.rand) on the flat
(head, query, key) index, regenerated tile by tile in forward and backward and never stored;
attn_dropout_mask() returns it for tests.
"""
import torch
import triton
import triton.language as tl

from ._common import new_output

LOG2E = 1.4426950408889634


@triton.jit
def _keep(seed, bh, rows, cols, N, p_drop):
    """Dropout keep mask of attention probabilities (query rows, key cols) of head bh: Philox uniform >= p.
    The counter is the flat (head, query, key) index (mod 2^32), so forward and backward tiles agree."""
    offs = (bh * N + rows) * N + cols
    return tl.rand(seed, offs.to(tl.uint32)) >= p_drop


@triton.jit
def attn_dropout_mask_kernel(mask_ptr, N, seed, p_drop, BLOCK: tl.constexpr):
    """The keep mask [B*H, N, N] (int8) the attention kernels use for ``seed`` (tests / debugging only)."""
    bh = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    for c0 in range(0, N, BLOCK):
        cols = c0 + tl.arange(0, BLOCK)
        keep = _keep(seed, bh, rows[:, None], cols[None, :], N, p_drop)
        tl.store(mask_ptr + (bh.to(tl.int64) * N + rows[:, None]) * N + cols[None, :], keep.to(tl.int8),
                 mask=(rows[:, None] < N) & (cols[None, :] < N))


# ---------------------------------------------------------------------------------------------------------------
# attn_fwd_kernel
#   computes  o = softmax(scale * q kᵀ) v per (batch, head), online softmax in the exp2 domain, and
#             lse2 = m2 + log2(l) per query row (fp32). DROPOUT: o = (keep ⊙ softmax / (1 - p)) v with the
#             Philox keep mask of _keep (regenerated, never stored).
#   tiling    one program per (batch*head, BLOCK_M query rows), batch*head on grid axis 0 (the one axis CUDA does
#             not cap at 65535); loop over the keys in BLOCK_N steps; q tile stays in registers, k/v tiles
#             streamed; acc [BLOCK_M, D] fp32.
#   bytes     reads q once, k and v once per query block (cdiv(N, BLOCK_M) times, L2-resident for ViT sizes),
#             writes o (N*D per head) and lse (4*N bytes per head). No N x N matrix leaves registers.
# ---------------------------------------------------------------------------------------------------------------
@triton.jit
def load_rows(base, rows, stride, offs_d, row_mask):
    """The [rows, D] tile of one head at ``base`` (row stride ``stride``); rows outside ``row_mask`` read 0."""
    return tl.load(base + rows[:, None] * stride + offs_d[None, :], mask=row_mask[:, None], other=0.0)


@triton.jit
def head_bases(qkv_ptr, bh, H, stride_qb, D: tl.constexpr):
    """(batch, head, q, k, v base pointers) of program axis ``bh`` = batch * H + head in packed qkv rows
    [B, N, 3 * H * D] (q, k, v read in place)."""
    b = bh // H
    h = bh % H
    q_base = qkv_ptr + b.to(tl.int64) * stride_qb + h * D
    return b, h, q_base, q_base + H * D, q_base + 2 * H * D


@triton.jit
def attn_fwd_kernel(qkv_ptr, o_ptr, lse_ptr, N, H, qk_scale,
                    stride_qb, stride_qn, stride_ob, stride_on, seed, p_drop,
                    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DROPOUT: tl.constexpr,
                    PREC: tl.constexpr):
    bh = tl.program_id(0)  # batch x head on grid axis 0: axis 1 is capped at 65535 by CUDA, axis 0 is not
    pid_m = tl.program_id(1)
    b, h, q_base, k_base, v_base = head_bases(qkv_ptr, bh, H, stride_qb, D)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    m_mask = offs_m < N
    q = load_rows(q_base, offs_m, stride_qn, offs_d, m_mask)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_mask = offs_n < N
        k = load_rows(k_base, offs_n, stride_qn, offs_d, n_mask)
        v = load_rows(v_base, offs_n, stride_qn, offs_d, n_mask)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale  # log2 domain
        s = tl.where(n_mask[None, :], s, float("-inf"))
        # key block 0 always holds key 0, so m_new is finite from the first step on
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)  # the softmax normaliser sees every key, dropped or not
        if DROPOUT:
            keep = _keep(seed, bh, offs_m[:, None], offs_n[None, :], N, p_drop)
            p = tl.where(keep, p * (1.0 / (1.0 - p_drop)), 0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new
    acc = acc / l_i[:, None]
    o_base = o_ptr + b.to(tl.int64) * stride_ob + h * D
    tl.store(o_base + offs_m[:, None] * stride_on + offs_d[None, :], acc.to(o_ptr.dtype.element_ty),
             mask=m_mask[:, None])
    tl.store(lse_ptr + bh.to(tl.int64) * N + offs_m, m_i + tl.log2(l_i), mask=m_mask)


# ---------------------------------------------------------------------------------------------------------------
# attn_bwd_pre_kernel
#   computes  delta = rowsum(dO * O) per (batch, head, row), fp32.
#   tiling    one program per (batch*head, BLOCK_M rows), [BLOCK_M, D] tiles.
#   bytes     reads o and do once, writes 4*N bytes per head.
# ---------------------------------------------------------------------------------------------------------------
@triton.jit
def attn_bwd_pre_kernel(o_ptr, do_ptr, delta_ptr, N, H, stride_ob, stride_on,
                        D: tl.constexpr, BLOCK_M: tl.constexpr):
    bh = tl.program_id(0)  # batch x head on grid axis 0: axis 1 is capped at 65535 by CUDA, axis 0 is not
    pid_m = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    m_mask = offs_m < N
    off = b.to(tl.int64) * stride_ob + h * D + offs_m[:, None] * stride_on + offs_d[None, :]
    o = tl.load(o_ptr + off, mask=m_mask[:, None], other=0.0).to(tl.float32)
    do = tl.load(do_ptr + off, mask=m_mask[:, None], other=0.0).to(tl.float32)
    tl.store(delta_ptr + bh.to(tl.int64) * N + offs_m, tl.sum(o * do, 1), mask=m_mask)


# ---------------------------------------------------------------------------------------------------------------
# attn_bwd_kernel
#   computes  with P = exp2(scale2 * q kᵀ - lse2) rebuilt per tile and dS = P * (dO vᵀ - delta):
#             program kind 0 (key block j):   dV_j = Σ_i P_ijᵀ dO_i,  dK_j = scale * Σ_i dS_ijᵀ q_i
#             program kind 1 (query block i): dQ_i = scale * Σ_j dS_ij k_j
#             (two independent loops, no atomics: deterministic; results go into the dq/dk/dv slices of dqkv.)
#             DROPOUT: dV uses the dropped P/(1-p), and dP is masked and scaled the same way before dS.
#   tiling    grid (batch*head, cdiv(N, BLOCK), 2); kind 0 holds k, v [BLOCK, D] and loops over query blocks of
#             STEP rows, kind 1 holds q, dO [BLOCK, D] and loops over key blocks of STEP rows; P/dS tiles
#             [BLOCK, STEP] in registers only (16-bit: BLOCK = 128, one 64-row wgmma tile per warpgroup; STEP
#             = 32 for D = 128 or with dropout keeps the register tiles spill-free; attn_config).
#   bytes     per head: reads q, do, lse, delta once per key block and k, v once per query block (L2-resident),
#             writes dq, dk, dv once (3*N*D). No N x N matrix in HBM.
# ---------------------------------------------------------------------------------------------------------------
@triton.jit
def attn_bwd_kernel(qkv_ptr, do_ptr, lse_ptr, delta_ptr, dqkv_ptr, N, H, qk_scale, sm_scale,
                    stride_qb, stride_qn, stride_ob, stride_on, seed, p_drop,
                    D: tl.constexpr, BLOCK: tl.constexpr, STEP: tl.constexpr, DROPOUT: tl.constexpr,
                    PREC: tl.constexpr):
    bh = tl.program_id(0)
    pid = tl.program_id(1)
    kind = tl.program_id(2)
    b, h, q_base, k_base, v_base = head_bases(qkv_ptr, bh, H, stride_qb, D)
    C = H * D
    dq_base = dqkv_ptr + b.to(tl.int64) * stride_qb + h * D
    do_base = do_ptr + b.to(tl.int64) * stride_ob + h * D
    lse_base = lse_ptr + bh.to(tl.int64) * N
    delta_base = delta_ptr + bh.to(tl.int64) * N
    offs_d = tl.arange(0, D)
    offs_b = pid * BLOCK + tl.arange(0, BLOCK)
    b_mask = offs_b < N
    if kind == 0:
        # this program's key block: dK, dV
        k = load_rows(k_base, offs_b, stride_qn, offs_d, b_mask)
        v = load_rows(v_base, offs_b, stride_qn, offs_d, b_mask)
        dk = tl.zeros([BLOCK, D], tl.float32)
        dv = tl.zeros([BLOCK, D], tl.float32)
        for start_m in range(0, N, STEP):
            offs_m = start_m + tl.arange(0, STEP)
            m_mask = offs_m < N
            q = load_rows(q_base, offs_m, stride_qn, offs_d, m_mask)
            do = load_rows(do_base, offs_m, stride_on, offs_d, m_mask)
            lse = tl.load(lse_base + offs_m, mask=m_mask, other=0.0)
            delta = tl.load(delta_base + offs_m, mask=m_mask, other=0.0)
            s_t = tl.dot(k, tl.trans(q), input_precision=PREC) * qk_scale  # [keys, queries]
            p_t = tl.exp2(s_t - lse[None, :])
            p_t = tl.where(m_mask[None, :], p_t, 0.0)
            dp_t = tl.dot(v, tl.trans(do), input_precision=PREC)
            if DROPOUT:  # the same keep mask as the forward (Philox on the (head, query, key) index)
                keep_t = _keep(seed, bh, offs_m[None, :], offs_b[:, None], N, p_drop)
                pd_t = tl.where(keep_t, p_t * (1.0 / (1.0 - p_drop)), 0.0)
                dv += tl.dot(pd_t.to(do.dtype), do, input_precision=PREC)
                dp_t = tl.where(keep_t, dp_t * (1.0 / (1.0 - p_drop)), 0.0)
            else:
                dv += tl.dot(p_t.to(do.dtype), do, input_precision=PREC)
            ds_t = p_t * (dp_t - delta[None, :])
            dk += tl.dot(ds_t.to(q.dtype), q, input_precision=PREC)
        dk = dk * sm_scale
        tl.store(dq_base + C + offs_b[:, None] * stride_qn + offs_d[None, :], dk.to(dqkv_ptr.dtype.element_ty),
                 mask=b_mask[:, None])
        tl.store(dq_base + 2 * C + offs_b[:, None] * stride_qn + offs_d[None, :],
                 dv.to(dqkv_ptr.dtype.element_ty), mask=b_mask[:, None])
    else:
        # this program's query block: dQ
        q = load_rows(q_base, offs_b, stride_qn, offs_d, b_mask)
        do = load_rows(do_base, offs_b, stride_on, offs_d, b_mask)
        lse = tl.load(lse_base + offs_b, mask=b_mask, other=0.0)
        delta = tl.load(delta_base + offs_b, mask=b_mask, other=0.0)
        dq = tl.zeros([BLOCK, D], tl.float32)
        for start_n in range(0, N, STEP):
            offs_n = start_n + tl.arange(0, STEP)
            n_mask = offs_n < N
            k = load_rows(k_base, offs_n, stride_qn, offs_d, n_mask)
            v = load_rows(v_base, offs_n, stride_qn, offs_d, n_mask)
            s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
            p = tl.exp2(s - lse[:, None])
            p = tl.where(n_mask[None, :], p, 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=PREC)
            if DROPOUT:
                keep = _keep(seed, bh, offs_b[:, None], offs_n[None, :], N, p_drop)
                dp = tl.where(keep, dp * (1.0 / (1.0 - p_drop)), 0.0)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
        dq = dq * sm_scale
        tl.store(dq_base + offs_b[:, None] * stride_qn + offs_d[None, :], dq.to(dqkv_ptr.dtype.element_ty),
                 mask=b_mask[:, None])


# ---------------------------------------------------------------------------------------------------------------
# launch helpers (no autograd here; see spin_kernels/ops/vit.py)
# ---------------------------------------------------------------------------------------------------------------
def _check(qkv: torch.Tensor, num_heads: int):
    if qkv.dim() != 3 or qkv.shape[2] % (3 * num_heads):
        raise ValueError(f"qkv: expected [B, N, 3*C] with C divisible by num_heads={num_heads}, "
                         f"got {tuple(qkv.shape)}")
    if not qkv.is_contiguous():
        raise ValueError("qkv: expected a contiguous tensor")
    d = qkv.shape[2] // (3 * num_heads)
    if d < 16 or d > 128 or d & (d - 1):
        raise ValueError(f"qkv: head_dim must be a power of two in 16..128, got {d}")
    return d


def _check_dropout(p: float):
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout_p: expected a probability in [0, 1), got {p}")


def attn_dropout_mask(seed: int, batch: int, num_heads: int, n: int, dropout_p: float, device="cpu"):
    """The keep mask (bool [B, H, N, N]) that attn_fwd / attn_bwd use for ``seed`` and ``dropout_p``."""
    _check_dropout(dropout_p)
    mask = torch.empty((batch * num_heads, n, n), device=device, dtype=torch.int8)
    attn_dropout_mask_kernel[(batch * num_heads, triton.cdiv(n, 64))](mask, n, seed, dropout_p, BLOCK=64)
    return mask.view(batch, num_heads, n, n).bool()


def dot_precision(dtype) -> str:
    """``input_precision`` of the attention dots: fp32 operands as "ieee" (FFMA, fp32 rounding: single-pass TF32,
    Triton's default, truncates the operands and errs ~1.6e-3 on the (4, 197, 6, 64) output, over the fp32
    bound); fp16 / bf16 take one tensor-core pass whatever is asked ("tf32" is ignored for them)."""
    return "ieee" if dtype in (torch.float32, "fp32") else "tf32"


def attn_config(d: int, dtype=torch.bfloat16, dropout: bool = False) -> dict:
    """The shipped tile config for head_dim d, the activations' dtype and whether attention dropout is on (the
    interpreter runs the same one, so tests cover it).

    sm_90 register budget (ptxas, 8 warps): fp16 / bf16 fwd 128x64 tiles stay <= 255 regs without spills for
    every D. bwd: BLOCK 128 rows per program (two wgmma M tiles: one per warpgroup) with a STEP of 64
    query/key rows, 32 for D = 128 or with dropout (the keep mask's registers: 48 B of spills at D = 64, STEP
    64), one stage. Cost model at DeiT-S b64 (d = 64): 74.9 us smem-bound with the former BLOCK 64 / 2 stages
    (at BLOCK 64 both warpgroups share one M tile; the second stage doubles the shared-memory traffic), 30.2 us
    now (tensor 29.1, HBM floor 22.8); STEP 32: 33.4 us.
    fp32 (IEEE dots on FFMA: every operand in registers) at those tiles spills 0.5-74 KB from D = 32 on; fwd 64x32
    and bwd 32x32 tiles compile spill-free for every D (74-120 registers).
    """
    if dtype in (torch.float32, "fp32"):
        return dict(fwd=dict(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=2),
                    pre=dict(BLOCK_M=64, num_warps=4),
                    bwd=dict(BLOCK=32, STEP=32, num_warps=8, num_stages=2))
    return dict(fwd=dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2),
                pre=dict(BLOCK_M=64, num_warps=4),
                bwd=dict(BLOCK=128, STEP=32 if d > 64 or dropout else 64, num_warps=8, num_stages=1))


def attn_fwd(qkv: torch.Tensor, num_heads: int, sm_scale: float | None = None, out=None, lse=None,
             dropout_p: float = 0.0, seed: int = 0):
    """o [B, N, C], lse [B, H, N] fp32 (log2 domain) from the packed qkv [B, N, 3C] (written into the
    contiguous buffers ``out`` / ``lse`` when given)."""
    d = _check(qkv, num_heads)
    bsz, n, c3 = qkv.shape
    c = c3 // 3
    scale = d ** -0.5 if sm_scale is None else sm_scale
    o = new_output((bsz, n, c), qkv.device, qkv.dtype) if out is None else out
    if lse is None:
        lse = new_output((bsz, num_heads, n), qkv.device, torch.float32)
    if o.shape != (bsz, n, c) or not o.is_contiguous() or lse.shape != (bsz, num_heads, n) \
            or not lse.is_contiguous() or lse.dtype != torch.float32:
        raise ValueError("out, lse: expected contiguous [B, N, C] and fp32 [B, H, N] buffers")
    cfg = attn_config(d, qkv.dtype)["fwd"]
    grid = (bsz * num_heads, triton.cdiv(n, cfg["BLOCK_M"]))  # B*H first: only axis 0 may exceed 65535
    _check_dropout(dropout_p)
    attn_fwd_kernel[grid](qkv, o, lse, n, num_heads, scale * LOG2E, n * c3, c3, n * c, c, seed, dropout_p,
                          D=d, DROPOUT=dropout_p > 0, PREC=dot_precision(qkv.dtype), **cfg)
    return o, lse


def attn_bwd(do: torch.Tensor, qkv: torch.Tensor, o: torch.Tensor, lse: torch.Tensor, num_heads: int,
             sm_scale: float | None = None, out=None, dropout_p: float = 0.0, seed: int = 0):
    """dqkv [B, N, 3C] (the gradient of the packed qkv input) from dO [B, N, C] and the saved o, lse
    (written into the contiguous buffer ``out`` when given)."""
    d = _check(qkv, num_heads)
    bsz, n, c3 = qkv.shape
    c = c3 // 3
    scale = d ** -0.5 if sm_scale is None else sm_scale
    do = do.contiguous()
    delta = new_output((bsz, num_heads, n), qkv.device, torch.float32)
    if o.shape != (bsz, n, c) or not o.is_contiguous() or lse.shape != (bsz, num_heads, n) \
            or lse.dtype != torch.float32 or not lse.is_contiguous():
        raise ValueError("o, lse: expected the contiguous [B, N, C] output and fp32 [B, H, N] lse of attn_fwd")
    if do.shape != o.shape:
        raise ValueError(f"do: expected shape {tuple(o.shape)}, got {tuple(do.shape)}")
    dqkv = new_output(qkv.shape, qkv.device, qkv.dtype) if out is None else out
    if dqkv.shape != qkv.shape or not dqkv.is_contiguous():
        raise ValueError(f"out: expected a contiguous {tuple(qkv.shape)} buffer")
    cfg = attn_config(d, qkv.dtype, dropout_p > 0)
    pre, bwd = cfg["pre"], cfg["bwd"]
    attn_bwd_pre_kernel[(bsz * num_heads, triton.cdiv(n, pre["BLOCK_M"]))](o, do, delta, n, num_heads, n * c, c,
                                                                            D=d, **pre)
    attn_bwd_kernel[(bsz * num_heads, triton.cdiv(n, bwd["BLOCK"]), 2)](qkv, do, lse, delta, dqkv, n, num_heads,
                                                                        scale * LOG2E, scale, n * c3, c3, n * c,
                                                                        c, seed, dropout_p, D=d,
                                                                        DROPOUT=dropout_p > 0,
                                                                        PREC=dot_precision(qkv.dtype), **bwd)
    return dqkv


def _aot(dt: str):
    sig_f = {"qkv_ptr": f"*{dt}", "o_ptr": f"*{dt}", "lse_ptr": "*fp32", "N": "i32", "H": "i32",
             "qk_scale": "fp32", "stride_qb": "i32", "stride_qn": "i32", "stride_ob": "i32", "stride_on": "i32",
             "seed": "i32", "p_drop": "fp32"}
    sig_p = {"o_ptr": f"*{dt}", "do_ptr": f"*{dt}", "delta_ptr": "*fp32", "N": "i32", "H": "i32",
             "stride_ob": "i32", "stride_on": "i32"}
    sig_b = {"qkv_ptr": f"*{dt}", "do_ptr": f"*{dt}", "lse_ptr": "*fp32", "delta_ptr": "*fp32",
             "dqkv_ptr": f"*{dt}", "N": "i32", "H": "i32", "qk_scale": "fp32", "sm_scale": "fp32",
             "stride_qb": "i32", "stride_qn": "i32", "stride_ob": "i32", "stride_on": "i32",
             "seed": "i32", "p_drop": "fp32"}
    out = []
    for d in (16, 32, 64, 128):
        for kind, fn, sig in (("fwd", attn_fwd_kernel, sig_f), ("pre", attn_bwd_pre_kernel, sig_p),
                              ("bwd", attn_bwd_kernel, sig_b)):
            # launcher specialisation for ViT shapes: 16-byte aligned tensors, row strides (3C, C, N*3C, N*C)
            # divisible by 16; N (197) is not.
            div = [a for a in sig if a.endswith("_ptr") or a.startswith("stride")]
            for drop in ((False, True) if kind != "pre" and d >= 64 else (False,)):
                cfg = dict(attn_config(d, dt, drop)[kind])
                nw, ns = cfg.pop("num_warps"), cfg.pop("num_stages", 1)
                cex = dict(D=d, **cfg) if kind == "pre" else \
                    dict(D=d, DROPOUT=drop, PREC=dot_precision(dt), **cfg)
                out.append(dict(name=f"attn_{kind}_{dt}_d{d}" + ("_dropout" if drop else ""), fn=fn,
                                signature=sig, constexprs=cex, num_warps=nw, num_stages=ns, div16=div,
                                options=dict(num_warps=nw, num_stages=ns), is_gemm=kind != "pre"))
    return out


AOT_KERNELS = _aot("fp16") + _aot("bf16")
