"""Model names, ``create_model``, checkpoints, timm interop and the analytic profile."""
from __future__ import annotations

import contextlib
import inspect
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from .. import checkpoint_io
from ..fusion import check_method, fuse_into
from ..sharing import make_plan
from . import convmixer as _convmixer
from . import vit as _vit
from .common import IsotropicModel, UnknownArgumentError

# name -> (family, architecture arguments). ConvMixer entries follow timm's, plus SPIN's variant (DESIGN.md §1).
MODELS: dict[str, tuple[str, dict]] = {
    "convmixer_768_32": ("convmixer", dict(dim=768, depth=32, kernel_size=7, patch_size=7, act="relu")),
    "convmixer_1536_20": ("convmixer", dict(dim=1536, depth=20, kernel_size=9, patch_size=7, act="gelu")),
    "convmixer_1024_20_ks9_p14": ("convmixer", dict(dim=1024, depth=20, kernel_size=9, patch_size=14, act="gelu")),
    "spin_convmixer_768_32": ("convmixer", dict(dim=768, depth=32, kernel_size=3, patch_size=14, act="relu",
                                                spin_residual=True, drop_rate=0.5)),
    "deit_tiny_patch16_224": ("vit", dict(patch_size=16, embed_dim=192, depth=12, num_heads=3)),
    "deit_small_patch16_224": ("vit", dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)),
    "deit_base_patch16_224": ("vit", dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)),
}
FAMILY_CLASSES = {"convmixer": _convmixer.ConvMixer, "vit": _vit.VisionTransformer}
MACS = {"convmixer": _convmixer.layer_macs, "vit": _vit.layer_macs}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def list_models(pattern: str = "") -> list[str]:
    """Model names ``create_model`` accepts, optionally filtered by a substring or fnmatch pattern."""
    import fnmatch

    names = sorted(MODELS)
    if not pattern:
        return names
    return [n for n in names if fnmatch.fnmatch(n, pattern) or pattern in n]


def _family(name: str) -> str:
    if name not in MODELS:
        raise ValueError(f"name: unknown model {name!r}; known models are {', '.join(sorted(MODELS))}")
    return MODELS[name][0]


