"""End-to-end pieces: training steps and batch-1 latency of whole models, per backend.

On a GPU the models run at their real size in bf16; the CPU smoke runs of the suites' plumbing pass small
``model_kwargs`` / ``img_size`` and run fp32 (the Triton interpreter, the emulated CUDA kernels). With
``check=True`` a fused backend's outputs are compared with the float64 reference path
(:func:`spin_kernels.testing.compare_models`) before anything is timed: a fast wrong answer is no result.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from . import harness
from .harness import Suite, time_limit

# ------------------------------------------------------------------------------------------ end-to-end pieces

CHECK_BATCH = 2          # outputs are checked at this batch (the float64 reference of a whole model is costly)


def _device_dtype():
    from bench import common
    return common.DEVICE, common.DTYPE


def _build(name: str, rate: int, backend: str, model_kwargs: dict | None, num_classes: int = 1000):
    from spin_kernels.models import create_model
    torch.manual_seed(0)
    return create_model(name, share_rate=rate, backend=backend, num_classes=num_classes, **(model_kwargs or {}))


def _falls_back(suite: Suite, model, backend: str, piece: str, img_size: int) -> bool:
    """True (and recorded under ``skipped``) when a fused backend would silently run the reference path: timing
    it under the backend's name would be a lie."""
    if backend == "reference":
        return False
    from bench import common
    dtype = next(model.parameters()).dtype
    reason = common.runs_fused(model, torch.randn(2, 3, img_size, img_size, device=common.DEVICE, dtype=dtype))
    if reason:
        suite.results["skipped"].append({"piece": piece, "reason": reason[:500]})
        return True
    return False


def check_outputs(name: str, rate: int, backend: str, train: bool, model_kwargs: dict | None = None,
                  img_size: int = 224) -> dict:
    """Errors of ``backend`` against the float64 reference path (same weights) at :data:`CHECK_BATCH`, in the
    suite's dtype; raises AssertionError when one is over its bound. Returns ``{name: error}``."""
    from spin_kernels.testing import compare_models, failures, randomise_batchnorm
    dev, dt = _device_dtype()
    ref = randomise_batchnorm(_build(name, rate, "reference", model_kwargs, 10)).to(dev)
    cand = _build(name, rate, backend, model_kwargs, 10).to(dev)
    cand.load_state_dict(ref.state_dict())
    x = torch.randn(CHECK_BATCH, 3, img_size, img_size, device=dev)
    g = torch.randn(CHECK_BATCH, 10, device=dev)
    errors = compare_models(ref, cand, x, dt, train, g)
    bad = failures(errors)
    if bad:
        raise AssertionError(f"backend {backend} disagrees with the float64 reference ({'train' if train else 'eval'}"
                             f"): {dict(list(bad.items())[:4])}; not timed")
    return {k: e for k, (e, _) in errors.items()}


def train_step(suite: Suite, name: str, rate: int, backend: str, batch: int, steps: int, compile_model,
               model_kwargs: dict | None = None, img_size: int = 224, check: bool = False):
    """Images/s and peak memory of full training steps (bf16 autocast on a GPU, SGD) at ``batch``.
    ``compile_model``: False, True (torch.compile default) or a torch.compile mode name."""
    from bench import common
    dev = common.DEVICE
    errors = check_outputs(name, rate, backend, True, model_kwargs, img_size) if check and backend != "reference" \
        else None
    model = _build(name, rate, backend, model_kwargs).to(dev).train()
    if _falls_back(suite, model, backend, f"train/{name}/r{rate}/{backend}", img_size):
        return None
    is_cm = "convmixer" in name
    if is_cm:
        model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, img_size, img_size, device=dev)
    if is_cm:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=dev)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    mode = compile_model if isinstance(compile_model, str) else None
    fwd = (torch.compile(model, mode=mode) if mode else torch.compile(model)) if compile_model else model
    on_gpu = dev.type == "cuda"

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
            loss = F.cross_entropy(fwd(x), y)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    step()                                   # the first step compiles (torch.compile, the Triton JIT)
    first_s = time.perf_counter() - t0
    for _ in range(2):
        step()
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    ms = harness.time_steps_ms(step, steps)
    rec = {"model": name, "share_rate": rate, "backend": backend, "compile": compile_model, "batch": batch,
           "ms_per_step": ms, "img_per_s": batch / (ms / 1e3), "first_step_s": first_s,
           "peak_mem_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if on_gpu else None,
           "params": sum(p.numel() for p in model.parameters())}
    if errors is not None:
        rec["max_rel_err"] = max(errors.values())
    suite.results["train"].append(rec)
    return rec


