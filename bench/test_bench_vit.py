"""ViT op family: LayerNorm, the qkv / proj / fc1 / fc2 GEMMs, attention (SDPA), one block forward / forward +
backward, and the model on every backend. Each records the analytic FLOPs / bytes / H100 floor from perf.py."""
import pytest
import torch
import torch.nn.functional as F

from bench import common
from spin_kernels import perf

IMPLS = ["eager"] + [f"compile-{m}" for m in common.compile_modes()]
GEMMS = {"qkv_gemm": (1, 3), "proj_gemm": (1, 1), "fc1_gemm": (1, 4), "fc2_gemm": (4, 1)}


def _rows(shape, train=False):
    rows = perf.vit_block_costs(shape.batch, shape.embed_dim, shape.num_heads, shape.tokens, common.DTYPE_NAME,
                                train=train)
    return {r.name: r for r in rows}


def _tokens(shape, width=1):
    return torch.randn(shape.batch, shape.tokens, shape.embed_dim * width, device=common.DEVICE,
                       dtype=common.DTYPE)


def _impl(fn, impl):
    return fn if impl == "eager" else common.compiled(fn, impl.split("-", 1)[1])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", common.VIT_SHAPES, ids=lambda s: s.id)
def test_layernorm(benchmark, run_bench, shape, impl):
    x = _tokens(shape)
    w = torch.ones(shape.embed_dim, device=common.DEVICE, dtype=common.DTYPE)
    b = torch.zeros_like(w)
    fn = _impl(lambda: F.layer_norm(x, (shape.embed_dim,), w, b), impl)
    run_bench(common.synchronized(fn))
    common.record(benchmark, _rows(shape)["ln1"], op="layernorm", impl=impl, shape=shape.id)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("gemm", list(GEMMS))
@pytest.mark.parametrize("shape", common.VIT_SHAPES, ids=lambda s: s.id)
def test_gemm(benchmark, run_bench, shape, gemm, impl):
    i, o = GEMMS[gemm]
    x = _tokens(shape, i)
    w = torch.randn(o * shape.embed_dim, i * shape.embed_dim, device=common.DEVICE, dtype=common.DTYPE) * 0.02
    b = torch.zeros(o * shape.embed_dim, device=common.DEVICE, dtype=common.DTYPE)
    fn = _impl(lambda: F.linear(x, w, b), impl)
    run_bench(common.synchronized(fn))
    common.record(benchmark, _rows(shape)[gemm], op=gemm, impl=impl, shape=shape.id)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", common.VIT_SHAPES, ids=lambda s: s.id)
def test_attention(benchmark, run_bench, shape, impl):
    dh = shape.embed_dim // shape.num_heads
    q, k, v = (torch.randn(shape.batch, shape.num_heads, shape.tokens, dh, device=common.DEVICE,
                           dtype=common.DTYPE) for _ in range(3))
    fn = _impl(lambda: F.scaled_dot_product_attention(q, k, v), impl)
    run_bench(common.synchronized(fn))
    common.record(benchmark, _rows(shape)["attention"], op="attention", impl=impl, shape=shape.id)


def _block(shape):
    m = common.build_small_model(shape.model, "reference", shape)
    return m.blocks[0], m


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", common.VIT_SHAPES, ids=lambda s: s.id)
def test_block_forward(benchmark, run_bench, shape, impl):
    block, model = _block(shape)
    model.eval()
    x = _tokens(shape)
    fn = _impl(lambda: block(x), impl)
    with torch.no_grad():
        run_bench(common.synchronized(fn))
    common.record(benchmark, _rows(shape)["layer_fwd"], op="block_fwd", impl=impl, shape=shape.id)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", common.VIT_SHAPES, ids=lambda s: s.id)
def test_block_forward_backward(benchmark, run_bench, shape, impl):
    block, model = _block(shape)
    model.train()
    x = _tokens(shape).requires_grad_(True)
    grad = torch.randn_like(x)

    def step():
        block(x).backward(grad)

    run_bench(common.synchronized(_impl(step, impl)))
    rows = _rows(shape, train=True)
    common.record(benchmark, rows["layer_fwd"], phase_flops=rows["layer_fwd"].flops + rows["layer_bwd"].flops,
                  op="block_fwd_bwd", impl=impl, shape=shape.id)


@pytest.mark.parametrize("backend", ["reference"] + common.fused_backends())
@pytest.mark.parametrize("shape", common.VIT_SHAPES, ids=lambda s: s.id)
def test_model_forward(benchmark, run_bench, shape, backend):
    """Two-block model forward: the fused backends' entry point (skipped where a backend falls back)."""
    model = common.build_small_model(shape.model, backend, shape)
    model.eval()
    side = int(round((shape.tokens - 1) ** 0.5)) * (16 if common.ON_GPU else 4)
    x = torch.randn(shape.batch, 3, side, side, device=common.DEVICE, dtype=common.DTYPE)
    if backend != "reference":
        reason = common.runs_fused(model, x)
        if reason:
            pytest.skip(f"backend {backend} does not run fused here: {reason[:200]}")
    with torch.no_grad():
        run_bench(common.synchronized(lambda: model(x)))
    row = _rows(shape)["layer_fwd"]
    common.record(benchmark, row, phase_flops=2 * row.flops, op="model2_fwd", impl=backend, shape=shape.id)
