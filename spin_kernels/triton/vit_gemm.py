"""One tiled GEMM with the ViT block's epilogues (bias / GELU / residual / drop-path out, auxiliary outputs).

(The ConvMixer pointwise GEMM in pointwise.py is specialised to BatchNorm/activation prologues on channels-last
rows, so the ViT path has its own; same tiling style.)

gemm_kernel
    computes  C = epi(A @ B) for A [M, K], B [K, N] given by strides (so Wᵀ, W, dZᵀ are views), no prologue:
              the LayerNorm outputs are materialised once per element by layernorm.ln_fwd (a bf16 pass) instead of
              being recomputed in the A prologue of every N tile (18x for qkv, 24x for fc1 at DeiT-S: the cost
              model put those GEMMs 2.5-3x over their floor, ALU-bound; the weight gradients with an LN / GELU
              B-prologue 3-9x). Operands go straight from shared memory to the tensor cores.
              epi    + bias[n];  ACT=1: gelu, with STORE_PRE also the pre-activation into aux[m, n] (fc1 when
                     its output is saved for the backward); GELU_GRAD: · gelu'(z[m, n]) (the fc1 backward:
                     dZ = dH·gelu'(z)), with STORE_GELU_Z also gelu(z) into aux[m, n] (the B operand of the fc2
                     weight gradient, materialised where z is read anyway; z may alias C: each element is read
                     before it is written, by the program that writes it);
                     HAS_RES: res[m, n] + scale[m // rows_per_sample]·(...)  (residual + per-sample drop-path);
                     ROWSUM_A: also Σ_k A[m, k] into rowsum[m] (the bias gradient of a weight-gradient GEMM
                     whose A is dZᵀ), as a second, 16-wide dot with a one-hot column (stored by pid_n == 0).
              The operands are cast to B's dtype (fp16/bf16 -> wgmma on sm_90; fp32 in IEEE precision) and the
              accumulation is fp32.
    tiling    BLOCK_M × BLOCK_N output tile per program, K loop in BLOCK_K steps (software-pipelined: num_stages
              buffers in flight, async wgmma), GROUP_M grouped tile order for L2 reuse; every dimension masked
              (N = 197 tokens, odd channel counts); SPLIT_K slices for weight gradients (few tiles, long K).
    bytes     reads A once per column of tiles (cdiv(N, BLOCK_N) times, L2 after the first) and B once per row of
              tiles, reads res / z (M·N) when used, writes C once (M·N) and aux once when asked.
    per K step  loads, an async wgmma (ROWSUM_A: + one 16-wide wgmma), address increments: no per-element ALU
              work.
"""
import torch
import triton
import triton.language as tl

from ._common import ACT_CODES, act_fwd, act_grad, new_output, sm_count, tile_coords

GELU = tl.constexpr(ACT_CODES["gelu"])  # the activation code of _common.act_fwd / act_grad


