"""Every shipped ViT kernel config compiles for sm_90 (no GPU needed): zero spills, wgmma for GEMM/attention.

Each AOT_KERNELS entry states the specialisation Triton's launcher applies at run time for ViT shapes (unit strides
as constexprs, ``div16``: arguments divisible by 16), so the report describes the code that actually runs.
The conftest turns on the Triton interpreter (jit functions become InterpretedFunction), so the compilation runs
in a child process without TRITON_INTERPRET, one per kernel module (the same report by hand:
``python -m spin_kernels.perf.aot --kernels spin_kernels.triton.attention``).
"""
import functools
import importlib

import pytest

from spin_kernels.perf import triton_nvidia_bin
from spin_kernels.perf.aot import report_in_subprocess

MODULES = ["spin_kernels.triton.attention", "spin_kernels.triton.layernorm", "spin_kernels.triton.vit_gemm"]


@functools.cache
def compile_module(name):
    """{kernel name: resource report row} for every AOT_KERNELS entry of module ``name`` (sm_90, no GPU)."""
    return report_in_subprocess(kernels=name)


def _configs():
    out = []
    for name in MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        out += [pytest.param(name, k["name"], k["is_gemm"], id=k["name"]) for k in getattr(mod, "AOT_KERNELS", [])]
    return out


@pytest.mark.skipif(triton_nvidia_bin("ptxas") is None, reason="ptxas not found")
@pytest.mark.parametrize("module,name,is_gemm", _configs())
def test_compiles_sm90(module, name, is_gemm):
    info = compile_module(module)[name]
    assert "error" not in info, info.get("error")
    assert info["spills"] == 0, f"{name}: {info['spills']} bytes spilled ({info['registers']} registers)"
    assert info["shared_mem"] <= 227 * 1024, f"{name}: {info['shared_mem']} bytes of shared memory"
    if is_gemm:
        assert info["wgmma_ptx"] and info["hgmma_sass"], f"{name}: no wgmma / HGMMA"

