"""Weights-resident shared-run kernel (eval-mode ConvMixer) against the float64 reference model (GPU only)."""
from unittest import mock

import pytest
import torch

import spin_kernels as sk
from spin_kernels import cuda
from spin_kernels.testing import randomise_batchnorm, rel_err




def compare(name, dtype, batch, img, share_rate, dev="cuda", **arch):
    torch.manual_seed(0)
    model = randomise_batchnorm(sk.create_model(name, share_rate=share_rate, backend="cuda", num_classes=10, **arch)).eval()
    ref = sk.create_model(name, share_rate=share_rate, num_classes=10, **arch).eval()
    ref.load_state_dict(model.state_dict())
    x = torch.randn(batch, 3, img, img, device=dev)
    expected = ref.to(dev).double()(x.double())
    torch_low = ref.to(dtype)(x.to(dtype))  # PyTorch's own error in this dtype
    model = model.to(dev).to(dtype)
    with mock.patch.object(cuda, "shared_run_forward", wraps=cuda.shared_run_forward) as kernel:
        feats = model.forward_features(x.to(dtype))
    assert kernel.call_count == len(model.pw_plan.runs)  # one persistent launch per run, no fallback
    got = model.forward_head(feats)
    assert torch.isfinite(got).all()
    assert rel_err(got, expected) <= max(2e-2, 2 * rel_err(torch_low, expected))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("share_rate", [1, 2, 4])
@pytest.mark.parametrize("name", ["spin_convmixer_768_32", "convmixer_1536_20"])
def test_small_models(kdev, dtype, share_rate, name):
    compare(name, dtype, batch=3, img=72, share_rate=share_rate, dev=kdev, dim=128, depth=4, kernel_size=5,
            patch_size=8)


@pytest.mark.gpu
def test_spin_convmixer_768_32_r2():
    compare("spin_convmixer_768_32", torch.bfloat16, batch=2, img=224, share_rate=2)


@pytest.mark.gpu
def test_training_mode_and_large_batch_fall_back():
    model = sk.create_model("spin_convmixer_768_32", dim=64, depth=2, patch_size=8, backend="cuda").cuda()
    x = torch.randn(17, 3, 32, 32, device="cuda")
    with pytest.warns(UserWarning, match="not used"):
        model.eval().to(torch.bfloat16)(x.to(torch.bfloat16))  # batch 17 > 16: per-layer path


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B, H, W, C, k, layers", [(1, 13, 11, 64, 3, 1), (3, 9, 14, 192, 7, 2), (2, 16, 16, 128, 9, 4)])
@pytest.mark.parametrize("act, spin", [("relu", True), ("gelu", False)])
def test_kernel_against_reference(kdev, dtype, B, H, W, C, k, layers, act, spin):
    from spin_kernels.reference.shared_run import shared_run

    torch.manual_seed(1)
    dev = kdev
    x = torch.randn(B, H, W, C, device=dev).to(dtype)
    w = (torch.randn(C, C, device=dev) / C ** 0.5).to(dtype)
    args = (w, torch.randn(C, device=dev) * 0.1, torch.randn(layers, C, k, k, device=dev) / k,
            torch.randn(layers, C, device=dev) * 0.1, torch.rand(layers, C, device=dev) + 0.5,
            torch.randn(layers, C, device=dev) * 0.1, torch.rand(layers, C, device=dev) * 0.5 + 0.25,
            torch.randn(layers, C, device=dev) * 0.1)
    got = cuda.shared_run_forward(x, *args, act=act, spin_residual=spin)
    expected = shared_run(x, *args, act=act, spin_residual=spin)
    low = shared_run(x, *args, act=act, spin_residual=spin, dtype=dtype)  # PyTorch's own error in this dtype
    assert rel_err(got, expected) <= max({torch.bfloat16: 2e-2, torch.float16: 5e-3}[dtype], 2 * rel_err(low, expected))
