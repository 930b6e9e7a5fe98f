"""Performance without a GPU, and the yardsticks for measurements with one.

* :mod:`.cards` — the card constants (ceilings, and the per-SM rates of the cost model), one table with sources;
* :mod:`.roofline` — analytic FLOPs / HBM bytes / floor times per op and per model (``spin bench --analytic``);
* :mod:`.machine_code` — CUDA tools and their parsers: registers, spills, shared memory, occupancy;
* :mod:`.aot` — Triton kernels compiled for sm_90a ahead of time (no GPU), with their SASS;
* :mod:`.kernels_report` — the resource table of every shipped kernel (``spin kernels-report``).

Dependencies run one way: this package reads the kernels (``spin_kernels.triton``, the built extension); no kernel
module imports it.
"""
from .cards import (
    CARDS,
    DTYPE_BYTES,
    H100,
    H200,
    Ceilings,
    get_ceilings,
    normalize_dtype,
)
from .kernels_report import collect_aot_kernels, format_kernel_report, kernel_report
from .machine_code import (
    SM90_LIMITS,
    cuda_extension_report,
    demangle,
    find_extension_so,
    parse_ptxas_verbose,
    parse_resource_usage,
    ptxas_spills_of_binary,
    run_tool,
    theoretical_occupancy,
    triton_nvidia_bin,
)
from .roofline import (
    ARCHS,
    STATS_ROWS_PER_TILE,
    ModelCost,
    OpCost,
    activation_passes,
    convmixer_layer_costs,
    format_table,
    model_costs,
    pass_budget,
    pct_of_floor,
    VIT_RECOMPUTE_MODES,
    vit_block_costs,
    vit_recompute_costs,
    vit_recomputed,
)

__all__ = [
    "ARCHS", "CARDS", "DTYPE_BYTES", "H100", "H200", "SM90_LIMITS", "STATS_ROWS_PER_TILE", "Ceilings", "ModelCost",
    "OpCost", "activation_passes", "collect_aot_kernels", "convmixer_layer_costs", "cuda_extension_report",
    "demangle", "find_extension_so", "format_kernel_report", "format_table", "get_ceilings", "kernel_report",
    "model_costs", "normalize_dtype", "parse_ptxas_verbose", "pass_budget", "parse_resource_usage", "pct_of_floor",
    "ptxas_spills_of_binary", "run_tool", "theoretical_occupancy", "triton_nvidia_bin", "vit_block_costs",
    "VIT_RECOMPUTE_MODES", "vit_recompute_costs", "vit_recomputed",
]
