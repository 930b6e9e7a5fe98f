"""Every shipped ViT kernel config compiles for sm_90 (no GPU needed): zero spills, wgmma for GEMM/attention.

Each AOT_KERNELS entry states the specialisation Triton's launcher applies at run time for ViT shapes (unit strides
as constexprs, ``div16``: arguments divisible by 16), so the report describes the code that actually runs.
The conftest turns on the Triton interpreter (jit functions become InterpretedFunction), so the compilation runs
in a child process without TRITON_INTERPRET, one per kernel module, and reports back as JSON.
"""
import functools
import importlib
import json
import os
import subprocess
import sys

import pytest

from spin_kernels.perf import triton_nvidia_bin

MODULES = ["spin_kernels.triton.attention", "spin_kernels.triton.layernorm", "spin_kernels.triton.vit_gemm"]

_CHILD = r"""
import importlib, json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from spin_kernels.perf import analyze_binary

mod = importlib.import_module(sys.argv[1])
out = {}
for k in mod.AOT_KERNELS:
    try:
        fn = k["fn"]
        sig = dict(k["signature"])
        cex = dict(k["constexprs"])
        for name in cex:
            sig[name] = "constexpr"
        attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in k.get("div16", ())}
        kern = triton.compile(ASTSource(fn, sig, cex, attrs), target=GPUTarget("cuda", 90, 32),
                              options=dict(num_warps=k["num_warps"], num_stages=k["num_stages"]))
        info = analyze_binary(kern.asm["ptx"], kern.asm["cubin"], num_warps=k["num_warps"],
                              dynamic_smem=int(kern.metadata.shared), arch="sm_90a")
        out[k["name"]] = {key: info.get(key) for key in ("registers", "spills", "shared_mem", "wgmma_ptx",
                                                          "hgmma_sass", "occupancy")}
    except Exception as e:  # reported per kernel by the test
        out[k["name"]] = {"error": f"{type(e).__name__}: {e}"[:2000]}
print("AOT-JSON" + json.dumps(out))
"""


@functools.cache
def compile_module(name):
    """{kernel name: resource report} for every AOT_KERNELS entry of module ``name`` (sm_90, no GPU)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p = subprocess.run([sys.executable, "-c", _CHILD, name], capture_output=True, text=True, env=env, cwd=root,
                       check=False, timeout=900)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("AOT-JSON")]
    assert line, f"AOT compile of {name} failed:\n{p.stderr[-3000:]}"
    return json.loads(line[-1][len("AOT-JSON"):])


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


if __name__ == "__main__":  # the kernels report: python tests/triton_vit/test_vit_aot.py
    for mod in MODULES:
        for kname, info in compile_module(mod).items():
            print(f"{kname:32s} {json.dumps(info)}")
