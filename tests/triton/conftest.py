# Triton reads TRITON_INTERPRET when it is imported: set it before anything imports triton.
import os

import torch

if not torch.cuda.is_available():  # no GPU: run the kernels in the interpreter on CPU tensors
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
