"""Shared helpers of the Triton tests (a uniquely named module, so that no other conftest.py shadows it)."""
import torch

from spin_kernels.testing import TF32_TOLERANCE, TOLERANCES, rel_err  # noqa: F401 - re-exported to the tests

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# fp32 at DESIGN.md §5's 1e-5 in the interpreter, at TF32's bound on a GPU (tl.dot runs in tf32); fp16 5e-3
TOL = {torch.float32: TF32_TOLERANCE if DEVICE == "cuda" else TOLERANCES[torch.float32],
       torch.float16: TOLERANCES[torch.float16], torch.bfloat16: TOLERANCES[torch.bfloat16]}
# bf16 compiled on a GPU only: the interpreter's bf16 arithmetic is wrong (numpy has no bf16)
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
