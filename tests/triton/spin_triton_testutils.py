"""Shared helpers of the Triton tests (a uniquely named module, so that no other conftest.py shadows it)."""
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# DESIGN.md §5: fp32 ≤ 1e-5 in the interpreter, ≤ 5e-4 on a GPU (tl.dot runs in tf32); fp16 ≤ 5e-3
TOL = {torch.float32: 5e-4 if DEVICE == "cuda" else 1e-5, torch.float16: 5e-3}


def rel_err(a, b):
    """Relative Frobenius error of a against the reference b (both cast to float64)."""
    a = a.detach().double()
    b = b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