@triton.jit
def gemm_kernel(a_ptr, b_ptr, c_ptr, bias_ptr, res_ptr, scale_ptr, z_ptr, aux_ptr, rowsum_ptr, part_ptr,
                rowsum_part_ptr, count_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, rows_per_sample,
                k_per_split,
                HAS_BIAS: tl.constexpr, ACT: tl.constexpr, STORE_PRE: tl.constexpr, GELU_GRAD: tl.constexpr,
                STORE_GELU_Z: tl.constexpr, HAS_RES: tl.constexpr, HAS_SCALE: tl.constexpr,
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
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    # ROWSUM_A on the tensor cores: Σ_k A[m, k] = (A @ E)[m, 0] with E [BLOCK_K, 16] one in column 0, zeros
    # elsewhere (16: the narrowest dot). A stays in shared memory for the pipelined wgmma; summed on the ALUs it
    # was loaded into registers and written back (extra LDS/STS and barriers each K step).
    e0 = ((tl.arange(0, BLOCK_K)[:, None] >= 0) & (tl.arange(0, 16)[None, :] == 0)).to(b_ptr.dtype.element_ty)
    rowsum_acc = tl.zeros([BLOCK_M, 16], tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < k_end
        a_mask = m_mask[:, None] & k_mask[None, :]
        b_mask = k_mask[:, None] & n_mask[None, :]
        a = tl.load(a_rows + offs_k.to(tl.int64)[None, :] * stride_ak, mask=a_mask, other=0.0)
        b = tl.load(b_cols + offs_k.to(tl.int64)[:, None] * stride_bk, mask=b_mask, other=0.0)
        a = a.to(b_ptr.dtype.element_ty)
        b = b.to(b_ptr.dtype.element_ty)
        if ROWSUM_A:
            rowsum_acc = tl.dot(a, e0, rowsum_acc, input_precision="ieee" if b.dtype == tl.float32 else "tf32")
        acc = tl.dot(a, b, acc, input_precision="ieee" if b.dtype == tl.float32 else "tf32")

    offs_c = offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    c_mask = m_mask[:, None] & n_mask[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    if ACT == GELU:
        if STORE_PRE:
            tl.store(aux_ptr + offs_c, acc.to(aux_ptr.dtype.element_ty), mask=c_mask)
        acc = act_fwd(acc, GELU)
    if GELU_GRAD:
        z = tl.load(z_ptr + offs_c, mask=c_mask, other=0.0).to(tl.float32)
        if STORE_GELU_Z:
            tl.store(aux_ptr + offs_c, act_fwd(z, GELU).to(aux_ptr.dtype.element_ty), mask=c_mask)
        acc = acc * act_grad(z, GELU)
    if HAS_RES:
        if HAS_SCALE:
            sc = tl.load(scale_ptr + offs_m // rows_per_sample, mask=m_mask, other=0.0)
            acc = acc * sc[:, None]
        acc += tl.load(res_ptr + offs_c, mask=c_mask, other=0.0).to(tl.float32)
    rowsum = tl.sum(rowsum_acc, 1)
    rs_mask = m_mask & (pid_n == 0)
    if SPLIT_K:
        # fp32 partial of this K slice; the last of the tile's programs to finish sums the partials in slice
        # order (deterministic whoever finishes last) into C: the barrier orders every thread's partial stores
        # before the acq_rel ticket, the winner reads through L2 (.cg) and re-arms the counter
        n_split = tl.num_programs(1)
        tl.store(part_ptr + pid_k.to(tl.int64) * M * N + offs_c, acc, mask=c_mask)
        if ROWSUM_A:
            tl.store(rowsum_part_ptr + pid_k * M + offs_m, rowsum, mask=rs_mask)
        tl.debug_barrier()
        ticket = tl.atomic_add(count_ptr + pid, 1, sem="acq_rel", scope="gpu")
        if ticket == n_split - 1:
            total = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
            rs_total = tl.zeros([BLOCK_M], tl.float32)
            slice_elems = (tl.zeros([], tl.int64) + M) * N
            tile_part = part_ptr + offs_c
            rs_part = rowsum_part_ptr + offs_m
            for _ in range(0, n_split):
                total += tl.load(tile_part, mask=c_mask, other=0.0, cache_modifier=".cg")
                tile_part += slice_elems
                if ROWSUM_A:
                    rs_total += tl.load(rs_part, mask=rs_mask, other=0.0, cache_modifier=".cg")
                    rs_part += M
            tl.store(c_ptr + offs_c, total.to(c_ptr.dtype.element_ty), mask=c_mask)
            if ROWSUM_A:
                tl.store(rowsum_ptr + offs_m, rs_total, mask=rs_mask)
            tl.store(count_ptr + pid, 0)
    else:
        tl.store(c_ptr + offs_c, acc.to(c_ptr.dtype.element_ty), mask=c_mask)
        if ROWSUM_A:
            tl.store(rowsum_ptr + offs_m, rowsum, mask=rs_mask)


# ---------------------------------------------------------------------------------------------------------------
# launch helper
# ---------------------------------------------------------------------------------------------------------------
GEMM_EPILOGUES = ("plain", "residual", "heavy")


def gemm_config(dtype: torch.dtype, on_gpu: bool, epilogue: str = "plain", aligned: bool = False) -> dict:
    """Tile config for sm_90 (fp16/bf16 wgmma, 8 warps = 2 warpgroups) by epilogue kind: ``plain`` (bias / GELU /
    none), ``residual`` (reads res [M, N]), ``heavy`` (gelu'(z) and / or a second output [M, N]), and whether
    Triton's launcher gives the operands alignment hints (``aligned``: :func:`launcher_aligned`, every ViT shape).

    aligned plain / residual: 128x128x64, 3 stages (104-178 registers, spill-free hinted; the cost model puts the
    DeiT GEMMs 4-20% under 128x128x32 / 4 stages and the residual GEMMs at 1.3-1.5x their floor instead of
    1.7-1.8x with 128x64: half the A-operand reads per FLOP). Unhinted that tile spills (112-2672 B), so
    unaligned operands take 128x128x32 / 4 stages (plain) or 128x64x64 / 3 (residual; heavy always), compiled
    unhinted in the AOT suite. Smaller tiles for the CPU interpreter."""
    if epilogue not in GEMM_EPILOGUES:
        raise ValueError(f"epilogue: expected one of {GEMM_EPILOGUES}, got {epilogue!r}")
    if not on_gpu:
        return dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, GROUP_M=4, num_warps=4, num_stages=1)
    if aligned and epilogue != "heavy":
        return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3)
    if epilogue == "plain":
        return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, GROUP_M=8, num_warps=8, num_stages=4)
    return dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3)


