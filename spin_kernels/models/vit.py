"""Vision Transformer (DeiT, pre-norm) with cross-layer weight sharing.

Block:  ``y = x + DropPath(Proj(Attn(LN1(x))))`` ; ``x' = y + DropPath(FC2(GELU(FC1(LN2(y)))))``

Parameter names (all backends): ``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``attn.{i}.qkv``,
``attn.{i}.proj``, ``mlp.{i}.fc1``, ``mlp.{i}.fc2``, ``norm1.{i}``, ``norm2.{i}``, ``norm``, ``head``; ``i`` indexes
the unique modules of that family (see common.py).

Choices made for sharing:
* drop-path rates belong to layer *positions* (linearly increasing with depth as in timm), so a shared block
  used at layers 2 and 9 is dropped with the rates of positions 2 and 9;
* timm's depth-scaled init (``fix_init``: proj / fc2 weights divided by sqrt(2·layer_id)) uses, for a shared
  block, the id of the *first* layer that uses it, so the unshared case matches timm exactly.
"""
import math
from typing import List, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..backends import fused_forward, warn_reference_fallback
from ..recompute import vit_recomputed
from ..sharing import SharingPlan
from .common import (
    MATCH_PREV_GROUP,
    IsotropicModel,
    LayerView,
    resolve_share,
    take_indices,
)

SHARE_CHOICES = ("attn", "mlp")


