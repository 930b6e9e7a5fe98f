"""Pieces every isotropic model here shares: sharing plans per component, layer views, the timm-style API.

Storage layout (the same for every backend, so a state_dict moves between them): each weight family that may be
shared (ConvMixer `depthwise`, `pointwise`; ViT `attn`, `mlp`; the per-layer norms) is a ``ModuleList`` of its
*unique* modules, and a :class:`~spin_kernels.sharing.SharingPlan` per family says which unique module layer ``l``
uses. A shared tensor is therefore stored — and saved — once, and ``sum(p.numel() for p in model.parameters())``
is the true unique parameter count.

``model.blocks[l]`` is a parameterless view of layer ``l`` that *refers to* (does not own) the unique modules it
uses. It exists so forward hooks, ``model.train()`` propagation to per-position modules (drop-path) and timm-style
``blocks`` indexing work exactly as users expect, while storage stays unique.

No ``from __future__ import annotations`` in the model modules: TorchScript and torch.fx read the annotations of
``forward`` at run time, and string annotations break both.
"""
import copy
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..backends import probe_cuda_extension, resolve_backend
from ..sharing import SharingPlan


class UnknownArgumentError(TypeError, ValueError):
    """An argument the model does not take: a TypeError as timm's contract says (callers catch TypeError), and a
    ValueError like every other bad argument here."""


# timm's MATCH_PREV_GROUP: a group_matcher ordinal that joins the previous group (the final norm joins the last layer)
MATCH_PREV_GROUP = (99999,)


def take_indices(depth: int, indices) -> Tuple[List[int], int]:
    """Which layers ``forward_intermediates`` returns (timm's ``feature_take_indices``) and the last one needed.

    ``None``: every layer; an int ``n``: the last ``n`` layers; a sequence: those layers (negative counts from the
    end). Layers are positions ``0..depth-1`` — with shared weights, layer ``l`` is the ``l``-th application.
    """
    if indices is None:
        indices = depth
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 0 < indices <= depth:
            raise ValueError(f"indices: expected 1..{depth} (the last n layers), got {indices}")
        take = list(range(depth - indices, depth))
    else:
        take = []
        for i in indices:
            if not isinstance(i, int) or isinstance(i, bool) or not -depth <= i < depth:
                raise ValueError(f"indices: expected layer positions in {-depth}..{depth - 1}, got {list(indices)}")
            take.append(i % depth)
        if not take:
            raise ValueError("indices: expected at least one layer position, got none")
    return take, max(take)


def resolve_share(share, valid: Sequence[str], default: Sequence[str]) -> tuple[str, ...]:
    """Validate the ``share`` argument (which weight families are shared) and return it as a tuple."""
    if share is None:
        return tuple(default)
    if isinstance(share, str):
        share = (share,)
    share = tuple(share)
    bad = [s for s in share if s not in valid]
    if bad or not share:
        raise ValueError(f"share: expected a non-empty subset of {list(valid)}, got {list(share)}")
    return share


class LayerView(nn.Module):
    """Base of a parameterless per-layer module holding references to the unique modules it uses."""

    def __init__(self, index: int):
        super().__init__()
        self.index = index
        self._refs: Tuple[str, ...] = ()

    def _refer(self, **modules: nn.Module):
        # object.__setattr__ bypasses nn.Module registration: the modules stay owned (and saved) by the model's
        # unique ModuleLists only.
        self._refs = tuple(modules)
        for name, module in modules.items():
            object.__setattr__(self, name, module)

    def materialized(self) -> "LayerView":
        """A copy that registers the modules it refers to (the same objects), for TorchScript, which can only call
        registered submodules. Its state_dict repeats shared tensors, so it serves scripting only."""
        clone = copy.copy(self)
        clone.__dict__["_modules"] = dict(self._modules)
        for name in self._refs:
            clone._modules[name] = clone.__dict__.pop(name)
        return clone

    def extra_repr(self) -> str:
        return f"layer={self.index}"


