"""Weights-resident shared-run kernel (eval-mode ConvMixer) against the float64 reference: on the GPU and on the
host emulation of the same kernel source (tests/cuda/conftest.py)."""
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
    with mock.patch.object(cuda, "launch_shared_run", wraps=cuda.launch_shared_run) as kernel:
        feats = model.forward_features(x.to(dtype))
    assert kernel.call_count == 1  # the whole trunk in one persistent launch, no fallback
    got = model.forward_head(feats)
    assert torch.isfinite(got).all()
    assert rel_err(got, expected) <= max(2e-2, 2 * rel_err(torch_low, expected))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("share_rate", [1, 2, 4])
@pytest.mark.parametrize("name", ["spin_convmixer_768_32", "convmixer_1536_20"])
def test_small_models(kdev, dtype, share_rate, name):
    compare(name, dtype, batch=3, img=72, share_rate=share_rate, dev=kdev, dim=128, depth=4, kernel_size=5,
            patch_size=8)


def test_spin_convmixer_768_32_r2(kdev):
    """The whole model (C = 768, k = 3, patch 14, 32 layers in 16 runs of 2): at 224 px (16 x 16 activations) on a
    GPU; at 56 px (4 x 4) on the emulated GPU, with the 6 SMs its 12 resident W slices need (2 per SM)."""
    from spin_kernels import cuda_emulation

    if kdev == "cpu":
        cuda_emulation.enable(True, sm_count=6)
    compare("spin_convmixer_768_32", torch.bfloat16, batch=2 if kdev == "cuda" else 1,
            img=224 if kdev == "cuda" else 56, share_rate=2, dev=kdev)


@pytest.mark.gpu
def test_training_mode_and_large_batch_fall_back():
    model = sk.create_model("spin_convmixer_768_32", dim=64, depth=2, patch_size=8, backend="cuda").cuda()
    x = torch.randn(17, 3, 32, 32, device="cuda")
    with pytest.warns(UserWarning, match="not used"):
        model.eval().to(torch.bfloat16)(x.to(torch.bfloat16))  # batch 17 > 16: per-layer path


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
# every compiled kernel size (one instance each: 1, 3, 5, 7, 9)
@pytest.mark.parametrize("B, H, W, C, k, layers", [(1, 13, 11, 64, 3, 1), (3, 9, 14, 192, 7, 2), (2, 16, 16, 128, 9, 4),
                                                   (2, 7, 5, 64, 5, 2), (1, 4, 6, 128, 1, 3)])
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


def test_weight_view_off_a_16_byte_boundary(kdev):
    """The kernel copies W in 16-byte vectors; a W whose data starts 2 bytes into its storage is copied by the
    binding first, and the result is the same as from an aligned copy."""
    torch.manual_seed(2)
    B, H, W, C, k = 1, 5, 4, 64, 3
    x = torch.randn(B, H, W, C, device=kdev).to(torch.bfloat16)
    storage = (torch.randn(C * C + 1, device=kdev) / C ** 0.5).to(torch.bfloat16)
    w = storage[1:].view(C, C)
    assert w.data_ptr() % 16 != 0
    args = (torch.randn(C, device=kdev) * 0.1, torch.randn(1, C, k, k, device=kdev) / k,
            torch.randn(1, C, device=kdev) * 0.1, torch.rand(1, C, device=kdev) + 0.5,
            torch.randn(1, C, device=kdev) * 0.1, torch.rand(1, C, device=kdev) * 0.5 + 0.25,
            torch.randn(1, C, device=kdev) * 0.1)
    got = cuda.shared_run_forward(x, w, *args, act="gelu", spin_residual=False)
    assert torch.equal(got, cuda.shared_run_forward(x, w.clone(), *args, act="gelu", spin_residual=False))