class Attention(nn.Module):
    """Multi-head self-attention: qkv projection, scaled dot-product attention, output projection."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2],
                                             dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Per-sample stochastic depth (scaled so the expectation is unchanged)."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty([x.shape[0]] + [1] * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate:.3f}"


class VitBlock(LayerView):
    """Block ``index`` of the trunk, referring to its (possibly shared) attention, MLP and norms."""

    def __init__(self, index, norm1, attn, norm2, mlp, drop_path: float):
        super().__init__(index)
        self._refer(norm1=norm1, attn=attn, norm2=norm2, mlp=mlp)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def square_size(img_size) -> int:
    """``img_size`` as an int: an int, or an (h, w) pair with h == w (timm's builder passes pairs)."""
    if isinstance(img_size, (tuple, list)):
        if len(img_size) != 2 or img_size[0] != img_size[1]:
            raise ValueError(f"img_size: expected an int or a square (h, w) pair, got {img_size!r}")
        img_size = img_size[0]
    return img_size


class VisionTransformer(IsotropicModel):
    """DeiT-style ViT (class token, pre-norm, LayerNorm eps 1e-6) with a SharingPlan over depth.

    Args:
        img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio: timm's architecture arguments
            (``img_size`` an int or a square pair).
        num_classes: classifier size (0: no head). drop_rate: dropout before the head.
        drop_path_rate: stochastic depth at the last layer (linear in layer position).
        attn_drop_rate: attention dropout.
        plan / share / share_norms: which unique weights each layer uses, for which families
            (``"attn"``, ``"mlp"``), and whether the LayerNorms follow the plan too.
        fix_init: timm's depth-scaled init of proj / fc2.
        backend: ``reference`` (PyTorch), ``triton``, ``cuda`` or ``auto``.
        global_pool: ``"token"`` (class token), ``"avg"`` (mean of the patch tokens) or ``""`` (all tokens).
        final_norm: the LayerNorm after the last layer (False once pruned away for features).
        recompute: what the fused training backward recomputes instead of keeping from the forward: ``"all"``
            (LN1 + qkv and LN2 + fc1: least memory), ``"qkv"``, ``"fc1"`` (only that one), ``"none"`` (keep all:
            fastest, +9 activations of B·N·C per layer); spin_kernels.ops.vit and
            ``perf.roofline.vit_recompute_costs`` give the memory and time of each. Changeable with
            :meth:`set_recompute`.
    """

    PLAN_OF = {"norm1": "norm_plan", "attn": "attn_plan", "norm2": "norm_plan", "mlp": "mlp_plan"}
    GLOBAL_POOLS = ("token", "avg", "")
    STEM_PATTERN = r"^cls_token|^pos_embed|^patch_embed"

    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=384, depth=12,
                 num_heads=6, mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.0, attn_drop_rate=0.0,
                 plan: Optional[SharingPlan] = None, share=None, share_norms=False, fix_init=False,
                 backend="reference", global_pool="token", final_norm=True, recompute="all"):
        super().__init__()
        vit_recomputed(recompute)  # validates the name
        self.recompute = recompute
        img_size = square_size(img_size)
        for name, value in (("img_size", img_size), ("patch_size", patch_size), ("embed_dim", embed_dim),
                            ("depth", depth), ("num_heads", num_heads), ("in_chans", in_chans)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if embed_dim % num_heads:
            raise ValueError(f"num_heads: {num_heads} does not divide embed_dim {embed_dim}")
        if img_size % patch_size:
            raise ValueError(f"patch_size: {patch_size} does not divide img_size {img_size}")
        if global_pool not in self.GLOBAL_POOLS:
            raise ValueError(f"global_pool: expected 'token', 'avg' or '', got {global_pool!r}")
        hidden = int(embed_dim * mlp_ratio)
        self.arch = dict(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                         depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, mlp_hidden=hidden)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.global_pool = global_pool
        self.grad_checkpointing = False
        self.backend = backend
        self.plan = plan = plan or SharingPlan.unshared(depth)
        self.share = resolve_share(share, SHARE_CHOICES, ("attn", "mlp"))
        unshared = SharingPlan.unshared(depth)
        self.attn_plan = plan if "attn" in self.share else unshared
        self.mlp_plan = plan if "mlp" in self.share else unshared
        self.norm_plan = plan if share_norms else unshared

        num_patches = (img_size // patch_size) ** 2
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        self.attn = nn.ModuleList(Attention(embed_dim, num_heads, attn_drop_rate)
                                  for _ in range(self.attn_plan.num_unique))
        self.mlp = nn.ModuleList(Mlp(embed_dim, hidden) for _ in range(self.mlp_plan.num_unique))
        self.norm1 = nn.ModuleList(nn.LayerNorm(embed_dim, eps=1e-6) for _ in range(self.norm_plan.num_unique))
        self.norm2 = nn.ModuleList(nn.LayerNorm(embed_dim, eps=1e-6) for _ in range(self.norm_plan.num_unique))
        # Plain Python (not torch.linspace) so the model also builds under a meta-device context.
        self.drop_path_rates = ([drop_path_rate * l / (depth - 1) for l in range(depth)] if depth > 1
                                else [drop_path_rate])
        self._build_blocks()
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6) if final_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights(fix_init)

    def _build_blocks(self):
        depth = self.arch["depth"]
        self.blocks = nn.ModuleList(
            VitBlock(l, self.norm1[self.norm_plan.layer_to_unique[l]], self.attn[self.attn_plan.layer_to_unique[l]],
                     self.norm2[self.norm_plan.layer_to_unique[l]], self.mlp[self.mlp_plan.layer_to_unique[l]],
                     self.drop_path_rates[l])
            for l in range(depth))
        # timm's feature_info: one entry per layer position, all at the patch stride
        self.feature_info = [dict(num_chs=self.embed_dim, reduction=self.arch["patch_size"], module=f"blocks.{l}")
                             for l in range(depth)]

    def _init_weights(self, fix_init: bool):
        # timm's ViT init: truncated normal (std .02) for Linear weights and pos_embed, zero biases, tiny cls token.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        if fix_init:
            for family, plan, names in ((self.attn, self.attn_plan, ("proj",)), (self.mlp, self.mlp_plan, ("fc2",))):
                for u, group in enumerate(plan.groups):
                    for name in names:
                        getattr(family[u], name).weight.data.div_(math.sqrt(2.0 * (group[0] + 1)))

    def _bind_backend(self):
        self._fused = fused_forward("vit", "vit_blocks") if self.backend != "reference" else None
        self._fused_path = self.backend != "reference"

    @torch.jit.ignore
    def set_recompute(self, recompute: str = "all"):
        """Choose what the fused training backward recomputes: ``"all"``, ``"qkv"``, ``"fc1"`` or ``"none"``
        (see the class docstring); the reference path keeps what autograd keeps."""
        vit_recomputed(recompute)
        self.recompute = recompute
        self._remember(recompute=recompute)

    def _tail_groups(self) -> list:
        return [(r"^norm\.", MATCH_PREV_GROUP)]  # the final norm joins the last layer's group, as in timm

    def _prune_norm(self):
        self.norm = nn.Identity()
        self._remember(final_norm=False)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Parameters excluded from weight decay (timm API)."""
        return {"pos_embed", "cls_token"}

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> tokens [B, 1 + N, C] with the class token and position embedding."""
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.pos_drop(x + self.pos_embed)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> normalised tokens [B, 1 + N, C]."""
        x = self.embed(x)
        if not torch.jit.is_scripting() and self._fused_path:
            x = self._blocks_fused(x)
        else:
            x = self._run_blocks(x)
        return self.norm(x)

    @torch.jit.unused
    def _blocks_fused(self, x: torch.Tensor) -> torch.Tensor:
        if self._fused is not None:
            return self._fused(self, x)
        warn_reference_fallback("vit", self.backend)
        return self._run_blocks(x)

    @torch.jit.ignore
    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              return_prefix_tokens: bool = False, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """The outputs of chosen layers, and the normalised trunk output (timm API).

        Args:
            x: images [B, in_chans, H, W].
            indices: layer positions (with shared weights, position ``l`` is the ``l``-th layer applied): ``None``
                all, an int ``n`` the last ``n``, or a list (negative from the end).
            return_prefix_tokens: pair each layer output with its class token.
            norm: apply the final norm to the layer outputs.
            stop_early: run no layer after the last one asked for.
            output_fmt: ``"NCHW"`` (patch tokens as a [B, C, H/p, W/p] map) or ``"NLC"`` ([B, N, C]).
            intermediates_only: return only the list of layer outputs.

        Returns:
            ``(normalised trunk output [B, 1 + N, C], [layer outputs])`` or ``[layer outputs]``. The fused
            backends run the layers they need with the fused kernels (runs split at the taps).
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt: expected 'NCHW' or 'NLC', got {output_fmt!r}")
        take, last = take_indices(len(self.blocks), indices)
        stop = last + 1 if stop_early else len(self.blocks)
        b, _, h, w = x.shape
        x = self.embed(x)
        if self._fused is not None:
            x, taps = self._fused(self, x, taps=take, stop=stop)
        else:
            x, taps = self._run_blocks_tapped(x, take, stop)
        if norm:
            taps = [self.norm(t) for t in taps]
        prefix = [t[:, :1] for t in taps]
        taps = [t[:, 1:] for t in taps]
        if output_fmt == "NCHW":
            p = self.arch["patch_size"]
            taps = [t.reshape(b, h // p, w // p, -1).permute(0, 3, 1, 2).contiguous() for t in taps]
        if return_prefix_tokens:
            taps = list(zip(taps, prefix))
        return taps if intermediates_only else (self.norm(x), taps)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens -> logits (class token pooling, or mean over patch tokens with global_pool='avg')."""
        if self.global_pool == "token":
            x = x[:, 0]
        elif self.global_pool == "avg":
            x = x[:, 1:].mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)


def layer_macs(model: VisionTransformer, img_size: Optional[int] = None) -> List[dict]:
    """Analytic multiply-accumulates of each part of a ViT (per image), attention matmuls included."""
    a = model.arch
    if img_size is not None and img_size != a["img_size"]:
        raise ValueError(f"img_size: this ViT was built for {a['img_size']} (position embedding), got {img_size}")
    n = (a["img_size"] // a["patch_size"]) ** 2
    tokens, c, hidden = n + 1, a["embed_dim"], a["mlp_hidden"]
    rows = [dict(name="patch_embed", macs=n * c * a["in_chans"] * a["patch_size"] ** 2)]
    for l in range(a["depth"]):
        qkv, attn, proj = tokens * c * 3 * c, 2 * tokens * tokens * c, tokens * c * c
        mlp = 2 * tokens * c * hidden
        rows.append(dict(name=f"blocks.{l}", macs=qkv + attn + proj + mlp, qkv=qkv, attention=attn, proj=proj,
                         mlp=mlp))
    rows.append(dict(name="head", macs=c * model.num_classes))
    return rows