class IsotropicModel(nn.Module):
    """timm's model API shared by ConvMixer and ViT: classifier handling, grad checkpointing, intermediates,
    pruning, parameter groups, TorchScript, collapse.

    Subclasses set ``self.plan`` (the sharing plan), the per-family plans named in ``PLAN_OF``, ``in_chans``, and
    build ``blocks`` / ``feature_info`` in ``_build_blocks()``; ``GLOBAL_POOLS`` lists the pooling modes they take.
    Instances also carry ``default_cfg`` (timm's pretrained cfg) and ``spin_config`` (create_model's arguments).
    """

    # create_model(**spin_config) builds a model from its config; models/registry.py installs it here (the
    # registry sits above this module, so it hands itself down instead of being imported)
    factory = None
    PLAN_OF: dict = {}  # unique ModuleList name -> the attribute holding its SharingPlan
    GLOBAL_POOLS: Tuple[str, ...] = ()
    STEM_PATTERN = ""  # regex of the parameters before the first layer (group_matcher)
    # properties TorchScript must not compile (they run host code); the scripted model runs the reference path
    __jit_unused_properties__ = ["backend", "is_fusion_form", "pretrained_cfg"]

    @property
    def backend(self) -> str:
        """The backend in use (``auto`` resolved); assigning a new name rebinds the fused entry points."""
        return self._backend

    @backend.setter
    def backend(self, value: str):
        self.requested_backend = value
        self._backend = resolve_backend(value)
        if self._backend in ("cuda", "auto") or value in ("cuda", "auto"):
            probe_cuda_extension()  # now, outside any torch.compile trace of forward
        self._bind_backend()

    def _bind_backend(self):
        """Look up the fused functions of the current backend (once, outside ``forward``); set ``_fused_path``."""
        raise NotImplementedError

    @property
    def pretrained_cfg(self) -> dict:
        """timm's newer name of ``default_cfg`` (the eval transform and head / stem names); assignable, as timm's
        builder does."""
        return self.default_cfg

    @pretrained_cfg.setter
    def pretrained_cfg(self, value: dict):
        self.default_cfg = value

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        """Recompute each layer in backward instead of storing its activations (timm API)."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The classification head (timm API)."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        """Replace the head with a new one of ``num_classes`` outputs (0: none) on the model's device and dtype,
        in the model's train / eval mode; ``global_pool`` changes the pooling too (timm API)."""
        if global_pool is not None:
            if global_pool not in self.GLOBAL_POOLS:
                raise ValueError(f"global_pool: expected one of {list(self.GLOBAL_POOLS)}, got {global_pool!r}")
            self.global_pool = global_pool
            self._remember(global_pool=global_pool)
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes: expected an int >= 0, got {num_classes!r}")
        self.num_classes = num_classes
        self._remember(num_classes=num_classes)
        ref = next(self.parameters())
        self.head = (nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
                     if num_classes > 0 else nn.Identity())
        self.head.train(self.training)

    def _remember(self, **changes):
        """Record a change of architecture in ``spin_config`` (when the model has one: create_model's models),
        so a saved model rebuilds as it now is."""
        config = self.__dict__.get("spin_config")
        if config is not None:
            config.update(changes)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups by depth for layer-wise LR decay (timm API): the stem first, then each layer's
        modules; a module shared by several layers belongs to the first layer that uses it."""
        blocks = []
        for family, _, plan in self.unique_modules():
            first = {}
            for layer, u in enumerate(plan.layer_to_unique):
                first.setdefault(u, layer)
            blocks += [(rf"^{family}\.{u}\.", (layer,)) for u, layer in sorted(first.items())]
        blocks += self._tail_groups()
        return dict(stem=self.STEM_PATTERN, blocks=blocks)

    def _tail_groups(self) -> list:
        """group_matcher entries after the layers (the head is left out: timm gives it the last group)."""
        return []

    def _run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if not torch.jit.is_scripting() and self.grad_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    @torch.jit.unused
    def _reference_blocks(self, x: torch.Tensor, taps=None, stop=None):
        """The layers on the reference path, answering as the fused trunks do: ``x``, or ``(x, [layer outputs])``
        when ``taps`` is given; ``stop`` ends the run early (the fused trunks fall back to this)."""
        if taps is None and stop is None:
            return self._run_blocks(x)
        x, outs = self._run_blocks_tapped(x, list(taps or ()), len(self.blocks) if stop is None else stop)
        return x if taps is None else (x, outs)

    @torch.jit.ignore
    def _run_blocks_tapped(self, x: torch.Tensor, take: List[int], stop: int) -> Tuple[torch.Tensor, list]:
        """The reference path of layers ``0..stop-1`` with the outputs of the layers in ``take``."""
        taps = []
        for layer, block in enumerate(self.blocks[:stop]):
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
            if layer in take:
                taps.append(x)
        return x, taps

    @torch.jit.ignore
    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the layers after the last of ``indices`` (timm API), and the unique modules only they used; with
        ``prune_head`` the classifier and pooling too, with ``prune_norm`` the final norm (ViT). Returns the
        layer positions kept for ``forward_intermediates``. ``spin_config`` follows, so the pruned model saves
        and reloads."""
        take, last = take_indices(len(self.blocks), indices)
        self._truncate(last + 1)
        if prune_norm:
            self._prune_norm()
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def _prune_norm(self):
        """Remove the final norm (families that have one)."""

    def _truncate(self, depth: int):
        """Keep layers ``0..depth-1``: every plan cut there, unique modules no kept layer uses removed (plans
        number unique modules in order of first use, so those kept are the first ones), blocks rebuilt."""
        if depth == len(self.blocks):
            return
        plans = {attr: getattr(self, attr) for attr in {*self.PLAN_OF.values(), "plan"}}
        cut = {attr: SharingPlan.from_list(plan.layer_to_unique[:depth]) for attr, plan in plans.items()}
        for family, attr in self.PLAN_OF.items():
            modules = getattr(self, family)
            setattr(self, family, nn.ModuleList(modules[u] for u in range(cut[attr].num_unique)))
        for attr, plan in cut.items():
            setattr(self, attr, plan)
        self.arch["depth"] = depth
        self._remember(depth=depth, mapping=list(self.plan.layer_to_unique))
        self._build_blocks()

    def _build_blocks(self):
        """(Re)build ``blocks`` (the per-layer views) and ``feature_info`` from the plans."""
        raise NotImplementedError

    def __prepare_scriptable__(self) -> "IsotropicModel":
        """What ``torch.jit.script`` compiles: a shallow copy whose blocks own their modules (the weights are the
        same tensors) and which runs the reference path; this model is left as it is."""
        clone = copy.copy(self)
        clone.__dict__["_modules"] = dict(self._modules)
        clone._modules["blocks"] = nn.ModuleList(block.materialized() for block in self.blocks)
        clone.__dict__["_fused_path"] = False
        return clone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> logits."""
        return self.forward_head(self.forward_features(x))

    @property
    def is_fusion_form(self) -> bool:
        """True while shared weights are computed from per-layer sources (weight-fusion training)."""
        return any(parametrize.is_parametrized(m) for m in self.modules())

    def collapse(self) -> "IsotropicModel":
        """Return the plain shared model: each fused weight frozen at its current value (a new model).

        Built fresh from ``spin_config`` rather than by deep-copying: parametrize gives each parametrized module
        a class of its own, which a deep copy would share with the original.
        """
        state = {k: v for k, v in self.state_dict().items() if ".parametrizations." not in k}
        with torch.no_grad():
            for prefix, module in self.named_modules():
                if parametrize.is_parametrized(module):
                    for name in module.parametrizations.keys():
                        state[f"{prefix}.{name}"] = getattr(module, name).detach().clone()
        config = dict(self.spin_config, fusion=None)
        model = self.factory(**config)
        model.load_state_dict(state)
        ref = next(self.parameters())
        model.train(self.training)
        return model.to(device=ref.device, dtype=ref.dtype)

    def unique_modules(self) -> Iterable[Tuple[str, nn.ModuleList, SharingPlan]]:
        """(family name, unique ModuleList, plan) for every weight family, norms included."""
        return [(family, getattr(self, family), getattr(self, attr)) for family, attr in self.PLAN_OF.items()]