def _graph_ms(fn) -> float:
    """Median ms of ``fn`` captured once in a CUDA graph and replayed (launch overhead removed)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return harness.do_bench_ms(graph.replay)


@torch.no_grad()
def latency(suite: Suite, name: str, rate: int, backend: str, model_kwargs: dict | None = None,
            img_size: int = 224, check: bool = False):
    """Batch-1 eval latency: eager and (on a GPU) CUDA-graph replay, launch overhead removed; bf16 weights on a
    GPU."""
    from bench import common
    dev, dt = _device_dtype()
    errors = None
    if check and backend != "reference":
        with torch.enable_grad():
            errors = check_outputs(name, rate, backend, False, model_kwargs, img_size)
    model = _build(name, rate, backend, model_kwargs).to(dev).eval().to(dt)
    if _falls_back(suite, model, backend, f"latency/{name}/r{rate}/{backend}", img_size):
        return None
    x = torch.randn(1, 3, img_size, img_size, device=dev, dtype=dt)
    eager_ms = harness.do_bench_ms(lambda: model(x))
    graph_ms = _graph_ms(lambda: model(x)) if common.ON_GPU else None
    rec = {"model": name, "share_rate": rate, "backend": backend, "compile": False, "eager_ms": eager_ms,
           "cuda_graph_ms": graph_ms, "launch_overhead_ms": eager_ms - graph_ms if graph_ms else None}
    if errors is not None:
        rec["max_rel_err"] = max(errors.values())
    suite.results["latency"].append(rec)
    return rec


# The one model / rate whose batch-1 latency issue 4 targets (and the only one compiled with max-autotune).
ISSUE4_LATENCY = ("spin_convmixer_768_32", 2)


@torch.no_grad()
def compile_latency(suite: Suite, name: str, rate: int, timeout_s: float | None = None,
                    mode: str = "max-autotune", model_kwargs: dict | None = None, img_size: int = 224):
    """Batch-1 eval latency of the reference model under ``torch.compile(mode=mode)`` (``"default"``: no mode;
    bf16 on a GPU, channels-last for ConvMixer; "reduce-overhead" and "max-autotune" replay CUDA graphs
    themselves). Compiling may take minutes: past ``timeout_s`` seconds the piece raises :class:`PieceTimeout`.
    Recorded in ``latency`` with ``compile=mode``, ``compiled_ms`` and ``compile_s``."""
    dev, dt = _device_dtype()
    model = _build(name, rate, "reference", model_kwargs).to(dev).eval().to(dt)
    x = torch.randn(1, 3, img_size, img_size, device=dev, dtype=dt)
    if "convmixer" in name:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(model) if mode == "default" else torch.compile(model, mode=mode)

    def run():
        if dev.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()   # outputs of earlier replays are not kept
        return compiled(x)

    try:
        with time_limit(timeout_s):
            t0 = time.perf_counter()
            run()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            compile_s = time.perf_counter() - t0
            for _ in range(3):                        # CUDA-graph trees warm up, then record
                run()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            ms = harness.do_bench_ms(run)
    finally:
        torch._dynamo.reset()                         # drop the compiled graphs (memory) even after a timeout
    rec = {"model": name, "share_rate": rate, "backend": "reference", "compile": mode, "eager_ms": None,
           "cuda_graph_ms": None, "compiled_ms": ms, "compile_s": compile_s}
    suite.results["latency"].append(rec)
    return rec
