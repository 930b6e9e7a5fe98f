"""The card's ceilings, measured: device-to-device copy bandwidth and bf16 / tf32 matmul throughput."""
from __future__ import annotations

import torch

from . import harness

# --------------------------------------------------------------------------------------------------- ceilings

def _copy_ms(nbytes: int) -> float:
    """Median ms of a device-to-device copy of ``nbytes`` (buffers freed on return, before the GEMMs)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return harness.do_bench_ms(lambda: dst.copy_(src))


def measure_ceilings(quick: bool = False) -> dict:
    """Measured copy bandwidth and GEMM throughput, in the form ``perf.Ceilings.from_dict`` reads."""
    n = (1 << 28) if not quick else (1 << 26)          # 256 MiB (64 MiB quick) of bytes per buffer
    t = _copy_ms(n) / 1e3
    bw = 2 * n / t                                    # a copy reads and writes every byte
    s = 8192 if not quick else 4096
    a = torch.randn(s, s, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(s, s, device="cuda", dtype=torch.bfloat16)
    t_bf16 = harness.do_bench_ms(lambda: torch.matmul(a, b)) / 1e3
    a32, b32 = a.float(), b.float()
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        t_tf32 = harness.do_bench_ms(lambda: torch.matmul(a32, b32)) / 1e3
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    flop = 2.0 * s ** 3
    return {"name": torch.cuda.get_device_name(), "hbm_bytes_per_s": bw,
            "tensor_flops": {"bf16": flop / t_bf16, "fp16": flop / t_bf16, "tf32": flop / t_tf32}}


