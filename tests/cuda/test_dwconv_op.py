"""spin_kernels.ops.dwconv: the depthwise-conv op on the CUDA kernels vs float64 F.conv2d — output and the
gradients of x, weight and bias, odd shapes, three dtypes — its torch.library registrations (opcheck), a
fullgraph torch.compile, and the fallback. GPU and host emulation (tests/cuda/conftest.py)."""
import pytest
import torch
import torch.nn.functional as F

from spin_kernels.ops import dwconv
from spin_kernels.testing import TOLERANCES, rel_err

TOL = TOLERANCES


def _inputs(dev, dtype, B, C, H, W, k, bias=True):
    torch.manual_seed(B * 1000 + C + k)
    x = torch.randn(B, C, H, W, device=dev).to(dtype).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(C, 1, k, k, device=dev) / k).to(dtype)
    b = torch.randn(C, device=dev).to(dtype) if bias else None
    return x, w, b


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B, C, H, W, k, bias", [(2, 32, 9, 13, 3, True), (1, 48, 11, 7, 7, False),
                                                 (3, 16, 6, 5, 9, True)])
def test_matches_conv2d_with_gradients(kdev, dtype, B, C, H, W, k, bias):
    x, w, b = _inputs(kdev, dtype, B, C, H, W, k, bias)
    leaves = [t.detach().requires_grad_() for t in (x, w) + ((b,) if bias else ())]
    y = dwconv.depthwise_conv2d(leaves[0], leaves[1], leaves[2] if bias else None)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    y_ref = F.conv2d(ref_leaves[0], ref_leaves[1], ref_leaves[2] if bias else None, padding=k // 2, groups=C)
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(y, y_ref) <= TOL[dtype]
    g = torch.randn_like(y_ref)
    y.backward(g.to(dtype))
    y_ref.backward(g)
    for name, t, r in zip("xwb", leaves, ref_leaves):
        assert t.grad is not None and t.grad.dtype == dtype, name
        assert rel_err(t.grad, r.grad) <= TOL[dtype], name


def test_runs_the_kernels_and_is_deterministic(kdev, monkeypatch):
    from spin_kernels import cuda

    calls = []
    real = cuda.dwconv_backward_weight
    monkeypatch.setattr(cuda, "dwconv_backward_weight", lambda *a, **k: calls.append(1) or real(*a, **k))
    x, w, b = _inputs(kdev, torch.float32, 2, 32, 10, 10, 5)
    grads = []
    for _ in range(2):
        w_ = w.detach().requires_grad_()
        dwconv.depthwise_conv2d(x, w_, b).square().sum().backward()
        grads.append(w_.grad)
    assert len(calls) == 2 and torch.equal(grads[0], grads[1])


def test_opcheck(kdev):
    x, w, b = _inputs(kdev, torch.float32, 1, 16, 5, 6, 3)
    args = (x.requires_grad_(), w.requires_grad_(), b.requires_grad_())
    torch.library.opcheck(torch.ops.spin_kernels.dwconv2d.default, args)


def test_compiles_fullgraph(kdev):
    x, w, b = _inputs(kdev, torch.float32, 2, 16, 7, 7, 3)
    w.requires_grad_()
    f = torch.compile(lambda inp, wt, bs: dwconv.depthwise_conv2d(inp, wt, bs).sum(), fullgraph=True,
                      backend="aot_eager")
    f(x, w, b).backward()
    w_ref = w.detach().double().requires_grad_()
    F.conv2d(x.double(), w_ref, b.double(), padding=1, groups=16).sum().backward()
    assert rel_err(w.grad, w_ref.grad) <= 1e-5


def test_bad_input_names_the_argument():
    x = torch.randn(1, 8, 5, 5)
    with pytest.raises(ValueError, match="weight: expected a depthwise weight"):
        dwconv.depthwise_conv2d(x, torch.randn(8, 2, 3, 3))
    with pytest.raises(ValueError, match="odd kernel size"):
        dwconv.depthwise_conv2d(x, torch.randn(8, 1, 4, 4))
    with pytest.raises(ValueError, match="bias"):
        dwconv.depthwise_conv2d(x, torch.randn(8, 1, 3, 3), torch.randn(4))
    with pytest.raises(ValueError, match="x: expected"):
        dwconv.depthwise_conv2d(torch.randn(8, 5, 5), torch.randn(8, 1, 3, 3))


def test_falls_back_with_a_warning_where_the_kernels_cannot_run():
    x, w = torch.randn(1, 8, 5, 5, dtype=torch.float64), torch.randn(8, 1, 11, 11, dtype=torch.float64)
    with pytest.warns(UserWarning, match="using F.conv2d"):
        y = dwconv.depthwise_conv2d(x, w)
    assert torch.equal(y, F.conv2d(x, w, padding=5, groups=8))
