"""Eval-mode ConvMixer trunk on the weights-resident CUDA kernel (DESIGN.md §2, lever 3).

``eval_features(model, images)`` runs the stem with PyTorch, then the whole trunk in one cooperative launch: each
run of layers that share the pointwise weight (``model.pw_plan.runs``) keeps its W slices resident in shared
memory, reloaded at run boundaries; eval-mode BatchNorms are folded into per-channel affines.
It returns None — and the caller takes another path — whenever the case is outside what the kernel supports;
each reason is reported once.
"""
from __future__ import annotations

import torch

from .. import cuda
from .._util import warn_once

MAX_BATCH = 16  # the persistent kernel targets latency-bound batches; larger ones go to the tiled per-layer path
SLICE = 64      # output channels per CTA (csrc/shared_run.h kSliceN)


def fold_bn(bn: torch.nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as ``s * v + t`` (fp32)."""
    scale = bn.weight.float() / torch.sqrt(bn.running_var.float() + bn.eps)
    return scale, bn.bias.float() - bn.running_mean.float() * scale


def _unsupported(model, images: torch.Tensor) -> str | None:
    """Why the persistent kernel cannot run this call, or None when it can."""
    if model.training:
        return "training mode (the persistent kernel is inference-only)"
    if not cuda.runs_here(images):
        return "the input is not on a CUDA device" if not images.is_cuda else cuda.status()["reason"]
    if images.shape[0] > MAX_BATCH:
        return f"batch {images.shape[0]} > {MAX_BATCH}"
    if model.arch["dim"] % SLICE:
        return f"dim {model.arch['dim']} is not a multiple of {SLICE}"
    fits, need, have = cuda.shared_run_fits(images, model.arch["dim"])
    if not fits:
        return (f"dim {model.arch['dim']} needs {need // 1024} KiB of shared memory per CTA (the resident weight "
                f"slice), this GPU gives {have // 1024} KiB")
    if model.arch["kernel_size"] > 9:
        return f"kernel_size {model.arch['kernel_size']} > 9"
    if any(bn.running_var is None for bn in list(model.norm1) + list(model.norm2)):
        return "BatchNorm without running statistics"
    return None


def _run_dtype(model, images: torch.Tensor) -> torch.dtype | None:
    if torch.is_autocast_enabled(images.device.type):
        return torch.get_autocast_dtype(images.device.type)
    dtype = model.stem[0].weight.dtype
    return dtype if dtype in (torch.float16, torch.bfloat16) else None


@torch.no_grad()
def eval_features(model, images: torch.Tensor) -> torch.Tensor | None:
    """Trunk output [B, C, H', W'] (channels-last memory) of an eval-mode ConvMixer, or None if unsupported."""
    reason = _unsupported(model, images)
    dtype = _run_dtype(model, images) if reason is None else None
    if reason is None and dtype is None:
        reason = "float32 weights without autocast (the kernel computes in float16 / bfloat16)"
    if reason is not None:
        warn_once(f"convmixer_cuda:{reason}", f"weights-resident CUDA kernel not used: {reason}")
        return None
    x = model.stem(images).to(dtype).permute(0, 2, 3, 1).contiguous()
    act, spin = model.arch["act"], model.arch["spin_residual"]
    for i, (*params, run_lengths) in enumerate(launch_parameters(model, dtype)):
        try:
            x = cuda.shared_run_forward(x, *params, act=act, spin_residual=spin, run_lengths=run_lengths)
        except RuntimeError as e:
            # Too few co-resident CTAs for one per W slice (a small GPU or MIG slice): every launch has the same
            # width, so the first one decides; the caller takes the per-layer path.
            if i > 0 or "cooperative launch" not in str(e):
                raise
            warn_once("convmixer_cuda:resident", f"weights-resident CUDA kernel not used: {e}")
            return None
    return x.permute(0, 3, 1, 2)


def _version_key(model, dtype) -> tuple:
    """Identifies the current values of every tensor the folded parameters are made from."""
    tensors = [t for _, mods, _ in model.unique_modules() for m in mods
               for t in list(m.parameters()) + list(m.buffers())]
    return (dtype,) + tuple((t.data_ptr(), t._version) for t in tensors)


def launch_parameters(model, dtype) -> list[tuple]:
    """The trunk as few launches as possible (cuda.MAX_RUNS_PER_LAUNCH runs each; one for any usual depth):
    per launch (Ws, bs, dw filters [L,C,k,k], dw bias, s1, t1, s2, t2, run_lengths) — the per-run pointwise
    weights and biases as lists, the per-layer tensors stacked, BatchNorms folded — computed once, then cached.

    At batch 1 the stacking and BN folding would otherwise cost more launches than the whole trunk, so they are
    recomputed only when a parameter or running statistic changes (tracked by tensor version counters).
    """
    key = _version_key(model, dtype)
    cache = getattr(model, "_persistent_run_cache", None)
    if cache is not None and cache[0] == key:
        return cache[1]
    runs = model.pw_plan.runs
    launches = []
    for first in range(0, len(runs), cuda.MAX_RUNS_PER_LAUNCH):
        chunk = runs[first:first + cuda.MAX_RUNS_PER_LAUNCH]
        layers = [model.blocks[l] for start, stop in chunk for l in range(start, stop)]
        pws = [model.blocks[start].pointwise for start, _ in chunk]
        folded1 = [fold_bn(b.norm1) for b in layers]
        folded2 = [fold_bn(b.norm2) for b in layers]
        launches.append((
            [pw.weight.to(dtype).contiguous() for pw in pws], [pw.bias.float().contiguous() for pw in pws],
            # [L, C, k, k] stored tap-major (channels-last), the kernel's layout: no per-call copy
            torch.stack([b.depthwise.weight.float() for b in layers]).squeeze(2).contiguous(
                memory_format=torch.channels_last),
            torch.stack([b.depthwise.bias.float() for b in layers]),
            torch.stack([s for s, _ in folded1]), torch.stack([t for _, t in folded1]),
            torch.stack([s for s, _ in folded2]), torch.stack([t for _, t in folded2]),
            [stop - start for start, stop in chunk]))
    model._persistent_run_cache = (key, launches)
    return launches
