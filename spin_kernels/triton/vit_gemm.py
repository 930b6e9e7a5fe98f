"""One tiled GEMM with the ViT block's prologues and epilogues (LayerNorm in, bias / GELU / residual out).

(The ConvMixer pointwise GEMM in pointwise.py is specialised to BatchNorm/activation prologues on channels-last
rows, so the ViT path has its own; same tiling style.)

gemm_kernel
    computes  C = epi(pro_A(A) @ pro_B(B)) for A [M, K], B [K, N] given by strides (so Wᵀ, W, dZᵀ are views):
              pro_A  LN_A:  A[m, k] -> (A[m, k] - mean[m])·rstd[m]·lnw[k] + lnb[k]   (LayerNorm of the GEMM input,
                            row statistics from layernorm.ln_fwd(write_y=False); the normalised tensor never exists)
              pro_B  LN_B:  B[k, n] -> (B[k, n] - mean[k])·rstd[k]·lnw[g, n] + lnb[g, n], g = k // rows_per_group
                            (the LayerNorm on the other operand: weight gradient dW = dZᵀ·LN(x) over the
                            concatenated rows of a shared run, each layer with its own norm, without
                            materialising LN(x))
                     GELU_B: B[k, n] -> gelu(B[k, n])                                (dW_fc2 = dOutᵀ·gelu(z))
              epi    + bias[n];  ACT=1: gelu;  GELU_GRAD: · gelu'(z[m, n]) (the fc1 backward: dZ = dH·gelu'(z));
                     HAS_RES: res[m, n] + scale[m // rows_per_sample]·(...)  (residual + per-sample drop-path);
                     ROWSUM_A: also Σ_k pro_A(A)[m, k] into rowsum[m] (pid_n == 0 programs; the bias gradient
                     of a weight-gradient GEMM whose A is dZᵀ).
              The operands are cast to B's dtype (fp16/bf16 -> wgmma on sm_90; fp32 in the interpreter) and the
              accumulation is fp32.
    tiling    BLOCK_M × BLOCK_N output tile per program, K loop in BLOCK_K steps, GROUP_M grouped tile order for
              L2 reuse; every dimension masked (N = 197 tokens, odd channel counts).
    bytes     reads A once per column of tiles (cdiv(N, BLOCK_N) times, L2 after the first) and B once per row of
              tiles, reads res / z (M·N) when used, writes C once (M·N); the LN prologue costs 8 bytes per row and
              2 vectors of K instead of a full normalised activation pass (2·M·K bytes saved per LN).
"""
import torch
import triton
import triton.language as tl

from ._common import ACT_CODES, act_fwd, act_grad, new_output, sm_count, tile_coords

GELU = tl.constexpr(ACT_CODES["gelu"])  # the activation code of _common.act_fwd / act_grad


