"""The GPU benchmark suite: ``python -m bench.gpu_suite [--out DIR] [--max-autotune] [--quick] [--only GROUPS]``.

On one CUDA GPU it

1. measures the card's ceilings: device-to-device copy bandwidth and bf16 / tf32 ``torch.matmul`` throughput;
2. times every op of the ConvMixer layer and the ViT block at the real shapes of spin_convmixer_768_32,
   convmixer_1536_20 (k=9), DeiT-S and DeiT-B with ``triton.testing.do_bench`` (median, L2 flushed) for eager,
   torch.compile (default; ``--max-autotune`` adds that mode) and the fused kernels where present;
3. times an end-to-end training step (img/s, peak memory) of spin_convmixer_768_32 and DeiT-S at r=1 and r=2,
   batch 64, bf16 autocast, for each backend that runs;
4. times batch-1 inference latency, eager and with CUDA-graph replay, and, for spin_convmixer_768_32 at r=2 only,
   the reference model under ``torch.compile(mode="max-autotune")`` (which replays CUDA graphs itself);
5. times the depthwise conv forward and forward+backward (bf16, channels-last, B=64, 32x32 as in
   convmixer_768_32 / convmixer_1536_20 at 224 px, patch 7; C=768 at k=7 and k=9, C=1536 at k=9): the CUDA kernels
   of ``spin_kernels.cuda`` (forward + backward_input + backward_weight, outputs checked against an fp32
   ``F.conv2d``) against PyTorch's ``F.conv2d(groups=C)`` + autograd, with cuDNN's default algorithm choice
   (``eager``) and with ``cudnn.benchmark`` (``eager-cudnn-benchmark``);

and writes ``bench/results/<gpu>-<date>/results.json``, ``report.md`` (time, GB/s, TFLOP/s, % of the floor from the
measured ceilings, speed-up vs eager and vs compile) and PNG plots (bars per op, roofline). Every piece runs in
isolation: a failure is recorded (with its error) under ``failed`` and the rest still runs. Without CUDA it exits
with a message and status 2.

Targets (issue 4) are computed from those measurements into ``results["targets"]`` (a list of ``{name, measured,
target, met, ...}``) and the "Targets (issue 4)" table of report.md; a target whose measurement is missing, failed
or skipped has ``measured`` / ``met`` None and shows "not measured" with the reason, never a number:

- batch-1 latency of spin_convmixer_768_32, r=2: backend ``cuda`` (the weights-resident persistent kernel of eval
  models), CUDA-graph replay, is >= 2.5x faster than the reference under torch.compile max-autotune and >= 15x
  faster than the eager reference (``reference`` backend, eager);
- depthwise conv k=7 and k=9 forward+backward at B=64, C=768, 32x32: the CUDA kernels are >= 2x faster than the
  faster of ``eager`` / ``eager-cudnn-benchmark`` (the C=1536 shape is reported in the ops table only).

``--only`` takes a comma list of the groups ``ceilings,ops,train,latency,targets`` (default: all). ``latency`` runs
the batch-1 latency pieces, with the max-autotune one last; ``targets`` runs the depthwise-conv comparison and, when
``latency`` is not selected too, just the three latency pieces the targets need (reference, cuda, max-autotune of
spin_convmixer_768_32 at r=2), so ``--only targets`` measures every issue-4 target on its own. The max-autotune
latency compiles for minutes: it runs after everything else, the report is written just before it (so a kill
during the compile keeps the rest), it is stopped after ``--max-autotune-latency-timeout`` seconds (default 600;
recorded as a failed piece), and ``--no-max-autotune-latency`` skips it (recorded as skipped).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable

import torch
import torch.nn.functional as F

from spin_kernels import perf

RESULTS_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


# ---------------------------------------------------------------------------------------------------- plumbing

class Suite:
    """Collects results; :meth:`piece` runs one unit of work and records a failure instead of raising."""

    def __init__(self, results: dict, verbose: bool = True):
        self.results = results
        self.verbose = verbose

    def piece(self, name: str, fn: Callable, *args, **kwargs):
        """Run ``fn``; on any exception record ``{piece, error, traceback}`` under ``failed`` and return None."""
        if self.verbose:
            print(f"[gpu_suite] {name} ...", flush=True)
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - one failing piece must not stop the suite
            self.results["failed"].append({"piece": name, "error": f"{type(e).__name__}: {e}"[:2000],
                                           "traceback": traceback.format_exc()[-4000:]})
            print(f"[gpu_suite] {name} FAILED: {type(e).__name__}: {str(e)[:300]}", flush=True)
            torch.cuda.empty_cache()
            return None


def do_bench_ms(fn: Callable, warmup: int = 25, rep: int = 100) -> float:
    """Median milliseconds of ``fn`` (triton.testing.do_bench flushes L2 between runs)."""
    import triton.testing
    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def gpu_slug() -> str:
    """File-system friendly card name, e.g. ``nvidia-h100-80gb-hbm3``."""
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")


class PieceTimeout(Exception):
    """Raised inside a piece that ran past its :func:`time_limit`."""


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise :class:`PieceTimeout` in the body once ``seconds`` of wall time have passed (SIGALRM; the main thread
    of a POSIX process only, elsewhere and for ``None`` / ``<= 0`` no limit). Code inside C / CUDA calls is only
    interrupted when it returns to Python."""
    usable = (seconds is not None and seconds > 0 and hasattr(signal, "SIGALRM")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def on_alarm(signum, frame):
        raise PieceTimeout(f"stopped after the {seconds:g} s time limit")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------------------------------- ceilings

def _copy_ms(nbytes: int) -> float:
    """Median ms of a device-to-device copy of ``nbytes`` (buffers freed on return, before the GEMMs)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return do_bench_ms(lambda: dst.copy_(src))


def measure_ceilings(quick: bool = False) -> dict:
    """Measured copy bandwidth and GEMM throughput, in the form ``perf.Ceilings.from_dict`` reads."""
    n = (1 << 28) if not quick else (1 << 26)          # 256 MiB (64 MiB quick) of bytes per buffer
    t = _copy_ms(n) / 1e3
    bw = 2 * n / t                                    # a copy reads and writes every byte
    s = 8192 if not quick else 4096
    a = torch.randn(s, s, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(s, s, device="cuda", dtype=torch.bfloat16)
    t_bf16 = do_bench_ms(lambda: torch.matmul(a, b)) / 1e3
    a32, b32 = a.float(), b.float()
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        t_tf32 = do_bench_ms(lambda: torch.matmul(a32, b32)) / 1e3
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    flop = 2.0 * s ** 3
    return {"name": torch.cuda.get_device_name(), "hbm_bytes_per_s": bw,
            "tensor_flops": {"bf16": flop / t_bf16, "fp16": flop / t_bf16, "tf32": flop / t_tf32}}


# -------------------------------------------------------------------------------------------------------- ops

def _impls(max_autotune: bool) -> list[str]:
    return ["eager", "compile"] + (["compile-max-autotune"] if max_autotune else [])


def _make_impl(fn: Callable, impl: str) -> Callable:
    if impl == "eager":
        return fn
    if impl == "compile":
        return torch.compile(fn)
    return torch.compile(fn, mode="max-autotune")


def _record(suite: Suite, family: str, shape_id: str, op: str, impl: str, ms: float, row: perf.OpCost,
            ceilings: perf.Ceilings, dtype: str, which: str = "min", flops: float | None = None) -> dict:
    flops = row.flops if flops is None else flops
    nbytes = row.bytes(which)
    floor = max(flops / ceilings.peak_flops(row.unit, dtype), nbytes / ceilings.hbm_bytes_per_s)
    rec = {"family": family, "shape": shape_id, "op": op, "impl": impl, "ms": ms, "flops": flops, "bytes": nbytes,
           "gb_per_s": nbytes / (ms / 1e3) / 1e9, "tflop_per_s": flops / (ms / 1e3) / 1e12,
           "intensity": flops / nbytes, "floor_ms": floor * 1e3, "pct_of_floor": perf.pct_of_floor(ms / 1e3, floor),
           "unit": row.unit}
    suite.results["ops"].append(rec)
    return rec


def _time_impls(suite, family, shape_id, op, fn_factory, row, ceilings, dtype, impls, which="min", flops=None):
    """Time one op under every implementation; each is its own piece (a compile failure is reported alone)."""
    for impl in impls:
        def run(impl=impl):
            fn = _make_impl(fn_factory(), impl)
            ms = do_bench_ms(fn)
            return _record(suite, family, shape_id, op, impl, ms, row, ceilings, dtype, which, flops)
        suite.piece(f"{family}/{shape_id}/{op}/{impl}", run)


def convmixer_ops(suite: Suite, shape, ceilings: perf.Ceilings, impls: list[str]) -> None:
    """Depthwise conv, pointwise GEMM, BN (train), layer fwd and fwd+bwd; fused K1 / K2 when the kernels exist."""
    from bench import common

    # bf16 on the GPU; common picks fp32 on the CPU (smoke tests of this code)
    dt, dn = common.DTYPE, common.DTYPE_NAME
    rows = {r.name: r for r in perf.convmixer_layer_costs(shape.batch, shape.dim, shape.hw, shape.kernel_size, dn,
                                                          act=shape.act, spin_residual=shape.spin_residual,
                                                          train=True)}
    C, k = shape.dim, shape.kernel_size
    x = torch.randn(shape.batch, C, shape.hw, shape.hw, device=common.DEVICE, dtype=dt).contiguous(
        memory_format=torch.channels_last)
    wd = torch.randn(C, 1, k, k, device=common.DEVICE, dtype=dt)
    bd = torch.randn(C, device=common.DEVICE, dtype=dt)
    wp = torch.randn(C, C, 1, 1, device=common.DEVICE, dtype=dt) / C ** 0.5
    rm, rv = torch.zeros(C, device=common.DEVICE), torch.ones(C, device=common.DEVICE)
    gamma, beta = torch.ones(C, device=common.DEVICE, dtype=dt), torch.zeros(C, device=common.DEVICE, dtype=dt)
    sid = shape.id
    _time_impls(suite, "convmixer", sid, "dwconv", lambda: (lambda: F.conv2d(x, wd, bd, padding="same", groups=C)),
                rows["dwconv"], ceilings, dn, impls)
    _time_impls(suite, "convmixer", sid, "pointwise_gemm", lambda: (lambda: F.conv2d(x, wp, bd)),
                rows["pointwise_gemm"], ceilings, dn, impls)
    _time_impls(suite, "convmixer", sid, "bn_train", lambda: (lambda: F.batch_norm(x, rm, rv, gamma, beta, True)),
                rows["bn1"], ceilings, dn, impls, which="eager")

    model = common.build_small_model(shape.model, "reference", shape).train()
    layer = model.blocks[0]

    def fwd():
        return lambda: layer(x)

    xg = x.detach().clone().requires_grad_(True)
    grad = torch.randn_like(x)

    def fwd_bwd():
        return lambda: layer(xg).backward(grad)

    _time_impls(suite, "convmixer", sid, "layer_fwd", fwd, rows["layer_fwd"], ceilings, dn, impls)
    _time_impls(suite, "convmixer", sid, "layer_fwd_bwd", fwd_bwd, rows["layer_fwd"], ceilings, dn, impls,
                flops=rows["layer_fwd"].flops + rows["layer_bwd"].flops)

    # Fused kernels K1 / K2 straight from spin_kernels.triton (DESIGN.md §2), when that module provides them.
    def k1():
        from spin_kernels.triton.dwconv import dw_fwd
        hz = x.permute(0, 2, 3, 1).reshape(-1, C)
        ax, bx = torch.ones(C, device=common.DEVICE), torch.zeros(C, device=common.DEVICE)
        fn = lambda: dw_fwd(hz, None, ax, bx, wd, bd, shape.batch, shape.hw, shape.hw, act_in=shape.act,  # noqa
                            act=shape.act)
        return _record(suite, "convmixer", sid, "K1_dwconv_fused", "triton", do_bench_ms(fn),
                       rows["K1_dwconv_fused"], ceilings, dn)

    def k2():
        from spin_kernels.triton.pointwise import pw_fwd
        hz = x.permute(0, 2, 3, 1).reshape(-1, C)
        ones, zeros = torch.ones(C, device=common.DEVICE), torch.zeros(C, device=common.DEVICE)
        fn = lambda: pw_fwd(hz, None, ones, zeros, hz, ones, zeros, wp, bd, act_in=shape.act,  # noqa: E731
                            act_g=shape.act, act=shape.act, write_u=shape.spin_residual)
        return _record(suite, "convmixer", sid, "K2_pointwise_fused", "triton", do_bench_ms(fn),
                       rows["K2_pointwise_fused"], ceilings, dn)

    suite.piece(f"convmixer/{sid}/K1/triton", k1)
    suite.piece(f"convmixer/{sid}/K2/triton", k2)

    # The trunk through each backend (reference and the fused paths that really run here).
    for backend in ["reference"] + common.fused_backends():
        def trunk(backend=backend):
            m = common.build_small_model(shape.model, backend, shape).train()
            img = shape.hw * m.stem[0].kernel_size[0]
            xi = torch.randn(shape.batch, 3, img, img, device=common.DEVICE, dtype=dt)
            if backend != "reference":
                reason = common.runs_fused(m, xi)
                if reason:
                    suite.results["skipped"].append({"piece": f"convmixer/{sid}/trunk2/{backend}",
                                                     "reason": reason[:500]})
                    return None
            with torch.no_grad():
                ms = do_bench_ms(lambda: m.forward_features(xi))
            return _record(suite, "convmixer", sid, "trunk2_fwd", backend, ms, rows["layer_fwd"], ceilings, dn,
                           flops=2 * rows["layer_fwd"].flops)
        suite.piece(f"convmixer/{sid}/trunk2/{backend}", trunk)


def vit_ops(suite: Suite, shape, ceilings: perf.Ceilings, impls: list[str]) -> None:
    """LayerNorm, qkv / proj / fc1 / fc2 GEMMs, attention (SDPA), block fwd and fwd+bwd."""
    from bench import common

    # bf16 on the GPU; common picks fp32 on the CPU (smoke tests of this code)
    dt, dn = common.DTYPE, common.DTYPE_NAME
    rows = {r.name: r for r in perf.vit_block_costs(shape.batch, shape.embed_dim, shape.num_heads, shape.tokens, dn,
                                                    train=True)}
    D, sid = shape.embed_dim, shape.id
    x = torch.randn(shape.batch, shape.tokens, D, device=common.DEVICE, dtype=dt)
    w, b = torch.ones(D, device=common.DEVICE, dtype=dt), torch.zeros(D, device=common.DEVICE, dtype=dt)
    _time_impls(suite, "vit", sid, "layernorm", lambda: (lambda: F.layer_norm(x, (D,), w, b)), rows["ln1"],
                ceilings, dn, impls)
    for name, (i, o) in {"qkv_gemm": (1, 3), "proj_gemm": (1, 1), "fc1_gemm": (1, 4), "fc2_gemm": (4, 1)}.items():
        xi = torch.randn(shape.batch, shape.tokens, i * D, device=common.DEVICE, dtype=dt)
        wi = torch.randn(o * D, i * D, device=common.DEVICE, dtype=dt) * 0.02
        bi = torch.zeros(o * D, device=common.DEVICE, dtype=dt)
        _time_impls(suite, "vit", sid, name, lambda xi=xi, wi=wi, bi=bi: (lambda: F.linear(xi, wi, bi)),
                    rows[name], ceilings, dn, impls)
    dh = D // shape.num_heads
    q, k, v = (torch.randn(shape.batch, shape.num_heads, shape.tokens, dh, device=common.DEVICE, dtype=dt)
               for _ in range(3))
    _time_impls(suite, "vit", sid, "attention", lambda: (lambda: F.scaled_dot_product_attention(q, k, v)),
                rows["attention"], ceilings, dn, impls)
    model = common.build_small_model(shape.model, "reference", shape).train()
    block = model.blocks[0]
    xg = x.detach().clone().requires_grad_(True)
    grad = torch.randn_like(x)
    _time_impls(suite, "vit", sid, "block_fwd", lambda: (lambda: block(x)), rows["layer_fwd"], ceilings, dn, impls)
    _time_impls(suite, "vit", sid, "block_fwd_bwd", lambda: (lambda: block(xg).backward(grad)), rows["layer_fwd"],
                ceilings, dn, impls, flops=rows["layer_fwd"].flops + rows["layer_bwd"].flops)


# --------------------------------------------------------------------------- depthwise conv: CUDA vs native

# (batch, channels, side, kernel size): convmixer_768_32 (k=7) and convmixer_1536_20 (k=9) at 224 px, patch 7.
DWCONV_SHAPES = ((64, 768, 32, 7), (64, 768, 32, 9), (64, 1536, 32, 9))
DWCONV_TARGET_SHAPES = DWCONV_SHAPES[:2]            # issue 4's target: ConvMixer-768 shapes, k=7 and k=9
NATIVE_DW_IMPLS = ("eager", "eager-cudnn-benchmark")
DWCONV_MAX_REL_ERR = 3e-2                           # bf16 outputs against an fp32 F.conv2d


def dwconv_shape_id(batch: int, dim: int, hw: int, k: int) -> str:
    """Shape id of one depthwise-conv comparison (``shape`` of its op records)."""
    return f"dwconv-b{batch}-c{dim}-{hw}x{hw}-k{k}"


def _dwconv_costs(batch: int, dim: int, hw: int, k: int, dtype: str) -> tuple[perf.OpCost, perf.OpCost]:
    """Analytic rows of the depthwise conv forward and forward+backward (conv bias included)."""
    rows = {r.name: r for r in perf.convmixer_layer_costs(batch, dim, hw, k, dtype, act="relu", train=True)}
    f, b = rows["dwconv"], rows["dwconv_bwd"]
    fb = perf.OpCost("dwconv_fwd_bwd", f.flops + b.flops, f.unit, f.act_bytes, f.min_passes + b.min_passes, None,
                     f.eager_passes + b.eager_passes, f.extra_bytes + b.extra_bytes)
    return f, fb


def _max_rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want).abs().max() / want.abs().max().clamp_min(1e-6))


def dwconv_compare(suite: Suite, shape: tuple, ceilings: perf.Ceilings) -> None:
    """Depthwise conv forward and forward+backward: ``F.conv2d(groups=C)`` + autograd (channels-last; cuDNN's
    default choice and ``cudnn.benchmark``) vs the CUDA kernels (forward, backward_input, backward_weight on
    [B, H, W, C]). Records ops ``dwconv_fwd`` / ``dwconv_fwd_bwd`` of family ``dwconv``; each impl is a piece."""
    from bench import common

    batch, C, hw, k = shape
    dt, dn, dev = common.DTYPE, common.DTYPE_NAME, common.DEVICE
    sid = dwconv_shape_id(*shape)
    fwd_row, fb_row = _dwconv_costs(batch, C, hw, k, dn)
    h = torch.randn(batch, hw, hw, C, device=dev, dtype=dt)       # [B, H, W, C] contiguous = channels-last
    dz = torch.randn_like(h)
    w = torch.randn(C, 1, k, k, device=dev, dtype=dt) / k
    bias = torch.randn(C, device=dev, dtype=dt)
    x, dy = h.permute(0, 3, 1, 2), dz.permute(0, 3, 1, 2)         # NCHW views with channels_last strides
    pad = k // 2

    def native(impl):
        xg, wg, bg = (t.detach().requires_grad_(True) for t in (x, w, bias))

        def fwd_bwd():
            y = F.conv2d(xg, wg, bg, padding=pad, groups=C)
            return torch.autograd.grad(y, (xg, wg, bg), dy)

        prev = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = impl == "eager-cudnn-benchmark"
        try:
            _record(suite, "dwconv", sid, "dwconv_fwd", impl,
                    do_bench_ms(lambda: F.conv2d(x, w, bias, padding=pad, groups=C)), fwd_row, ceilings, dn)
            _record(suite, "dwconv", sid, "dwconv_fwd_bwd", impl, do_bench_ms(fwd_bwd), fb_row, ceilings, dn)
        finally:
            torch.backends.cudnn.benchmark = prev

    def ours():
        from spin_kernels import cuda as sk_cuda
        bias32 = bias.float()                    # the kernels take per-channel vectors in fp32

        def fwd():
            return sk_cuda.dwconv_forward(h, w, bias32, act="none", with_stats=False)[0]

        def fwd_bwd():
            y = fwd()
            dh = sk_cuda.dwconv_backward_input(dz, w)
            dw, db = sk_cuda.dwconv_backward_weight(dz, h, k)
            return y, dh, dw, db

        # A fast wrong answer is no result: check all four outputs against fp32 F.conv2d + autograd first.
        xr, wr, br = (t.detach().float().requires_grad_(True) for t in (x, w, bias))
        yr = F.conv2d(xr, wr, br, padding=pad, groups=C)
        want = (yr.detach(), *torch.autograd.grad(yr, (xr, wr, br), dy.float()))
        y, dh, dw, db = fwd_bwd()
        got = (y.permute(0, 3, 1, 2), dh.permute(0, 3, 1, 2), dw.reshape(want[2].shape), db)
        errs = {n: _max_rel_err(g, r) for n, g, r in zip(("y", "dh", "dweight", "dbias"), got, want)}
        del xr, wr, br, yr, want, got, y, dh, dw, db
        bad = {n: e for n, e in errs.items() if not e <= DWCONV_MAX_REL_ERR}
        if bad:
            raise AssertionError(f"CUDA depthwise conv disagrees with F.conv2d (max rel err {bad}, tolerance "
                                 f"{DWCONV_MAX_REL_ERR}); not timed")
        for op, fn, row in (("dwconv_fwd", fwd, fwd_row), ("dwconv_fwd_bwd", fwd_bwd, fb_row)):
            rec = _record(suite, "dwconv", sid, op, "cuda", do_bench_ms(fn), row, ceilings, dn)
            rec["max_rel_err"] = errs

    for impl in NATIVE_DW_IMPLS:
        suite.piece(f"targets/dwconv/{sid}/{impl}", native, impl)
    suite.piece(f"targets/dwconv/{sid}/cuda", ours)


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
    from spin_kernels import create_model
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
    from spin_kernels import create_model
    model = create_model(name, share_rate=rate, backend=backend).cuda().eval().to(torch.bfloat16)
    if _falls_back(suite, model, backend, f"latency/{name}/r{rate}/{backend}"):
        return None
    x = torch.randn(1, 3, 224, 224, device="cuda", dtype=torch.bfloat16)
    eager_ms = do_bench_ms(lambda: model(x))
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            model(x)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model(x)
    graph_ms = do_bench_ms(graph.replay)
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
    from spin_kernels import create_model
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
            ms = do_bench_ms(run)
    finally:
        torch._dynamo.reset()                         # drop the compiled graphs (memory) even after a timeout
    rec = {"model": name, "share_rate": rate, "backend": "reference", "compile": mode, "eager_ms": None,
           "cuda_graph_ms": None, "compiled_ms": ms, "compile_s": compile_s}
    suite.results["latency"].append(rec)
    return rec


# ------------------------------------------------------------------------------------------------- reporting

def add_speedups(ops: list[dict]) -> None:
    """Fill ``speedup_vs_eager`` / ``speedup_vs_compile`` of every op record from its siblings (same op/shape)."""
    base: dict = {}
    for r in ops:
        base.setdefault((r["family"], r["shape"], r["op"]), {})[r["impl"]] = r["ms"]
    # K1 / K2 have no eager twin of their own (they replace several eager ops): their speed-ups stay empty and
    # the layer / trunk rows carry the comparison.
    for r in ops:
        ref = base.get((r["family"], r["shape"], r["op"]), {})
        r["speedup_vs_eager"] = ref["eager"] / r["ms"] if "eager" in ref else None
        r["speedup_vs_compile"] = ref["compile"] / r["ms"] if "compile" in ref else None
        if r["op"] == "trunk2_fwd":
            r["speedup_vs_eager"] = ref["reference"] / r["ms"] if "reference" in ref else None


def _valid_ms(v) -> float | None:
    """``v`` as a time if it is a finite positive number, else None (nothing is made up from a bad value)."""
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if v > 0 and v != float("inf") else None   # NaN fails v > 0


def _why_missing(results: dict, pieces: list[str]) -> str:
    """Why none of ``pieces`` left a measurement: their failure or skip record, else 'not run'."""
    for p in pieces:
        for f in results.get("failed") or []:
            if f.get("piece") == p:
                return f"{p} failed: {f.get('error', '?')}"
        for s in results.get("skipped") or []:
            if s.get("piece") == p:
                return f"{p} skipped: {s.get('reason', '?')}"
    return f"not run ({', '.join(pieces)})"


def _target(results: dict, name: str, goal: float, ours_ms, ours: str, ours_pieces: list[str], base_ms, base: str,
            base_pieces: list[str]) -> dict:
    """One target record: ``measured`` = baseline time / our time; None (and a ``note`` saying why) unless both
    times were measured."""
    ours_ms, base_ms = _valid_ms(ours_ms), _valid_ms(base_ms)
    rec = {"name": name, "target": goal, "measured": None, "met": None, "ours": ours, "ours_ms": ours_ms,
           "baseline": base, "baseline_ms": base_ms, "note": ""}
    if ours_ms is None or base_ms is None:
        missing = ([_why_missing(results, ours_pieces)] if ours_ms is None else []) + \
                  ([_why_missing(results, base_pieces)] if base_ms is None else [])
        rec["note"] = "; ".join(missing)
        return rec
    rec["measured"] = base_ms / ours_ms
    rec["met"] = rec["measured"] >= goal
    return rec


def compute_targets(results: dict) -> list[dict]:
    """Issue 4's targets from the latency and depthwise-conv measurements (see the module docstring); every target
    is listed, measured or not."""
    model, rate = ISSUE4_LATENCY
    lat = results.get("latency") or []

    def lat_rec(backend, mode=None):
        return next((r for r in lat if r.get("model") == model and r.get("share_rate") == rate
                     and r.get("backend") == backend and (r.get("compile") or None) == mode), {})

    p = f"latency/{model}/r{rate}"
    ours_ms = lat_rec("cuda").get("cuda_graph_ms")
    ours = "backend cuda (weights-resident persistent kernel), CUDA-graph replay"
    targets = [
        _target(results, f"{model} r={rate} batch-1 latency: cuda vs torch.compile max-autotune", 2.5,
                ours_ms, ours, [f"{p}/cuda"], lat_rec("reference", "max-autotune").get("compiled_ms"),
                "reference, torch.compile(mode='max-autotune')", [f"{p}/compile-max-autotune"]),
        _target(results, f"{model} r={rate} batch-1 latency: cuda vs eager reference", 15.0,
                ours_ms, ours, [f"{p}/cuda"], lat_rec("reference").get("eager_ms"), "reference, eager",
                [f"{p}/reference"]),
    ]
    ops = results.get("ops") or []
    for shape in DWCONV_TARGET_SHAPES:
        sid = dwconv_shape_id(*shape)
        times = {r["impl"]: r.get("ms") for r in ops
                 if r.get("family") == "dwconv" and r.get("shape") == sid and r.get("op") == "dwconv_fwd_bwd"}
        native = {i: _valid_ms(times.get(i)) for i in NATIVE_DW_IMPLS}
        native = {i: t for i, t in native.items() if t is not None}
        best = min(native, key=native.get) if native else None
        b, c, hw, k = shape
        targets.append(_target(
            results, f"depthwise conv k={k} fwd+bwd (B={b}, C={c}, {hw}x{hw}, bf16): cuda vs native", 2.0,
            times.get("cuda"), "spin_kernels.cuda dwconv_forward + backward_input + backward_weight",
            [f"targets/dwconv/{sid}/cuda", f"targets/dwconv/{sid}"],
            native.get(best) if best else None,
            f"F.conv2d(groups=C) + autograd, channels-last, {best or 'eager'}",
            [f"targets/dwconv/{sid}/{i}" for i in NATIVE_DW_IMPLS] + [f"targets/dwconv/{sid}"]))
    return targets


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def _md_table(title: str, columns: list[str], align: str, rows: list, fmt_row, intro: str | None = None) -> list[str]:
    """Lines of one report.md section: ``## title``, an optional intro paragraph, then a Markdown table with the
    header ``columns`` (``align``: one letter a column, "l" left or "r" right), a row ``fmt_row(r)`` for each of
    ``rows``, and a closing blank line."""
    lines = [f"## {title}", ""]
    if intro:
        lines += [intro, ""]
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return lines + [_md_row(columns), rule] + [fmt_row(r) for r in rows] + [""]


def _md_row(cells: list) -> str:
    """One Markdown table row: ``cells`` (each written as str() writes it) between pipes."""
    return "| " + " | ".join(map(str, cells)) + " |"


def _target_row(t: dict) -> str:
    measured = "not measured" if t["measured"] is None else f"{t['measured']:.2f}x"
    met = "not measured" if t["met"] is None else ("yes" if t["met"] else "NO")
    note = t["note"] or f"ours: {t['ours']}; baseline: {t['baseline']}"
    note = note.replace("|", "/").replace("\n", " ")[:400]
    return _md_row([t["name"], f">= {t['target']:g}x", measured, met, _fmt(t["ours_ms"], ".4f"),
                    _fmt(t["baseline_ms"], ".4f"), note])


def _op_row(r: dict) -> str:
    return _md_row([r["family"], r["shape"], r["op"], r["impl"], f"{r['ms']:.4f}", f"{r['gb_per_s']:.0f}",
                    f"{r['tflop_per_s']:.1f}", f"{r['pct_of_floor']:.0f}%", _fmt(r.get("speedup_vs_eager"), ".2f"),
                    _fmt(r.get("speedup_vs_compile"), ".2f")])


def _train_row(r: dict) -> str:
    return _md_row([r["model"], r["share_rate"], r["backend"], r["compile"], f"{r['ms_per_step']:.1f}",
                    f"{r['img_per_s']:.0f}", f"{r['peak_mem_gib']:.2f}", f"{r['params']:,}"])


def _latency_row(r: dict) -> str:
    return _md_row([r["model"], r["share_rate"], r["backend"], r.get("compile") or "-",
                    *(_fmt(r.get(k), ".3f") for k in ("eager_ms", "cuda_graph_ms", "compiled_ms")),
                    _fmt(r.get("compile_s"), ".0f")])


def write_report(results: dict, out_dir: str) -> dict:
    """Write results.json, report.md and the plots into ``out_dir``; returns the written paths."""
    os.makedirs(out_dir, exist_ok=True)
    add_speedups(results.get("ops", []))
    results["targets"] = compute_targets(results)
    paths = {"json": os.path.join(out_dir, "results.json"), "report": os.path.join(out_dir, "report.md")}
    with open(paths["json"], "w") as f:
        json.dump(results, f, indent=1, default=str)
    c = results.get("ceilings") or {}
    lines = [f"# GPU benchmark — {results.get('device', '?')} — {results.get('date', '')}", "",
             (f"torch {results.get('torch')}, triton {results.get('triton')}, CUDA {results.get('cuda')}; "
              "times are medians of triton.testing.do_bench (L2 flushed). Compare only within this card."), ""]
    if c:
        tf = c.get("tensor_flops", {})
        lines += ["## Ceilings (measured)", "",
                  f"- copy bandwidth: {c.get('hbm_bytes_per_s', 0) / 1e12:.2f} TB/s (read + write)",
                  (f"- bf16 GEMM: {tf.get('bf16', 0) / 1e12:.0f} TFLOP/s; tf32 GEMM: {tf.get('tf32', 0) / 1e12:.0f} "
                   "TFLOP/s"), ""]
    lines += _md_table("Targets (issue 4)",
                       ["target", "goal", "measured", "met", "ours (ms)", "baseline (ms)", "note"], "lrrlrrl",
                       results["targets"], _target_row,
                       intro=("speed-up = baseline time / our time; \"not measured\" when either time is missing "
                              "(the note says why)."))
    if results.get("ops"):
        columns = ["family", "shape", "op", "impl", "time (ms)", "GB/s", "TFLOP/s", "% of floor", "vs eager",
                   "vs compile"]
        lines += _md_table("Ops", columns, "llllrrrrrr", results["ops"], _op_row,
                           intro=("% of floor = floor time / measured time, floor = max(FLOPs / peak, min bytes / "
                                  "bandwidth) with the measured ceilings."))
    if results.get("train"):
        columns = ["model", "r", "backend", "compile", "ms/step", "img/s", "peak mem (GiB)", "params"]
        lines += _md_table("Training step (batch 64, bf16 autocast, SGD)", columns, "lrllrrrr", results["train"],
                           _train_row)
    if results.get("latency"):
        columns = ["model", "r", "backend", "compile", "eager (ms)", "CUDA graph (ms)", "compiled (ms)",
                   "compile time (s)"]
        lines += _md_table("Batch-1 latency (bf16, eval)", columns, "lrllrrrr", results["latency"], _latency_row)
    if results.get("skipped"):
        lines += ["## Skipped", ""] + [f"- {s['piece']}: {s['reason'][:300]}" for s in results["skipped"]] + [""]
    if results.get("failed"):
        lines += ["## Failed pieces", ""] + [f"- `{f['piece']}`: {f['error'][:300]}" for f in results["failed"]]
        lines.append("")
    plots = write_plots(results, out_dir)
    if plots:
        lines += ["## Plots", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots]
    with open(paths["report"], "w") as f:
        f.write("\n".join(lines) + "\n")
    paths["plots"] = plots
    return paths


def write_plots(results: dict, out_dir: str) -> list[str]:
    """One bar chart of op times per shape (impls side by side) and one roofline; returns the PNG paths."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    ops = results.get("ops", [])
    paths = []
    for shape in sorted({r["shape"] for r in ops}):
        rs = [r for r in ops if r["shape"] == shape]
        names = list(dict.fromkeys(r["op"] for r in rs))
        impls = list(dict.fromkeys(r["impl"] for r in rs))
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 4), dpi=110)
        width = 0.8 / max(1, len(impls))
        for j, impl in enumerate(impls):
            vals = [next((r["ms"] for r in rs if r["op"] == n and r["impl"] == impl), np.nan) for n in names]
            ax.bar(np.arange(len(names)) + j * width, vals, width, label=impl)
        floors = [next((r["floor_ms"] for r in rs if r["op"] == n), np.nan) for n in names]
        ax.scatter(np.arange(len(names)) + 0.4 - width / 2, floors, marker="_", s=300, color="k", label="floor",
                   zorder=3)
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=30, ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("ms (median)")
        ax.set_title(shape, fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = os.path.join(out_dir, f"ops_{re.sub(r'[^A-Za-z0-9_.-]+', '_', shape)}.png")
        fig.savefig(p)
        plt.close(fig)
        paths.append(p)
    if ops:
        c = perf.Ceilings.from_dict(results["ceilings"]) if results.get("ceilings") else perf.H100
        fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=110)
        xs = np.logspace(-1, 4, 200)
        for unit, style in (("tensor", "-"), ("vector", "--")):
            peak = c.peak_flops(unit, "bf16")
            ax.plot(xs, np.minimum(peak, xs * c.hbm_bytes_per_s) / 1e12, style, color="gray",
                    label=f"roof ({unit})")
        for impl in dict.fromkeys(r["impl"] for r in ops):
            rs = [r for r in ops if r["impl"] == impl]
            ax.scatter([r["intensity"] for r in rs], [r["tflop_per_s"] for r in rs], s=18, label=impl, zorder=3)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("arithmetic intensity (FLOP / min byte)")
        ax.set_ylabel("TFLOP/s")
        ax.set_title(f"roofline — {c.name}", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = os.path.join(out_dir, "roofline.png")
        fig.savefig(p)
        plt.close(fig)
        paths.append(p)
    return paths


# ------------------------------------------------------------------------------------------------------ main

GROUPS = ("ceilings", "ops", "train", "latency", "targets")


def main(argv: list[str] | None = None) -> int:
    """Run the suite; returns 0 when every piece ran, 1 when some failed, 2 without CUDA."""
    p = argparse.ArgumentParser(prog="python -m bench.gpu_suite", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="output directory (default bench/results/<gpu>-<date>[/<part>])")
    p.add_argument("--part", default=None, help="subdirectory of the default output directory, so that stages run "
                   "as separate commands (make gpu-targets, gpu-bench, gpu-bench-e2e) keep their own results")
    p.add_argument("--max-autotune", action="store_true", help="also time torch.compile(mode='max-autotune')")
    p.add_argument("--quick", action="store_true", help="smaller ceilings buffers, fewer train steps")
    p.add_argument("--only", default=None, help=f"comma list of: {','.join(GROUPS)} (default: all; 'targets' is the "
                   "depthwise-conv comparison, plus the issue-4 latency pieces when 'latency' is not selected)")
    p.add_argument("--no-max-autotune-latency", action="store_true",
                   help=f"skip the torch.compile(mode='max-autotune') batch-1 latency of {ISSUE4_LATENCY[0]} "
                   f"r={ISSUE4_LATENCY[1]} (minutes of compiling; its target then shows 'not measured')")
    p.add_argument("--max-autotune-latency-timeout", type=float, default=600.0, metavar="S",
                   help="stop that compile after S seconds, recorded as a failed piece (default 600; 0: no limit)")
    args = p.parse_args(argv)
    only = {g for g in (args.only.split(",") if args.only else GROUPS) if g}
    if only - set(GROUPS):
        p.error(f"--only: unknown group(s) {', '.join(sorted(only - set(GROUPS)))}; known: {', '.join(GROUPS)}")
    if not torch.cuda.is_available():
        print("bench.gpu_suite needs a CUDA GPU, and torch.cuda.is_available() is False on this machine "
              f"(torch {torch.__version__}). On the CPU use `spin bench --analytic` for the floors and "
              "`pytest bench` to exercise the micro-benchmark harness.", file=sys.stderr)
        return 2
    import triton

    from bench import common
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    out_dir = args.out or os.path.join(RESULTS_ROOT, f"{gpu_slug()}-{date}", args.part or "")
    results = {"device": torch.cuda.get_device_name(), "date": date, "torch": torch.__version__,
               "triton": triton.__version__, "cuda": torch.version.cuda, "host": platform.node(),
               "ceilings": None, "ops": [], "train": [], "latency": [], "skipped": [], "failed": []}
    suite = Suite(results)
    if "ceilings" in only:
        results["ceilings"] = suite.piece("ceilings", measure_ceilings, args.quick)
    ceilings = perf.Ceilings.from_dict(results["ceilings"]) if results["ceilings"] else perf.H100
    if "ops" in only:
        impls = _impls(args.max_autotune)
        for shape in common.CONVMIXER_SHAPES:
            suite.piece(f"convmixer/{shape.id}", convmixer_ops, suite, shape, ceilings, impls)
        for shape in common.VIT_SHAPES:
            suite.piece(f"vit/{shape.id}", vit_ops, suite, shape, ceilings, impls)
    backends = ["reference"] + [b for b in common.fused_backends()]
    steps = 5 if args.quick else 20
    for name in ("spin_convmixer_768_32", "deit_small_patch16_224"):
        for rate in (1, 2):
            if "train" in only:
                for backend in backends:
                    suite.piece(f"train/{name}/r{rate}/{backend}", train_step, suite, name, rate, backend, 64,
                                steps, False)
                suite.piece(f"train/{name}/r{rate}/compile", train_step, suite, name, rate, "reference", 64, steps,
                            True)
            if "latency" in only:
                for backend in backends:
                    suite.piece(f"latency/{name}/r{rate}/{backend}", latency, suite, name, rate, backend)
    lat_name, lat_rate = ISSUE4_LATENCY
    if "targets" in only:
        for shape in DWCONV_SHAPES:
            suite.piece(f"targets/dwconv/{dwconv_shape_id(*shape)}", dwconv_compare, suite, shape, ceilings)
        if "latency" not in only:
            for backend in ("reference", "cuda"):
                suite.piece(f"latency/{lat_name}/r{lat_rate}/{backend}", latency, suite, lat_name, lat_rate, backend)
    if "latency" in only or "targets" in only:
        piece = f"latency/{lat_name}/r{lat_rate}/compile-max-autotune"
        if args.no_max_autotune_latency:
            results["skipped"].append({"piece": piece, "reason": "--no-max-autotune-latency"})
        else:
            # Minutes of compiling, last: write what is measured so far first, so a kill here loses nothing else.
            write_report(results, out_dir)
            suite.piece(piece, compile_latency, suite, lat_name, lat_rate, args.max_autotune_latency_timeout)
    paths = write_report(results, out_dir)
    print(f"[gpu_suite] wrote {paths['json']}, {paths['report']} and {len(paths['plots'])} plots; "
          f"{len(results['failed'])} piece(s) failed")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
