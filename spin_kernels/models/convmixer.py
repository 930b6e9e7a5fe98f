"""ConvMixer (timm's and SPIN's variant) with cross-layer weight sharing.

timm layer:  ``u = x + BN1(act(DWk(x)))`` ; ``x' = BN2(act(PW(u)))``
SPIN layer:  ``u = x + BN1(act(DWk(x)))`` ; ``x' = u + BN2(act(PW(u)))``   (``spin_residual=True``)

Parameter names (all backends): ``stem.0`` (patch conv), ``stem.2`` (BN), ``depthwise.{i}``, ``norm1.{i}``,
``pointwise.{i}``, ``norm2.{i}``, ``head``; ``i`` indexes the unique modules of that family (see common.py).
"""
from typing import List, Optional, Union

import torch
from torch import nn

from ..backends import emulated_cuda, fused_forward, warn_reference_fallback
from ..sharing import SharingPlan
from .common import IsotropicModel, LayerView, resolve_share, take_indices

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
        global_pool: ``"avg"`` or ``""`` (no pooling: ``forward`` returns the feature map).
        img_size: the nominal input size (the model is fully convolutional; it only sets ``default_cfg``).
    """

    PLAN_OF = {"depthwise": "dw_plan", "norm1": "norm_plan", "pointwise": "pw_plan", "norm2": "norm_plan"}
    GLOBAL_POOLS = ("avg", "")
    STEM_PATTERN = r"^stem"

    def __init__(self, dim=768, depth=32, kernel_size=9, patch_size=7, in_chans=3, num_classes=1000, act="gelu",
                 spin_residual=False, drop_rate=0.0, plan: Optional[SharingPlan] = None, share=None,
                 share_norms=False, backend="reference", global_pool="avg", img_size=None):
        super().__init__()
        for name, value in (("dim", dim), ("depth", depth), ("patch_size", patch_size), ("in_chans", in_chans)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: expected a positive odd int ('same' padding), got {kernel_size!r}")
        if global_pool not in self.GLOBAL_POOLS:
            raise ValueError(f"global_pool: expected 'avg' or '', got {global_pool!r}")
        if img_size is not None and min((img_size,) if isinstance(img_size, int) else tuple(img_size)) < patch_size:
            raise ValueError(f"img_size: expected at least the patch size {patch_size}, got {img_size!r}")
        self.arch = dict(dim=dim, depth=depth, kernel_size=kernel_size, patch_size=patch_size, in_chans=in_chans,
                         act=act, spin_residual=spin_residual)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = dim
        self.global_pool = global_pool
        self.grad_checkpointing = False
        self.backend = backend
        self.plan = plan = plan or SharingPlan.unshared(depth)
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
        self._build_blocks()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def _build_blocks(self):
        a = self.arch
        self.blocks = nn.ModuleList(
            ConvMixerLayer(l, self.depthwise[self.dw_plan.layer_to_unique[l]],
                           self.norm1[self.norm_plan.layer_to_unique[l]],
                           self.pointwise[self.pw_plan.layer_to_unique[l]],
                           self.norm2[self.norm_plan.layer_to_unique[l]], a["act"], a["spin_residual"])
            for l in range(a["depth"]))
        # timm's feature_info: one entry per layer position, all at the patch stride
        self.feature_info = [dict(num_chs=a["dim"], reduction=a["patch_size"], module=f"blocks.{l}")
                             for l in range(a["depth"])]

    def _bind_backend(self):
        # Eval on a GPU with backend cuda/auto: the weights-resident kernel; otherwise the Triton fused trunk.
        self._persistent = (fused_forward("convmixer_cuda", "eval_features")
                            if self.requested_backend in ("cuda", "auto") else None)
        self._fused = fused_forward("convmixer", "convmixer_features") if self.backend != "reference" else None
        self._fused_path = self._persistent is not None or self.backend != "reference"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, in_chans, H, W] -> trunk output [B, dim, H/p, W/p]."""
        if not torch.jit.is_scripting() and self._fused_path:
            return self._forward_fused(x)
        return self._run_blocks(self.stem(x))

    @torch.jit.unused
    def _forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """The fused trunk. Under ``torch.compile`` the weights-resident persistent kernel is skipped (its
        parameter folding and cache are host code): the traced model runs the per-layer fused path instead."""
        if (self._persistent is not None and not self.training and (x.is_cuda or emulated_cuda())
                and not torch.compiler.is_compiling()):
            out = self._persistent(self, x)  # None when the case is outside the persistent kernel's reach
            if out is not None:
                return out
        if self._fused is not None:
            return self._fused(self, x)
        if self.backend != "reference":
            warn_reference_fallback("convmixer", self.backend)
        return self._run_blocks(self.stem(x))

    @torch.jit.ignore
    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """The outputs of chosen layers, and the trunk output (timm API).

        Args:
            x: images [B, in_chans, H, W].
            indices: layer positions (with shared weights, position ``l`` is the ``l``-th layer applied): ``None``
                all, an int ``n`` the last ``n``, or a list (negative from the end).
            norm: accepted for timm's API; ConvMixer has no final norm.
            stop_early: run no layer after the last one asked for (the returned trunk output is then that
                layer's).
            output_fmt: ``"NCHW"`` only.
            intermediates_only: return only the list of layer outputs.

        Returns:
            ``(trunk output, [layer outputs])`` or ``[layer outputs]``, each [B, dim, H/p, W/p]. The fused
            backends run the layers they need with the fused kernels (runs split at the taps).
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt: ConvMixer features are 'NCHW', got {output_fmt!r}")
        take, last = take_indices(len(self.blocks), indices)
        stop = last + 1 if stop_early else len(self.blocks)
        if self._fused is not None:
            x, taps = self._fused(self, x, taps=take, stop=stop)
        else:
            x, taps = self._run_blocks_tapped(self.stem(x), take, stop)
        return taps if intermediates_only else (x, taps)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Trunk output -> logits (or the pooled features with ``pre_logits``)."""
        if self.global_pool == "avg":
            x = x.mean((2, 3))
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
