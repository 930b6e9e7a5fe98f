"""ViT op family: LayerNorm, the qkv / proj / fc1 / fc2 GEMMs, attention (SDPA), one block forward / forward +
backward, and the model on every backend. Each records the analytic FLOPs / bytes / H100 floor from spin_kernels.perf.roofline."""
import pytest
import torch
import torch.nn.functional as F

from bench import common
from spin_kernels import perf

GEMMS = {"qkv_gemm": (1, 3), "proj_gemm": (1, 1), "fc1_gemm": (1, 4), "fc2_gemm": (4, 1)}


def _rows(shape, train=False):
    rows = perf.vit_block_costs(shape.batch, shape.embed_dim, shape.num_heads, shape.tokens, common.DTYPE_NAME,
                                train=train)
    return {r.name: r for r in rows}


def _tokens(shape, width=1):
    return torch.randn(shape.batch, shape.tokens, shape.embed_dim * width, device=common.DEVICE,
                       dtype=common.DTYPE)


@pytest.mark.parametrize("impl", common.IMPLS)
@pytest.mark.parametrize("shape", common.VIT_SHAPES, ids=lambda s: s.id)
def test_layernorm(benchmark, run_bench, shape, impl):
    x = _tokens(shape)
    w = torch.ones(shape.embed_dim, device=common.DEVICE, dtype=common.DTYPE)
    b = torch.zeros_like(w)
    fn = common.as_impl(lambda: F.layer_norm(x, (shape.embed_dim,), w, b), impl)
    common.time_and_record(benchmark, run_bench, fn, _rows(shape)["ln1"], op="layernorm", impl=impl, shape=shape.id)


@pytest.mark.parametrize("impl", common.IMPLS)
@pytest.mark.parametrize("gemm", list(GEMMS))
@pytest.mark.parametrize("shape", common.VIT_SHAPES, ids=lambda s: s.id)
def test_gemm(benchmark, run_bench, shape, gemm, impl):
    i, o = GEMMS[gemm]
    x = _tokens(shape, i)
    w = torch.randn(o * shape.embed_dim, i * shape.embed_dim, device=common.DEVICE, dtype=common.DTYPE) * 0.02
    b = torch.zeros(o * shape.embed_dim, device=common.DEVICE, dtype=common.DTYPE)
    fn = common.as_impl(lambda: F.linear(x, w, b), impl)
    common.time_and_record(benchmark, run_bench, fn, _rows(shape)[gemm], op=gemm, impl=impl, shape=shape.id)


@pytest.mark.parametrize("impl", common.IMPLS)
@pytest.mark.parametrize("shape", common.VIT_SHAPES, ids=lambda s: s.id)
def test_attention(benchmark, run_bench, shape, impl):
    dh = shape.embed_dim // shape.num_heads
    q, k, v = (torch.randn(shape.batch, shape.num_heads, shape.tokens, dh, device=common.DEVICE,
                           dtype=common.DTYPE) for _ in range(3))
    fn = common.as_impl(lambda: F.scaled_dot_product_attention(q, k, v), impl)
    common.time_and_record(benchmark, run_bench, fn, _rows(shape)["attention"], op="attention", impl=impl,
                           shape=shape.id)


@pytest.mark.parametrize("impl", common.IMPLS)
@pytest.mark.parametrize("shape", common.VIT_SHAPES, ids=lambda s: s.id)
def test_block_forward(benchmark, run_bench, shape, impl):
    block = common.first_block(shape, train=False)
    common.bench_forward(benchmark, run_bench, block, _tokens(shape), impl, _rows(shape)["layer_fwd"], op="block_fwd",
                         shape=shape.id)


@pytest.mark.parametrize("impl", common.IMPLS)
@pytest.mark.parametrize("shape", common.VIT_SHAPES, ids=lambda s: s.id)
def test_block_forward_backward(benchmark, run_bench, shape, impl):
    block = common.first_block(shape, train=True)
    common.bench_fwd_bwd(benchmark, run_bench, block, _tokens(shape), impl, _rows(shape, train=True),
                         op="block_fwd_bwd", shape=shape.id)


@pytest.mark.parametrize("backend", ["reference"] + common.fused_backends())
@pytest.mark.parametrize("shape", common.VIT_SHAPES, ids=lambda s: s.id)
def test_model_forward(benchmark, run_bench, shape, backend):
    """Two-block model forward: the fused backends' entry point (skipped where a backend falls back)."""
    model = common.build_small_model(shape.model, backend, shape)
    model.eval()
    side = int(round((shape.tokens - 1) ** 0.5)) * (16 if common.ON_GPU else 4)
    x = torch.randn(shape.batch, 3, side, side, device=common.DEVICE, dtype=common.DTYPE)
    common.bench_model_forward(benchmark, run_bench, model, x, backend, lambda: model(x), _rows(shape)["layer_fwd"],
                               op="model2_fwd", shape=shape.id)
