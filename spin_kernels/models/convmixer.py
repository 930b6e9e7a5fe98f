"""ConvMixer (timm's and SPIN's variant) with cross-layer weight sharing.

timm layer:  ``u = x + BN1(act(DWk(x)))`` ; ``x' = BN2(act(PW(u)))``
SPIN layer:  ``u = x + BN1(act(DWk(x)))`` ; ``x' = u + BN2(act(PW(u)))``   (``spin_residual=True``)

Parameter names (all backends): ``stem.0`` (patch conv), ``stem.2`` (BN), ``depthwise.{i}``, ``norm1.{i}``,
``pointwise.{i}``, ``norm2.{i}``, ``head``; ``i`` indexes the unique modules of that family (see common.py).
"""
from __future__ import annotations

import torch
from torch import nn

from ..backends import emulated_cuda, fused_forward, warn_reference_fallback
from ..sharing import SharingPlan
from .common import IsotropicModel, LayerView, resolve_share

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}
SHARE_CHOICES = ("pointwise", "depthwise")


def make_act(act: str) -> nn.Module:
    """The activation module for a name in ACTIVATIONS."""
    if act not in ACTIVATIONS:
        raise ValueError(f"act: expected one of {list(ACTIVATIONS)}, got {act!r}")
    return ACTIVATIONS[act]()


class ConvMixerLayer(LayerView):
    """Layer ``index`` of the trunk, referring to its depthwise / pointwise convs and BatchNorms."""

    def __init__(self, index, depthwise, norm1, pointwise, norm2, act: str, spin_residual: bool):
        super().__init__(index)
        self._refer(depthwise=depthwise, norm1=norm1, pointwise=pointwise, norm2=norm2)
        self.act = make_act(act)
        self.spin_residual = spin_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x + self.norm1(self.act(self.depthwise(x)))
        h = self.norm2(self.act(self.pointwise(u)))
        return u + h if self.spin_residual else h


class ConvMixer(IsotropicModel):
    """ConvMixer with a SharingPlan over depth.

    Args:
        dim, depth, kernel_size, patch_size, in_chans: timm's architecture arguments.
        act: ``"gelu"`` or ``"relu"``.
        spin_residual: SPIN's variant (residual around the pointwise conv).
        num_classes: classifier size (0: no head).
        drop_rate: dropout before the head (SPIN uses 0.5).
        plan: which unique weights each layer uses; ``share`` names the families it applies to
            (``"pointwise"``, ``"depthwise"``); ``share_norms`` applies it to the BatchNorms too.
        backend: ``reference`` (PyTorch), ``triton``, ``cuda`` or ``auto``.
    """

    def __init__(self, dim=768, depth=32, kernel_size=9, patch_size=7, in_chans=3, num_classes=1000, act="gelu",
                 spin_residual=False, drop_rate=0.0, plan: SharingPlan | None = None, share=None,
                 share_norms=False, backend="reference", global_pool="avg"):
        super().__init__()
        for name, value in (("dim", dim), ("depth", depth), ("patch_size", patch_size), ("in_chans", in_chans)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: expected a positive odd int ('same' padding), got {kernel_size!r}")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool: expected 'avg' or '', got {global_pool!r}")
        self.arch = dict(dim=dim, depth=depth, kernel_size=kernel_size, patch_size=patch_size, in_chans=in_chans,
                         act=act, spin_residual=spin_residual)
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = dim
        self.global_pool = global_pool
        self.grad_checkpointing = False
        self.backend = backend
        plan = plan or SharingPlan.unshared(depth)
        self.share = resolve_share(share, SHARE_CHOICES, ("pointwise",))
        unshared = SharingPlan.unshared(depth)
        self.dw_plan = plan if "depthwise" in self.share else unshared
        self.pw_plan = plan if "pointwise" in self.share else unshared
        self.norm_plan = plan if share_norms else unshared

        self.stem = nn.Sequential(nn.Conv2d(in_chans, dim, patch_size, stride=patch_size), make_act(act),
                                  nn.BatchNorm2d(dim))
        self.depthwise = nn.ModuleList(nn.Conv2d(dim, dim, kernel_size, groups=dim, padding=kernel_size // 2)
                                       for _ in range(self.dw_plan.num_unique))
        self.norm1 = nn.ModuleList(nn.BatchNorm2d(dim) for _ in range(self.norm_plan.num_unique))
        self.pointwise = nn.ModuleList(nn.Conv2d(dim, dim, 1) for _ in range(self.pw_plan.num_unique))
        self.norm2 = nn.ModuleList(nn.BatchNorm2d(dim) for _ in range(self.norm_plan.num_unique))
        self.blocks = nn.ModuleList(
            ConvMixerLayer(l, self.depthwise[self.dw_plan.layer_to_unique[l]],
                           self.norm1[self.norm_plan.layer_to_unique[l]],
                           self.pointwise[self.pw_plan.layer_to_unique[l]],
                           self.norm2[self.norm_plan.layer_to_unique[l]], act, spin_residual)
            for l in range(depth))
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def _bind_backend(self):
        # Eval on a GPU with backend cuda/auto: the weights-resident kernel; otherwise the Triton fused trunk.
        self._persistent = (fused_forward("convmixer_cuda", "eval_features")
                            if self.requested_backend in ("cuda", "auto") else None)
        self._fused = fused_forward("convmixer", "convmixer_features") if self.backend != "reference" else None

    def unique_modules(self):
        """(family, unique ModuleList, plan) for each weight family."""
        return [("depthwise", self.depthwise, self.dw_plan), ("norm1", self.norm1, self.norm_plan),
                ("pointwise", self.pointwise, self.pw_plan), ("norm2", self.norm2, self.norm_plan)]

    def reset_classifier(self, num_classes: int, global_pool: str | None = None):
        """Replace the head with a new one of ``num_classes`` outputs (timm API)."""
        if global_pool is not None:
            self.global_pool = global_pool
        self.num_classes = num_classes
        ref = self.stem[0].weight
        self.head = (nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
                     if num_classes > 0 else nn.Identity())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, in_chans, H, W] -> trunk output [B, dim, H/p, W/p].

        Under ``torch.compile`` the weights-resident persistent kernel is skipped (its parameter folding and
        cache are host code): the traced model runs the per-layer fused path instead.
        """
        if (self._persistent is not None and not self.training and (x.is_cuda or emulated_cuda())
                and not torch.compiler.is_compiling()):
            out = self._persistent(self, x)  # None when the case is outside the persistent kernel's reach
            if out is not None:
                return out
        if self.backend != "reference":
            if self._fused is not None:
                return self._fused(self, x)
            warn_reference_fallback("convmixer", self.backend)
        return self._run_blocks(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Trunk output -> logits (or the pooled features with ``pre_logits``)."""
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)


def layer_macs(model: ConvMixer, img_size: int) -> list[dict]:
    """Analytic multiply-accumulates of each part of a ConvMixer at ``img_size`` (per image)."""
    a = model.arch
    side = img_size // a["patch_size"]
    tokens = side * side
    c, k = a["dim"], a["kernel_size"]
    rows = [dict(name="stem", macs=tokens * c * a["in_chans"] * a["patch_size"] ** 2)]
    for l in range(a["depth"]):
        rows.append(dict(name=f"blocks.{l}", macs=tokens * c * k * k + tokens * c * c,
                         depthwise=tokens * c * k * k, pointwise=tokens * c * c))
    rows.append(dict(name="head", macs=c * model.num_classes))
    return rows
