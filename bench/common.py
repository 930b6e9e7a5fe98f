"""Shared pieces of the micro-benchmarks and the GPU suite: shapes, backends, timing wrappers.

On a CUDA machine the benchmarks use the real shapes of the models the project targets; on the CPU they use tiny
shapes and the reference path only, so the harness itself is exercised by `pytest bench` anywhere.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass

import torch

from spin_kernels import perf

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
# bf16 is the training dtype on the GPU; the CPU runs fp32 (CPU bf16 kernels are slow and not what we optimise).
DTYPE = torch.bfloat16 if ON_GPU else torch.float32
DTYPE_NAME = "bf16" if ON_GPU else "fp32"
# torch.compile on the CPU costs tens of seconds per op on a shared 2-core box; opt in with SPIN_BENCH_COMPILE=1.
COMPILE_ON_CPU = os.environ.get("SPIN_BENCH_COMPILE", "0") == "1"


@dataclass(frozen=True)
class ConvMixerShape:
    """One ConvMixer layer shape (what a benchmark of that model's layer runs)."""

    model: str
    batch: int
    dim: int
    hw: int
    kernel_size: int
    act: str
    spin_residual: bool

    @property
    def id(self) -> str:
        """Short test id naming the model and the shape."""
        return f"{self.model}-b{self.batch}-c{self.dim}-{self.hw}x{self.hw}-k{self.kernel_size}"


@dataclass(frozen=True)
class VitShape:
    """One ViT block shape."""

    model: str
    batch: int
    embed_dim: int
    num_heads: int
    tokens: int

    @property
    def id(self) -> str:
        """Short test id naming the model and the shape."""
        return f"{self.model}-b{self.batch}-n{self.tokens}-d{self.embed_dim}-h{self.num_heads}"


def _cm(model: str, batch: int, img: int = 224) -> ConvMixerShape:
    a = perf.ARCHS[model]
    return ConvMixerShape(model, batch, a["dim"], img // a["patch_size"], a["kernel_size"], a["act"],
                          a["spin_residual"])


def _vit(model: str, batch: int, img: int = 224) -> VitShape:
    a = perf.ARCHS[model]
    return VitShape(model, batch, a["embed_dim"], a["num_heads"], (img // a["patch_size"]) ** 2 + 1)


if ON_GPU:
    CONVMIXER_SHAPES = [_cm("spin_convmixer_768_32", 64), _cm("convmixer_1536_20", 64)]
    VIT_SHAPES = [_vit("deit_small_patch16_224", 64), _vit("deit_base_patch16_224", 64)]
else:
    CONVMIXER_SHAPES = [ConvMixerShape("spin_convmixer_768_32", 2, 32, 8, 3, "relu", True),
                        ConvMixerShape("convmixer_1536_20", 2, 32, 8, 9, "gelu", False)]
    VIT_SHAPES = [VitShape("deit_small_patch16_224", 2, 32, 2, 17)]


def sync() -> None:
    """Wait for queued GPU work, so a timed callable measures the kernels, not just their launch."""
    if ON_GPU:
        torch.cuda.synchronize()


def synchronized(fn):
    """``fn`` followed by a device synchronize (pytest-benchmark times host wall clock)."""
    def run():
        out = fn()
        sync()
        return out
    return run


def compile_modes() -> list[str]:
    """torch.compile modes worth timing here: default always on GPU, max-autotune only on GPU."""
    if ON_GPU:
        return ["default", "max-autotune"]
    return ["default"] if COMPILE_ON_CPU else []


def compiled(fn, mode: str):
    """``torch.compile(fn)`` with ``mode`` (``default`` passes no mode)."""
    return torch.compile(fn) if mode == "default" else torch.compile(fn, mode=mode)


# The implementations a micro-benchmark times an op with: ``eager`` and ``compile-<mode>`` for each compile mode.
IMPLS = ["eager"] + [f"compile-{m}" for m in compile_modes()]


def as_impl(fn, impl: str):
    """``fn`` as implementation ``impl`` runs it: itself for ``eager``, torch.compile'd for ``compile-<mode>``."""
    return fn if impl == "eager" else compiled(fn, impl.split("-", 1)[1])


def fused_backends() -> list[str]:
    """Backends other than the reference that could run here (tests skip the ones that fall back)."""
    return ["triton", "cuda"] if ON_GPU else []


def build_small_model(name: str, backend: str, shape) -> torch.nn.Module:
    """A one-layer model of ``name``'s family with ``shape``'s sizes, on the bench device and dtype."""
    from spin_kernels.models import create_model
    if isinstance(shape, ConvMixerShape):
        a = perf.ARCHS[name]
        img = shape.hw * a["patch_size"] if ON_GPU else shape.hw * 2
        patch = img // shape.hw
        kw = dict(dim=shape.dim, depth=2, kernel_size=shape.kernel_size, patch_size=patch, act=shape.act,
                  spin_residual=shape.spin_residual)
    else:
        patch = 16 if ON_GPU else 4
        side = int(round((shape.tokens - 1) ** 0.5))
        kw = dict(embed_dim=shape.embed_dim, depth=2, num_heads=shape.num_heads, patch_size=patch,
                  img_size=side * patch)
    m = create_model(name, backend=backend, num_classes=10, **kw)
    m = m.to(DEVICE, DTYPE)
    if ON_GPU and isinstance(shape, ConvMixerShape):
        m = m.to(memory_format=torch.channels_last)
    return m


def first_block(shape, *, train: bool) -> torch.nn.Module:
    """The first block of a :func:`build_small_model` reference model of ``shape``, in training mode if ``train``
    else in eval mode."""
    return build_small_model(shape.model, "reference", shape).train(train).blocks[0]


def runs_fused(model, x) -> str | None:
    """None if ``model`` (a fused backend) really runs fused on ``x``; otherwise the reason it falls back."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with torch.no_grad():
                model(x)
            sync()
        except Exception as e:  # noqa: BLE001 - any failure means: skip this backend here
            return f"{type(e).__name__}: {e}"
    for w in caught:
        text = str(w.message)
        if "reference" in text or "fall" in text or "no fused" in text:
            return text
    return None


def record(benchmark, row: "perf.OpCost | None", *, which: str = "min", phase_flops: float | None = None,
           **info) -> None:
    """Attach analytic FLOPs / bytes / floor and (after the run) achieved GB/s, TFLOP/s, % of floor."""
    benchmark.extra_info.update({"device": torch.cuda.get_device_name() if ON_GPU else "cpu",
                                 "dtype": DTYPE_NAME, **info})
    if row is None:
        return
    flops = phase_flops if phase_flops is not None else row.flops
    nbytes = row.bytes(which)
    floor = max(flops / perf.H100.peak_flops(row.unit, DTYPE_NAME), nbytes / perf.H100.hbm_bytes_per_s)
    benchmark.extra_info.update({"flops": flops, "bytes": nbytes, "h100_floor_s": floor})
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    median = getattr(stats, "median", None)
    if median:
        benchmark.extra_info.update({"median_s": median, "gb_per_s": nbytes / median / 1e9,
                                     "tflop_per_s": flops / median / 1e12,
                                     "pct_of_h100_floor": perf.pct_of_floor(median, floor) if ON_GPU else None})


def time_and_record(benchmark, run_bench, fn, row: perf.OpCost | None, *, no_grad: bool = False, **info) -> None:
    """Time ``fn`` with ``run_bench`` (synchronized; under torch.no_grad() if ``no_grad``), then :func:`record`
    ``row`` with ``info`` (``which``, ``phase_flops`` and the labels such as ``op`` / ``impl`` / ``shape``)."""
    with torch.no_grad() if no_grad else contextlib.nullcontext():
        run_bench(synchronized(fn))
    record(benchmark, row, **info)


def bench_forward(benchmark, run_bench, block, x, impl: str, row: perf.OpCost, **info) -> None:
    """Time a no-grad forward of ``block`` on ``x`` as ``impl`` runs it and record ``row``."""
    time_and_record(benchmark, run_bench, as_impl(lambda: block(x), impl), row, no_grad=True, impl=impl, **info)


def bench_fwd_bwd(benchmark, run_bench, block, x, impl: str, rows: dict, **info) -> None:
    """Time one forward + backward of ``block`` on ``x`` (made to require grad; a random output gradient) as
    ``impl`` runs it, and record it at the ``layer_fwd`` + ``layer_bwd`` FLOPs of ``rows`` (perf rows by name)."""
    x.requires_grad_(True)
    grad = torch.randn_like(x)

    def step():
        block(x).backward(grad)

    fwd = rows["layer_fwd"]
    time_and_record(benchmark, run_bench, as_impl(step, impl), fwd, phase_flops=fwd.flops + rows["layer_bwd"].flops,
                    impl=impl, **info)


def bench_model_forward(benchmark, run_bench, model, x, backend: str, fn, layer_row: perf.OpCost, **info) -> None:
    """Time ``fn`` (a no-grad forward of ``model``, a two-layer :func:`build_small_model` of ``backend``, on ``x``)
    and record it at twice ``layer_row``'s FLOPs. Skips the test where a fused ``backend`` falls back on ``x``."""
    if backend != "reference":
        reason = runs_fused(model, x)
        if reason:
            import pytest  # here, not at the top: the GPU suite imports this module and does not need pytest
            pytest.skip(f"backend {backend} does not run fused here: {reason[:200]}")
    time_and_record(benchmark, run_bench, fn, layer_row, no_grad=True, phase_flops=2 * layer_row.flops,
                    impl=backend, **info)
