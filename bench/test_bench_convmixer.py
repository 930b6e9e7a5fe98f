"""ConvMixer op family: depthwise conv, pointwise GEMM, training-mode BatchNorm, one layer forward / forward +
backward, and the trunk on every backend. Each records the analytic FLOPs / bytes / H100 floor from spin_kernels.perf.roofline."""
import pytest
import torch
import torch.nn.functional as F

from bench import common
from spin_kernels import perf


def _rows(shape, train=False):
    rows = perf.convmixer_layer_costs(shape.batch, shape.dim, shape.hw, shape.kernel_size, common.DTYPE_NAME,
                                      act=shape.act, spin_residual=shape.spin_residual, train=train)
    return {r.name: r for r in rows}


def _act_input(shape):
    x = torch.randn(shape.batch, shape.dim, shape.hw, shape.hw, device=common.DEVICE, dtype=common.DTYPE)
    return x.contiguous(memory_format=torch.channels_last) if common.ON_GPU else x


@pytest.mark.parametrize("impl", common.IMPLS)
@pytest.mark.parametrize("shape", common.CONVMIXER_SHAPES, ids=lambda s: s.id)
def test_dwconv(benchmark, run_bench, shape, impl):
    x = _act_input(shape)
    w = torch.randn(shape.dim, 1, shape.kernel_size, shape.kernel_size, device=common.DEVICE, dtype=common.DTYPE)
    b = torch.randn(shape.dim, device=common.DEVICE, dtype=common.DTYPE)
    fn = common.as_impl(lambda: F.conv2d(x, w, b, padding="same", groups=shape.dim), impl)
    common.time_and_record(benchmark, run_bench, fn, _rows(shape)["dwconv"], op="dwconv", impl=impl, shape=shape.id)


@pytest.mark.parametrize("impl", common.IMPLS)
@pytest.mark.parametrize("shape", common.CONVMIXER_SHAPES, ids=lambda s: s.id)
def test_pointwise(benchmark, run_bench, shape, impl):
    x = _act_input(shape)
    w = torch.randn(shape.dim, shape.dim, 1, 1, device=common.DEVICE, dtype=common.DTYPE) / shape.dim ** 0.5
    b = torch.randn(shape.dim, device=common.DEVICE, dtype=common.DTYPE)
    fn = common.as_impl(lambda: F.conv2d(x, w, b), impl)
    common.time_and_record(benchmark, run_bench, fn, _rows(shape)["pointwise_gemm"], op="pointwise_gemm", impl=impl,
                           shape=shape.id)


@pytest.mark.parametrize("impl", common.IMPLS)
@pytest.mark.parametrize("shape", common.CONVMIXER_SHAPES, ids=lambda s: s.id)
def test_batchnorm_train(benchmark, run_bench, shape, impl):
    x = _act_input(shape)
    rm = torch.zeros(shape.dim, device=common.DEVICE)
    rv = torch.ones(shape.dim, device=common.DEVICE)
    w = torch.ones(shape.dim, device=common.DEVICE, dtype=common.DTYPE)
    b = torch.zeros(shape.dim, device=common.DEVICE, dtype=common.DTYPE)
    fn = common.as_impl(lambda: F.batch_norm(x, rm, rv, w, b, training=True), impl)
    # eager BN in training mode: a stats pass then an apply pass (3 activation passes)
    common.time_and_record(benchmark, run_bench, fn, _rows(shape, train=True)["bn1"], which="eager", op="bn_train",
                           impl=impl, shape=shape.id)


@pytest.mark.parametrize("impl", common.IMPLS)
@pytest.mark.parametrize("shape", common.CONVMIXER_SHAPES, ids=lambda s: s.id)
def test_layer_forward(benchmark, run_bench, shape, impl):
    layer = common.first_block(shape, train=True)
    common.bench_forward(benchmark, run_bench, layer, _act_input(shape), impl, _rows(shape)["layer_fwd"],
                         op="layer_fwd", shape=shape.id)


@pytest.mark.parametrize("impl", common.IMPLS)
@pytest.mark.parametrize("shape", common.CONVMIXER_SHAPES, ids=lambda s: s.id)
def test_layer_forward_backward(benchmark, run_bench, shape, impl):
    layer = common.first_block(shape, train=True)
    common.bench_fwd_bwd(benchmark, run_bench, layer, _act_input(shape), impl, _rows(shape, train=True),
                         op="layer_fwd_bwd", shape=shape.id)


@pytest.mark.parametrize("backend", ["reference"] + common.fused_backends())
@pytest.mark.parametrize("shape", common.CONVMIXER_SHAPES, ids=lambda s: s.id)
def test_trunk_forward(benchmark, run_bench, shape, backend):
    """Two-layer trunk through model.forward_features: the fused backends' entry point."""
    model = common.build_small_model(shape.model, backend, shape)
    model.train()
    img = shape.hw * model.stem[0].kernel_size[0]
    x = torch.randn(shape.batch, 3, img, img, device=common.DEVICE, dtype=common.DTYPE)
    common.bench_model_forward(benchmark, run_bench, model, x, backend, lambda: model.forward_features(x),
                               _rows(shape)["layer_fwd"], op="trunk2_fwd", shape=shape.id)
