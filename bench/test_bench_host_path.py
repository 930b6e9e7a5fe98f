"""Host work of a batch-1 eval call on the weights-resident kernel (issue 16 item 2), on any machine: the part
of `convmixer_cuda.eval_features` that is Python, apart from the stem (PyTorch) and the launch itself (C++: check
x, allocate the output and scratch, launch — the parameters were checked and converted once, when the launch was
prepared). The steady-state check that the folded parameters are current is a tensor watch in C++; the walk it
replaced (a version key over every parameter and buffer) is benchmarked beside it. Nothing asserts a time."""
import pytest
import torch

from spin_kernels.models import create_model
from spin_kernels.ops import convmixer_cuda


@pytest.fixture(scope="module")
def model():
    """spin_convmixer_768_32 r=2 in bf16; without a GPU the host emulation stands in, so the eligibility checks
    take the path a GPU call takes."""
    from spin_kernels import cuda_emulation

    emulate = not torch.cuda.is_available()
    if emulate:
        cuda_emulation.enable(True)
    m = create_model("spin_convmixer_768_32", share_rate=2).eval().to(torch.bfloat16)
    if torch.cuda.is_available():
        m = m.cuda()
    convmixer_cuda.launch_parameters(m, torch.bfloat16)
    yield m
    if emulate:
        cuda_emulation.enable(False)


def test_cache_check(benchmark, model):
    """Steady state: structure token + tensor watch (416 tensors), the launches reused."""
    first = convmixer_cuda.launch_parameters(model, torch.bfloat16)
    assert benchmark(convmixer_cuda.launch_parameters, model, torch.bfloat16) is first


def test_python_host_path(benchmark, model):
    """Eligibility checks + dtype + cache check: everything eval_features does in Python besides the stem and
    the launch call."""
    images = torch.randn(1, 3, 224, 224, dtype=torch.bfloat16, device=next(model.parameters()).device)

    def host():
        assert convmixer_cuda._unsupported(model, images) is None
        convmixer_cuda._run_dtype(model, images)
        return convmixer_cuda._launch_cache(model, torch.bfloat16)

    benchmark(host)


def test_version_key_walk_it_replaced(benchmark, model):
    """The per-call walk the watch replaced: (data_ptr, version) of every source tensor, in Python."""
    tensors = convmixer_cuda._source_tensors(model)
    benchmark(lambda: tuple((t.data_ptr(), t._version) for t in tensors))
