"""End-to-end pieces: training steps and batch-1 latency of whole models, per backend."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from . import harness
from .harness import Suite, time_limit

# ------------------------------------------------------------------------------------------ end-to-end pieces

def _falls_back(suite: Suite, model, backend: str, piece: str) -> bool:
    """True (and recorded under ``skipped``) when a fused backend would silently run the reference path: timing
    it under the backend's name would be a lie."""
    if backend == "reference":
        return False
    from bench import common
    dtype = next(model.parameters()).dtype
    reason = common.runs_fused(model, torch.randn(2, 3, 224, 224, device="cuda", dtype=dtype))
    if reason:
        suite.results["skipped"].append({"piece": piece, "reason": reason[:500]})
        return True
    return False


def train_step(suite: Suite, name: str, rate: int, backend: str, batch: int, steps: int, compile_model: bool):
    """Images/s and peak memory of full training steps (bf16 autocast, SGD) at ``batch``."""
    from spin_kernels.models import create_model
    model = create_model(name, share_rate=rate, backend=backend).cuda().train()
    if _falls_back(suite, model, backend, f"train/{name}/r{rate}/{backend}"):
        return None
    is_cm = "convmixer" in name
    if is_cm:
        model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    if is_cm:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device="cuda")
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    fwd = torch.compile(model) if compile_model else model

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(fwd(x), y)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        step()
    end.record()
    torch.cuda.synchronize()
    ms = start.elapsed_time(end) / steps
    rec = {"model": name, "share_rate": rate, "backend": backend, "compile": compile_model, "batch": batch,
           "ms_per_step": ms, "img_per_s": batch / (ms / 1e3),
           "peak_mem_gib": torch.cuda.max_memory_allocated() / 2 ** 30,
           "params": sum(p.numel() for p in model.parameters())}
    suite.results["train"].append(rec)
    return rec


@torch.no_grad()
def latency(suite: Suite, name: str, rate: int, backend: str):
    """Batch-1 eval latency: eager and CUDA-graph replay (launch overhead removed), bf16 weights."""
    from spin_kernels.models import create_model
    model = create_model(name, share_rate=rate, backend=backend).cuda().eval().to(torch.bfloat16)
    if _falls_back(suite, model, backend, f"latency/{name}/r{rate}/{backend}"):
        return None
    x = torch.randn(1, 3, 224, 224, device="cuda", dtype=torch.bfloat16)
    eager_ms = harness.do_bench_ms(lambda: model(x))
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            model(x)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model(x)
    graph_ms = harness.do_bench_ms(graph.replay)
    rec = {"model": name, "share_rate": rate, "backend": backend, "compile": False, "eager_ms": eager_ms,
           "cuda_graph_ms": graph_ms, "launch_overhead_ms": eager_ms - graph_ms}
    suite.results["latency"].append(rec)
    return rec


# The one model / rate whose batch-1 latency issue 4 targets (and the only one compiled with max-autotune).
ISSUE4_LATENCY = ("spin_convmixer_768_32", 2)


@torch.no_grad()
def compile_latency(suite: Suite, name: str, rate: int, timeout_s: float | None = None,
                    mode: str = "max-autotune"):
    """Batch-1 eval latency of the reference model under ``torch.compile(mode=mode)`` (bf16, channels-last for
    ConvMixer; max-autotune replays CUDA graphs itself). Compiling may take minutes: past ``timeout_s`` seconds
    the piece raises :class:`PieceTimeout`. Recorded in ``latency`` with ``compile=mode`` and ``compiled_ms``."""
    from spin_kernels.models import create_model
    model = create_model(name, share_rate=rate, backend="reference").cuda().eval().to(torch.bfloat16)
    x = torch.randn(1, 3, 224, 224, device="cuda", dtype=torch.bfloat16)
    if "convmixer" in name:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(model, mode=mode)

    def run():
        torch.compiler.cudagraph_mark_step_begin()   # outputs of earlier replays are not kept
        return compiled(x)

    try:
        with time_limit(timeout_s):
            t0 = time.perf_counter()
            run()
            torch.cuda.synchronize()
            compile_s = time.perf_counter() - t0
            for _ in range(3):                        # CUDA-graph trees warm up, then record
                run()
            torch.cuda.synchronize()
            ms = harness.do_bench_ms(run)
    finally:
        torch._dynamo.reset()                         # drop the compiled graphs (memory) even after a timeout
    rec = {"model": name, "share_rate": rate, "backend": "reference", "compile": mode, "eager_ms": None,
           "cuda_graph_ms": None, "compiled_ms": ms, "compile_s": compile_s}
    suite.results["latency"].append(rec)
    return rec