def default_cfg(name: str, arch: dict | None = None) -> dict:
    """timm-style pretrained cfg of model ``name`` (architecture arguments ``arch``, default: the registered
    ones): the eval transform (input size, crop_pct, interpolation, mean/std), the final feature map's
    ``pool_size`` (ConvMixer), the classifier, and no hub weights (``url`` / ``hf_hub_id`` empty)."""
    family = _family(name)
    arch = MODELS[name][1] if arch is None else arch
    size = arch.get("img_size") or 224
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    crop_pct = 0.96 if family == "convmixer" else 0.875
    first_conv = "stem.0" if family == "convmixer" else "patch_embed.proj"
    try:  # take timm's own numbers for the architectures timm has
        import timm

        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is not None:
            crop_pct = cfg.crop_pct
    except Exception:  # noqa: BLE001 - timm cfg lookups are a nicety, the defaults above are right
        pass
    p = arch["patch_size"]
    pool_size = (height // p, width // p) if family == "convmixer" else None
    return dict(architecture=name, url="", hf_hub_id="", input_size=(arch.get("in_chans", 3), height, width),
                pool_size=pool_size, crop_pct=crop_pct, crop_mode="center", interpolation="bicubic",
                mean=IMAGENET_MEAN, std=IMAGENET_STD, num_classes=arch.get("num_classes", 1000),
                first_conv=first_conv, classifier="head", fixed_input_size=family == "vit", license="apache-2.0")


def create_model(name: str, *, share_rate: int = 1, mapping="sequential", share=None, share_norms: bool = False,
                 fusion: str | None = None, backend: str = "reference", num_classes: int = 1000,
                 pretrained: bool = False, checkpoint_path: str | Path | None = None,
                 trust_checkpoint: bool = False, device=None, dtype=None, **arch_overrides) -> nn.Module:
    """Build a ConvMixer or DeiT with cross-layer weight sharing.

    Args:
        name: one of ``list_models()``.
        share_rate: layers per unique weight set (r); ``mapping`` says which layers share: ``sequential``,
            ``strided``/``cycle``, ``cycle_rev``, ``random``, an explicit list, or a ``SharingPlan``.
        share: weight families shared — ConvMixer ``("pointwise",)`` (default), ``("depthwise",)`` or both;
            ViT ``("attn", "mlp")`` (default), ``("attn",)`` or ``("mlp",)``.
        share_norms: share BatchNorm/LayerNorm too (an ablation; SPIN keeps norms per layer).
        fusion: build the weight-fusion training form (``mean``, ``choose_first``, ``scalar_weighted_mean``,
            ``channel_weighted_mean``): per-layer weights stay trainable, shared ones are computed from them.
        backend: ``reference`` (PyTorch), ``triton``, ``cuda``, or ``auto`` (best on this machine).
        num_classes: classifier outputs (0: no head).
        pretrained: load timm's pretrained weights through timm's hub loader (needs the network).
        checkpoint_path: load weights from one of our checkpoints or a timm-format checkpoint (``.pth`` or
            ``.safetensors``); files are read without running code from them (``weights_only``).
        trust_checkpoint: also read legacy pickled checkpoints (only for files whose origin you trust).
        device, dtype: where and in what dtype the parameters are made (``device="meta"``: shapes only, no memory).
        arch_overrides: timm's architecture arguments — ConvMixer ``dim, depth, kernel_size, patch_size,
            in_chans`` (+ ``act``, ``spin_residual``, ``drop_rate``); ViT ``embed_dim, depth, num_heads,
            patch_size, img_size, mlp_ratio, in_chans`` (+ ``drop_rate``, ``drop_path_rate``,
            ``attn_drop_rate``, ``fix_init``).
    """
    family = _family(name)
    arch = {**MODELS[name][1], **arch_overrides}
    plan = make_plan(arch["depth"], share_rate, mapping)
    if fusion is not None:
        check_method(fusion)
        if not plan.is_shared:
            raise ValueError("fusion: weight fusion needs a plan that shares weights (share_rate > 1 or a "
                             "mapping list with repeats)")
    spin_config = dict(name=name, share_rate=share_rate,
                       mapping=list(plan.layer_to_unique) if not isinstance(mapping, str) else mapping,
                       share=share, share_norms=share_norms, fusion=fusion, backend=backend,
                       num_classes=num_classes, **arch_overrides)
    cls = FAMILY_CLASSES[family]
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype: expected a floating-point torch.dtype, got {dtype!r}")
    bad = sorted(set(arch_overrides) - set(inspect.signature(cls.__init__).parameters))
    if bad:  # timm's contract: an argument the model does not take is a TypeError
        raise UnknownArgumentError(f"arch_overrides: {name} takes no argument {', '.join(map(repr, bad))}; it "
                                   f"takes {_arch_args(cls)}")
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = cls(num_classes=num_classes, plan=plan, share=share, share_norms=share_norms, backend=backend,
                    **arch)

    if pretrained and checkpoint_path is not None:
        raise ValueError("pretrained / checkpoint_path: pass one of them, not both")
    state = None
    if pretrained:
        state = convert_timm_state_dict(name, _timm_pretrained_state(name, arch))
    elif checkpoint_path is not None:
        state = convert_timm_state_dict(name, read_checkpoint(checkpoint_path, trusted=trust_checkpoint))
    if fusion is not None:
        # The fusion form is built from an unshared model: the checkpoint's per-layer weights, or a fresh init.
        # A checkpoint of the fusion form itself (keys with ".parametrizations.") is loaded after building it.
        source = create_model(name, num_classes=num_classes, device=device, **arch_overrides)
        fused_state = state if state is not None and any(".parametrizations." in k for k in state) else None
        if state is not None and fused_state is None:
            load_weights(source, state, name)
        fuse_into(model, source, fusion)
        if fused_state is not None:
            load_weights(model, fused_state, name)
    elif state is not None:
        load_weights(model, state, name)
    if dtype is not None:
        model.to(dtype)
    model.default_cfg = default_cfg(name, {**arch, "num_classes": num_classes})
    model.spin_config = spin_config
    return model


IsotropicModel.factory = staticmethod(create_model)  # what model.collapse() rebuilds a plain model with


def _arch_args(cls) -> str:
    skip = {"self", "num_classes", "plan", "share", "share_norms", "backend"}
    return ", ".join(p for p in inspect.signature(cls.__init__).parameters if p not in skip)


def read_checkpoint(path: str | Path, trusted: bool = False) -> dict:
    """The model state_dict inside a checkpoint file: ours (key ``model``), timm's (``state_dict``; the EMA weights
    only when they are all there is), a ``.safetensors`` file, or a bare state_dict; wrapper prefixes removed.

    Loading never runs code from the file (``weights_only``); ``trusted=True`` is the opt-in for legacy pickles
    from a source you trust (see :mod:`spin_kernels.checkpoint_io`).
    """
    return checkpoint_io.state_dict_of(checkpoint_io.load(path, trusted=trusted, what="checkpoint_path"), path,
                                       what="checkpoint_path")


def load_weights(model: nn.Module, state: dict, name: str):
    """Load ``state`` strictly, except a classifier of another size (dropped with a warning, as timm does).

    Raises ValueError naming the missing / unexpected keys and every tensor whose shape differs from the model's.
    """
    own = model.state_dict()
    head = []
    if "head.weight" in state and "head.weight" in own:
        theirs, ours = state["head.weight"].shape, own["head.weight"].shape
        if theirs[1:] == ours[1:] and theirs[0] != ours[0]:  # same features, another number of classes
            warnings.warn(f"checkpoint classifier has {theirs[0]} classes, the model {ours[0]}: the head is left "
                          "at its initialisation", stacklevel=3)
            head = [k for k in ("head.weight", "head.bias") if k in state]
            state = {k: v for k, v in state.items() if k not in head}
    shapes = [f"{k} {tuple(v.shape)} in the checkpoint, {tuple(own[k].shape)} in the model"
              for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state and k not in head]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected or shapes:
        hint = ""
        if any(re.match(r"(pointwise|depthwise|attn|mlp)\.\d+", k) for k in unexpected):
            hint = (" — the checkpoint has more per-layer weights than this shared model: build it with "
                    "fusion='mean' (or another method), or use `spin compress`")
        parts = [f"{label} {_few(keys)}" for label, keys in (("shapes differ:", shapes), ("missing", missing),
                                                             ("unexpected", unexpected)) if keys]
        raise ValueError(f"checkpoint does not match {name}: {'; '.join(parts)}{hint}")
    model.load_state_dict(state, strict=False)


def _few(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def load_model(path: str | Path, *, trusted: bool = False, **overrides) -> nn.Module:
    """Rebuild a model from one of our checkpoints (``{"model": state_dict, "spin_config": {...}}``, ``.pth`` or
    ``.safetensors``).

    ``overrides`` replace create_model arguments of the saved config (e.g. ``backend="triton"``). ``trusted=True``
    also loads legacy pickled checkpoints (only for files whose origin you trust: unpickling can run code).
    """
    ckpt = checkpoint_io.load(path, trusted=trusted, what="path")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("spin_config"), dict):
        raise checkpoint_io.CheckpointError(
            f"path: {path} is not a spin_kernels checkpoint (no 'spin_config'); use "
            "create_model(name, checkpoint_path=...) for timm-format weights")
    model = model_from_config(ckpt["spin_config"], **overrides)
    load_weights(model, checkpoint_io.state_dict_of(ckpt, path, what="path"), model.spin_config["name"])
    return model


def model_from_config(spin_config: dict, **overrides) -> nn.Module:
    """A fresh model from a checkpoint's ``spin_config`` (create_model's arguments), ``overrides`` applied."""
    config = {**spin_config, **overrides}
    if config.get("name") not in MODELS:
        raise checkpoint_io.CheckpointError(f"spin_config: unknown model {config.get('name')!r}; known models are "
                                            f"{', '.join(sorted(MODELS))}")
    fusion = config.pop("fusion", None)
    name = config.pop("name")
    return create_model(name, fusion=fusion, **config)


def config_conflicts(spin_config: dict, name: str | None = None, arch_overrides: dict | None = None) -> list[str]:
    """What in (``name``, ``arch_overrides``) contradicts the model a checkpoint's ``spin_config`` describes.

    Our checkpoints carry their architecture, so ``--model`` / ``--model-kwargs`` may only repeat it: each
    returned item names a value and what the checkpoint has (empty: no conflict).
    """
    saved = spin_config.get("name")
    out = [f"--model {name} (the checkpoint holds a {saved})"] if name and name != saved else []
    if saved not in MODELS:
        return out
    cls = FAMILY_CLASSES[_family(saved)]
    defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    arch = {**defaults, **MODELS[saved][1], **{k: v for k, v in spin_config.items() if k in defaults}}
    for key, value in (arch_overrides or {}).items():
        if key not in arch:
            out.append(f"{key}={value} (not an argument of {saved}; it takes {_arch_args(cls)})")
        elif arch[key] != value:
            out.append(f"{key}={value} (the checkpoint's model has {key}={arch[key]})")
    return out


def save_model(model: nn.Module, path: str | Path, **extra):
    """Write ``{"model": state_dict, "spin_config": ..., **extra}`` atomically; ``.safetensors`` paths get that
    format (the config as JSON metadata), which timm and other tools read too."""
    checkpoint_io.save({"model": model.state_dict(), "spin_config": model.spin_config, **extra}, path)


# ------------------------------------------------------------------------------------------------ timm interop

_TIMM_CONVMIXER = [(r"^blocks\.(\d+)\.0\.fn\.0\.", r"depthwise.\1."), (r"^blocks\.(\d+)\.0\.fn\.2\.", r"norm1.\1."),
                   (r"^blocks\.(\d+)\.1\.", r"pointwise.\1."), (r"^blocks\.(\d+)\.3\.", r"norm2.\1.")]
_TIMM_VIT = [(r"^blocks\.(\d+)\.norm1\.", r"norm1.\1."), (r"^blocks\.(\d+)\.attn\.", r"attn.\1."),
             (r"^blocks\.(\d+)\.norm2\.", r"norm2.\1."), (r"^blocks\.(\d+)\.mlp\.", r"mlp.\1.")]


def is_timm_state_dict(state: dict) -> bool:
    """True when the keys follow timm's layout (``blocks.{l}....``) rather than ours."""
    return any(k.startswith("blocks.") for k in state)


def convert_timm_state_dict(name: str, state: dict) -> dict:
    """Rename a timm ConvMixer / ViT state_dict to our (unshared) parameter names; ours pass through."""
    if not is_timm_state_dict(state):
        return dict(state)
    rules = _TIMM_CONVMIXER if _family(name) == "convmixer" else _TIMM_VIT
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            key, n = re.subn(pattern, repl, key)
            if n:
                break
        out[key] = value
    if "dist_token" in out or "head_dist.weight" in out:
        raise ValueError("state_dict: distilled DeiT checkpoints (dist_token) are not supported; use the "
                         "non-distilled deit_*_patch16_224 weights")
    return out


def _timm_pretrained_state(name: str, arch: dict) -> dict:
    """Download timm's pretrained weights for ``name`` through timm's hub loader, or fail clearly."""
    import timm

    if not timm.models.is_model_pretrained(name):
        raise ValueError(f"pretrained: timm has no pretrained weights for {name}; pass checkpoint_path=")
    try:
        return timm.create_model(name, pretrained=True).state_dict()
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one clear message
        raise RuntimeError(f"pretrained: could not fetch {name}'s weights through timm's hub loader "
                           f"({type(e).__name__}: {str(e)[:200]}). Without network access, download the "
                           "checkpoint elsewhere and pass checkpoint_path=") from e


def profile(model: nn.Module, img_size: int | None = None) -> dict:
    """Parameter and compute profile of one of our models.

    Returns a dict: ``params`` (the true unique count), ``params_unshared`` (what the same architecture costs
    without sharing), ``compression`` (their ratio), ``macs`` (analytic multiply-accumulates per image, all layers
    and the head) and ``per_layer`` (name, macs, and part-wise MACs).
    """
    family = _family(model.spin_config["name"])
    size = img_size or model.default_cfg["input_size"][-1]
    rows = MACS[family](model, size)
    params = sum(p.numel() for p in model.parameters())
    # Without sharing every layer has its own copy of each family's unique module.
    unshared = params
    for _, mods, plan in model.unique_modules():
        per_module = [sum(p.numel() for p in m.parameters()) for m in mods]
        unshared += sum(per_module[u] for u in plan.layer_to_unique) - sum(per_module)
    return dict(params=params, params_unshared=unshared, compression=unshared / params,
                macs=sum(r["macs"] for r in rows), per_layer=rows, img_size=size)
