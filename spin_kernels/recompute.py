"""The save-or-recompute modes of the fused ViT backward: which LayerNorm + GEMM pairs it redoes instead of
keeping their outputs from the forward (ops.vit runs them, models.vit selects them, perf.roofline prices them)."""

# mode -> the GEMMs ("qkv", "fc1") the backward recomputes
VIT_RECOMPUTE_MODES = {"all": ("qkv", "fc1"), "qkv": ("qkv",), "fc1": ("fc1",), "none": ()}


def vit_recomputed(recompute: str) -> tuple:
    """The GEMMs (of 'qkv', 'fc1') the ViT backward recomputes in mode ``recompute``; ValueError for an unknown
    mode."""
    if recompute not in VIT_RECOMPUTE_MODES:
        raise ValueError(f"recompute: expected one of {sorted(VIT_RECOMPUTE_MODES)}, got {recompute!r}")
    return VIT_RECOMPUTE_MODES[recompute]
