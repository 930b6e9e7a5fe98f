"""pytest configuration of the micro-benchmarks.

Each benchmark file parametrises over its model shapes (real ones on a GPU, tiny ones on the CPU) and over
implementations: ``eager`` (the reference PyTorch path), ``compile-<mode>`` (torch.compile of the reference; on the
CPU only with SPIN_BENCH_COMPILE=1) and the fused backends (``triton`` / ``cuda``, skipped where they cannot run).
GPU callables synchronize before returning, so pytest-benchmark's wall clock measures the kernels. Benchmarks are
benchmarks, not timed tests: nothing asserts a time.
"""
import pytest
import torch

from bench import common


def pytest_report_header(config):
    dev = torch.cuda.get_device_name() if common.ON_GPU else "cpu (tiny shapes, reference path only)"
    return [f"spin_kernels bench: device={dev} dtype={common.DTYPE_NAME} "
            f"compile modes={common.compile_modes() or 'none (set SPIN_BENCH_COMPILE=1)'}"]


@pytest.fixture(autouse=True)
def _seed_and_grad():
    torch.manual_seed(0)
    yield
    if common.ON_GPU:
        torch.cuda.synchronize()


def pytest_benchmark_update_machine_info(config, machine_info):
    """Name the card in the saved JSON: timings are only comparable on one card."""
    machine_info["spin_device"] = torch.cuda.get_device_name() if common.ON_GPU else "cpu"
    machine_info["torch"] = torch.__version__


def bench_rounds():
    """pedantic() settings: many short rounds on a GPU, a few on the shared CPU."""
    return dict(rounds=20, iterations=1, warmup_rounds=3) if common.ON_GPU else dict(rounds=3, iterations=1,
                                                                                       warmup_rounds=1)


@pytest.fixture
def run_bench(benchmark):
    """``run_bench(fn)``: time ``fn`` (already synchronizing) with pytest-benchmark's pedantic mode."""
    def run(fn):
        return benchmark.pedantic(fn, **bench_rounds())
    return run
