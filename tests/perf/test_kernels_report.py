"""Kernel resource report: AOT-compile tiny Triton kernels for sm_90 (no GPU needed) and read their resources.

Other test directories turn on the Triton interpreter process-wide (TRITON_INTERPRET=1), under which @triton.jit
functions cannot be compiled for a GPU target; the compiling tests therefore run the report in a child process
without that variable, and report back as JSON.
"""
import argparse
import functools
import json
import os
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("triton")

from spin_kernels import perf  # noqa: E402
from spin_kernels.perf.aot import report_in_subprocess  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

needs_tools = pytest.mark.skipif(perf.triton_nvidia_bin("ptxas") is None or perf.triton_nvidia_bin("cuobjdump")
                                 is None, reason="Triton's bundled ptxas / cuobjdump are not available")


@functools.lru_cache(maxsize=None)
def _report():
    rows = report_in_subprocess(kernels="_aot_kernels:KERNELS", pythonpath=[HERE], timeout=600)
    return rows, perf.format_kernel_report(list(rows.values()))


@needs_tools
def test_tiny_gemm_uses_wgmma_and_does_not_spill():
    rows, text = _report()
    gemm, copy = rows["tiny_gemm"], rows["tiny_copy"]
    assert "error" not in gemm, gemm.get("error")
    assert gemm["wgmma"] and gemm["hgmma_sass"] and gemm["wgmma_ptx"]
    assert gemm["spills"] == 0 and gemm["registers"] > 0
    assert gemm["shared_mem"] > 0 and 0 < gemm["occupancy"] <= 1
    assert gemm["ok"]
    assert not copy["wgmma"] and copy["ok"]          # non-GEMMs are not required to use tensor cores
    assert "tiny_gemm" in text


@needs_tools
def test_spilling_kernel_is_flagged():
    rows, text = _report()
    row = rows["big_gemm"]
    if "error" in row:
        pytest.skip(f"compiler refused the big tile: {row['error'][:100]}")
    assert row["spills"] > 0 and row["registers"] >= 200
    assert not row["ok"] and "CHECK" in text


def test_failing_kernel_is_reported_not_raised():
    sys.path.insert(0, HERE)
    try:
        from _aot_kernels import tiny_copy
    finally:
        sys.path.remove(HERE)
    bad = {"name": "bad", "fn": tiny_copy, "signature": {"x_ptr": "*fp32"}, "constexprs": {}, "is_gemm": False}
    (row,) = perf.kernel_report([bad], include_cuda=False)
    assert "error" in row and row["ok"] is False


def test_malformed_entry_raises():
    with pytest.raises(ValueError, match="kernels\\[0\\]"):
        perf.kernel_report([{"name": "x"}], include_cuda=False)


def test_cli_handles_missing_registry(monkeypatch, capsys, tmp_path):
    import types

    import spin_kernels
    from spin_kernels import perf_cli
    # An empty registry stands in for spin_kernels.triton, so the test does not depend on (or compile) the
    # kernels other modules register.
    stub = types.ModuleType("spin_kernels.triton")
    monkeypatch.setitem(sys.modules, "spin_kernels.triton", stub)
    monkeypatch.setattr(spin_kernels, "triton", stub, raising=False)
    monkeypatch.setattr(perf.machine_code, "find_extension_so", lambda package_dir=None: None)
    parser = argparse.ArgumentParser()
    perf_cli.register(parser.add_subparsers())
    out = tmp_path / "k.json"
    args = parser.parse_args(["kernels-report", "--json", str(out)])
    assert args.func(args) == 0
    assert "no kernels to report" in capsys.readouterr().out
    assert json.loads(out.read_text()) == []


def test_registry_import_failure_is_a_row(monkeypatch):
    import importlib
    real = importlib.import_module

    def fake(name, *a, **k):
        if name == "spin_kernels.triton":
            raise ImportError("no triton here")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    rows = perf.kernel_report(include_cuda=False)
    assert rows[0]["ok"] is False and "no triton here" in rows[0]["error"]


CU_SRC = r"""
extern "C" __global__ void axpy(float a, const float* x, float* y, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * x[i] + y[i];
}
"""


@needs_tools
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_cuda_extension_report_reads_a_built_so(tmp_path):
    (tmp_path / "k.cu").write_text(CU_SRC)
    so = tmp_path / "_C_test.so"
    log = subprocess.run(["nvcc", "-shared", "-Xcompiler", "-fPIC", "-arch=sm_90a", "-Xptxas", "-v", "-o", str(so),
                          str(tmp_path / "k.cu")], capture_output=True, text=True, check=False)
    if log.returncode != 0:
        pytest.skip(f"nvcc could not build for sm_90a here: {log.stderr[-300:]}")
    (tmp_path / "ptxas.log").write_text(log.stdout + log.stderr)
    rows = perf.cuda_extension_report(str(so), str(tmp_path / "ptxas.log"))
    (row,) = [r for r in rows if r["name"] == "axpy"]
    assert row["registers"] > 0 and row["spills"] == 0 and row["spills_from"] == "ptxas"
    assert not row["wgmma"]
    rows = perf.kernel_report([], so_path=str(so))
    assert rows and rows[0]["ok"]
