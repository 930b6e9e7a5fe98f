"""Per-kernel device time of whole models at the cost model's target shapes (the cost model's calibration).

For each target shape and fused backend: the model at the target batch (bf16 weights for the eval forward, bf16
autocast for the train step, channels-last ConvMixers), a few warm-up steps (the Triton JIT compiles there), then
``STEPS_PROFILED`` steps under ``torch.profiler`` with CUDA activity; the device time of each kernel name is
divided by the steps. :func:`spin_kernels.perf.measured.compare` puts it next to the machine-code estimate.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .harness import Suite

STEPS_PROFILED = 3
WARMUP_STEPS = 2


def _device_us(evt) -> float:
    """Self device time of a profiler average (µs), across torch versions' attribute names."""
    for attr in ("self_device_time_total", "self_cuda_time_total"):
        v = getattr(evt, attr, None)
        if v:
            return float(v)
    return 0.0


def profile_kernels(fn, steps: int = STEPS_PROFILED) -> dict[str, dict]:
    """``{kernel name: {"s": device seconds per call, "launches": launches per call}}`` of ``fn`` (already warm)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    out: dict[str, dict] = {}
    for evt in prof.key_averages():
        us = _device_us(evt)
        if us <= 0:
            continue
        e = out.setdefault(evt.key, {"s": 0.0, "launches": 0})
        e["s"] += us / 1e6 / steps
        e["launches"] += evt.count // steps
    return out


def _model_and_input(model_name: str, rate: int, backend: str, batch: int, train: bool):
    from spin_kernels.models import create_model
    model = create_model(model_name, share_rate=rate, backend=backend).cuda().train(train)
    if not train:
        model = model.to(torch.bfloat16)
    x = torch.randn(batch, 3, 224, 224, device="cuda", dtype=torch.float32 if train else torch.bfloat16)
    if "convmixer" in model_name:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return model, x


def measure_shape(suite: Suite, shape_name: str, backend: str, cost_shape: dict) -> dict:
    """Profile a train step and an eval forward of ``shape_name`` on ``backend``; record the comparisons with
    ``cost_shape`` under ``results["kernels"]`` and return them."""
    from spin_kernels.perf import measured
    from spin_kernels.perf.targets import TARGET_SHAPES

    model_name, batch, rate = TARGET_SHAPES[shape_name]
    out = {}
    model, x = _model_and_input(model_name, rate, backend, batch, train=True)
    y = torch.randint(0, 1000, (batch,), device="cuda")
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def train_step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    for _ in range(WARMUP_STEPS):
        train_step()
    raw = {"train": profile_kernels(train_step)}
    out["train"] = measured.compare(cost_shape, backend, "train", raw["train"])
    del model, x, opt
    model, x = _model_and_input(model_name, rate, backend, batch, train=False)

    @torch.no_grad()
    def eval_forward():
        model(x)

    for _ in range(WARMUP_STEPS):
        eval_forward()
    raw["eval"] = profile_kernels(eval_forward)
    out["eval"] = measured.compare(cost_shape, backend, "eval", raw["eval"])
    for step, rec in out.items():
        rec["profiled"] = raw[step]      # every kernel seen, so the join can be redone offline on another model
        suite.results.setdefault("kernels", []).append(rec)
    return out
