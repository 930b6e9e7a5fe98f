"""Analytic cost model: FLOPs, HBM bytes and floor times per op and per model (the roofline side of every benchmark).

For each op of a ConvMixer layer / ViT block at a given shape and dtype this module gives

* ``flops``: arithmetic work (a multiply-add counts 2),
* three byte counts, each also expressed in *activation passes* (one read or one write of a full activation tensor
  ``B·H·W·C`` for ConvMixer, ``B·N·D`` for ViT, in the storage dtype):
    - ``min``: every input read once, every output written once (the floor of that op on its own),
    - ``design``: what our fused kernels move by design (DESIGN.md §2: K1 reads h_prev and writes g; K2 reads
      h_prev and g and writes h, plus u for SPIN; plus weights and BN partial statistics),
    - ``eager``: what eager PyTorch moves, kernel by kernel (~18 passes per ConvMixer layer forward),
* the floor time on a named card, ``max(flops / peak, bytes / bandwidth)``, from :class:`~.cards.Ceilings`.

The pass counts are the budget the kernels are held to (DESIGN.md §2): fused forward ≤ 5 passes per timm ConvMixer
layer, ≤ 8 for the SPIN variant, backward ≤ 2.5× the forward. They are modelled, not measured: the GPU suite
compares measured times against the floors computed here.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Iterable

from ..recompute import VIT_RECOMPUTE_MODES, vit_recomputed
from .cards import DTYPE_BYTES, H100, Ceilings, normalize_dtype

# Rows of the activation matrix covered by one producer tile; each tile emits (count, mean, M2) per channel
# (DESIGN.md §2). Only sets the (small) statistics traffic, so a representative value is enough.
STATS_ROWS_PER_TILE = 128


@dataclass(frozen=True)
class OpCost:
    """Cost of one op (or fused kernel) at one shape.

    ``*_passes`` count activation-tensor reads + writes; ``extra_bytes`` (weights, BN statistics, images) is added
    to every byte count. A pass count of ``None`` means the op has no such form (e.g. a fused kernel has no eager
    form of its own: its eager equivalent is the sum of the primitive ops it replaces).
    """

    name: str
    flops: float
    unit: str                      # "tensor" or "vector": which FLOP ceiling applies
    act_bytes: float               # bytes of one activation pass
    min_passes: float | None
    design_passes: float | None
    eager_passes: float | None
    extra_bytes: float = 0.0
    count: int = 1                 # how many times the op runs in the model (layers)
    phase: str = "fwd"             # "fwd" or "bwd"
    kind: str = "op"               # "op" (primitive, what eager runs), "fused" (our kernel), "layer" (summary)

    def bytes(self, which: str) -> float | None:
        """HBM bytes of one call for ``which`` in ``min`` / ``design`` / ``eager`` (None if not applicable)."""
        passes = {"min": self.min_passes, "design": self.design_passes, "eager": self.eager_passes}
        if which not in passes:
            raise ValueError(f"which: expected 'min', 'design' or 'eager', got {which!r}")
        p = passes[which]
        return None if p is None else p * self.act_bytes + self.extra_bytes

    def floor_s(self, ceilings: Ceilings, dtype: str, which: str = "min") -> float | None:
        """Roofline floor of one call: ``max(flops / peak, bytes / bandwidth)`` with ``which`` bytes."""
        b = self.bytes(which)
        if b is None:
            return None
        return max(self.flops / ceilings.peak_flops(self.unit, dtype), b / ceilings.hbm_bytes_per_s)

    def intensity(self, which: str = "min") -> float | None:
        """Arithmetic intensity in FLOP per byte of ``which`` traffic."""
        b = self.bytes(which)
        return None if not b else self.flops / b

    def to_dict(self, ceilings: Ceilings | None = None, dtype: str | None = None) -> dict:
        """JSON form; with ``ceilings`` and ``dtype`` the floor times (seconds, one call) are included."""
        d = dataclasses.asdict(self)
        for which in ("min", "design", "eager"):
            d[f"{which}_bytes"] = self.bytes(which)
            if ceilings is not None and dtype is not None:
                d[f"{which}_floor_s"] = self.floor_s(ceilings, dtype, which)
        return d


def _act_flops(act: str) -> float:
    """FLOPs per element of the activation: ReLU is one compare; GELU (erf form) about 8."""
    if act == "relu":
        return 1.0
    if act == "gelu":
        return 8.0
    raise ValueError(f"act: expected 'relu' or 'gelu', got {act!r}")


def convmixer_layer_costs(batch: int, dim: int, hw: int, kernel_size: int, dtype: str = "bf16", *,
                          act: str = "gelu", spin_residual: bool = False, train: bool = False) -> list[OpCost]:
    """Costs of one ConvMixer layer at ``[batch, dim, hw, hw]``: primitive ops, fused kernels and layer totals.

    Rows of kind ``"op"`` are the primitives eager PyTorch runs (their ``eager_passes`` sum to the eager layer);
    rows of kind ``"fused"`` are K1 / K2 (and with ``train`` their backward kernels); rows of kind ``"layer"``
    summarise the layer (``min`` = read h_prev once, write h once).
    """
    for arg, v in (("batch", batch), ("dim", dim), ("hw", hw), ("kernel_size", kernel_size)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{arg}: expected a positive int, got {v!r}")
    dtype = normalize_dtype(dtype)
    s = DTYPE_BYTES[dtype]
    m = batch * hw * hw                       # rows of the channels-last activation matrix
    elems = m * dim
    A = elems * s                             # one activation pass
    k2 = kernel_size * kernel_size
    fa = _act_flops(act)
    dw_w = (dim * k2 + dim) * s
    pw_w = (dim * dim + dim) * s
    bn_p = 4 * dim * 4                        # weight, bias, running mean/var (fp32)
    tiles = math.ceil(m / STATS_ROWS_PER_TILE)
    # Training: per-tile (count, mean, M2) partials written + read, affine written + read (fp32). Eval: BN is a
    # constant affine folded into the consumer, so only the affine is read.
    stats = (tiles * dim * 3 * 4 * 2 + 2 * dim * 4 * 2) if train else 2 * dim * 4

    dw_flops = 2.0 * elems * k2 + elems
    pw_flops = 2.0 * m * dim * dim + elems
    bn_flops = 7.0 * elems if train else 2.0 * elems   # Welford stats + apply vs folded affine
    # Training-mode BN in eager is a stats kernel (reads x) then an apply kernel (reads x, writes y).
    bn_eager = 3 if train else 2
    ops = [
        OpCost("dwconv", dw_flops, "vector", A, 2, None, 2, dw_w),
        OpCost("act1", fa * elems, "vector", A, 2, None, 2),
        OpCost("bn1", bn_flops, "vector", A, 2, None, bn_eager, bn_p),
        OpCost("residual_add", elems, "vector", A, 3, None, 3),
        OpCost("pointwise_gemm", pw_flops, "tensor", A, 2, None, 2, pw_w),
        OpCost("act2", fa * elems, "vector", A, 2, None, 2),
        OpCost("bn2", bn_flops, "vector", A, 2, None, bn_eager, bn_p),
    ]
    if spin_residual:
        ops.append(OpCost("spin_residual_add", elems, "vector", A, 3, None, 3))
    fwd_eager = sum(o.eager_passes for o in ops)

    # Fused kernels (DESIGN.md §2). SPIN: the layer input x = u_prev + a2·h_prev + b2 is rebuilt from two tensors.
    x_reads = 2 if spin_residual else 1
    k1 = OpCost("K1_dwconv_fused", dw_flops + fa * elems + 4.0 * elems, "vector", A,
                x_reads + 1, x_reads + 1, None, dw_w + stats, kind="fused")
    k2 = OpCost("K2_pointwise_fused", pw_flops + (fa + 6.0) * elems, "tensor", A,
                x_reads + 2 + (1 if spin_residual else 0), x_reads + 2 + (1 if spin_residual else 0), None,
                pw_w + stats, kind="fused")
    fused = [k1, k2]
    fwd_design = k1.design_passes + k2.design_passes
    layer_fwd_flops = sum(o.flops for o in ops)
    # One layer's minimal traffic: read its input(s) once, write its output(s) once.
    layer_min = (x_reads + (2 if spin_residual else 1))
    rows = ops + fused + [OpCost("layer_fwd", layer_fwd_flops, "tensor", A, layer_min, fwd_design, fwd_eager,
                                 dw_w + pw_w, kind="layer")]
    if not train:
        return rows

    # Backward. Eager, per primitive: BN bwd = reduce pass (dy, x) + elementwise pass (dy, x -> dx) = 5;
    # act bwd 3; conv bwd = dgrad (dy -> dx) 2 + wgrad (dy, x) 2; residual: autograd accumulates two grads = 3.
    b_ops = [
        OpCost("bn2_bwd", 8.0 * elems, "vector", A, 3, None, 5, bn_p, phase="bwd"),
        OpCost("act2_bwd", 2.0 * elems, "vector", A, 3, None, 3, phase="bwd"),
        OpCost("pointwise_gemm_bwd", 2 * pw_flops, "tensor", A, 3, None, 4, pw_w * 2, phase="bwd"),
        OpCost("residual_add_bwd", elems, "vector", A, 0, None, 3, phase="bwd"),
        OpCost("bn1_bwd", 8.0 * elems, "vector", A, 3, None, 5, bn_p, phase="bwd"),
        OpCost("act1_bwd", 2.0 * elems, "vector", A, 3, None, 3, phase="bwd"),
        OpCost("dwconv_bwd", 2 * dw_flops, "vector", A, 3, None, 4, dw_w * 2, phase="bwd"),
    ]
    if spin_residual:
        b_ops.append(OpCost("spin_residual_add_bwd", elems, "vector", A, 0, None, 3, phase="bwd"))
    bwd_eager = sum(o.eager_passes for o in b_ops)
    # Fused backward by design:
    #  K2b-dgrad: read dx', h (dZ = BN2-bwd ∘ act' in the prologue; BN2's sums come from the downstream layer's
    #             K1b epilogue, which already reads h), GEMM dZ·W, read g for BN1's bwd sums in the epilogue,
    #             write du (SPIN: du += dx', free since dx' is loaded) -> 3 reads + 1 write.
    #  K2b-wgrad: dW = u^T dZ as one GEMM over the whole shared run (lever 2): read dx', h and u
    #             (timm: u recomputed from h_prev and g; SPIN: u was saved) -> 4 (timm) / 3 (SPIN) reads.
    #  K1b:       read du, g and the layer input (recomputes the dwconv pre-activation for GELU' and dW_dw),
    #             write dx (= du + dwconv^T(dg)); its epilogue emits the previous layer's BN2 backward sums.
    k2b_d = OpCost("K2b_pointwise_dgrad", pw_flops, "tensor", A, 4, 4, None, pw_w + stats, phase="bwd",
                   kind="fused")
    wg = 3 if spin_residual else 4
    k2b_w = OpCost("K2b_pointwise_wgrad", pw_flops, "tensor", A, wg, wg, None, pw_w * 2, phase="bwd",
                   kind="fused")
    k1b = OpCost("K1b_dwconv_bwd", 3 * dw_flops, "vector", A, x_reads + 3, x_reads + 3, None, dw_w * 2 + stats,
                 phase="bwd", kind="fused")
    bwd_design = k2b_d.design_passes + k2b_w.design_passes + k1b.design_passes
    layer_bwd_flops = sum(o.flops for o in b_ops)
    # Minimal backward: read dx' and the saved tensors once, write dx once.
    layer_bwd_min = 1 + 2 + 1
    return rows + b_ops + [k2b_d, k2b_w, k1b] + [
        OpCost("layer_bwd", layer_bwd_flops, "tensor", A, layer_bwd_min, bwd_design, bwd_eager, (dw_w + pw_w) * 2,
               phase="bwd", kind="layer")]


def vit_block_costs(batch: int, embed_dim: int, num_heads: int, tokens: int, dtype: str = "bf16", *,
                    mlp_ratio: float = 4.0, train: bool = False, recompute: str = "all") -> list[OpCost]:
    """Costs of one pre-norm ViT block at ``[batch, tokens, embed_dim]``: primitive ops, fused kernels, totals.

    Eager attention is timm's default ``F.scaled_dot_product_attention`` (flash: no N×N tensor in HBM) plus the
    head-merge copy ``transpose(1, 2).reshape``; the fused design materialises each LayerNorm once (one pass: the
    prologue form recomputed it per N tile) and applies bias / GELU / residual in GEMM epilogues. ``recompute``
    (:data:`VIT_RECOMPUTE_MODES`): which LN + GEMM pairs the fused backward redoes (rows ``F1r_*`` / ``F4r_*``);
    keeping fc1's pre-activation instead costs its forward one more write.
    """
    redo = vit_recomputed(recompute)
    for arg, v in (("batch", batch), ("embed_dim", embed_dim), ("num_heads", num_heads), ("tokens", tokens)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{arg}: expected a positive int, got {v!r}")
    if embed_dim % num_heads:
        raise ValueError(f"num_heads: {num_heads} does not divide embed_dim={embed_dim}")
    dtype = normalize_dtype(dtype)
    s = DTYPE_BYTES[dtype]
    t = batch * tokens
    D = embed_dim
    H = int(round(D * mlp_ratio))
    r = H / D                                 # hidden size in activation passes
    A = t * D * s
    e = t * D
    w = lambda i, o: (i * o + o) * s          # noqa: E731 - Linear weight + bias bytes
    ln_p = 2 * D * s
    attn_flops = 4.0 * batch * tokens * tokens * D + 5.0 * batch * num_heads * tokens * tokens

    ops = [
        OpCost("ln1", 8.0 * e, "vector", A, 2, None, 2, ln_p),
        OpCost("qkv_gemm", 2.0 * t * D * 3 * D, "tensor", A, 4, None, 4, w(D, 3 * D)),
        OpCost("attention", attn_flops, "tensor", A, 4, None, 6),
        OpCost("proj_gemm", 2.0 * t * D * D, "tensor", A, 2, None, 2, w(D, D)),
        OpCost("residual_add1", e, "vector", A, 3, None, 3),
        OpCost("ln2", 8.0 * e, "vector", A, 2, None, 2, ln_p),
        OpCost("fc1_gemm", 2.0 * t * D * H, "tensor", A, 1 + r, None, 1 + r, w(D, H)),
        OpCost("gelu", 8.0 * t * H, "vector", A, 2 * r, None, 2 * r),
        OpCost("fc2_gemm", 2.0 * t * H * D, "tensor", A, r + 1, None, r + 1, w(H, D)),
        OpCost("residual_add2", e, "vector", A, 3, None, 3),
    ]
    flops = sum(o.flops for o in ops)
    keep_z1 = r if "fc1" not in redo else 0   # fc1's epilogue also writes the pre-activation z1
    fused = [
        OpCost("F0_ln1", ops[0].flops, "vector", A, 2, 2, None, ln_p, kind="fused"),
        OpCost("F1_qkv", ops[1].flops, "tensor", A, 4, 4, None, w(D, 3 * D), kind="fused"),
        OpCost("F2_flash_attention", attn_flops, "tensor", A, 4, 4, None, kind="fused"),
        OpCost("F3_proj_residual", ops[3].flops + e, "tensor", A, 3, 3, None, w(D, D), kind="fused"),
        OpCost("F4a_ln2", ops[5].flops, "vector", A, 2, 2, None, ln_p, kind="fused"),
        OpCost("F4_fc1_gelu", ops[6].flops + ops[7].flops, "tensor", A, 1 + r, 1 + r + keep_z1, None, w(D, H),
               kind="fused"),
        OpCost("F5_fc2_residual", ops[8].flops + e, "tensor", A, r + 2, r + 2, None, w(H, D), kind="fused"),
    ]
    weights = ln_p * 2 + w(D, 3 * D) + w(D, D) + w(D, H) + w(H, D)
    rows = ops + fused + [OpCost("layer_fwd", flops, "tensor", A, 2, sum(f.design_passes for f in fused),
                                 sum(o.eager_passes for o in ops), weights, kind="layer")]
    if not train:
        return rows
    # Eager backward per primitive: GEMM dgrad (read dY, write dX) + wgrad (read dY, X); flash bwd reads q,k,v,o,dO
    # and writes dq,dk,dv, plus the head-split/merge copies and the dq/dk/dv -> dqkv stack (6); GELU bwd reads
    # dy and x, writes dx; LN bwd reads dy, x, writes dx; residuals accumulate two grads.
    b_ops = [
        OpCost("residual_add2_bwd", e, "vector", A, 0, None, 3, phase="bwd"),
        OpCost("fc2_gemm_bwd", 2 * ops[8].flops, "tensor", A, 2 * r + 2, None, 2 * r + 2, 2 * w(H, D), phase="bwd"),
        OpCost("gelu_bwd", 4.0 * t * H, "vector", A, 3 * r, None, 3 * r, phase="bwd"),
        OpCost("fc1_gemm_bwd", 2 * ops[6].flops, "tensor", A, 2 * r + 2, None, 2 * r + 2, 2 * w(D, H), phase="bwd"),
        OpCost("ln2_bwd", 10.0 * e, "vector", A, 3, None, 3, 2 * ln_p, phase="bwd"),
        OpCost("residual_add1_bwd", e, "vector", A, 0, None, 3, phase="bwd"),
        OpCost("proj_gemm_bwd", 2 * ops[3].flops, "tensor", A, 3, None, 4, 2 * w(D, D), phase="bwd"),
        OpCost("attention_bwd", 2.5 * attn_flops, "tensor", A, 8, None, 16, phase="bwd"),
        OpCost("qkv_gemm_bwd", 2 * ops[1].flops, "tensor", A, 5, None, 8, 2 * w(D, 3 * D), phase="bwd"),
        OpCost("ln1_bwd", 10.0 * e, "vector", A, 3, None, 3, 2 * ln_p, phase="bwd"),
    ]
    # Fused backward by design: z1 (kept, or recomputed as LN2 + GEMM) feeds fc2's dgrad, which applies GELU' in
    # its epilogue and writes h = gelu(z1) beside it (fc2's weight-gradient operand); LN backward needs full-row
    # sums, hence one small row pass per LN. The recomputed qkv / z1 come from the materialised LN outputs.
    recompute_rows = []
    if "fc1" in redo:
        recompute_rows += [OpCost("F4r_ln2", ops[5].flops, "vector", A, 2, 2, None, ln_p, phase="bwd", kind="fused"),
                           OpCost("F4r_fc1", ops[6].flops, "tensor", A, 1 + r, 1 + r, None, w(D, H), phase="bwd",
                                  kind="fused")]
    if "qkv" in redo:
        recompute_rows += [OpCost("F1r_ln1", ops[0].flops, "vector", A, 2, 2, None, ln_p, phase="bwd", kind="fused"),
                           OpCost("F1r_qkv", ops[1].flops, "tensor", A, 4, 4, None, w(D, 3 * D), phase="bwd",
                                  kind="fused")]
    fb = recompute_rows + [
        OpCost("F5b_fc2_dgrad_gelu", ops[8].flops, "tensor", A, 1 + 2 * r, 1 + 3 * r, None, w(H, D), phase="bwd",
               kind="fused"),
        OpCost("F5b_fc2_wgrad", ops[8].flops, "tensor", A, 1 + r, 1 + r, None, 2 * w(H, D), phase="bwd",
               kind="fused"),
        OpCost("F4b_fc1_dgrad", ops[6].flops, "tensor", A, r + 1, r + 1, None, w(D, H), phase="bwd", kind="fused"),
        OpCost("F4b_fc1_wgrad", ops[6].flops, "tensor", A, r + 1, r + 1, None, 2 * w(D, H), phase="bwd",
               kind="fused"),
        OpCost("F4b_ln2_bwd_rows", 10.0 * e, "vector", A, 4, 4, None, 2 * ln_p, phase="bwd", kind="fused"),
        OpCost("F3b_proj_dgrad", ops[3].flops, "tensor", A, 2, 2, None, w(D, D), phase="bwd", kind="fused"),
        OpCost("F3b_proj_wgrad", ops[3].flops, "tensor", A, 2, 2, None, 2 * w(D, D), phase="bwd", kind="fused"),
        OpCost("F2b_flash_attention_bwd", 2.5 * attn_flops, "tensor", A, 8, 8, None, phase="bwd", kind="fused"),
        OpCost("F1b_qkv_dgrad", ops[1].flops, "tensor", A, 4, 4, None, w(D, 3 * D), phase="bwd", kind="fused"),
        OpCost("F1b_qkv_wgrad", ops[1].flops, "tensor", A, 4, 4, None, 2 * w(D, 3 * D), phase="bwd",
               kind="fused"),
        OpCost("F1b_ln1_bwd_rows", 10.0 * e, "vector", A, 4, 4, None, 2 * ln_p, phase="bwd", kind="fused"),
    ]
    return rows + b_ops + fb + [
        OpCost("layer_bwd", sum(o.flops for o in b_ops), "tensor", A, 4, sum(f.design_passes for f in fb),
               sum(o.eager_passes for o in b_ops), 2 * weights, phase="bwd", kind="layer")]


def vit_recompute_costs(batch: int, embed_dim: int, num_heads: int, tokens: int, dtype: str = "bf16", *,
                        mlp_ratio: float = 4.0, ceilings: Ceilings = H100) -> dict:
    """Memory and time of each ``recompute`` mode of the fused ViT block (:data:`VIT_RECOMPUTE_MODES`), per layer:

    ``saved_bytes``: what the forward keeps for the backward (x, y, o; fp32 row statistics and attention lse;
    plus LN1(x) and qkv when qkv is kept, LN2(y) and z1 when fc1 is kept), ``saved_passes`` the activation
    tensors among them in units of B·N·C; ``fwd_floor_s`` / ``bwd_floor_s``: the sums of the fused kernels'
    design floors on ``ceilings`` (the recomputed LN passes and GEMMs are in the backward's).
    """
    dtype = normalize_dtype(dtype)
    s = DTYPE_BYTES[dtype]
    t = batch * tokens
    r = int(round(embed_dim * mlp_ratio)) / embed_dim
    out = {}
    for mode, redo in VIT_RECOMPUTE_MODES.items():
        rows = vit_block_costs(batch, embed_dim, num_heads, tokens, dtype, mlp_ratio=mlp_ratio, train=True,
                               recompute=mode)
        passes = 3.0 + (4 if "qkv" not in redo else 0) + (1 + r if "fc1" not in redo else 0)
        fp32_rows = (4 * t + batch * num_heads * tokens) * 4   # mean/rstd of both norms + lse
        floors = {ph: sum(x.floor_s(ceilings, dtype, "design") for x in rows if x.kind == "fused" and x.phase == ph)
                  for ph in ("fwd", "bwd")}
        out[mode] = {"recomputed": list(redo), "saved_passes": passes, "saved_bytes": passes * t * embed_dim * s
                     + fp32_rows, "fwd_floor_s": floors["fwd"], "bwd_floor_s": floors["bwd"]}
    return out


def activation_passes(rows: Iterable[OpCost], phase: str = "fwd") -> dict:
    """The ``layer_*`` summary of ``rows`` as passes: ``{"min": .., "design": .., "eager": ..}`` for ``phase``."""
    for r in rows:
        if r.kind == "layer" and r.phase == phase:
            return {"min": r.min_passes, "design": r.design_passes, "eager": r.eager_passes}
    raise ValueError(f"phase: no layer summary for {phase!r} (pass train=True for 'bwd')")




# Architecture of every model name create_model knows (timm's defs; SPIN's ConvMixer per DESIGN.md §1). Kept here
# so the analytic model works without building the network.
ARCHS = {
    "convmixer_768_32": dict(family="convmixer", dim=768, depth=32, kernel_size=7, patch_size=7, act="relu",
                             spin_residual=False, in_chans=3),
    "convmixer_1536_20": dict(family="convmixer", dim=1536, depth=20, kernel_size=9, patch_size=7, act="gelu",
                              spin_residual=False, in_chans=3),
    "convmixer_1024_20_ks9_p14": dict(family="convmixer", dim=1024, depth=20, kernel_size=9, patch_size=14,
                                      act="gelu", spin_residual=False, in_chans=3),
    "spin_convmixer_768_32": dict(family="convmixer", dim=768, depth=32, kernel_size=3, patch_size=14, act="relu",
                                  spin_residual=True, in_chans=3),
    "deit_tiny_patch16_224": dict(family="vit", embed_dim=192, depth=12, num_heads=3, patch_size=16,
                                  mlp_ratio=4.0, in_chans=3),
    "deit_small_patch16_224": dict(family="vit", embed_dim=384, depth=12, num_heads=6, patch_size=16,
                                   mlp_ratio=4.0, in_chans=3),
    "deit_base_patch16_224": dict(family="vit", embed_dim=768, depth=12, num_heads=12, patch_size=16,
                                  mlp_ratio=4.0, in_chans=3),
}


@dataclass
class ModelCost:
    """Per-op rows of a whole model (``count`` = how many times each runs) and the totals."""

    name: str
    batch: int
    dtype: str
    train: bool
    img_size: int
    rows: list

    def totals(self, ceilings: Ceilings = H100) -> dict:
        """Whole-model FLOPs, bytes and floor times for the three traffic models.

        ``min``: stem/head plus each layer read once and written once (the ``layer`` rows: the floor no kernel
        schedule can beat); ``design``: stem/head plus our fused kernels; ``eager``: stem/head plus the primitive
        ops eager PyTorch runs. Floor times are sums of per-row floors (each kernel is bound by its own limit).
        """
        def is_trunk_op(r):
            return r.kind == "op" and not r.name.startswith(("stem", "head"))

        select = {
            "min": lambda r: r.kind == "layer" or (r.kind == "op" and not is_trunk_op(r)),
            "design": lambda r: r.kind == "fused" or (r.kind == "op" and not is_trunk_op(r)),
            "eager": lambda r: r.kind == "op",
        }
        out = {"flops": sum(r.count * r.flops for r in self.rows if r.kind == "op")}
        for which, keep in select.items():
            total_b = total_t = 0.0
            for r in filter(keep, self.rows):
                total_b += r.count * r.bytes(which)
                total_t += r.count * r.floor_s(ceilings, self.dtype, which)
            out[f"{which}_bytes"] = total_b
            out[f"{which}_floor_s"] = total_t
        return out

    def to_dict(self, ceilings: Ceilings = H100) -> dict:
        """JSON form with ceilings, per-op rows (floors included) and totals."""
        return {"model": self.name, "batch": self.batch, "dtype": self.dtype, "train": self.train,
                "img_size": self.img_size, "ceilings": ceilings.to_dict(),
                "rows": [r.to_dict(ceilings, self.dtype) for r in self.rows], "totals": self.totals(ceilings)}


def model_costs(name: str, batch: int = 64, dtype: str = "bf16", *, train: bool = False, img_size: int = 224,
                recompute: str = "all", **arch_overrides) -> ModelCost:
    """Analytic costs of a whole model: stem, ``depth`` × layer rows, head.

    Args:
        name: a model name of :data:`ARCHS` (the names ``spin_kernels.create_model`` knows).
        batch: batch size; dtype: ``bf16``/``fp16``/``fp32``/``tf32``; train: add the backward rows.
        img_size: input resolution; recompute: the ViT backward's mode (:data:`VIT_RECOMPUTE_MODES`);
        arch_overrides: e.g. ``dim=``, ``depth=``, ``kernel_size=`` (ConvMixer) or
            ``embed_dim=``, ``num_heads=`` (ViT), as for ``create_model``.
    """
    if name not in ARCHS:
        raise ValueError(f"name: unknown model {name!r}; known: {', '.join(sorted(ARCHS))}")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch: expected a positive int, got {batch!r}")
    arch = dict(ARCHS[name])
    unknown = set(arch_overrides) - set(arch)
    if unknown:
        raise ValueError(f"arch_overrides: {sorted(unknown)} are not parameters of {name}; "
                         f"known: {sorted(k for k in arch if k != 'family')}")
    arch.update(arch_overrides)
    dtype = normalize_dtype(dtype)
    s = DTYPE_BYTES[dtype]
    p = arch["patch_size"]
    if img_size % p:
        raise ValueError(f"img_size: {img_size} is not a multiple of patch_size={p}")
    g = img_size // p
    img_bytes = batch * arch["in_chans"] * img_size * img_size * s
    depth = arch["depth"]
    if arch["family"] == "convmixer":
        C = arch["dim"]
        layer = convmixer_layer_costs(batch, C, g, arch["kernel_size"], dtype, act=arch["act"],
                                      spin_residual=arch["spin_residual"], train=train)
        A = batch * g * g * C * s
        stem_w = (arch["in_chans"] * p * p * C + C) * s
        m = batch * g * g
        head = [
            # Eager stem: patch conv, act, BN (stats + apply); the fused design runs it as one GEMM + epilogue.
            OpCost("stem_patch_conv", 2.0 * m * C * arch["in_chans"] * p * p, "tensor", A, 1, 1, 1,
                   img_bytes + stem_w),
            OpCost("stem_act_bn", 9.0 * m * C, "vector", A, 0, 0, 5),
            OpCost("head_pool_fc", 1.0 * m * C + 2.0 * batch * C * 1000, "vector", A, 1, 1, 1,
                   (C * 1000 + 1000) * s),
        ]
    else:
        D = arch["embed_dim"]
        tokens = g * g + 1
        layer = vit_block_costs(batch, D, arch["num_heads"], tokens, dtype, mlp_ratio=arch["mlp_ratio"],
                                train=train, recompute=recompute)
        A = batch * tokens * D * s
        stem_w = (arch["in_chans"] * p * p * D + D + tokens * D + D) * s
        head = [
            # Eager: patch conv, flatten/transpose copy, cls concat, pos-embed add.
            OpCost("stem_patch_embed", 2.0 * batch * g * g * D * arch["in_chans"] * p * p, "tensor", A, 1, 1, 6,
                   img_bytes + stem_w),
            OpCost("head_norm_fc", 8.0 * batch * D + 2.0 * batch * D * 1000, "vector", A, 0, 0, 0,
                   batch * D * s + (D * 1000 + 1000) * s),
        ]
    rows = [dataclasses.replace(r, count=depth) for r in layer]
    if train:
        # Stem/head backward ~ 2x their forward FLOPs and traffic; small next to the trunk.
        head = head + [dataclasses.replace(h, name=h.name + "_bwd", flops=2 * h.flops, phase="bwd") for h in head]
    return ModelCost(name, batch, dtype, train, img_size, head + rows)


def format_table(cost: ModelCost, ceilings: Ceilings = H100) -> str:
    """Human-readable table of a :class:`ModelCost`: one row per op (per call, ``×count`` per model) and totals."""
    lines = [f"{cost.name}  batch={cost.batch}  dtype={cost.dtype}  img={cost.img_size}  "
             f"{'train (fwd+bwd)' if cost.train else 'forward'}  ceilings: {ceilings.name} "
             f"({ceilings.hbm_bytes_per_s / 1e12:.2f} TB/s, {ceilings.peak_flops('tensor', cost.dtype) / 1e12:.0f} "
             f"TFLOP/s tensor, {ceilings.peak_flops('vector', cost.dtype) / 1e12:.0f} vector)",
             "passes = activation-tensor reads+writes; bytes in MB per call; floor = max(FLOPs/peak, bytes/BW) "
             "with min bytes",
             f"{'op':28s} {'kind':6s} {'x':>3s} {'GFLOP':>9s} {'passes min/des/eager':>21s} "
             f"{'MB min':>9s} {'MB design':>9s} {'MB eager':>9s} {'FLOP/B':>7s} {'floor us':>9s} {'eager us':>9s}"]

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    for r in cost.rows:
        passes = f"{f(r.min_passes, 'g')}/{f(r.design_passes, 'g')}/{f(r.eager_passes, 'g')}"
        mb = [None if r.bytes(w) is None else r.bytes(w) / 1e6 for w in ("min", "design", "eager")]
        fl = r.floor_s(ceilings, cost.dtype, "min")
        fe = r.floor_s(ceilings, cost.dtype, "eager")
        lines.append(f"{r.name[:28]:28s} {r.kind:6s} {r.count:3d} {r.flops / 1e9:9.3f} {passes:>21s} "
                     f"{f(mb[0], '9.2f'):>9s} {f(mb[1], '9.2f'):>9s} {f(mb[2], '9.2f'):>9s} "
                     f"{f(r.intensity('min'), '7.1f'):>7s} {f(fl and fl * 1e6, '9.2f'):>9s} "
                     f"{f(fe and fe * 1e6, '9.2f'):>9s}")
    t = cost.totals(ceilings)
    lines.append(f"total: {t['flops'] / 1e9:.1f} GFLOP; bytes min {t['min_bytes'] / 1e9:.3f} GB, design "
                 f"{t['design_bytes'] / 1e9:.3f} GB, eager {t['eager_bytes'] / 1e9:.3f} GB; floor (sum of per-op "
                 f"floors) min {t['min_floor_s'] * 1e3:.3f} ms, design {t['design_floor_s'] * 1e3:.3f} ms, eager "
                 f"{t['eager_floor_s'] * 1e3:.3f} ms")
    for phase in ("fwd", "bwd") if cost.train else ("fwd",):
        p = activation_passes(cost.rows, phase)
        lines.append(f"layer {phase} activation passes: min {p['min']:g}, design {p['design']:g}, "
                     f"eager {p['eager']:g}")
    b = pass_budget(cost)
    if b:
        lines.append("budget (DESIGN.md §2): " + "; ".join(
            f"{k} {v['value']:g} ≤ {v['limit']:g} {'ok' if v['ok'] else 'OVER'}" for k, v in b.items()))
    return "\n".join(lines)


def pass_budget(cost: ModelCost) -> dict:
    """The DESIGN.md §2 activation-pass budget of a ConvMixer model's fused layer: forward ≤ 5 (SPIN ≤ 8), and
    with ``train`` backward ≤ 2.5× forward. ``{}`` for models without a budget (ViT)."""
    arch = ARCHS.get(cost.name, {})
    if arch.get("family") != "convmixer":
        return {}
    fwd = activation_passes(cost.rows, "fwd")["design"]
    limit = 8 if arch.get("spin_residual") else 5
    out = {"fused fwd passes": {"value": fwd, "limit": limit, "ok": fwd <= limit}}
    if cost.train:
        ratio = activation_passes(cost.rows, "bwd")["design"] / fwd
        out["bwd/fwd passes"] = {"value": round(ratio, 3), "limit": 2.5, "ok": ratio <= 2.5}
    return out


def pct_of_floor(measured_s: float, floor_s: float) -> float:
    """How close a measured time is to its floor, in percent (100 = at the roofline)."""
    if measured_s <= 0:
        raise ValueError(f"measured_s: expected a positive time, got {measured_s!r}")
    return 100.0 * floor_s / measured_s
