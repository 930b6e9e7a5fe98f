"""timm interop: our models from timm models or weights, and our models in timm's registry.

Imports the model layer and fusion (never the other way round):

* :func:`from_timm` — a timm ``ConvMixer`` / ``VisionTransformer`` (or its state_dict) as one of our models: the
  same function at ``share_rate=1``, the weight-fusion training form when layers share;
* :func:`arch_from_timm` — the architecture arguments a timm state_dict implies;
* :func:`register_with_timm` — every model of ours under a ``spin_`` name in timm's registry (run once when
  ``spin_kernels`` is imported), so ``timm.create_model("spin_convmixer_768_32", ...)`` works.
"""
from __future__ import annotations

import sys
import warnings

from torch import nn

from .fusion import FUSION_METHODS, fuse_into
from .models.registry import (
    MODELS,
    _family,
    convert_timm_state_dict,
    create_model,
    load_weights,
)
from .sharing import make_plan


def arch_from_timm(name: str, state: dict, model: nn.Module | None = None) -> dict:
    """Architecture arguments implied by a timm state_dict (and the model object, when given)."""
    state = convert_timm_state_dict(name, state)
    family = _family(name)
    needed = (("stem.0.weight", "depthwise.0.weight") if family == "convmixer" else
              ("patch_embed.proj.weight", "pos_embed", "mlp.0.fc1.weight"))
    absent = [k for k in needed if k not in state]
    if absent:
        raise ValueError(f"state_dict: these weights are not a {name} ({family}) in timm's or our layout: no "
                         f"{', '.join(absent)} (keys start {', '.join(sorted(state)[:4]) or 'nowhere: empty'})")
    if family == "convmixer":
        w = state["stem.0.weight"]
        arch = dict(dim=w.shape[0], in_chans=w.shape[1], patch_size=w.shape[2],
                    kernel_size=state["depthwise.0.weight"].shape[-1],
                    depth=len({k.split(".")[1] for k in state if k.startswith("pointwise.")}))
        if model is not None and hasattr(model, "stem"):
            arch["act"] = "relu" if isinstance(model.stem[1], nn.ReLU) else "gelu"
    else:
        w = state["patch_embed.proj.weight"]
        n = state["pos_embed"].shape[1] - 1
        arch = dict(embed_dim=w.shape[0], in_chans=w.shape[1], patch_size=w.shape[2],
                    img_size=int(round(n ** 0.5)) * w.shape[2],
                    depth=len({k.split(".")[1] for k in state if k.startswith("attn.")}),
                    mlp_ratio=state["mlp.0.fc1.weight"].shape[0] / w.shape[0])
        if model is not None and hasattr(model, "blocks"):
            arch["num_heads"] = model.blocks[0].attn.num_heads
    arch["num_classes"] = state["head.weight"].shape[0] if "head.weight" in state else 0
    return arch


def from_timm(timm_model_or_state_dict, name: str, *, share_rate: int = 1, mapping="sequential", share=None,
              method: str | None = None, **kwargs) -> nn.Module:
    """Convert a timm model or state_dict of the matching architecture into one of ours.

    With ``share_rate=1`` (and an unshared mapping) the result computes the same function as the timm model.
    With sharing, per-layer weights are fused by ``method`` over the groups the plan defines, and the
    fusion-training form is returned (``model.collapse()`` gives the plain shared model).

    Args:
        timm_model_or_state_dict: a timm ``ConvMixer`` / ``VisionTransformer`` or its state_dict.
        name: our model name (``list_models()``) of the same architecture family.
        share_rate, mapping, share: the sharing plan (see ``create_model``).
        method: fusion method when layers share weights (``mean``, ``choose_first``, ``scalar_weighted_mean``,
            ``channel_weighted_mean``).
        kwargs: further ``create_model`` arguments (architecture overrides win over what the weights imply).
    """
    model_obj = timm_model_or_state_dict if isinstance(timm_model_or_state_dict, nn.Module) else None
    state = model_obj.state_dict() if model_obj is not None else dict(timm_model_or_state_dict)
    arch = {**arch_from_timm(name, state, model_obj), **kwargs}
    unshared = create_model(name, **arch)
    load_weights(unshared, convert_timm_state_dict(name, state), name)
    if not make_plan(unshared.arch["depth"], share_rate, mapping).is_shared:
        return unshared
    if method is None:
        raise ValueError(f"method: share_rate={share_rate} / mapping={mapping!r} shares weights; pass a fusion "
                         f"method ({', '.join(FUSION_METHODS)})")
    shared = create_model(name, share_rate=share_rate, mapping=mapping, share=share, **arch)
    fuse_into(shared, unshared, method)
    shared.spin_config["fusion"] = method
    return shared


_TIMM_FACTORY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "features_only", "out_indices")


def register_with_timm():
    """Register every model in timm's registry under a ``spin_`` prefix.

    ``spin_convmixer_768_32`` is SPIN's variant under its own name, so timm's ``convmixer_768_32`` architecture
    registers as ``spin_timm_convmixer_768_32`` to avoid the clash.
    """
    try:
        from timm.models import register_model
        from timm.models._registry import is_model
    except ImportError:  # timm is a dependency, but the package must still import without it
        return
    this = sys.modules[__name__]  # the entries live in this module, where timm's registry records them
    for name in MODELS:
        timm_name = name if name.startswith("spin_") else "spin_" + name
        if timm_name in MODELS and timm_name != name:
            timm_name = "spin_timm_" + name
        if is_model(timm_name) and getattr(this, timm_name, None) is not None:
            continue

        def entry(pretrained=False, _name=name, **kwargs):
            for key in _TIMM_FACTORY_KWARGS:  # what timm.create_model adds for its own builders
                kwargs.pop(key, None)
            return create_model(_name, pretrained=pretrained, **kwargs)

        entry.__name__ = timm_name
        entry.__qualname__ = timm_name
        entry.__module__ = __name__
        entry.__doc__ = f"spin_kernels {name} (see spin_kernels.create_model for the sharing arguments)."
        setattr(this, timm_name, entry)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            register_model(entry)


register_with_timm()
