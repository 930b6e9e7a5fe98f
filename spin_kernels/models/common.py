"""Pieces every isotropic model here shares: sharing plans per component, layer views, the timm-style API.

Storage layout (the same for every backend, so a state_dict moves between them): each weight family that may be
shared (ConvMixer `depthwise`, `pointwise`; ViT `attn`, `mlp`; the per-layer norms) is a ``ModuleList`` of its
*unique* modules, and a :class:`~spin_kernels.sharing.SharingPlan` per family says which unique module layer ``l``
uses. A shared tensor is therefore stored — and saved — once, and ``sum(p.numel() for p in model.parameters())``
is the true unique parameter count.

``model.blocks[l]`` is a parameterless view of layer ``l`` that *refers to* (does not own) the unique modules it
uses. It exists so forward hooks, ``model.train()`` propagation to per-position modules (drop-path) and timm-style
``blocks`` indexing work exactly as users expect, while storage stays unique.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..backends import probe_cuda_extension, resolve_backend
from ..sharing import SharingPlan


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

    def _refer(self, **modules: nn.Module):
        # object.__setattr__ bypasses nn.Module registration: the modules stay owned (and saved) by the model's
        # unique ModuleLists only.
        for name, module in modules.items():
            object.__setattr__(self, name, module)

    def extra_repr(self) -> str:
        return f"layer={self.index}"


class IsotropicModel(nn.Module):
    """timm's model API shared by ConvMixer and ViT: classifier handling, grad checkpointing, collapse."""

    default_cfg: dict
    spin_config: dict
    # create_model(**spin_config) builds a model from its config; models/registry.py installs it here (the
    # registry sits above this module, so it hands itself down instead of being imported)
    factory = None

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
        """Look up the fused functions of the current backend (once, outside ``forward``)."""
        raise NotImplementedError

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        """Recompute each layer in backward instead of storing its activations (timm API)."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The classification head (timm API)."""
        return self.head

    @property
    def pretrained_cfg(self) -> dict:
        """Alias of ``default_cfg`` under timm's newer name."""
        return self.default_cfg

    def _run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

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

    def unique_modules(self) -> Iterable[tuple[str, nn.ModuleList, SharingPlan]]:
        """(family name, unique ModuleList, plan) for every weight family, norms included."""
        raise NotImplementedError
