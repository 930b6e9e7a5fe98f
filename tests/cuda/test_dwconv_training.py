"""backend="cuda" trains through the CUDA depthwise kernels: the fused ConvMixer op with its depthwise half on
csrc/depthwise_conv.cu (forward with the input prologue and act(q) statistics, BN-backward prologue, weight
gradient) against the float64 reference — logits, every parameter gradient, running statistics — and the new
kernel entry points one by one against their float64 definitions. Runs on the GPU and on the host emulation."""
import copy
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from spin_kernels import cuda, cuda_emulation
from spin_kernels.models.convmixer import ConvMixer
from spin_kernels.ops import dwconv_cuda
from spin_kernels.sharing import SharingPlan
from spin_kernels.testing import TOLERANCES, GuardedTensor, nan_fenced, rel_err

TOL = TOLERANCES
TF32 = 5e-4  # whole models on a GPU: the Triton pointwise GEMMs run in tf32 (DESIGN.md §5)
ACTS = {"gelu": F.gelu, "relu": F.relu, "none": lambda t: t}


def _model(spin, act, rate, k, dim=32, depth=4):
    m = ConvMixer(dim=dim, depth=depth, kernel_size=k, patch_size=2, in_chans=3, num_classes=10, act=act,
                  spin_residual=spin, plan=SharingPlan(depth, rate=rate), backend="reference")
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return m


@pytest.mark.parametrize("spin, act, rate, k", [(False, "gelu", 2, 3), (True, "relu", 2, 5), (True, "gelu", 4, 7)])
def test_model_trains_through_cuda_depthwise(kdev, spin, act, rate, k):
    torch.manual_seed(0)
    tol = TOL[torch.float32] if kdev == "cpu" else TF32
    ref_model = _model(spin, act, rate, k).double().train().to(kdev)
    model = copy.deepcopy(ref_model).float()
    model.backend = "cuda"
    x = torch.randn(3, 3, 10, 14, dtype=torch.float64, device=kdev)
    with mock.patch.object(dwconv_cuda, "dw_fwd", wraps=dwconv_cuda.dw_fwd) as fwd, \
            mock.patch.object(dwconv_cuda, "dw_bwd", wraps=dwconv_cuda.dw_bwd) as bwd:
        for _ in range(2):  # two steps: the running statistics evolve
            y = model(x.float())
            yr = ref_model(x)
            assert rel_err(y, yr) <= tol
            model.zero_grad()
            ref_model.zero_grad()
            y.square().sum().backward()
            yr.square().sum().backward()
    assert fwd.call_count == 2 * 4 and bwd.call_count == 2 * 4  # every layer's depthwise half ran on CUDA
    for (name, p), (_, pr) in zip(model.named_parameters(), ref_model.named_parameters()):
        assert p.grad is not None, name
        assert rel_err(p.grad, pr.grad) <= tol, name
    for (name, b), (_, br) in zip(model.named_buffers(), ref_model.named_buffers()):
        if b.is_floating_point():
            assert rel_err(b, br) <= tol, name
    model.eval()
    ref_model.eval()
    assert rel_err(model(x.float()), ref_model(x)) <= tol


def test_half_precision_model_features(kdev):
    """fp16 trunk (training mode) through the CUDA depthwise kernels: features within fp16 tolerance of float64."""
    from spin_kernels.ops import convmixer as ops
    from spin_kernels.reference import convmixer_ops

    torch.manual_seed(1)
    ref_model = _model(True, "gelu", 2, 7).double().train().to(kdev)
    model = copy.deepcopy(ref_model).half()
    model.backend = "cuda"
    x = torch.randn(2, 3, 12, 10, dtype=torch.float64, device=kdev)
    with mock.patch.object(dwconv_cuda, "dw_fwd", wraps=dwconv_cuda.dw_fwd) as fwd:
        f = ops.convmixer_features(model, x.half())
    assert fwd.call_count == 4 and f.dtype == torch.float16
    assert rel_err(f, convmixer_ops.convmixer_features_ref(ref_model, x)) <= TOL[torch.float16]


# ----------------------------------------------------------------------------- kernel entry points, one by one
def _x64(h, res, a, b, act_in):
    """float64 x = [res] + a * act_in(h) + b."""
    x = a.double() * ACTS[act_in](h.double()) + b.double()
    return x + res.double() if res is not None else x


