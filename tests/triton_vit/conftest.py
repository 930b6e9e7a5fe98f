# Triton reads TRITON_INTERPRET when it is imported: set it before anything imports triton (importing torch does not).
# Without a GPU every kernel runs in the interpreter on CPU tensors; on a GPU machine the same tests run the compiled
# kernels on CUDA tensors (the autouse fixture below makes CUDA the default device), so the interpreter is NOT
# forced there (it would also hijack the GPU tests of tests/triton in the same process).
import os

import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("SPIN_KERNELS_POISON", "1")  # NaN-poison kernel outputs on GPU runs too

import pytest

DEVICE = "cuda" if ON_GPU else "cpu"


@pytest.fixture(autouse=True)
def _default_device():
    """Fresh tensors of these tests live on the GPU when there is one (compiled kernels), else on the CPU."""
    if not ON_GPU:
        yield
        return
    torch.set_default_device("cuda")
    try:
        yield
    finally:
        torch.set_default_device("cpu")