@triton.jit
def gemm_kernel(a_ptr, b_ptr, c_ptr, bias_ptr, res_ptr, scale_ptr, z_ptr, mean_ptr, rstd_ptr, lnw_ptr, lnb_ptr,
                rowsum_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, rows_per_sample, rows_per_group,
                k_per_split,
                LN_A: tl.constexpr, LN_B: tl.constexpr, GELU_B: tl.constexpr, HAS_BIAS: tl.constexpr,
                ACT: tl.constexpr, GELU_GRAD: tl.constexpr, HAS_RES: tl.constexpr, HAS_SCALE: tl.constexpr,
                ROWSUM_A: tl.constexpr, SPLIT_K: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)  # split-K slice (weight gradients: few output tiles, K = rows of a whole run)
    if SPLIT_K:
        k_start = pid_k * k_per_split
        k_end = tl.minimum(K, k_start + k_per_split)
    else:  # static bounds: keeps the K loop software-pipelined (cp.async multi-buffering) on sm_90
        k_start = 0
        k_end = K
    _, pid_n, offs_m, offs_n, m_mask, n_mask = tile_coords(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    a_rows = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am
    b_cols = b_ptr + offs_n.to(tl.int64)[None, :] * stride_bn
    if LN_A:
        mean_a = tl.load(mean_ptr + offs_m, mask=m_mask, other=0.0)
        rstd_a = tl.load(rstd_ptr + offs_m, mask=m_mask, other=0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    rowsum = tl.zeros([BLOCK_M], tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < k_end
        a_mask = m_mask[:, None] & k_mask[None, :]
        b_mask = k_mask[:, None] & n_mask[None, :]
        a = tl.load(a_rows + offs_k.to(tl.int64)[None, :] * stride_ak, mask=a_mask, other=0.0)
        b = tl.load(b_cols + offs_k.to(tl.int64)[:, None] * stride_bk, mask=b_mask, other=0.0)
        if LN_A:
            lnw = tl.load(lnw_ptr + offs_k, mask=k_mask, other=0.0).to(tl.float32)
            lnb = tl.load(lnb_ptr + offs_k, mask=k_mask, other=0.0).to(tl.float32)
            af = (a.to(tl.float32) - mean_a[:, None]) * rstd_a[:, None] * lnw[None, :] + lnb[None, :]
            a = tl.where(a_mask, af, 0.0).to(b_ptr.dtype.element_ty)
        else:
            a = a.to(b_ptr.dtype.element_ty)
        if LN_B:
            mean_b = tl.load(mean_ptr + offs_k, mask=k_mask, other=0.0)
            rstd_b = tl.load(rstd_ptr + offs_k, mask=k_mask, other=0.0)
            # per-group LayerNorm parameters [G, N]: group = k // rows_per_group (layer of a shared run)
            g_off = (offs_k // rows_per_group).to(tl.int64)[:, None] * N + offs_n[None, :]
            lnw_b = tl.load(lnw_ptr + g_off, mask=b_mask, other=0.0).to(tl.float32)
            lnb_b = tl.load(lnb_ptr + g_off, mask=b_mask, other=0.0).to(tl.float32)
            bf = (b.to(tl.float32) - mean_b[:, None]) * rstd_b[:, None] * lnw_b + lnb_b
            b = tl.where(b_mask, bf, 0.0).to(b_ptr.dtype.element_ty)
        if GELU_B:
            b = act_fwd(b.to(tl.float32), GELU).to(b_ptr.dtype.element_ty)
        if ROWSUM_A:
            rowsum += tl.sum(a.to(tl.float32), 1)
        acc = tl.dot(a, b, acc, input_precision="ieee" if b.dtype == tl.float32 else "tf32")

    offs_c = offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    c_base = c_ptr + pid_k.to(tl.int64) * M * N  # split-K: fp32 partial [SPLIT, M, N], summed by the host
    c_mask = m_mask[:, None] & n_mask[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    if ACT == GELU:
        acc = act_fwd(acc, GELU)
    if GELU_GRAD:
        z = tl.load(z_ptr + offs_c, mask=c_mask, other=0.0).to(tl.float32)
        acc = acc * act_grad(z, GELU)
    if HAS_RES:
        if HAS_SCALE:
            s = tl.load(scale_ptr + offs_m // rows_per_sample, mask=m_mask, other=0.0)
            acc = acc * s[:, None]
        acc += tl.load(res_ptr + offs_c, mask=c_mask, other=0.0).to(tl.float32)
    tl.store(c_base + offs_c, acc.to(c_ptr.dtype.element_ty), mask=c_mask)
    if ROWSUM_A:
        tl.store(rowsum_ptr + pid_k * M + offs_m, rowsum, mask=m_mask & (pid_n == 0))


# ---------------------------------------------------------------------------------------------------------------
# launch helper
# ---------------------------------------------------------------------------------------------------------------
def gemm_config(dtype: torch.dtype, on_gpu: bool, heavy_epilogue: bool = False) -> dict:
    """sm_90 (fp16/bf16 wgmma, 8 warps = 2 warpgroups): 128x128x32 tiles, 4 stages; 128x64x64, 3 stages when the
    epilogue reads a second [M, N] tile (residual, gelu'(z)). Chosen so that ptxas reports no spills both for the
    launcher-specialised kernel (~80-170 registers) and for a compile without alignment hints. Smaller tiles
    for the CPU interpreter."""
    if on_gpu:
        if heavy_epilogue:
            return dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3)
        return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, GROUP_M=8, num_warps=8, num_stages=4)
    return dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, GROUP_M=4, num_warps=4, num_stages=1)


def gemm(a: torch.Tensor, b: torch.Tensor, out_dtype=None, *, bias=None, act: str = "none", ln=None, ln_b=None,
         gelu_b: bool = False, gelu_grad_z=None, res=None, scale=None, rows_per_sample: int = 1,
         rowsum: bool = False, rows_per_group: int | None = None, config: dict | None = None, out=None,
         split_k: int | None = None):
    """C = epi(pro_A(a) @ pro_B(b)) with a [M, K], b [K, N] (any strides; e.g. ``w.t()`` for a Linear weight).

    ln = (mean, rstd, lnw, lnb): LayerNorm prologue on a's rows; ln_b: the same on b's rows (K index), with
    lnw, lnb [G, N] per group of rows_per_group rows ([N] when G = 1).
    gelu_b: gelu on b; bias [N]; act 'gelu'; gelu_grad_z [M, N]: multiply by gelu'(z); res [M, N] (+ scale [S]
    per rows_per_sample rows): residual epilogue. rowsum: also return Σ_k pro_A(a) [M] fp32.
    Returns C [M, N] (out_dtype, default b's dtype; written into ``out`` when given: a contiguous [M, N]
    buffer), and the row sums when asked.
    split_k: K split in that many slices (fp32 partials summed in a fixed order: deterministic); only without
    epilogue. Default: 1, or for a weight-gradient-shaped GEMM (few output tiles, long K) enough slices to give
    the GPU ~2 programs per SM.
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"a, b: expected [M, K] and [K, N], got {tuple(a.shape)} and {tuple(b.shape)}")
    if act not in ("none", "gelu"):
        raise ValueError(f"act: expected 'none' or 'gelu', got {act!r}")
    m, k = a.shape
    n = b.shape[1]
    dev = a.device
    cfg = dict(config or gemm_config(b.dtype, a.is_cuda, res is not None or gelu_grad_z is not None))
    tiles = triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"])
    epilogue = bias is not None or act != "none" or gelu_grad_z is not None or res is not None
    if split_k is None:
        split_k = 1
        if a.is_cuda and not epilogue:
            sms = sm_count(a)
            split_k = max(1, min(2 * sms // tiles, k // (8 * cfg["BLOCK_K"])))
    if split_k < 1 or (split_k > 1 and epilogue):
        raise ValueError(f"split_k: expected 1, or > 1 only without epilogue, got {split_k}")
    k_per = triton.cdiv(triton.cdiv(k, split_k), cfg["BLOCK_K"]) * cfg["BLOCK_K"]
    split_k = triton.cdiv(k, k_per) if k > 0 else 1
    if split_k > 1:
        if out is not None and (out.shape != (m, n) or not out.is_contiguous()):
            raise ValueError(f"out: expected a contiguous [{m}, {n}] tensor, got {tuple(out.shape)}")
        final = out
        out = new_output((split_k, m, n), dev, torch.float32)
    elif out is None:
        out = new_output((m, n), dev, out_dtype or b.dtype)
    elif out.shape != (m, n) or not out.is_contiguous():
        raise ValueError(f"out: expected a contiguous [{m}, {n}] tensor, got {tuple(out.shape)}")
    rs = new_output((split_k, m), dev, torch.float32) if rowsum else out
    for name, t in (("res", res), ("gelu_grad_z", gelu_grad_z)):
        if t is not None and (t.shape != (m, n) or not t.is_contiguous()):
            raise ValueError(f"{name}: expected a contiguous [{m}, {n}] tensor, got {tuple(t.shape)}")
    stats = ln if ln is not None else ln_b
    if ln is not None and ln_b is not None:
        raise ValueError("ln, ln_b: one LayerNorm prologue per GEMM")
    mean, rstd, lnw, lnb = stats if stats is not None else (out, out, out, out)
    grid = (tiles, split_k)
    # pointers a constexpr switch leaves unused get ``out`` (never read through them)
    gemm_kernel[grid](a_ptr=a, b_ptr=b, c_ptr=out, bias_ptr=bias if bias is not None else out,
                      res_ptr=res if res is not None else out, scale_ptr=scale if scale is not None else out,
                      z_ptr=gelu_grad_z if gelu_grad_z is not None else out, mean_ptr=mean, rstd_ptr=rstd,
                      lnw_ptr=lnw, lnb_ptr=lnb, rowsum_ptr=rs, M=m, N=n, K=k, stride_am=a.stride(0),
                      stride_ak=a.stride(1), stride_bk=b.stride(0), stride_bn=b.stride(1),
                      rows_per_sample=rows_per_sample, rows_per_group=rows_per_group or k, k_per_split=k_per,
                      LN_A=ln is not None, LN_B=ln_b is not None, GELU_B=gelu_b, HAS_BIAS=bias is not None,
                      ACT=ACT_CODES["gelu"] if act == "gelu" else 0, GELU_GRAD=gelu_grad_z is not None,
                      HAS_RES=res is not None, HAS_SCALE=scale is not None, ROWSUM_A=rowsum, SPLIT_K=split_k > 1, **cfg)
    if split_k > 1:
        total = out.sum(0)
        out = total.to(out_dtype or b.dtype) if final is None else final.copy_(total)
    if rowsum:
        rs = rs.sum(0)
    return (out, rs) if rowsum else out


def _aot(dt: str):
    sig = {"a_ptr": f"*{dt}", "b_ptr": f"*{dt}", "c_ptr": f"*{dt}", "bias_ptr": f"*{dt}", "res_ptr": f"*{dt}",
           "scale_ptr": "*fp32", "z_ptr": f"*{dt}", "mean_ptr": "*fp32", "rstd_ptr": "*fp32", "lnw_ptr": f"*{dt}",
           "lnb_ptr": f"*{dt}", "rowsum_ptr": "*fp32", "M": "i32", "N": "i32", "K": "i32", "stride_am": "i32",
           "stride_ak": "i32", "stride_bk": "i32", "stride_bn": "i32", "rows_per_sample": "i32",
           "rows_per_group": "i32", "k_per_split": "i32"}
    off = dict(LN_A=False, LN_B=False, GELU_B=False, HAS_BIAS=False, ACT=0, GELU_GRAD=False, HAS_RES=False,
               HAS_SCALE=False, ROWSUM_A=False, SPLIT_K=False)
    variants = {  # the configs the ViT block uses
        "ln_qkv": dict(LN_A=True, HAS_BIAS=True),                        # qkv = LN1(x) W + b
        "ln_fc1_gelu": dict(LN_A=True, HAS_BIAS=True, ACT=1),            # h = gelu(LN2(y) W1 + b1)
        "res_proj": dict(HAS_BIAS=True, HAS_RES=True, HAS_SCALE=True),   # y = x + s·(o Wp + bp)   (also fc2)
        "dgrad": dict(),                                                 # dA = dZ W
        "dgrad_splitk": dict(SPLIT_K=True),                              # dA = dZ W, small M (split-K)
        "dgrad_gelu": dict(GELU_GRAD=True),                              # dZ1 = (dOut W2) · gelu'(z1)
        "wgrad_ln": dict(LN_B=True, ROWSUM_A=True, SPLIT_K=True),        # dW = dZᵀ LN(x), db = Σ dZ
        "wgrad_gelu": dict(GELU_B=True, ROWSUM_A=True, SPLIT_K=True),    # dW2 = dOutᵀ gelu(z1)
        "wgrad": dict(ROWSUM_A=True, SPLIT_K=True),                      # dWp = dYᵀ o
    }
    # the runtime specialisation Triton's launcher applies for ViT shapes (C, 3C, 4C multiples of 16; 16-byte
    # aligned tensors): unit strides become constants, the others are divisible by 16 (M = B*197 rows is not).
    layouts = {"fwd": (("stride_ak", "stride_bk"), ("stride_am", "stride_bn", "N", "K")),   # A [M,K], B = Wᵀ
               "dgrad": (("stride_ak", "stride_bn"), ("stride_am", "stride_bk", "N", "K")),  # B = W
               "wgrad": (("stride_am", "stride_bn"), ("stride_ak", "stride_bk", "N", "k_per_split"))}  # dZᵀ, x
    ptrs = [a for a in sig if a.endswith("_ptr")]
    out = []
    for name, v in variants.items():
        unit, div = layouts[name.split("_")[0] if name.split("_")[0] in layouts else "fwd"]
        if v.get("SPLIT_K") and "k_per_split" not in div:
            div = div + ("k_per_split",)  # a multiple of BLOCK_K
        cfg = dict(gemm_config(None, True, bool(v.get("HAS_RES") or v.get("GELU_GRAD"))))
        nw, ns = cfg.pop("num_warps"), cfg.pop("num_stages")
        c = dict(off, **v, **cfg, **{u: 1 for u in unit})
        s = {a: t for a, t in sig.items() if a not in unit}
        if name.startswith("wgrad") or name.endswith("splitk"):
            s["c_ptr"] = "*fp32"  # weight gradients are produced in fp32
        out.append(dict(name=f"gemm_{name}_{dt}", fn=gemm_kernel, signature=s, constexprs=c, num_warps=nw,
                        num_stages=ns, options=dict(num_warps=nw, num_stages=ns), div16=ptrs + list(div),
                        is_gemm=True))
    return out


AOT_KERNELS = _aot("bf16") + _aot("fp16")
