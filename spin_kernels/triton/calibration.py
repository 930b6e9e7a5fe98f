"""Calibration kernels for the machine-code cost model: two kernels whose true limit is known.

copy_kernel
    computes  y = x, 16 bytes per thread per access (BLOCK elements per program, contiguous).
    tiling    one program per BLOCK elements; no loop.
    bytes     reads x once, writes y once: the kernel is memory-bound by construction, so the model must put it
              at ~1.0× its floor (bytes / bandwidth), with every instruction-side bound below that.

matmul_kernel
    computes  C = A·B (bf16 in, fp32 accumulation, bf16 out), the textbook tiled GEMM (Triton tutorial 03 style:
              grouped tile order, a K loop of tl.dot on BLOCK_M × BLOCK_N × BLOCK_K tiles, software-pipelined).
    tiling    128 × 256 output tile, K steps of 64, 8 warps (two warpgroups), 3 stages.
    bytes     A and B read once per tile row / column (L2 reuse), C written once; at 4096³ it is tensor-bound,
              so the model must put it tensor-bound within 1.0-1.3× of its floor (FLOPs / peak).

Neither is used by the models; ``spin kernels-report --cost`` reports them beside the shipped kernels, and the GPU
suite times them, so the model is checked against kernels whose answer is known.
"""
import torch
import triton
import triton.language as tl

from ._common import grouped_pid

COPY_CONFIG = dict(BLOCK=8192, num_warps=8)
MATMUL_CONFIG = dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3)


@triton.jit
def copy_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=mask), mask=mask)


@triton.jit
def matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K, stride_am, stride_bk, stride_cm,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid_m, pid_n = grouped_pid(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :]
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        a = tl.load(a_ptrs, mask=(offs_m[:, None] < M) & (k0 + offs_k[None, :] < K), other=0.0)
        b = tl.load(b_ptrs, mask=(k0 + offs_k[:, None] < K) & (offs_n[None, :] < N), other=0.0)
        acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K * stride_bk
    c = acc.to(c_ptr.dtype.element_ty)
    tl.store(c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :], c,
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def copy(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """y = x through :func:`copy_kernel` (contiguous tensors)."""
    if not x.is_contiguous():
        raise ValueError("x: expected a contiguous tensor")
    y = torch.empty_like(x) if out is None else out
    cfg = dict(COPY_CONFIG)
    block = cfg.pop("BLOCK")
    copy_kernel[(triton.cdiv(x.numel(), block),)](x, y, x.numel(), BLOCK=block, **cfg)
    return y


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """C = a @ b through :func:`matmul_kernel` (a [M, K], b [K, N], both row-major)."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"a, b: expected [M, K] and [K, N], got {tuple(a.shape)} and {tuple(b.shape)}")
    if not (a.is_contiguous() and b.is_contiguous()):
        raise ValueError("a, b: expected contiguous row-major tensors")
    m, k = a.shape
    n = b.shape[1]
    c = torch.empty((m, n), device=a.device, dtype=a.dtype)
    cfg = dict(MATMUL_CONFIG)
    grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
    matmul_kernel[grid](a, b, c, m, n, k, a.stride(0), b.stride(0), c.stride(0), **cfg)
    return c
