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
    """Why the persistent kernel cannot run this call, or None when it can (checks of the call, then of the
    model's structure, cached: this is the batch-1 host path)."""
    if model.training:
        return "training mode (the persistent kernel is inference-only)"
    if not cuda.runs_here(images):
        return "the input is not on a CUDA device" if not images.is_cuda else cuda.status()["reason"]
    if images.shape[0] > MAX_BATCH:
        return f"batch {images.shape[0]} > {MAX_BATCH}"
    cached = model.__dict__.get("_persistent_model_reason")
    if cached is None or cached[0] is not model.blocks or cached[1] != images.device:
        cached = (model.blocks, images.device, _model_reason(model, images))
        model.__dict__["_persistent_model_reason"] = cached
    return cached[2]


def _model_reason(model, images: torch.Tensor) -> str | None:
    """Why the kernel cannot run this model on ``images``' device, or None (fixed until the layers are rebuilt)."""
    if model.arch["dim"] % SLICE:
        return f"dim {model.arch['dim']} is not a multiple of {SLICE}"
    fits, need, have = cuda.shared_run_fits(images, model.arch["dim"])
    if not fits:
        return (f"dim {model.arch['dim']} needs {need // 1024} KiB of shared memory per CTA (the resident weight "
                f"slice), this GPU gives {have // 1024} KiB")
    if model.arch["kernel_size"] > 9:
        return f"kernel_size {model.arch['kernel_size']} > 9"
    if any(b.norm1.running_var is None or b.norm2.running_var is None for b in model.blocks):
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
    cache = _launch_cache(model, dtype)
    if cache.prepared is None:  # first call after a parameter change: check and convert once
        act, spin = model.arch["act"], model.arch["spin_residual"]
        cache.prepared = [cuda.prepare_shared_run(x, *params, act=act, spin_residual=spin, run_lengths=run_lengths)
                          for *params, run_lengths in cache.launches]
    for i, prepared in enumerate(cache.prepared):
        try:
            x = cuda.launch_shared_run(prepared, x)
        except RuntimeError as e:
            # Too few co-resident CTAs for one per W slice (a small GPU or MIG slice): every launch has the same
            # width, so the first one decides; the caller takes the per-layer path.
            if i > 0 or "cooperative launch" not in str(e):
                raise
            warn_once("convmixer_cuda:resident", f"weights-resident CUDA kernel not used: {e}")
            return None
    return x.permute(0, 3, 1, 2)


class _LaunchCache:
    """The folded launch parameters of one model and dtype, the watch that says when they are stale, and the
    prepared launches (made on the first call, which knows the input's device)."""

    def __init__(self, token, watch, launches):
        self.token, self.watch, self.launches, self.prepared = token, watch, launches, None

    def __reduce__(self):  # a copied or pickled model rebuilds its own cache (the watch follows these tensors)
        return _no_cache, ()


def _no_cache():
    return None


def _structure(model, dtype) -> tuple:
    """What identifies the model's structure: the dtype and the layer views (``blocks``, compared by identity:
    every change of plan or module rebuilds them, and the launches are folded from them)."""
    return dtype, model.blocks


def _source_tensors(model) -> list:
    """Every parameter and buffer of the modules the layers use, each once."""
    modules = {}
    for block in model.blocks:
        for m in (block.depthwise, block.norm1, block.pointwise, block.norm2):
            modules[id(m)] = m
    return [t for m in modules.values() for t in (*m.parameters(), *m.buffers())]


def _launch_cache(model, dtype) -> _LaunchCache:
    """The model's launch cache, rebuilt when a parameter or running statistic changed (tracked by a tensor watch:
    in-place updates, new data, swaps) or the structure did. At batch 1 the folding would otherwise cost more than
    the whole trunk; the check costs a few microseconds."""
    token = _structure(model, dtype)
    cache = model.__dict__.get("_persistent_run_cache")
    if cache is not None and cache.token == token and cache.watch.unchanged():
        return cache
    cache = _LaunchCache(token, cuda.tensor_watch(_source_tensors(model)), _fold(model, dtype))
    model.__dict__["_persistent_run_cache"] = cache
    return cache


def launch_parameters(model, dtype) -> list[tuple]:
    """The trunk as few launches as possible (cuda.MAX_RUNS_PER_LAUNCH runs each; one for any usual depth):
    per launch (Ws, bs, dw filters [L,C,k,k], dw bias, s1, t1, s2, t2, run_lengths) — the per-run pointwise
    weights and biases as lists, the per-layer tensors stacked, BatchNorms folded — computed once, then cached
    until a parameter or running statistic changes."""
    return _launch_cache(model, dtype).launches


def _fold(model, dtype) -> list[tuple]:
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
    return launches
