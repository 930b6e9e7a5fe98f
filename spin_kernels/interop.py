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
    default_cfg,
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


def timm_names() -> dict:
    """Our model names under their ``spin_`` names in timm's registry: ``spin_<name>``, except that timm's
    ``convmixer_768_32`` architecture is ``spin_timm_convmixer_768_32`` (``spin_convmixer_768_32`` is SPIN's
    variant under its own name)."""
    out = {}
    for name in MODELS:
        timm_name = name if name.startswith("spin_") else "spin_" + name
        if timm_name in MODELS and timm_name != name:
            timm_name = "spin_timm_" + name
        out[timm_name] = name
    return out


def _timm_entry(timm_name: str, name: str):
    """The registry entry for ``timm_name``: timm's builder (pretrained cfg, features_only wrappers, model traits)
    around :func:`create_model`."""
    from timm.models import build_model_with_cfg

    def build(pretrained_file=None, pretrained_hub=False, **kwargs):
        return create_model(name, pretrained=pretrained_hub, checkpoint_path=pretrained_file, **kwargs)

    def entry(pretrained=False, **kwargs):
        # No hub weights are registered for spin_ names: pretrained=True loads the timm namesake's weights through
        # create_model (or, with pretrained_cfg_overlay=dict(file=...), that file, read without running code).
        overlay = kwargs.get("pretrained_cfg_overlay") or {}
        if pretrained:
            kwargs["pretrained_file" if overlay.get("file") else "pretrained_hub"] = overlay.get("file") or True
        kwargs.pop("cache_dir", None)
        # features_only: timm's FeatureGetterNet over forward_intermediates (by default the last three layers)
        feature_cfg = dict(out_indices=kwargs.pop("out_indices", 3), feature_cls="getter")
        return build_model_with_cfg(build, timm_name, pretrained=False, feature_cfg=feature_cfg, **kwargs)

    entry.__name__ = entry.__qualname__ = timm_name
    entry.__module__ = __name__
    entry.__doc__ = f"spin_kernels {name} (see spin_kernels.create_model for the sharing arguments)."
    return entry


def register_with_timm():
    """Register every model in timm's registry under its ``spin_`` name (:func:`timm_names`), with a pretrained
    cfg (eval transform, ``pool_size``, classifier; no hub weights). Runs once when ``spin_kernels`` is
    imported."""
    try:
        from timm.models import generate_default_cfgs, register_model
        from timm.models._registry import is_model
    except ImportError:  # timm is a dependency, but the package must still import without it
        return
    this = sys.modules[__name__]  # timm records entries and their cfgs in the entry's module (default_cfgs)
    names = {t: n for t, n in timm_names().items() if not (is_model(t) and getattr(this, t, None) is not None)}
    cfgs = {}
    for timm_name, name in names.items():
        cfg = default_cfg(name)
        cfgs[timm_name] = {k: v for k, v in cfg.items() if k != "architecture"}
    this.default_cfgs = {**getattr(this, "default_cfgs", {}), **generate_default_cfgs(cfgs)}
    for timm_name, name in names.items():
        entry = _timm_entry(timm_name, name)
        setattr(this, timm_name, entry)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            register_model(entry)


register_with_timm()
