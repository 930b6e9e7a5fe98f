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
    # the markers of timm's own model tests (tests/models/test_timm_models.py runs them against our models)
    for name in ("base", "cfg", "cfg_nonstd", "forward", "backward", "torchscript", "features", "fxforward",
                 "fxbackward", "timeout(seconds): timm's per-test time limit (enforced only with pytest-timeout)"):
        config.addinivalue_line("markers", name if ":" in name else f"{name}: a group of timm's model tests")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
