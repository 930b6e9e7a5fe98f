"""LayerNorm kernels for the ViT blocks: row statistics pre-pass / forward, and backward with partial dW, dB.

Rows are the M = B·N tokens of a contiguous [M, C] activation; all statistics and accumulations in fp32.
In the fused block the forward writes the normalised rows once (bf16/fp16, one extra write pass) for the following
GEMM and its weight gradient: applied in the GEMM's A prologue instead it was recomputed once per N tile (18-24x
per element at DeiT-S) and kept those GEMMs ALU-bound at 2.5-3x their floor (machine-code cost model). The
statistics-only form (WRITE_Y off: 8 bytes per row) remains for callers that need just mean / rstd.
"""
import torch
import triton
import triton.language as tl

from ._common import new_output, sm_count

# elements of one row tile held in registers: forward one live fp32 tile, backward five
LN_FWD_TILE_ELEMS, LN_BWD_TILE_ELEMS = 4096, 2048
# ln_bwd: programs per SM (each loops over its rows and keeps fp32 partial dweight / dbias)
LN_BWD_PROGRAMS_PER_SM = 4


# ---------------------------------------------------------------------------------------------------------------
# ln_fwd_kernel
#   computes  mean = Σx / C, rstd = 1 / sqrt(Σ(x - mean)² / C + eps) per row (two passes over the row held in
#             registers: no sum/sumsq cancellation); WRITE_Y: also y = (x - mean)·rstd·w + b.
#   tiling    one program per BLOCK_R rows, the whole row (BLOCK_C = next pow2 ≥ C) in registers.
#   bytes     reads x once (M·C), writes 8·M bytes of statistics (+ M·C for y).
# ---------------------------------------------------------------------------------------------------------------
@triton.jit
def ln_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr, M, C, eps,
                  WRITE_Y: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    rmask = rows < M
    cmask = cols < C
    mask = rmask[:, None] & cmask[None, :]
    offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, 1) / C
    xc = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, 1) / C
    rstd = 1.0 / tl.sqrt(var + eps)
    tl.store(mean_ptr + rows, mean, mask=rmask)
    tl.store(rstd_ptr + rows, rstd, mask=rmask)
    if WRITE_Y:
        w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        y = xc * rstd[:, None] * w[None, :] + b[None, :]
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------------------------
# ln_bwd_kernel
#   computes  dx = rstd·(g·w - mean(g·w) - x̂·mean(g·w·x̂)) [+ dres]  per row, with x̂ = (x - mean)·rstd, and
#             this program's fp32 partial sums  dw_p = Σ g·x̂,  db_p = Σ g  over its rows (stored [P, C]; the host
#             reduces the P partials once, in a fixed order: deterministic).
#   tiling    P programs, each loops over ROWS_PER_PROG rows in BLOCK_R-row tiles, the whole row in registers.
#   bytes     reads g, x (+ dres) once, writes dx once: 3 (4) passes of M·C, plus P·C·8 bytes of partials.
# ---------------------------------------------------------------------------------------------------------------
@triton.jit
def ln_bwd_kernel(g_ptr, x_ptr, w_ptr, mean_ptr, rstd_ptr, dres_ptr, dx_ptr, dw_part_ptr, db_part_ptr,
                  M, C, ROWS_PER_PROG,
                  HAS_DRES: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    dw_acc = tl.zeros([BLOCK_C], tl.float32)
    db_acc = tl.zeros([BLOCK_C], tl.float32)
    row0 = pid * ROWS_PER_PROG
    for r in range(0, ROWS_PER_PROG, BLOCK_R):
        rows = row0 + r + tl.arange(0, BLOCK_R)
        rmask = (rows < M) & (r + tl.arange(0, BLOCK_R) < ROWS_PER_PROG)
        mask = rmask[:, None] & cmask[None, :]
        offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + rows, mask=rmask, other=0.0)
        rstd = tl.load(rstd_ptr + rows, mask=rmask, other=0.0)
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        gw = g * w[None, :]
        c1 = tl.sum(gw, 1) / C
        c2 = tl.sum(gw * xhat, 1) / C
        dx = (gw - c1[:, None] - xhat * c2[:, None]) * rstd[:, None]
        if HAS_DRES:
            dx += tl.load(dres_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        dw_acc += tl.sum(g * xhat, 0)
        db_acc += tl.sum(g, 0)
    tl.store(dw_part_ptr + pid * C + cols, dw_acc, mask=cmask)
    tl.store(db_part_ptr + pid * C + cols, db_acc, mask=cmask)


# ---------------------------------------------------------------------------------------------------------------
# launch helpers (no autograd here)
# ---------------------------------------------------------------------------------------------------------------
def _rows(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    if not x.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor")
    return x.reshape(-1, x.shape[-1])


def ln_config(c: int, bwd: bool = False) -> dict:
    """Row tile for C channels: whole rows, ~4K elements per tile forward, ~2K backward (5 live fp32 tiles)."""
    block_c = triton.next_power_of_2(c)
    block_r = max(1, min(16, (LN_BWD_TILE_ELEMS if bwd else LN_FWD_TILE_ELEMS) // block_c))
    return dict(BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4 if block_c * block_r < 4096 else 8)


def ln_fwd(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
           eps: float = 1e-6, write_y: bool = True, out: torch.Tensor | None = None,
           mean_out: torch.Tensor | None = None, rstd_out: torch.Tensor | None = None):
    """(y or None, mean [M] fp32, rstd [M] fp32) for x [..., C]; write_y=False is the statistics pre-pass.
    y, mean and rstd are written into ``out`` (contiguous, x's shape and dtype), ``mean_out`` / ``rstd_out``
    (contiguous fp32 [M]) when given."""
    x2 = _rows(x)
    m, c = x2.shape
    for name, buf, numel, dtype in (("out", out, x.numel(), x.dtype), ("mean_out", mean_out, m, torch.float32),
                                    ("rstd_out", rstd_out, m, torch.float32)):
        if buf is not None and (buf.numel() != numel or not buf.is_contiguous() or buf.dtype != dtype):
            raise ValueError(f"{name}: expected a contiguous {dtype} buffer of {numel} elements")
    if out is not None and not write_y:
        raise ValueError("out: only with write_y=True")
    mean = new_output((m,), x.device, torch.float32) if mean_out is None else mean_out.view(m)
    rstd = new_output((m,), x.device, torch.float32) if rstd_out is None else rstd_out.view(m)
    y = None
    if write_y:
        y = new_output(x.shape, x.device, x.dtype) if out is None else out.view(x.shape)
    cfg = ln_config(c)
    ln_fwd_kernel[(triton.cdiv(m, cfg["BLOCK_R"]),)](
        x2, weight if write_y else x2, bias if write_y else x2, y if write_y else x2, mean, rstd, m, c, eps,
        WRITE_Y=write_y, **cfg)
    return y, mean, rstd


def ln_bwd(g: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
           dres: torch.Tensor | None = None, num_programs: int | None = None, out: torch.Tensor | None = None):
    """(dx [+ dres], dweight, dbias); dweight/dbias reduced once from fp32 per-program partials.
    dx is written into ``out`` (contiguous, x's shape and dtype) when given."""
    g2, x2 = _rows(g, "g"), _rows(x)
    m, c = x2.shape
    cfg = ln_config(c, bwd=True)
    if num_programs is None:
        num_programs = LN_BWD_PROGRAMS_PER_SM * sm_count(x) if x.is_cuda else LN_BWD_PROGRAMS_PER_SM
    rows_per = max(cfg["BLOCK_R"], triton.cdiv(m, num_programs))
    rows_per = triton.cdiv(rows_per, cfg["BLOCK_R"]) * cfg["BLOCK_R"]
    p = max(1, triton.cdiv(m, rows_per))
    if out is not None and (out.numel() != x.numel() or not out.is_contiguous() or out.dtype != x.dtype):
        raise ValueError(f"out: expected a contiguous {x.dtype} buffer of {x.numel()} elements")
    dx = new_output(x.shape, x.device, x.dtype) if out is None else out.view(x.shape)
    dw_part = new_output((p, c), x.device, torch.float32)
    db_part = new_output((p, c), x.device, torch.float32)
    ln_bwd_kernel[(p,)](g2, x2, weight, mean, rstd, _rows(dres, "dres") if dres is not None else x2, dx,
                        dw_part, db_part, m, c, rows_per, HAS_DRES=dres is not None, **cfg)
    return dx, dw_part.sum(0).to(weight.dtype), db_part.sum(0).to(weight.dtype)


def _aot(dt: str, c: int):
    cfg = dict(ln_config(c))
    nw = cfg.pop("num_warps")
    cfg_b = dict(ln_config(c, bwd=True))
    nw_b = cfg_b.pop("num_warps")
    sig_f = {"x_ptr": f"*{dt}", "w_ptr": f"*{dt}", "b_ptr": f"*{dt}", "y_ptr": f"*{dt}", "mean_ptr": "*fp32",
             "rstd_ptr": "*fp32", "M": "i32", "C": "i32", "eps": "fp32"}
    sig_b = {"g_ptr": f"*{dt}", "x_ptr": f"*{dt}", "w_ptr": f"*{dt}", "mean_ptr": "*fp32", "rstd_ptr": "*fp32",
             "dres_ptr": f"*{dt}", "dx_ptr": f"*{dt}", "dw_part_ptr": "*fp32", "db_part_ptr": "*fp32",
             "M": "i32", "C": "i32", "ROWS_PER_PROG": "i32"}
    # launcher specialisation: 16-byte aligned tensors, C divisible by 16
    div_f = [a for a in sig_f if a.endswith("_ptr")] + ["C"]
    div_b = [a for a in sig_b if a.endswith("_ptr")] + ["C"]
    common = dict(num_warps=nw, num_stages=1, options=dict(num_warps=nw, num_stages=1), is_gemm=False)
    return [dict(name=f"ln_stats_{dt}_c{c}", fn=ln_fwd_kernel, signature=sig_f, div16=div_f,
                 constexprs=dict(WRITE_Y=False, **cfg), **common),
            dict(name=f"ln_fwd_{dt}_c{c}", fn=ln_fwd_kernel, signature=sig_f, div16=div_f,
                 constexprs=dict(WRITE_Y=True, **cfg), **common),
            dict(name=f"ln_bwd_{dt}_c{c}", fn=ln_bwd_kernel, signature=sig_b, div16=div_b,
                 constexprs=dict(HAS_DRES=True, **cfg_b), is_gemm=False, num_warps=nw_b, num_stages=1,
                 options=dict(num_warps=nw_b, num_stages=1))]


AOT_KERNELS = _aot("bf16", 384) + _aot("fp16", 768)
