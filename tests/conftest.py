"""Shared test settings: the Triton interpreter without a GPU, small thread counts (CI has 2 cores), a gpu marker."""
import os

import torch

# Triton reads TRITON_INTERPRET when kernels are defined: set it here, before any test module imports a kernel.
# Without a GPU every Triton kernel runs in the interpreter on CPU tensors; on a GPU machine the compiled kernels run.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds on 2 CPU cores")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
