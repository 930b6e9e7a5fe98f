"""Weight-space similarity across layers, and how far fusion-trained layers moved from their group mean.

Per-layer tensors are read through ``model.unique_modules()`` (family name, unique modules, sharing plan): layer l
uses ``modules[plan.layer_to_unique[l]]``. In the fusion-training form (``from_timm(..., method=...)``) a shared
module's tensor is parametrized, and layer l's own trainable source is
``module.parametrizations.<tensor>.original{i}`` with ``i = plan.groups[u].index(l)`` — that is what we read, so
the analysis sees what each layer actually learned, not the fused result.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

# Default families per architecture: the ones SPIN shares (DESIGN.md §1). Norms are left out: they are per layer
# and tiny, and their scale differences would dominate a cosine over few numbers.
DEFAULT_PARTS = {"convmixer": ("pointwise",), "vit": ("attn", "mlp")}
PART_ALIASES = {"block": ("attn", "mlp")}


def _families(model: nn.Module) -> dict:
    """``{family: (modules, plan)}`` of a spin_kernels model."""
    if not hasattr(model, "unique_modules"):
        raise ValueError("model: expected a spin_kernels model (with unique_modules()), got "
                         f"{type(model).__name__}")
    return {name: (mods, plan) for name, mods, plan in model.unique_modules()}


def resolve_parts(model: nn.Module, part: str | Sequence[str] | None) -> tuple[str, ...]:
    """Families to analyse: ``None`` -> the shared families of the architecture; ``"block"`` -> attn + mlp."""
    fams = _families(model)
    if part is None:
        for parts in DEFAULT_PARTS.values():
            if all(p in fams for p in parts):
                return parts
        return tuple(n for n in fams if not n.startswith("norm"))
    parts = (part,) if isinstance(part, str) else tuple(part)
    out: list[str] = []
    for p in parts:
        out.extend(PART_ALIASES.get(p, (p,)))
    unknown = [p for p in out if p not in fams]
    if unknown:
        raise ValueError(f"part: {unknown} not in this model; available: {sorted(fams)} or 'block'")
    return tuple(out)


def _is_parametrized(owner: nn.Module, leaf: str) -> bool:
    return hasattr(owner, "parametrizations") and leaf in owner.parametrizations


def _owner(module: nn.Module, dotted: str):
    *path, leaf = dotted.split(".")
    for name in path:
        module = getattr(module, name)
    return module, leaf


def _param_names(module: nn.Module, include_bias: bool) -> list[str]:
    """Names of the module's tensors (parametrized ones by their public name), weights first."""
    names = []
    for name, _ in module.named_parameters():
        # parametrize stores sources as `<owner>.parametrizations.<leaf>.original{i}` (and α as `.0.alpha`).
        if ".parametrizations." in f".{name}":
            head, rest = name.split("parametrizations.", 1)
            leaf = rest.split(".", 1)[0]
            name = f"{head}{leaf}"
        if name not in names:
            names.append(name)
    return [n for n in names if n.endswith("weight") or (include_bias and n.endswith("bias"))]


def per_layer_tensors(model: nn.Module, part=None, *, include_bias: bool = False) -> list[torch.Tensor]:
    """One flattened float64 vector per layer: the concatenation of that layer's tensors in ``part``."""
    fams = _families(model)
    parts = resolve_parts(model, part)
    depth = len(model.blocks)
    out: list[list[torch.Tensor]] = [[] for _ in range(depth)]
    for fam in parts:
        mods, plan = fams[fam]
        for layer in range(depth):
            u = plan.layer_to_unique[layer]
            for pname in _param_names(mods[u], include_bias):
                owner, leaf = _owner(mods[u], pname)
                if _is_parametrized(owner, leaf):
                    idx = plan.groups[u].index(layer)
                    t = getattr(owner.parametrizations[leaf], f"original{idx}")
                else:
                    t = getattr(owner, leaf)
                out[layer].append(t.detach().reshape(-1).to(torch.float64).cpu())
    return [torch.cat(v) for v in out]


@torch.no_grad()
def weight_similarity(model: nn.Module, part=None, *, include_bias: bool = False) -> np.ndarray:
    """L×L cosine similarity of the flattened per-layer weights of ``part``.

    ``part``: ``"pointwise"`` / ``"depthwise"`` (ConvMixer), ``"attn"`` / ``"mlp"`` / ``"block"`` (ViT), or None
    for what the architecture shares by default. Layers that share one tensor have similarity 1.
    """
    vecs = per_layer_tensors(model, part, include_bias=include_bias)
    W = torch.stack(vecs)
    norms = W.norm(dim=1, keepdim=True).clamp_min(1e-300)
    Wn = W / norms
    return (Wn @ Wn.T).numpy()


@torch.no_grad()
def fusion_drift(model: nn.Module, part=None) -> list[dict]:
    """For a fusion-trained model: how far each layer's own tensor moved from its group's mean.

    Returns one row per (family, tensor, layer) of every parametrized group:
    ``dict(family, tensor, unique, layer, rel_dist = ‖W_l − mean‖/‖mean‖, cosine = cos(W_l, mean))``.
    At fusion time with ``mean`` fusion of identical sources every rel_dist is 0; training moves them apart.
    """
    fams = _families(model)
    rows = []
    for fam in resolve_parts(model, part):
        mods, plan = fams[fam]
        for u, mod in enumerate(mods):
            for pname in _param_names(mod, include_bias=True):
                owner, leaf = _owner(mod, pname)
                if not _is_parametrized(owner, leaf):
                    continue
                group = plan.groups[u]
                srcs = [getattr(owner.parametrizations[leaf], f"original{i}").detach().to(torch.float64).cpu()
                        for i in range(len(group))]
                mean = torch.stack(srcs).mean(0)
                mnorm = mean.norm().clamp_min(1e-300)
                for layer, w in zip(group, srcs, strict=True):
                    cos = float((w * mean).sum() / (w.norm().clamp_min(1e-300) * mnorm))
                    rows.append({"family": fam, "tensor": pname, "unique": u, "layer": layer,
                                 "rel_dist": float((w - mean).norm() / mnorm), "cosine": cos})
    if not rows:
        raise ValueError("model: no fused (parametrized) tensors found; fusion_drift needs the fusion-training "
                         "form from spin_kernels.from_timm(..., share_rate>1, method=...)")
    return rows


def drift_per_layer(rows: list[dict], depth: int) -> np.ndarray:
    """Mean ``rel_dist`` per layer over the :func:`fusion_drift` rows (NaN for layers without a fused group)."""
    total = np.zeros(depth)
    count = np.zeros(depth)
    for r in rows:
        total[r["layer"]] += r["rel_dist"]
        count[r["layer"]] += 1
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)
