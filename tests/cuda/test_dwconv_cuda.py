"""CUDA depthwise conv: GPU numerics against the float64 reference, and CPU-side build / error behaviour."""
import pytest
import torch
import torch.nn.functional as F

from spin_kernels import cuda
from spin_kernels.testing import TOLERANCES, rel_err
from spin_kernels.cuda_build import find_cuda_home

# fp32 is exact-fp32 FMA arithmetic on the GPU too (no tf32 in a depthwise conv): the interpreter-level 1e-5
TOL = TOLERANCES



def reference(h, weight, bias, a, b, act):
    """float64: act(dwconv(a*h + b) + bias) on channels-last tensors; zero padding after the affine."""
    x = (h.double() * a.double() + b.double()).permute(0, 3, 1, 2)
    k = weight.shape[-1]
    z = F.conv2d(x, weight.double(), bias.double(), padding=k // 2, groups=x.shape[1])
    y = {"gelu": F.gelu, "relu": F.relu, "none": lambda t: t}[act](z)
    return y.permute(0, 2, 3, 1)


@pytest.mark.skipif(find_cuda_home() is None or torch.version.cuda is None, reason="no CUDA toolkit / CPU torch")
def test_extension_builds_and_imports():
    status = cuda.status()
    assert status["built"] and status["loadable"], status["reason"]


def test_cpu_tensor_gives_a_clear_error():
    h = torch.randn(1, 4, 4, 16)
    with pytest.raises(ValueError, match="CUDA tensors"):
        cuda.dwconv_forward(h, torch.randn(16, 1, 3, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape, k, act", [((1, 13, 11, 40), 3, "gelu"), ((3, 9, 17, 64), 5, "relu"),
                                           ((2, 16, 16, 96), 7, "gelu"), ((1, 7, 10, 24), 9, "none")])
def test_forward_and_stats(kdev, dtype, shape, k, act):
    B, H, W, C = shape
    dev = kdev
    h = torch.randn(shape, device=dev).to(dtype)
    w = (torch.randn(C, 1, k, k, device=dev) / k).to(dtype)
    bias, a, b = torch.randn(C, device=dev), torch.rand(C, device=dev) + 0.5, torch.randn(C, device=dev)
    y, stats = cuda.dwconv_forward(h, w, bias, a, b, act=act)
    ref = reference(h, w, bias, a, b, act)
    assert rel_err(y, ref) <= TOL[dtype]
    n, mean, var = cuda.merge_stats(stats)
    yd = y.double().reshape(-1, C)
    assert torch.all(n == B * H * W)
    assert rel_err(mean, yd.mean(0)) <= 1e-4 and rel_err(var, yd.var(0, unbiased=False)) <= 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape, k", [((2, 11, 13, 32), 3), ((1, 9, 9, 64), 7), ((3, 5, 12, 16), 9)])
def test_gradients(kdev, dtype, shape, k):
    B, H, W, C = shape
    dev = kdev
    h = torch.randn(shape, device=dev).to(dtype)
    w = (torch.randn(C, 1, k, k, device=dev) / k).to(dtype)
    a, b = torch.rand(C, device=dev) + 0.5, torch.randn(C, device=dev)
    dz = torch.randn(shape, device=dev).to(dtype)
    hd, wd = h.double().requires_grad_(), w.double().requires_grad_()
    bd = torch.zeros(C, device=dev, dtype=torch.float64, requires_grad=True)
    reference(hd, wd, bd, a, b, "none").backward(dz.double())
    dh = cuda.dwconv_backward_input(dz, w, a)
    dw, db = cuda.dwconv_backward_weight(dz, h, k, a, b)
    assert rel_err(dh, hd.grad) <= TOL[dtype]
    assert rel_err(dw, wd.grad) <= TOL[dtype] and rel_err(db, bd.grad) <= TOL[dtype]
    # Deterministic: the same bits twice.
    assert torch.equal(dw, cuda.dwconv_backward_weight(dz, h, k, a, b)[0])


def test_hot_kernels_do_not_spill():
    if cuda.extension() is None or cuda.cuobjdump_path() is None:
        pytest.skip("spin_kernels._C is not built or no cuobjdump")
    rows = cuda.resource_usage()
    names = {r["kernel"] for r in rows}
    assert {"dw_forward_kernel<fp32>", "dw_forward_kernel<bf16>", "dw_wgrad_partial_kernel<fp16>",
            "shared_run_kernel<bf16>"} <= names, names
    rows += cuda.resource_usage(arch="sm_80")  # the Ampere code of a portable build (none in a GPU-only build)
    for row in rows:
        assert row["stack"] == 0 and row["local"] == 0, row  # no spills, no local-memory arrays


def test_outputs_that_overlap_inputs_are_refused(kdev):
    """out / dx_out sharing memory with an input the kernel reads would be a silently wrong result: a clear error."""
    h = torch.randn(1, 4, 5, 16, device=kdev)
    w = torch.randn(16, 1, 3, 3, device=kdev)
    with pytest.raises(RuntimeError, match="out: must not overlap h"):
        cuda.dwconv_forward(h, w, out=h)
    buf = torch.randn(2 * h.numel(), device=kdev)
    first, second = buf[:h.numel()].view(h.shape), buf[h.numel():].view(h.shape)
    y, _ = cuda.dwconv_forward(first, w, out=second, with_stats=False)  # same storage, disjoint: fine
    assert y.data_ptr() == second.data_ptr()
    du = torch.randn_like(h)
    xvec = torch.zeros(4, 16, device=kdev)
    with pytest.raises(RuntimeError, match="dx_out: must not overlap hz"):
        cuda.dwconv_backward_data(du, w, h, xvec, dx_out=h)