def launcher_aligned(*tensors: torch.Tensor, ints=()) -> bool:
    """Whether Triton's launcher marks all of these 16-divisible: data 16-byte aligned, non-unit strides and the
    given integers multiples of 16 (what selects a specialisation compiled with alignment hints)."""
    # the storage offset decides alignment (allocations start 256-byte aligned); it also works on the fake
    # tensors the cost model traces launches with
    return (all((t.storage_offset() * t.element_size()) % 16 == 0 and all(st % 16 == 0 for st in t.stride()
                                                                          if st != 1) for t in tensors)
            and all(i % 16 == 0 for i in ints))


_COUNTERS: dict = {}


def split_counters(tiles: int, device) -> torch.Tensor:
    """A zeroed int32 ticket per output tile for split-K launches, cached per device and stream (each launch's
    last program per tile resets its ticket, so the buffer is zero again when the launch ends; launches on one
    stream run one after another)."""
    device = torch.device(device)
    if device.type != "cuda":  # the interpreter: a fresh buffer
        return torch.zeros(max(tiles, 1), device=device, dtype=torch.int32)
    if not torch.cuda.is_available():  # launches traced on fake CUDA tensors (perf.launches): no memory to zero
        return torch.empty(max(tiles, 1), device=device, dtype=torch.int32)
    key = (device, torch.cuda.current_stream(device).cuda_stream)
    buf = _COUNTERS.get(key)
    if buf is None or buf.numel() < tiles:
        buf = _COUNTERS[key] = torch.zeros(max(tiles, 1024), device=device, dtype=torch.int32)
    return buf


