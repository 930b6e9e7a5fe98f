"""Shared helpers of the ViT kernel tests (a uniquely named module: tests/ has several conftest.py files)."""
import torch

from spin_kernels.testing import TF32_TOLERANCE, TOLERANCES, rel_err

ON_GPU = torch.cuda.is_available()

# fp32: 1e-5 in the interpreter; on a GPU tl.dot runs fp32 as tf32 (DESIGN.md §5)
TOL = {torch.float32: TF32_TOLERANCE if ON_GPU else TOLERANCES[torch.float32], torch.float16: TOLERANCES[torch.float16],
       torch.bfloat16: TOLERANCES[torch.bfloat16]}
# bf16 compiled on a GPU only: the interpreter's bf16 arithmetic is wrong (numpy has no bf16)
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if ON_GPU else [])


def check(out, ref64, torch_out=None, dtype=torch.float32, what=""):
    """Assert ``out`` is finite, within TOL[dtype] of the float64 reference and, when PyTorch's own result in the
    same dtype is given, no worse than 2x its error (plus TOL/10 of slack for errors at the rounding floor)."""
    assert torch.isfinite(out).all(), f"{what}: non-finite (unwritten?) elements"
    err = rel_err(out, ref64)
    assert err <= TOL[dtype], f"{what}: rel err {err:.3e} > {TOL[dtype]:.1e}"
    if torch_out is not None and not (ON_GPU and dtype == torch.float32):  # tf32 is not PyTorch's fp32
        terr = rel_err(torch_out, ref64)
        assert err <= 2 * terr + TOL[dtype] / 10, f"{what}: rel err {err:.3e} vs PyTorch {terr:.3e}"
    return err