@pytest.mark.parametrize("C", [768, 1024, 1536])
def test_issue_channel_counts(kdev, C):
    """The channel counts the kernel is for (C = 768 / 1024 / 1536: 12-24 resident W slices of 96-194 KiB):
    batch 1 and 16 at 224 px / patch 7 (32 x 32) on a GPU; a small activation on the emulated GPU, sized so that
    each slice gets its own CTA (SMs = slices / CTAs per SM)."""
    from spin_kernels import cuda_emulation
    from spin_kernels.reference.shared_run import shared_run

    if kdev == "cpu":
        per_sm = {768: 2, 1024: 1, 1536: 1}[C]  # 228 KiB of shared memory per SM / the slice's footprint
        cuda_emulation.enable(True, sm_count=C // 64 // per_sm)
        shapes = [(1, 3, 5)]
    else:
        shapes = [(1, 32, 32), (16, 32, 32)]
    torch.manual_seed(4)
    k, layers = 7, 2
    for B, H, W in shapes:
        x = torch.randn(B, H, W, C, device=kdev).to(torch.bfloat16)
        w = (torch.randn(C, C, device=kdev) / C ** 0.5).to(torch.bfloat16)
        args = (w, torch.randn(C, device=kdev) * 0.1, torch.randn(layers, C, k, k, device=kdev) / k,
                torch.randn(layers, C, device=kdev) * 0.1, torch.rand(layers, C, device=kdev) + 0.5,
                torch.randn(layers, C, device=kdev) * 0.1, torch.rand(layers, C, device=kdev) * 0.5 + 0.25,
                torch.randn(layers, C, device=kdev) * 0.1)
        got = cuda.shared_run_forward(x, *args, act="gelu", spin_residual=True)
        expected = shared_run(x, *args, act="gelu", spin_residual=True)
        low = shared_run(x, *args, act="gelu", spin_residual=True, dtype=torch.bfloat16)
        assert rel_err(got, expected) <= max(2e-2, 2 * rel_err(low, expected)), (B, H, W)


def test_too_few_resident_ctas_is_a_clear_error():
    """Emulated GPU with one SM: a C = 1536 run needs 24 co-resident CTAs (one per W slice) and cannot launch."""
    from spin_kernels import cuda_emulation

    cuda_emulation.enable(True, sm_count=1)
    try:
        C = 1536
        x = torch.randn(1, 2, 2, C).to(torch.bfloat16)
        args = (torch.randn(C, C).to(torch.bfloat16), torch.zeros(C), torch.zeros(1, C, 3, 3), torch.zeros(1, C),
                torch.ones(1, C), torch.zeros(1, C), torch.ones(1, C), torch.zeros(1, C))
        with pytest.raises(RuntimeError, match="too many blocks in cooperative launch"):
            cuda.shared_run_forward(x, *args, act="relu", spin_residual=False)
    finally:
        cuda_emulation.enable(False)


def test_model_falls_back_when_the_gpu_is_too_small():
    """An emulated one-SM GPU holds 1 CTA of a C = 1536 run that needs 24: the eval model warns once and takes the
    per-layer path, with the same logits as the reference."""
    from spin_kernels import cuda_emulation

    cuda_emulation.enable(True, sm_count=1)
    try:
        torch.manual_seed(0)
        model = sk.create_model("convmixer_1536_20", dim=1536, depth=2, patch_size=16, kernel_size=3,
                                num_classes=4, backend="cuda").eval()
        ref = sk.create_model("convmixer_1536_20", dim=1536, depth=2, patch_size=16, kernel_size=3,
                              num_classes=4).eval()
        ref.load_state_dict(model.state_dict())
        x = torch.randn(1, 3, 32, 32)
        with pytest.warns(UserWarning, match="too many blocks in cooperative launch"):
            got = model.to(torch.bfloat16)(x.to(torch.bfloat16))
        assert rel_err(got, ref.double()(x.double())) <= 2e-2
    finally:
        cuda_emulation.enable(False)


@pytest.mark.parametrize("run_lengths", [[2, 1, 3], [1, 1]])
def test_several_runs_in_one_launch(kdev, run_lengths):
    """Consecutive runs with their own pointwise weights in one launch: each CTA reloads its W slice at every run
    boundary (a stale slice would give the previous run's result)."""
    from spin_kernels.reference.shared_run import shared_run

    torch.manual_seed(5)
    B, H, W, C, k, L = 2, 7, 9, 128, 5, sum(run_lengths)
    x = torch.randn(B, H, W, C, device=kdev).to(torch.float16)
    ws = [(torch.randn(C, C, device=kdev) / C ** 0.5).to(torch.float16) for _ in run_lengths]
    bs = [torch.randn(C, device=kdev) * 0.1 for _ in run_lengths]
    per_layer = (torch.randn(L, C, k, k, device=kdev) / k, torch.randn(L, C, device=kdev) * 0.1,
                 torch.rand(L, C, device=kdev) + 0.5, torch.randn(L, C, device=kdev) * 0.1,
                 torch.rand(L, C, device=kdev) * 0.5 + 0.25, torch.randn(L, C, device=kdev) * 0.1)
    got = cuda.shared_run_forward(x, ws, bs, *per_layer, act="gelu", spin_residual=False, run_lengths=run_lengths)
    expected = shared_run(x, ws, bs, *per_layer, act="gelu", spin_residual=False, run_lengths=run_lengths)
    low = shared_run(x, ws, bs, *per_layer, act="gelu", spin_residual=False, run_lengths=run_lengths,
                     dtype=torch.float16)
    assert rel_err(got, expected) <= max(5e-3, 2 * rel_err(low, expected))
    with pytest.raises(RuntimeError, match="run_lengths: the runs cover"):
        cuda.shared_run_forward(x, ws, bs, *per_layer, act="gelu", spin_residual=False,
                                run_lengths=[n + 1 for n in run_lengths])


def test_eval_model_compiles_fullgraph(kdev):
    """An eval-mode backend='cuda' model traces with torch.compile(fullgraph=True): the persistent kernel's host
    code is skipped under compile (the per-layer fused path is traced); eager uses the kernel; same logits."""
    torch.manual_seed(7)
    model = randomise_batchnorm(sk.create_model("spin_convmixer_768_32", dim=64, depth=2, patch_size=8,
                                                kernel_size=3, num_classes=5, backend="cuda")).eval()
    model = model.to(kdev).half()
    x = torch.randn(1, 3, 32, 32, device=kdev).half()  # batch 1: the latency case
    with mock.patch.object(cuda, "launch_shared_run", wraps=cuda.launch_shared_run) as kernel:
        eager = model(x)
    assert kernel.call_count == 1
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    assert rel_err(compiled, eager.double()) <= 5e-3


def test_wide_models_fall_back_instead_of_raising():
    """dim >= 1728 needs more shared memory per CTA than a Hopper GPU gives (the resident W slice grows with C):
    the eval model warns once and takes the per-layer path, never raises. Every dim that is a multiple of 64 up
    to 2048 either fits or is reported so."""
    from spin_kernels import cuda_emulation

    cuda_emulation.enable(True, sm_count=132)
    try:
        probe = torch.empty(1, 2, 2, 64)
        fits = {c: cuda.shared_run_fits(probe, c)[0] for c in range(64, 2049, 64)}
        assert fits[1664] and not fits[1728] and not fits[2048]
        torch.manual_seed(0)
        kw = dict(dim=1728, depth=1, patch_size=16, kernel_size=3, num_classes=3)
        model = sk.create_model("convmixer_1536_20", backend="cuda", **kw).eval()
        ref = sk.create_model("convmixer_1536_20", **kw).eval()
        ref.load_state_dict(model.state_dict())
        x = torch.randn(1, 3, 32, 32)
        with mock.patch.object(cuda, "launch_shared_run", wraps=cuda.launch_shared_run) as kernel, \
                pytest.warns(UserWarning, match="shared memory per CTA"):
            got = model(x)
        assert kernel.call_count == 0
        assert rel_err(got, ref.double()(x.double())) <= 1e-3
    finally:
        cuda_emulation.enable(False)