def choose_split_k(m: int, n: int, k: int, tiles: int, sms: int, max_split: int) -> int:
    """K slices for an [m, k] x [k, n] GEMM of ``tiles`` output tiles on ``sms`` SMs: enough to give ~2 programs
    per SM when the tiles are few. Past one wave, only a weight-gradient shape (k >= 4·max(m, n): the fp32
    partials, 8·split bytes per output element, stay small next to the operands) is split, by the smallest
    split (up to 4) whose programs fill their waves to >= 80% (144 tiles on 132 SMs: 2 waves at 55% unsplit,
    4 at 82% split 3). Never more than ``max_split`` (>= 8 K steps per slice)."""
    if max_split <= 1 or sms <= 0:
        return 1
    if 2 * sms // tiles >= 2:
        return min(2 * sms // tiles, max_split)
    if k < 4 * max(m, n):
        return 1
    for split in range(1, min(4, max_split) + 1):
        progs = tiles * split
        if progs / (triton.cdiv(progs, sms) * sms) >= 0.8:
            return split
    return 1


def gemm(a: torch.Tensor, b: torch.Tensor, out_dtype=None, *, bias=None, act: str = "none", pre_out=None,
         gelu_grad_z=None, gelu_out=None, res=None, scale=None, rows_per_sample: int = 1, rowsum: bool = False,
         config: dict | None = None, out=None, split_k: int | None = None):
    """C = epi(a @ b) with a [M, K], b [K, N] (any strides; e.g. ``w.t()`` for a Linear weight).

    bias [N]; act 'gelu' (pre_out [M, N]: also write the pre-activation there); gelu_grad_z [M, N]: multiply by
    gelu'(z) (gelu_out [M, N]: also write gelu(z) there; z may be ``out`` itself, updated in place);
    res [M, N] (+ scale [S] per rows_per_sample rows): residual epilogue. rowsum: also return Σ_k a [M] fp32.
    Returns C [M, N] (out_dtype, default b's dtype; written into ``out`` when given: a contiguous [M, N]
    buffer), and the row sums when asked.
    split_k: K split in that many slices (fp32 partials summed in slice order by the tile's last program, in the
    same launch: deterministic); only without epilogue. Default: 1, or for a weight-gradient-shaped GEMM (few
    output tiles, long K) :func:`choose_split_k`.
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"a, b: expected [M, K] and [K, N], got {tuple(a.shape)} and {tuple(b.shape)}")
    if act not in ("none", "gelu"):
        raise ValueError(f"act: expected 'none' or 'gelu', got {act!r}")
    if pre_out is not None and act != "gelu":
        raise ValueError("pre_out: only with act='gelu' (the pre-activation of the GELU epilogue)")
    if gelu_out is not None and gelu_grad_z is None:
        raise ValueError("gelu_out: only with gelu_grad_z (it receives gelu(gelu_grad_z))")
    m, k = a.shape
    n = b.shape[1]
    dev = a.device
    aux = pre_out if pre_out is not None else gelu_out
    epi = "heavy" if gelu_grad_z is not None or aux is not None else "residual" if res is not None else "plain"
    aligned = a.is_cuda and launcher_aligned(a, b, *([res] if res is not None else []), ints=(n, k))
    cfg = dict(config or gemm_config(b.dtype, a.is_cuda, epi, aligned))
    tiles = triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"])
    epilogue = bias is not None or act != "none" or gelu_grad_z is not None or res is not None
    if split_k is None:
        split_k = 1
        if a.is_cuda and not epilogue:
            split_k = choose_split_k(m, n, k, tiles, sm_count(a), k // (8 * cfg["BLOCK_K"]))
    if split_k < 1 or (split_k > 1 and epilogue):
        raise ValueError(f"split_k: expected 1, or > 1 only without epilogue, got {split_k}")
    k_per = triton.cdiv(triton.cdiv(k, split_k), cfg["BLOCK_K"]) * cfg["BLOCK_K"]
    split_k = triton.cdiv(k, k_per) if k > 0 else 1
    if out is None:
        out = new_output((m, n), dev, out_dtype or b.dtype)
    elif out.shape != (m, n) or not out.is_contiguous():
        raise ValueError(f"out: expected a contiguous [{m}, {n}] tensor, got {tuple(out.shape)}")
    rs = new_output((m,), dev, torch.float32) if rowsum else out
    for name, t in (("res", res), ("gelu_grad_z", gelu_grad_z), ("pre_out", pre_out), ("gelu_out", gelu_out)):
        if t is not None and (t.shape != (m, n) or not t.is_contiguous()):
            raise ValueError(f"{name}: expected a contiguous [{m}, {n}] tensor, got {tuple(t.shape)}")
    part, rs_part, count = out, rs, out  # split-K workspaces (fp32 partials, per-tile tickets)
    if split_k > 1:
        part = new_output((split_k, m, n), dev, torch.float32)
        rs_part = new_output((split_k, m), dev, torch.float32) if rowsum else part
        count = split_counters(tiles, dev)
    grid = (tiles, split_k)
    # pointers a constexpr switch leaves unused get ``out`` (never read through them)
    gemm_kernel[grid](a_ptr=a, b_ptr=b, c_ptr=out, bias_ptr=bias if bias is not None else out,
                      res_ptr=res if res is not None else out, scale_ptr=scale if scale is not None else out,
                      z_ptr=gelu_grad_z if gelu_grad_z is not None else out, aux_ptr=aux if aux is not None else out,
                      rowsum_ptr=rs, part_ptr=part, rowsum_part_ptr=rs_part, count_ptr=count, M=m, N=n, K=k,
                      stride_am=a.stride(0), stride_ak=a.stride(1), stride_bk=b.stride(0), stride_bn=b.stride(1),
                      rows_per_sample=rows_per_sample, k_per_split=k_per, HAS_BIAS=bias is not None,
                      ACT=ACT_CODES["gelu"] if act == "gelu" else 0, STORE_PRE=pre_out is not None,
                      GELU_GRAD=gelu_grad_z is not None, STORE_GELU_Z=gelu_out is not None, HAS_RES=res is not None,
                      HAS_SCALE=scale is not None, ROWSUM_A=rowsum, SPLIT_K=split_k > 1, **cfg)
    return (out, rs) if rowsum else out


def _aot(dt: str):
    sig = {"a_ptr": f"*{dt}", "b_ptr": f"*{dt}", "c_ptr": f"*{dt}", "bias_ptr": f"*{dt}", "res_ptr": f"*{dt}",
           "scale_ptr": "*fp32", "z_ptr": f"*{dt}", "aux_ptr": f"*{dt}", "rowsum_ptr": "*fp32",
           "part_ptr": "*fp32", "rowsum_part_ptr": "*fp32", "count_ptr": "*i32", "M": "i32",
           "N": "i32", "K": "i32", "stride_am": "i32", "stride_ak": "i32", "stride_bk": "i32", "stride_bn": "i32",
           "rows_per_sample": "i32", "k_per_split": "i32"}
    off = dict(HAS_BIAS=False, ACT=0, STORE_PRE=False, GELU_GRAD=False, STORE_GELU_Z=False, HAS_RES=False,
               HAS_SCALE=False, ROWSUM_A=False, SPLIT_K=False)
    variants = {  # the configs the ViT block uses
        "qkv": dict(HAS_BIAS=True),                                      # qkv = LN1(x) W + b  (also fc1 recompute)
        "fc1_gelu": dict(HAS_BIAS=True, ACT=1),                          # h = gelu(LN2(y) W1 + b1)
        "fc1_gelu_save": dict(HAS_BIAS=True, ACT=1, STORE_PRE=True),     # ... and z1 kept for the backward
        "res_proj": dict(HAS_BIAS=True, HAS_RES=True, HAS_SCALE=True),   # y = x + s·(o Wp + bp)   (also fc2)
        "dgrad": dict(),                                                 # dA = dZ W
        "dgrad_splitk": dict(SPLIT_K=True),                              # dA = dZ W, small M (split-K)
        "dgrad_gelu": dict(GELU_GRAD=True, STORE_GELU_Z=True),           # dZ1 = (dOut W2)·gelu'(z1), h = gelu(z1)
        "wgrad": dict(ROWSUM_A=True, SPLIT_K=True),                      # dW = dZᵀ·[LN(x) | h | o], db = Σ dZ
    }
    # the runtime specialisation Triton's launcher applies for ViT shapes (C, 3C, 4C multiples of 16; 16-byte
    # aligned tensors): unit strides become constants, the others are divisible by 16 (M = B*197 rows is not,
    # except in a weight gradient, where M is a channel count: without that hint the dZᵀ tile, contiguous along
    # M, is loaded 2 bytes at a time).
    layouts = {"fwd": (("stride_ak", "stride_bk"), ("stride_am", "stride_bn", "N", "K")),   # A [M,K], B = Wᵀ
               "dgrad": (("stride_ak", "stride_bn"), ("stride_am", "stride_bk", "N", "K")),  # B = W
               "wgrad": (("stride_am", "stride_bn"), ("stride_ak", "stride_bk", "M", "N", "k_per_split"))}  # dZᵀ, x
    ptrs = [a for a in sig if a.endswith("_ptr")]
    out = []
    for name, v in variants.items():
        unit, div = layouts[name.split("_")[0] if name.split("_")[0] in layouts else "fwd"]
        if v.get("SPLIT_K") and "k_per_split" not in div:
            div = div + ("k_per_split",)  # a multiple of BLOCK_K
        epi = "heavy" if v.get("GELU_GRAD") or v.get("STORE_PRE") else "residual" if v.get("HAS_RES") else "plain"
        cfg = dict(gemm_config(None, True, epi, aligned=True))
        nw, ns = cfg.pop("num_warps"), cfg.pop("num_stages")
        c = dict(off, **v, **cfg, **{u: 1 for u in unit})
        s = {a: t for a, t in sig.items() if a not in unit}
        if name.startswith("wgrad"):
            s["c_ptr"] = "*fp32"  # weight gradients are produced in fp32
        out.append(dict(name=f"gemm_{name}_{dt}", fn=gemm_kernel, signature=s, constexprs=c, num_warps=nw,
                        num_stages=ns, options=dict(num_warps=nw, num_stages=ns), div16=ptrs + list(div),
                        is_gemm=True))
    # operands without alignment hints (odd widths, offset views) take the smaller tiles: they must compile
    # spill-free without any div16 hint
    for name, epi in (("res_proj", "residual"), ("dgrad", "plain"), ("qkv", "plain")):
        cfg = dict(gemm_config(None, True, epi, aligned=False))
        nw, ns = cfg.pop("num_warps"), cfg.pop("num_stages")
        out.append(dict(name=f"gemm_{name}_unaligned_{dt}", fn=gemm_kernel, signature=dict(sig),
                        constexprs=dict(off, **variants[name], **cfg), num_warps=nw, num_stages=ns,
                        options=dict(num_warps=nw, num_stages=ns), div16=[], is_gemm=True))
    return out


AOT_KERNELS = _aot("bf16") + _aot("fp16")
