"""The device CUDA-kernel tests run on: the GPU when there is one, and always the host emulation of the same
kernel sources (spin_kernels.cuda_emulation) on CPU tensors, so every kernel test runs in CI without a GPU."""
import pytest

from spin_kernels import cuda_emulation

EMULATION_SCHEDULE_SEED = 20261203


@pytest.fixture(params=[pytest.param("cuda", marks=pytest.mark.gpu), "emulated"])
def kdev(request):
    """Device string for the kernel under test; "emulated" enables the emulation for the test's duration."""
    if request.param == "cuda":
        yield "cuda"
        return
    try:
        cuda_emulation.enable(True, sm_count=1)
        # CTAs of plain launches in a seeded random order, several at once (not blockIdx order, one at a time):
        # a kernel that relies on CTA order fails here; test_emulated_schedule adds jitter and several seeds
        cuda_emulation.set_schedule(EMULATION_SCHEDULE_SEED)
    except RuntimeError as e:  # no host compiler / CUDA headers: say so rather than pass silently
        pytest.fail(f"CUDA emulation unavailable: {e}")
    try:
        yield "cpu"
    finally:
        cuda_emulation.set_schedule(0)
        cuda_emulation.enable(False)

