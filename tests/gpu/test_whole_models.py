"""Whole models at their real sizes on a GPU (skipped without one; `make gpu-proof` runs them compiled).

Each fused backend against the float64 reference path with the same weights: spin_convmixer_768_32 r=2,
convmixer_1536_20 and deit_small_patch16_224 r=2 at 224 px, train mode (logits, the input's and every parameter's
gradient) and eval mode (logits; BatchNorm statistics randomised so that eval means something), fp32 (tf32 tensor
cores) and bf16, with the bounds of :func:`spin_kernels.testing.compare_models`: the design tolerance
(DESIGN.md §5) or twice PyTorch's own error in the same dtype, whichever is larger.
"""
import warnings

import pytest
import torch

import spin_kernels as sk
from spin_kernels.testing import compare_models, failures, randomise_batchnorm

pytestmark = pytest.mark.gpu

CASES = [("spin_convmixer_768_32", 2, "triton"), ("spin_convmixer_768_32", 2, "cuda"),
         ("convmixer_1536_20", 1, "triton"), ("convmixer_1536_20", 1, "cuda"),
         ("deit_small_patch16_224", 2, "triton")]
BATCH, CLASSES = 2, 100


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name,rate,backend", CASES, ids=[f"{n}-r{r}-{b}" for n, r, b in CASES])
def test_whole_model_against_float64(name, rate, backend, train, dtype):
    torch.manual_seed(0)
    ref = randomise_batchnorm(sk.create_model(name, share_rate=rate, backend="reference", num_classes=CLASSES).cuda())
    fused = sk.create_model(name, share_rate=rate, backend=backend, num_classes=CLASSES).cuda()
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(BATCH, 3, 224, 224, device="cuda")
    g = torch.randn(BATCH, CLASSES, device="cuda")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        errors = compare_models(ref, fused, x, dtype, train, g)
    fallback = [str(w.message) for w in caught if any(s in str(w.message) for s in ("reference", "not used", "fall"))]
    if fallback:   # the fused backend does not cover this case: comparing the reference with itself proves nothing
        pytest.skip(f"backend {backend} falls back here: {fallback[0][:200]}")
    assert not failures(errors), failures(errors)
