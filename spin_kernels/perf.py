"""Analytic cost model: FLOPs, HBM bytes and floor times per op and per model (the roofline side of every benchmark).

For each op of a ConvMixer layer / ViT block at a given shape and dtype this module gives

* ``flops``: arithmetic work (a multiply-add counts 2),
* three byte counts, each also expressed in *activation passes* (one read or one write of a full activation tensor
  ``B·H·W·C`` for ConvMixer, ``B·N·D`` for ViT, in the storage dtype):
    - ``min``: every input read once, every output written once (the floor of that op on its own),
    - ``design``: what our fused kernels move by design (DESIGN.md §2: K1 reads h_prev and writes g; K2 reads
      h_prev and g and writes h, plus u for SPIN; plus weights and BN partial statistics),
    - ``eager``: what eager PyTorch moves, kernel by kernel (~18 passes per ConvMixer layer forward),
* the floor time on a named card, ``max(flops / peak, bytes / bandwidth)``, from :class:`Ceilings` (defaults are
  nominal H100 SXM numbers; load measured ones from ``bench/results/*/results.json``).

The pass counts are the budget the kernels are held to (DESIGN.md §2): fused forward ≤ 5 passes per timm ConvMixer
layer, ≤ 8 for the SPIN variant, backward ≤ 2.5× the forward. They are modelled, not measured: the GPU suite
compares measured times against the floors computed here.

The second half of the module is the *kernel resource report* (:func:`kernel_report`): every Triton kernel
AOT-compiled for sm_90 without a GPU by :func:`spin_kernels.triton.aot.compile_kernel`, and the CUDA extension's
kernels read with cuobjdump: registers, spills, shared memory, whether a GEMM uses wgmma, theoretical occupancy.
The ``ptxas -v`` / ``cuobjdump`` parsers and the occupancy rules live here.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "tf32": 4}
"""Storage bytes per element. ``tf32`` means fp32 storage with TF32 tensor-core GEMMs."""

_DTYPE_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32",
                  "torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float32": "fp32"}

# Rows of the activation matrix covered by one producer tile; each tile emits (count, mean, M2) per channel
# (DESIGN.md §2). Only sets the (small) statistics traffic, so a representative value is enough.
STATS_ROWS_PER_TILE = 128


def normalize_dtype(dtype: Any) -> str:
    """Return the short dtype name (``bf16``/``fp16``/``fp32``/``tf32``) for a string or ``torch.dtype``."""
    key = str(dtype).lower()
    key = _DTYPE_ALIASES.get(key, key)
    if key not in DTYPE_BYTES:
        raise ValueError(f"dtype: expected one of {sorted(DTYPE_BYTES)} (or a torch float dtype), got {dtype!r}")
    return key


# ----------------------------------------------------------------------------------------------------------------
# Ceilings
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class Ceilings:
    """Throughput ceilings of one card: the denominators of every floor time.

    Args:
        name: the card these numbers describe (printed with every table, so timings are never compared across
            cards by accident).
        hbm_bytes_per_s: achievable device-memory bandwidth (a device-to-device copy moves 2 bytes per byte copied;
            count both).
        tensor_flops: dense tensor-core FLOP/s per compute dtype (GEMMs, attention). ``fp32`` is the no-TF32 path.
        vector_flops: CUDA-core FLOP/s per dtype (depthwise conv, elementwise, normalisation).
        launch_s: per-kernel launch overhead, reported separately (it dominates at batch 1).
    """

    name: str = "H100 SXM (nominal)"
    hbm_bytes_per_s: float = 3.0e12
    tensor_flops: dict = field(default_factory=lambda: {"bf16": 800e12, "fp16": 800e12, "tf32": 400e12,
                                                         "fp32": 60e12})
    vector_flops: dict = field(default_factory=lambda: {"bf16": 120e12, "fp16": 120e12, "tf32": 60e12,
                                                         "fp32": 60e12})
    launch_s: float = 4e-6

    def peak_flops(self, unit: str, dtype: str) -> float:
        """FLOP/s ceiling for ``unit`` (``"tensor"`` or ``"vector"``) in ``dtype``."""
        dtype = normalize_dtype(dtype)
        if unit == "tensor":
            table = self.tensor_flops
        elif unit == "vector":
            table = self.vector_flops
        else:
            raise ValueError(f"unit: expected 'tensor' or 'vector', got {unit!r}")
        if dtype not in table:
            raise ValueError(f"dtype: no {unit} ceiling for {dtype!r} on {self.name}; known: {sorted(table)}")
        return float(table[dtype])

    def to_dict(self) -> dict:
        """Plain-JSON form (what :meth:`from_dict` reads back)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> "Ceilings":
        """Build from a dict; missing entries keep the defaults, so partial measurements are fine.

        Accepts either the ceilings themselves or a GPU-suite ``results.json`` that holds them under
        ``"ceilings"``.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"data: expected a mapping of ceilings, got {type(data).__name__}")
        if "ceilings" in data and isinstance(data["ceilings"], Mapping):
            data = data["ceilings"]
        base = cls()
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"data: unknown ceiling keys {sorted(unknown)}; known: {sorted(known)}")
        kwargs = {}
        for key, value in data.items():
            if key in ("tensor_flops", "vector_flops"):
                merged = dict(getattr(base, key))
                merged.update({normalize_dtype(k): float(v) for k, v in value.items() if v is not None})
                kwargs[key] = merged
            elif value is not None:
                kwargs[key] = value if key == "name" else float(value)
        return dataclasses.replace(base, **kwargs)

    @classmethod
    def from_json(cls, path: str) -> "Ceilings":
        """Load ceilings from a JSON file (ceilings dict, or a GPU-suite ``results.json``)."""
        with open(path) as f:
            return cls.from_dict(json.load(f))


H100 = Ceilings()
H200 = Ceilings(name="H200 SXM (nominal)", hbm_bytes_per_s=4.0e12)
CARDS = {"h100": H100, "h200": H200}
"""Named nominal ceilings; measured ones (bench/results/*/results.json) override them via ``Ceilings.from_json``."""


def get_ceilings(card: str | None = None, path: str | None = None) -> Ceilings:
    """Ceilings of a named card (``h100``, ``h200``) or, with ``path``, the measured ones in that JSON."""
    if path:
        return Ceilings.from_json(path)
    key = (card or "h100").lower()
    if key not in CARDS:
        raise ValueError(f"card: unknown card {card!r}; known: {', '.join(CARDS)} (or pass measured ceilings JSON)")
    return CARDS[key]


# ----------------------------------------------------------------------------------------------------------------
# Op costs
# ----------------------------------------------------------------------------------------------------------------

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
                    mlp_ratio: float = 4.0, train: bool = False) -> list[OpCost]:
    """Costs of one pre-norm ViT block at ``[batch, tokens, embed_dim]``: primitive ops, fused kernels, totals.

    Eager attention is timm's default ``F.scaled_dot_product_attention`` (flash: no N×N tensor in HBM) plus the
    head-merge copy ``transpose(1, 2).reshape``; the fused design applies LayerNorm in the next GEMM's prologue and
    bias / GELU / residual in GEMM epilogues (DESIGN.md §2, last paragraph).
    """
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
    fused = [
        OpCost("F1_ln1_qkv", ops[0].flops + ops[1].flops, "tensor", A, 4, 4, None, ln_p + w(D, 3 * D), kind="fused"),
        OpCost("F2_flash_attention", attn_flops, "tensor", A, 4, 4, None, kind="fused"),
        OpCost("F3_proj_residual", ops[3].flops + e, "tensor", A, 3, 3, None, w(D, D), kind="fused"),
        OpCost("F4_ln2_fc1_gelu", ops[5].flops + ops[6].flops + ops[7].flops, "tensor", A, 1 + r, 1 + r, None,
               ln_p + w(D, H), kind="fused"),
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
    # Fused backward by design: fc1 stores the GELU pre-activation z (same size as its output), so fc2's dgrad
    # applies GELU' in its epilogue; LN backward needs full-row sums, hence one small row pass per LN.
    fb = [
        OpCost("F5b_fc2_dgrad_gelu", ops[8].flops, "tensor", A, 1 + 2 * r, 1 + 2 * r, None, w(H, D), phase="bwd",
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


def activation_passes(rows: Iterable[OpCost], phase: str = "fwd") -> dict:
    """The ``layer_*`` summary of ``rows`` as passes: ``{"min": .., "design": .., "eager": ..}`` for ``phase``."""
    for r in rows:
        if r.kind == "layer" and r.phase == phase:
            return {"min": r.min_passes, "design": r.design_passes, "eager": r.eager_passes}
    raise ValueError(f"phase: no layer summary for {phase!r} (pass train=True for 'bwd')")


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------

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
                **arch_overrides) -> ModelCost:
    """Analytic costs of a whole model: stem, ``depth`` × layer rows, head.

    Args:
        name: a model name of :data:`ARCHS` (the names ``spin_kernels.create_model`` knows).
        batch: batch size; dtype: ``bf16``/``fp16``/``fp32``/``tf32``; train: add the backward rows.
        img_size: input resolution; arch_overrides: e.g. ``dim=``, ``depth=``, ``kernel_size=`` (ConvMixer) or
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
                                train=train)
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


# ----------------------------------------------------------------------------------------------------------------
# Kernel resource report (AOT compile for sm_90, no GPU needed)
# ----------------------------------------------------------------------------------------------------------------

# sm_90 (H100) per-SM limits used for theoretical occupancy (CUDA occupancy calculator rules).
SM90_LIMITS = dict(regs_per_sm=65536, max_regs_per_thread=255, reg_alloc_unit=256, max_warps_per_sm=64,
                   max_blocks_per_sm=32, smem_per_sm=233472, smem_per_block_max=232448, smem_reserved_per_block=1024,
                   smem_alloc_unit=128)


def theoretical_occupancy(regs_per_thread: int, smem_per_block: int, num_warps: int,
                          limits: Mapping = SM90_LIMITS) -> dict:
    """Resident blocks and warps per SM from registers, shared memory and warps (the occupancy-calculator rules).

    Returns ``dict(blocks_per_sm, warps_per_sm, occupancy (fraction of max warps), limiter)``.
    """
    if num_warps < 1:
        raise ValueError(f"num_warps: expected ≥ 1, got {num_warps!r}")
    if regs_per_thread < 0 or smem_per_block < 0:
        raise ValueError("regs_per_thread / smem_per_block: expected non-negative values")
    lim = {"warps": limits["max_warps_per_sm"] // num_warps, "blocks": limits["max_blocks_per_sm"]}
    if regs_per_thread:
        # Registers are allocated per warp in units of reg_alloc_unit.
        per_warp = math.ceil(regs_per_thread * 32 / limits["reg_alloc_unit"]) * limits["reg_alloc_unit"]
        lim["registers"] = (limits["regs_per_sm"] // per_warp) // num_warps
    smem = smem_per_block + limits["smem_reserved_per_block"]
    smem = math.ceil(smem / limits["smem_alloc_unit"]) * limits["smem_alloc_unit"]
    lim["shared_memory"] = 0 if smem_per_block > limits["smem_per_block_max"] else limits["smem_per_sm"] // smem
    limiter = min(lim, key=lim.get)
    blocks = lim[limiter]
    warps = blocks * num_warps
    return {"blocks_per_sm": blocks, "warps_per_sm": warps, "occupancy": warps / limits["max_warps_per_sm"],
            "limiter": limiter}


def triton_nvidia_bin(tool: str) -> str | None:
    """Path of a CUDA tool (``ptxas``, ``cuobjdump``, ``nvdisasm``) bundled with Triton, else from PATH."""
    try:
        import triton
        p = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", tool)
        if os.path.exists(p):
            return p
    except ImportError:
        pass
    return shutil.which(tool)


_PTXAS_RE = {
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
    "stack": re.compile(r"(\d+) bytes stack frame"),
    "registers": re.compile(r"Used (\d+) registers"),
    "static_smem": re.compile(r"(\d+) bytes smem"),
}


def parse_ptxas_verbose(text: str) -> dict:
    """Parse ``ptxas -v`` / ``nvcc -Xptxas -v`` output into ``{function: {registers, spill_*, stack, ...}}``."""
    out: dict = {}
    current = None
    for line in text.splitlines():
        m = re.search(r"(?:Compiling entry function|Function properties for) '?([\w$.]+)'?", line)
        if m:
            current = m.group(1)
            out.setdefault(current, {})
        if current is None:
            continue
        for key, rx in _PTXAS_RE.items():
            mm = rx.search(line)
            if mm:
                out[current][key] = int(mm.group(1))
    return out


def parse_resource_usage(text: str) -> dict:
    """Parse ``cuobjdump --dump-resource-usage`` into ``{function: {registers, stack, shared, local}}``."""
    out = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"\s*Function ([\w$.]+):", line)
        if m:
            current = m.group(1)
            continue
        if current and "REG:" in line:
            fields = dict(re.findall(r"(\w+(?:\[\d+\])?):(\d+)", line))
            out[current] = {"registers": int(fields.get("REG", 0)), "stack": int(fields.get("STACK", 0)),
                            "static_smem": int(fields.get("SHARED", 0)), "local": int(fields.get("LOCAL", 0))}
            current = None
    return out


def run_tool(cmd: Sequence[str]) -> str:
    """Run a CUDA tool, returning stdout+stderr; a failure raises RuntimeError naming the command."""
    p = subprocess.run(list(cmd), capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:2])} failed ({p.returncode}): {p.stderr.strip()[-500:]}")
    return p.stdout + p.stderr


def find_extension_so(package_dir: str | None = None) -> str | None:
    """Path of the built ``spin_kernels._C*.so`` extension, or None."""
    if package_dir is None:
        package_dir = os.path.dirname(os.path.abspath(__file__))
    hits = sorted(glob.glob(os.path.join(package_dir, "_C*.so")))
    return hits[0] if hits else None


def demangle(symbols: Sequence[str]) -> dict:
    """``{mangled: short readable name}`` via ``c++filt`` (e.g. ``dw_forward_kernel<__nv_bfloat16>``); symbols
    stay as they are when c++filt is missing."""
    tool = shutil.which("c++filt")
    if not tool or not symbols:
        return {}
    p = subprocess.run([tool], input="\n".join(symbols), capture_output=True, text=True, check=False)
    out = {}
    for sym, full in zip(symbols, p.stdout.splitlines(), strict=False):
        short = full.replace("(anonymous namespace)::", "")
        if short.startswith("void "):
            short = short[5:]
        # drop the parameter list, then the namespaces in front of the kernel name
        depth = 0
        for i, ch in enumerate(short):
            depth += ch == "<"
            depth -= ch == ">"
            if ch == "(" and depth == 0:
                short = short[:i]
                break
        short = re.sub(r"^(?:\w+::)+", "", short)
        out[sym] = short or sym
    return out


def _system_ptxas() -> str | None:
    """The CUDA toolkit's ptxas (newer than Triton's bundled one, so it reads PTX from the toolkit's nvcc)."""
    for cand in (shutil.which("ptxas"), "/usr/local/cuda/bin/ptxas"):
        if cand and os.path.exists(cand):
            return cand
    return triton_nvidia_bin("ptxas")


def ptxas_spills_of_binary(so_path: str) -> dict:
    """Exact per-function registers / spills of every PTX embedded in ``so_path``: extract it
    (``cuobjdump -xptx all``) and re-run ``ptxas -v`` for its own target. ``{}`` when tools are missing."""
    cuobjdump, ptxas = triton_nvidia_bin("cuobjdump"), _system_ptxas()
    if not cuobjdump or not ptxas:
        return {}
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([cuobjdump, "-xptx", "all", os.path.abspath(so_path)], cwd=tmp, capture_output=True,
                       text=True)
        for ptx_file in sorted(glob.glob(os.path.join(tmp, "*.ptx"))):
            with open(ptx_file) as f:
                m = re.search(r"^\s*\.target\s+(sm_\w+)", f.read(), flags=re.M)
            if not m:
                continue
            try:
                text = run_tool([ptxas, f"-arch={m.group(1)}", "-v", ptx_file, "-o", os.devnull])
            except RuntimeError:
                continue   # e.g. a PTX ISA newer than this ptxas: the cuobjdump numbers still stand
            for fn, info in parse_ptxas_verbose(text).items():
                # several embedded targets may hold the same kernel: keep the worst case
                prev = out.setdefault(fn, {})
                for k, v in info.items():
                    prev[k] = max(prev.get(k, 0), v)
    return out


def cuda_extension_report(so_path: str | None = None, ptxas_log: str | None = None) -> list[dict]:
    """Resource usage of every CUDA kernel inside the built extension.

    Registers / static shared memory / local memory from ``cuobjdump --dump-resource-usage``, spills from
    ``ptxas -v`` re-run on the embedded PTX (or from ``ptxas_log``, a saved ``nvcc -Xptxas -v`` build log), and
    the tensor-core path from ``HGMMA`` in each function's SASS.
    """
    so_path = so_path or find_extension_so()
    if not so_path:
        return []
    tool = triton_nvidia_bin("cuobjdump")
    if not tool:
        return [{"name": os.path.basename(so_path), "error": "cuobjdump not found"}]
    try:
        usage = parse_resource_usage(run_tool([tool, "--dump-resource-usage", so_path]))
        sass = run_tool([tool, "-sass", so_path])
    except RuntimeError as e:
        return [{"name": os.path.basename(so_path), "error": str(e)}]
    spills = ptxas_spills_of_binary(so_path)
    if ptxas_log:
        with open(ptxas_log) as f:
            spills.update(parse_ptxas_verbose(f.read()))
    # Split SASS per function so wgmma is attributed to the right kernel.
    per_fn = dict(re.findall(r"Function : ([\w$.]+)\n(.*?)(?=\n\s*Function : |\Z)", sass, flags=re.S))
    names = demangle(list(usage))
    rows = []
    for fn, u in usage.items():
        body = per_fn.get(fn, "")
        sp = spills.get(fn, {})
        spill_bytes = sp.get("spill_stores", 0) + sp.get("spill_loads", 0) if sp else u["local"]
        rows.append({"name": names.get(fn, fn), "symbol": fn, "source": "cuda", "registers": u["registers"],
                     "stack": u["stack"],
                     "shared_mem": u["static_smem"], "local": u["local"], "spills": spill_bytes,
                     "spills_from": "ptxas" if sp else "cuobjdump LOCAL", "wgmma": "HGMMA" in body,
                     "hgmma_sass": "HGMMA" in body, "mma_sass": bool(re.search(r"\bHMMA\b", body)),
                     "ok": spill_bytes == 0})
    return rows


def collect_aot_kernels() -> list[dict]:
    """The AOT kernel registry: ``spin_kernels.triton.AOT_KERNELS`` when the package defines it, else the
    ``AOT_KERNELS`` lists of its submodules (deduplicated by name). Import failures leave a kernel family out
    (and are reported as a row with the error) instead of crashing the report."""
    import importlib
    import pkgutil
    try:
        pkg = importlib.import_module("spin_kernels.triton")
    except Exception as e:  # noqa: BLE001 - no triton, or a module that fails to import
        return [{"name": "spin_kernels.triton", "import_error": f"{type(e).__name__}: {e}"}]
    found = getattr(pkg, "AOT_KERNELS", None)
    if found:
        return list(found)
    out, seen = [], set()
    for info in pkgutil.iter_modules(getattr(pkg, "__path__", [])):
        try:
            mod = importlib.import_module(f"spin_kernels.triton.{info.name}")
        except Exception as e:  # noqa: BLE001
            out.append({"name": f"spin_kernels.triton.{info.name}", "import_error": f"{type(e).__name__}: {e}"})
            continue
        for entry in getattr(mod, "AOT_KERNELS", None) or []:
            name = entry.get("name")
            if name not in seen:
                seen.add(name)
                out.append(entry)
    return out


def kernel_report(kernels: Sequence[Mapping] | None = None, *, include_cuda: bool = True,
                  so_path: str | None = None, ptxas_log: str | None = None, capability: int = 90) -> list[dict]:
    """Compile every kernel of ``kernels`` (default ``spin_kernels.triton.AOT_KERNELS``) for ``sm_<capability>``
    (default sm_90) and report their resources, followed by the CUDA extension's kernels with ``include_cuda``.

    Each entry is a kernel spec, ``dict(name, fn, signature, constexprs, is_gemm[, options, num_warps, num_stages,
    div16])``, compiled by :func:`spin_kernels.triton.aot.compile_kernel`. A kernel that fails to compile is
    reported with its error; the rest still run. GEMM kernels without wgmma are flagged ``ok=False``, as are kernels
    that spill. ``so_path`` / ``ptxas_log`` point at the CUDA extension (default: the built
    ``spin_kernels/_C*.so``) and an optional ``nvcc -Xptxas -v`` build log.
    """
    if kernels is None:
        kernels = collect_aot_kernels()
    rows = []
    for i, entry in enumerate(kernels):
        if isinstance(entry, Mapping) and "import_error" in entry:
            rows.append({"name": entry["name"], "error": f"import failed: {entry['import_error']}", "ok": False})
            continue
        if not isinstance(entry, Mapping) or "fn" not in entry or "signature" not in entry:
            raise ValueError(f"kernels[{i}]: expected dict(name, fn, signature, constexprs, is_gemm), got {entry!r}")
        name = entry.get("name") or getattr(entry["fn"], "__name__", f"kernel{i}")
        row = {"name": name, "kernel": getattr(entry["fn"], "__name__", None),
               "is_gemm": bool(entry.get("is_gemm", False))}
        t0 = time.perf_counter()
        try:
            # imported here: it imports Triton and every kernel module, needed only when there are kernels
            from .triton.aot import compile_kernel
            row.update(compile_kernel(entry, capability))
            row["ok"] = row["spills"] == 0 and (row["wgmma"] or not row["is_gemm"])
        except Exception as e:  # noqa: BLE001 - one failing kernel must not hide the others
            row.update({"error": f"{type(e).__name__}: {e}", "ok": False})
        row["compile_s"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
    if include_cuda:
        for r in cuda_extension_report(so_path, ptxas_log):
            r.setdefault("ok", False)   # only error rows lack it
            rows.append(r)
    return rows


def format_kernel_report(rows: Sequence[Mapping]) -> str:
    """Table of :func:`kernel_report` rows."""
    if not rows:
        return "no kernels to report (spin_kernels.triton.AOT_KERNELS is absent or empty and no _C extension)"
    lines = [f"{'kernel':36s} {'src':6s} {'regs':>5s} {'spill B':>7s} {'smem B':>8s} {'warps':>5s} {'wgmma':>5s} "
             f"{'occ':>5s} {'limiter':>13s} ok"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['name'][:36]:36s} FAILED: {r['error'][:200]}")
            continue
        occ = r.get("occupancy")
        lines.append(f"{r['name'][:36]:36s} {r.get('source', ''):6s} {r.get('registers', 0):5d} "
                     f"{r.get('spills', 0):7d} {r.get('shared_mem', 0):8d} {r.get('num_warps', '-')!s:>5s} "
                     f"{'yes' if r.get('wgmma') else ('mma' if r.get('mma_sass') else 'no'):>5s} "
                     f"{'-' if occ is None else f'{occ:.0%}':>5s} "
                     f"{r.get('limiter', '-'):>13s} {'ok' if r.get('ok') else 'CHECK'}")
    if any(r.get("source") == "cuda" for r in rows):
        lines.append("cuda rows: shared memory is the static size only (dynamic shared memory and the block size "
                     "are launch parameters, so no occupancy); wgmma column: yes = HGMMA, mma = HMMA (mma.sync)")
    return "\n".join(lines)