def _conv64(x, w):
    """float64 'same' depthwise conv of channels-last x with weight [C, 1, k, k] (no bias)."""
    k = w.shape[-1]
    return F.conv2d(x.permute(0, 3, 1, 2), w.double(), padding=k // 2, groups=x.shape[-1]).permute(0, 2, 3, 1)


def _vec6(C, dev):
    """Random [alpha, beta, c1, c2, mean, invstd] (both BN backward modes are this formula)."""
    return torch.stack([torch.randn(C), torch.randn(C), torch.randn(C) * 0.1, torch.randn(C) * 0.1,
                        torch.randn(C) * 0.1, torch.rand(C) + 0.5]).to(dev)


def _dq64(du, q, vec6, act):
    """float64 dq = du (act'(q) alpha + beta) + act'(q) (c1 + c2 xhat), xhat = (act(q) - mean) invstd."""
    qd = q.double().requires_grad_()
    y = ACTS[act](qd)
    d, = torch.autograd.grad(y.sum(), qd)  # act'(q), elementwise
    v = vec6.double()
    xhat = (y.detach() - v[4]) * v[5]
    return du.double() * (d * v[0] + v[1]) + d * (v[2] + v[3] * xhat)


DTYPES = [torch.float32, torch.float16, torch.bfloat16]
CASES = [((2, 9, 13, 32), 3, "gelu", "relu"), ((1, 11, 7, 48), 7, "relu", "gelu"), ((3, 5, 6, 16), 9, "gelu", "none")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, k, act_in, act", CASES)
def test_forward_with_input_prologue_and_activation_stats(kdev, dtype, shape, k, act_in, act):
    torch.manual_seed(2)
    B, H, W, C = shape
    # inputs fenced by NaN: a read outside them would poison the output
    h, res = (nan_fenced(torch.randn(shape, device=kdev).to(dtype)) for _ in range(2))
    w = (torch.randn(C, 1, k, k, device=kdev) / k).to(dtype)
    bias, a, b = torch.randn(C, device=kdev), torch.rand(C, device=kdev) + 0.5, torch.randn(C, device=kdev)
    out = GuardedTensor(shape, dtype, kdev)  # NaN-poisoned, fenced: every element written, nothing outside
    q, stats = cuda.dwconv_forward(h, w, bias, a, b, act="none", res=res, act_in=act_in, stats_act=act,
                                   out=out.tensor)
    assert q.data_ptr() == out.tensor.data_ptr() and out.unwritten() == 0
    out.check()
    expected = _conv64(_x64(h, res, a, b, act_in), w) + bias.double()
    assert rel_err(q, expected) <= TOL[dtype]
    n, mean, var = cuda.merge_stats(stats)
    g = ACTS[act](q.double()).reshape(-1, C)  # statistics of act(q) as stored
    assert torch.all(n == B * H * W)
    assert rel_err(mean, g.mean(0)) <= 1e-5 and rel_err(var, g.var(0, unbiased=False)) <= 1e-5


# The forward's row-stream tilings (csrc/dw_row_stream.cu): several 16- / 32-column tiles per row, a partial last
# channel chunk (C = 136: 2 chunks of 64 and 8 channels), and row bands (a band is the whole image unless the
# batch's CTAs would not give each SM two: the emulated SM count forces 4-row bands, a 1-row last band, and at
# k = 9 3-row bands shorter than the 4-row halo).
TILINGS = [((2, 11, 37, 136), 3, "relu", "relu", 1), ((1, 13, 37, 72), 3, "gelu", "gelu", 40),
           ((1, 10, 35, 72), 7, "relu", "relu", 16), ((2, 9, 11, 16), 9, "gelu", "none", 8)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape, k, act_in, act, sms", TILINGS)
def test_forward_tilings(kdev, dtype, shape, k, act_in, act, sms):
    torch.manual_seed(4)
    B, H, W, C = shape
    if kdev == "cpu":
        cuda_emulation.enable(True, sm_count=sms)
    h, res = (nan_fenced(torch.randn(shape, device=kdev).to(dtype)) for _ in range(2))
    w = (torch.randn(C, 1, k, k, device=kdev) / k).to(dtype)
    bias, a, b = torch.randn(C, device=kdev), torch.rand(C, device=kdev) + 0.5, torch.randn(C, device=kdev)
    out = GuardedTensor(shape, dtype, kdev)
    q, stats = cuda.dwconv_forward(h, w, bias, a, b, act="none", res=res, act_in=act_in, stats_act=act,
                                   out=out.tensor)
    assert out.unwritten() == 0
    out.check()
    expected = _conv64(_x64(h, res, a, b, act_in), w) + bias.double()
    assert rel_err(q, expected) <= TOL[dtype]
    n, mean, var = cuda.merge_stats(stats)
    g = ACTS[act](q.double()).reshape(-1, C)
    assert torch.all(n == B * H * W)
    assert rel_err(mean, g.mean(0)) <= 1e-5 and rel_err(var, g.var(0, unbiased=False)) <= 1e-5
    # the plain op (no prologue, an output activation, the generic instance) on the same tiling
    y, _ = cuda.dwconv_forward(h, w, bias, act=act, with_stats=False)
    assert rel_err(y, ACTS[act](_conv64(h.double(), w) + bias.double())) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, k, act_in, act", CASES)
def test_backward_data_and_weight(kdev, dtype, shape, k, act_in, act):
    torch.manual_seed(3)
    C = shape[-1]
    du, q, hz, res = (nan_fenced(torch.randn(shape, device=kdev).to(dtype)) for _ in range(4))
    w = (torch.randn(C, 1, k, k, device=kdev) / k).to(dtype)
    vec6 = _vec6(C, kdev)
    xvec = torch.stack([torch.rand(C) + 0.5, torch.randn(C), torch.randn(C) * 0.1, torch.rand(C) + 0.5]).to(kdev)
    dx_out = GuardedTensor(shape, dtype, kdev)
    dx, dhz, sums = cuda.dwconv_backward_data(du, w, hz, xvec, q=q, vec6=vec6, act=act, act_in=act_in,
                                              write_dx=True, write_dhz=True, dx_out=dx_out.tensor)
    assert dx.data_ptr() == dx_out.tensor.data_ptr() and dx_out.unwritten() == 0
    dx_out.check()
    dq = _dq64(du, q, vec6, act)
    dx64 = du.double() + _conv64(dq, w.flip(-1, -2))
    hzd = hz.double().requires_grad_()
    ain = ACTS[act_in](hzd)
    dact, = torch.autograd.grad(ain.sum(), hzd)
    xhat = (ain.detach() - xvec[2].double()) * xvec[3].double()
    assert rel_err(dx, dx64) <= TOL[dtype]
    assert rel_err(dhz, dact * xvec[0].double() * dx64) <= TOL[dtype]
    s = sums.double().sum(1)
    assert rel_err(s[0], dx64.sum((0, 1, 2))) <= TOL[dtype]
    assert rel_err(s[1], (dx64 * xhat).sum((0, 1, 2))) <= TOL[dtype]

    # weight / bias gradient of q = conv(x) + bias through x = res + ax act_in(hz) + bx, dq rebuilt on load
    dweight, dbias = cuda.dwconv_backward_weight(du, hz, k, xvec[0], xvec[1], q=q, vec6=vec6, act=act, res=res,
                                                 act_in=act_in, partial_ctas=3)
    xd = _x64(hz, res, xvec[0], xvec[1], act_in).requires_grad_()
    wd = w.double().requires_grad_()
    gw, = torch.autograd.grad(_conv64(xd, wd), wd, dq)
    assert rel_err(dweight, gw) <= TOL[dtype] and rel_err(dbias, dq.sum((0, 1, 2))) <= TOL[dtype]
    again = cuda.dwconv_backward_weight(du, hz, k, xvec[0], xvec[1], q=q, vec6=vec6, act=act, res=res,
                                        act_in=act_in, partial_ctas=3)
    assert torch.equal(again[0], dweight) and torch.equal(again[1], dbias)  # deterministic


def test_bad_arguments_name_themselves(kdev):
    h = torch.randn(1, 4, 4, 16, device=kdev)
    w = torch.randn(16, 1, 3, 3, device=kdev)
    with pytest.raises(ValueError, match="act_in"):
        cuda.dwconv_forward(h, w, act_in="tanh")
    with pytest.raises(RuntimeError, match="res: expected shape"):
        cuda.dwconv_forward(h, w, res=torch.randn(1, 2, 4, 16, device=kdev))
    with pytest.raises(RuntimeError, match="q and vec6"):
        cuda.dwconv_backward_data(h, w, h, torch.zeros(4, 16, device=kdev), q=h)
    with pytest.raises(RuntimeError, match="xvec: expected"):
        cuda.dwconv_backward_data(h, w, h, torch.zeros(3, 16, device=kdev))
    with pytest.raises(RuntimeError, match="partial_ctas"):
        cuda.dwconv_backward_weight(h, h, 3, partial_ctas=0)


def test_status_is_traceable_once_probed():
    """The backend decision reads cuda.status() inside forward: under torch.compile(fullgraph=True) that must be a
    cached constant, not an import (models probe it when their backend is set)."""
    cuda.status()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(x):
        return x * 2 if cuda.status()["usable"] else x + 1

    x = torch.ones(3)
    assert torch.equal(f(x), x * 2 if cuda.status()["usable"] else x + 1)


def test_compiled_training_step_with_cuda_depthwise(kdev):
    """A fullgraph-compiled training step of a backend='cuda' model: the CUDA depthwise kernels run inside the
    traced custom op, and the gradients match eager's."""
    torch.manual_seed(6)
    model = _model(True, "gelu", 2, 5).float().train().to(kdev)
    model.backend = "cuda"
    twin = copy.deepcopy(model)
    x = torch.randn(2, 3, 10, 8, device=kdev)
    step = torch.compile(lambda m, inp: m(inp).square().sum(), fullgraph=True, backend="aot_eager")
    with mock.patch.object(dwconv_cuda, "dw_bwd", wraps=dwconv_cuda.dw_bwd) as bwd:
        step(model, x).backward()
    assert bwd.call_count == 4
    twin(x).square().sum().backward()
    for (name, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
        assert rel_err(p.grad, q.grad) <= 1e-6, name
