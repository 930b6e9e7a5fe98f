"""The device CUDA-kernel tests run on: the GPU when there is one, and always the host emulation of the same
kernel sources (spin_kernels.cuda_emulation) on CPU tensors, so every kernel test runs in CI without a GPU."""
import pytest

from spin_kernels import cuda_emulation


@pytest.fixture(params=[pytest.param("cuda", marks=pytest.mark.gpu), "emulated"])
def kdev(request):
    """Device string for the kernel under test; "emulated" enables the emulation for the test's duration."""
    if request.param == "cuda":
        yield "cuda"
        return
    try:
        cuda_emulation.enable(True, sm_count=1)
    except RuntimeError as e:  # no host compiler / CUDA headers: say so rather than pass silently
        pytest.fail(f"CUDA emulation unavailable: {e}")
    try:
        yield "cpu"
    finally:
        cuda_emulation.enable(False)

