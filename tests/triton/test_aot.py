"""Every shipped kernel configuration compiles for sm_90 (H100) without a GPU: zero register spills, and the
GEMM kernels use Hopper tensor cores (wgmma in the PTX).

Compilation runs in a subprocess without TRITON_INTERPRET (this directory's conftest turns the interpreter on).
"""
import pytest

from spin_kernels.triton import CONVMIXER_AOT_KERNELS as AOT_KERNELS  # the ViT ones: tests/triton_vit
from spin_kernels.perf.aot import report_in_subprocess

NAMES = [e["name"] for e in AOT_KERNELS]


@pytest.fixture(scope="module")
def report():
    return report_in_subprocess(NAMES)


def test_aot_list_is_complete():
    fns = {e["fn"].__name__ for e in AOT_KERNELS}
    assert fns == {"dw_fwd_kernel", "dw_bwd_dx_kernel", "dw_wgrad_kernel", "bn_finalize_kernel",
                   "bn_bwd_vectors_kernel", "pw_input_kernel", "pw_fwd_kernel", "pw_dz_kernel", "pw_bwd_dx_kernel", "pw_bwd_dw_kernel"}
    assert len(set(NAMES)) == len(NAMES)
    for e in AOT_KERNELS:
        assert set(e) >= {"name", "fn", "signature", "constexprs", "is_gemm"}
        assert list(e["signature"]) == list(e["fn"].arg_names)


@pytest.mark.parametrize("name", NAMES)
def test_compiles_for_sm90_without_spills(report, name):
    row = report[name]
    assert row["ok"], row.get("error") or row
    assert row["spill_stores"] == 0 and row["spill_loads"] == 0, row
    if row["is_gemm"]:
        assert row["wgmma"], f"{name}: no wgmma in the PTX"
