"""Two tiny Triton kernels for the kernel-report tests: a tl.dot GEMM (must use wgmma on sm_90) and a copy."""
import triton
import triton.language as tl


@triton.jit
def tiny_gemm(a_ptr, b_ptr, c_ptr, K, stride_am, stride_bk, stride_cm,
              BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, K, BK):
        a = tl.load(a_ptr + rm[:, None] * stride_am + (k + rk)[None, :])
        b = tl.load(b_ptr + (k + rk)[:, None] * stride_bk + rn[None, :])
        acc = tl.dot(a, b, acc)
    tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :], acc.to(tl.bfloat16))


@triton.jit
def tiny_copy(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)


SIG = {"a_ptr": "*bf16", "b_ptr": "*bf16", "c_ptr": "*bf16", "K": "i32", "stride_am": "i32", "stride_bk": "i32",
       "stride_cm": "i32"}
KERNELS = [
    {"name": "tiny_gemm", "fn": tiny_gemm, "signature": SIG, "constexprs": {"BM": 64, "BN": 64, "BK": 32},
     "is_gemm": True},
    {"name": "tiny_copy", "fn": tiny_copy, "signature": {"x_ptr": "*fp32", "y_ptr": "*fp32", "n": "i32"},
     "constexprs": {"BLOCK": 1024}, "is_gemm": False},
    # a 256×256 fp32 accumulator in 4 warps needs more than 255 registers per thread: ptxas must spill
    {"name": "big_gemm", "fn": tiny_gemm, "signature": SIG, "constexprs": {"BM": 256, "BN": 256, "BK": 64},
     "is_gemm": True},
]


@triton.jit
def tiny_sum(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """Σ x over a runtime loop (the SASS fixture of tests/perf/test_sass.py)."""
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, n, BLOCK):
        acc += tl.load(x_ptr + start + offs, mask=start + offs < n, other=0.0)
    tl.store(out_ptr, tl.sum(acc, axis=0))


TINY_SUM = {"name": "tiny_sum", "fn": tiny_sum, "signature": {"x_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32"},
            "constexprs": {"BLOCK": 128}, "options": {"num_warps": 1}, "div16": ["x_ptr", "out_ptr"]}
