"""Per-op timings of the ConvMixer layer and the ViT block: eager, torch.compile and the fused kernels."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from spin_kernels import perf

from . import harness
from .harness import Suite

# -------------------------------------------------------------------------------------------------------- ops

def _impls(max_autotune: bool) -> list[str]:
    return ["eager", "compile"] + (["compile-max-autotune"] if max_autotune else [])


def _make_impl(fn: Callable, impl: str) -> Callable:
    if impl == "eager":
        return fn
    if impl == "compile":
        return torch.compile(fn)
    return torch.compile(fn, mode="max-autotune")


def _record(suite: Suite, family: str, shape_id: str, op: str, impl: str, ms: float, row: perf.OpCost,
            ceilings: perf.Ceilings, dtype: str, which: str = "min", flops: float | None = None) -> dict:
    flops = row.flops if flops is None else flops
    nbytes = row.bytes(which)
    floor = max(flops / ceilings.peak_flops(row.unit, dtype), nbytes / ceilings.hbm_bytes_per_s)
    rec = {"family": family, "shape": shape_id, "op": op, "impl": impl, "ms": ms, "flops": flops, "bytes": nbytes,
           "gb_per_s": nbytes / (ms / 1e3) / 1e9, "tflop_per_s": flops / (ms / 1e3) / 1e12,
           "intensity": flops / nbytes, "floor_ms": floor * 1e3, "pct_of_floor": perf.pct_of_floor(ms / 1e3, floor),
           "unit": row.unit}
    suite.results["ops"].append(rec)
    return rec


def _time_impls(suite, family, shape_id, op, fn_factory, row, ceilings, dtype, impls, which="min", flops=None):
    """Time one op under every implementation; each is its own piece (a compile failure is reported alone)."""
    for impl in impls:
        def run(impl=impl):
            fn = _make_impl(fn_factory(), impl)
            ms = harness.do_bench_ms(fn)
            return _record(suite, family, shape_id, op, impl, ms, row, ceilings, dtype, which, flops)
        suite.piece(f"{family}/{shape_id}/{op}/{impl}", run)


def convmixer_ops(suite: Suite, shape, ceilings: perf.Ceilings, impls: list[str]) -> None:
    """Depthwise conv, pointwise GEMM, BN (train), layer fwd and fwd+bwd; fused K1 / K2 when the kernels exist."""
    from bench import common

    # bf16 on the GPU; common picks fp32 on the CPU (smoke tests of this code)
    dt, dn = common.DTYPE, common.DTYPE_NAME
    rows = {r.name: r for r in perf.convmixer_layer_costs(shape.batch, shape.dim, shape.hw, shape.kernel_size, dn,
                                                          act=shape.act, spin_residual=shape.spin_residual,
                                                          train=True)}
    C, k = shape.dim, shape.kernel_size
    x = torch.randn(shape.batch, C, shape.hw, shape.hw, device=common.DEVICE, dtype=dt).contiguous(
        memory_format=torch.channels_last)
    wd = torch.randn(C, 1, k, k, device=common.DEVICE, dtype=dt)
    bd = torch.randn(C, device=common.DEVICE, dtype=dt)
    wp = torch.randn(C, C, 1, 1, device=common.DEVICE, dtype=dt) / C ** 0.5
    rm, rv = torch.zeros(C, device=common.DEVICE), torch.ones(C, device=common.DEVICE)
    gamma, beta = torch.ones(C, device=common.DEVICE, dtype=dt), torch.zeros(C, device=common.DEVICE, dtype=dt)
    sid = shape.id
    _time_impls(suite, "convmixer", sid, "dwconv", lambda: (lambda: F.conv2d(x, wd, bd, padding="same", groups=C)),
                rows["dwconv"], ceilings, dn, impls)
    _time_impls(suite, "convmixer", sid, "pointwise_gemm", lambda: (lambda: F.conv2d(x, wp, bd)),
                rows["pointwise_gemm"], ceilings, dn, impls)
    _time_impls(suite, "convmixer", sid, "bn_train", lambda: (lambda: F.batch_norm(x, rm, rv, gamma, beta, True)),
                rows["bn1"], ceilings, dn, impls, which="eager")

    model = common.build_small_model(shape.model, "reference", shape).train()
    layer = model.blocks[0]

    def fwd():
        return lambda: layer(x)

    xg = x.detach().clone().requires_grad_(True)
    grad = torch.randn_like(x)

    def fwd_bwd():
        return lambda: layer(xg).backward(grad)

    _time_impls(suite, "convmixer", sid, "layer_fwd", fwd, rows["layer_fwd"], ceilings, dn, impls)
    _time_impls(suite, "convmixer", sid, "layer_fwd_bwd", fwd_bwd, rows["layer_fwd"], ceilings, dn, impls,
                flops=rows["layer_fwd"].flops + rows["layer_bwd"].flops)

    # Fused kernels K1 / K2 straight from spin_kernels.triton (DESIGN.md §2), when that module provides them.
    def k1():
        from spin_kernels.triton.dwconv import dw_fwd
        hz = x.permute(0, 2, 3, 1).reshape(-1, C)
        ax, bx = torch.ones(C, device=common.DEVICE), torch.zeros(C, device=common.DEVICE)
        fn = lambda: dw_fwd(hz, None, ax, bx, wd, bd, shape.batch, shape.hw, shape.hw, act_in=shape.act,  # noqa
                            act=shape.act)
        return _record(suite, "convmixer", sid, "K1_dwconv_fused", "triton", harness.do_bench_ms(fn),
                       rows["K1_dwconv_fused"], ceilings, dn)

    def k2():
        from spin_kernels.triton.pointwise import pw_fwd
        hz = x.permute(0, 2, 3, 1).reshape(-1, C)
        ones, zeros = torch.ones(C, device=common.DEVICE), torch.zeros(C, device=common.DEVICE)
        fn = lambda: pw_fwd(hz, None, ones, zeros, hz, ones, zeros, wp, bd, act_in=shape.act,  # noqa: E731
                            act_g=shape.act, act=shape.act, write_u=shape.spin_residual)
        return _record(suite, "convmixer", sid, "K2_pointwise_fused", "triton", harness.do_bench_ms(fn),
                       rows["K2_pointwise_fused"], ceilings, dn)

    suite.piece(f"convmixer/{sid}/K1/triton", k1)
    suite.piece(f"convmixer/{sid}/K2/triton", k2)

    # The trunk through each backend (reference and the fused paths that really run here).
    for backend in ["reference"] + common.fused_backends():
        def trunk(backend=backend):
            m = common.build_small_model(shape.model, backend, shape).train()
            img = shape.hw * m.stem[0].kernel_size[0]
            xi = torch.randn(shape.batch, 3, img, img, device=common.DEVICE, dtype=dt)
            if backend != "reference":
                reason = common.runs_fused(m, xi)
                if reason:
                    suite.results["skipped"].append({"piece": f"convmixer/{sid}/trunk2/{backend}",
                                                     "reason": reason[:500]})
                    return None
            with torch.no_grad():
                ms = harness.do_bench_ms(lambda: m.forward_features(xi))
            return _record(suite, "convmixer", sid, "trunk2_fwd", backend, ms, rows["layer_fwd"], ceilings, dn,
                           flops=2 * rows["layer_fwd"].flops)
        suite.piece(f"convmixer/{sid}/trunk2/{backend}", trunk)


def vit_ops(suite: Suite, shape, ceilings: perf.Ceilings, impls: list[str]) -> None:
    """LayerNorm, qkv / proj / fc1 / fc2 GEMMs, attention (SDPA), block fwd and fwd+bwd."""
    from bench import common

    # bf16 on the GPU; common picks fp32 on the CPU (smoke tests of this code)
    dt, dn = common.DTYPE, common.DTYPE_NAME
    rows = {r.name: r for r in perf.vit_block_costs(shape.batch, shape.embed_dim, shape.num_heads, shape.tokens, dn,
                                                    train=True)}
    D, sid = shape.embed_dim, shape.id
    x = torch.randn(shape.batch, shape.tokens, D, device=common.DEVICE, dtype=dt)
    w, b = torch.ones(D, device=common.DEVICE, dtype=dt), torch.zeros(D, device=common.DEVICE, dtype=dt)
    _time_impls(suite, "vit", sid, "layernorm", lambda: (lambda: F.layer_norm(x, (D,), w, b)), rows["ln1"],
                ceilings, dn, impls)
    for name, (i, o) in {"qkv_gemm": (1, 3), "proj_gemm": (1, 1), "fc1_gemm": (1, 4), "fc2_gemm": (4, 1)}.items():
        xi = torch.randn(shape.batch, shape.tokens, i * D, device=common.DEVICE, dtype=dt)
        wi = torch.randn(o * D, i * D, device=common.DEVICE, dtype=dt) * 0.02
        bi = torch.zeros(o * D, device=common.DEVICE, dtype=dt)
        _time_impls(suite, "vit", sid, name, lambda xi=xi, wi=wi, bi=bi: (lambda: F.linear(xi, wi, bi)),
                    rows[name], ceilings, dn, impls)
    dh = D // shape.num_heads
    q, k, v = (torch.randn(shape.batch, shape.num_heads, shape.tokens, dh, device=common.DEVICE, dtype=dt)
               for _ in range(3))
    _time_impls(suite, "vit", sid, "attention", lambda: (lambda: F.scaled_dot_product_attention(q, k, v)),
                rows["attention"], ceilings, dn, impls)
    model = common.build_small_model(shape.model, "reference", shape).train()
    block = model.blocks[0]
    xg = x.detach().clone().requires_grad_(True)
    grad = torch.randn_like(x)
    _time_impls(suite, "vit", sid, "block_fwd", lambda: (lambda: block(x)), rows["layer_fwd"], ceilings, dn, impls)
    _time_impls(suite, "vit", sid, "block_fwd_bwd", lambda: (lambda: block(xg).backward(grad)), rows["layer_fwd"],
                ceilings, dn, impls, flops=rows["layer_fwd"].flops + rows["layer_bwd"].flops)




ATTENTION_MAX_REL_ERR = 3e-2        # bf16 outputs and gradients against the float64 reference


def attention_vs_sdpa(suite: Suite, batch: int, tokens: int, heads: int, head_dim: int,
                      ceilings: perf.Ceilings) -> None:
    """Flash attention forward and forward+backward on the packed qkv [B, N, 3C]: our Triton kernels against
    ``F.scaled_dot_product_attention`` (+ autograd; PyTorch picks its fastest backend). Outputs and gradients
    are checked against the float64 reference first. Records ops ``attention_fwd`` / ``attention_fwd_bwd`` of
    family ``attention``; each implementation is a piece."""
    from bench import common
    from spin_kernels.reference import vit_ops as ref
    from spin_kernels.testing import rel_err

    dt, dn, dev = common.DTYPE, common.DTYPE_NAME, common.DEVICE
    C = heads * head_dim
    sid = f"attention-b{batch}-n{tokens}-h{heads}-d{head_dim}"
    rows = {r.name: r for r in perf.vit_block_costs(batch, C, heads, tokens, dn, train=True)}
    fwd_row, bwd_row = rows["F2_flash_attention"], rows["F2b_flash_attention_bwd"]
    fb_flops = fwd_row.flops + bwd_row.flops
    qkv = torch.randn(batch, tokens, 3 * C, device=dev, dtype=dt)
    do = torch.randn(batch, tokens, C, device=dev, dtype=dt)

    def sdpa_fwd(t):
        q, k, v = t.view(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, tokens, C)

    def sdpa():
        x = qkv.detach().requires_grad_(True)

        def fwd_bwd():
            return torch.autograd.grad(sdpa_fwd(x), x, do)

        with torch.no_grad():
            _record(suite, "attention", sid, "attention_fwd", "sdpa", harness.do_bench_ms(lambda: sdpa_fwd(qkv)),
                    fwd_row, ceilings, dn)
        _record(suite, "attention", sid, "attention_fwd_bwd", "sdpa", harness.do_bench_ms(fwd_bwd), fwd_row,
                ceilings, dn, flops=fb_flops)

    def ours():
        from spin_kernels.triton import attention as tri
        o, lse = tri.attn_fwd(qkv, heads)
        o64, lse64 = ref.attn_fwd(qkv.double(), heads)
        dqkv = tri.attn_bwd(do, qkv, o, lse, heads)
        dqkv64 = ref.attn_bwd(do.double(), qkv.double(), o64, lse64, heads)
        errs = {"o": rel_err(o, o64), "dqkv": rel_err(dqkv, dqkv64)}
        bad = {n: e for n, e in errs.items() if not e <= ATTENTION_MAX_REL_ERR}
        if bad:
            raise AssertionError(f"Triton attention disagrees with the float64 reference ({bad}, tolerance "
                                 f"{ATTENTION_MAX_REL_ERR}); not timed")
        del o64, lse64, dqkv64

        def fwd_bwd():
            o_, lse_ = tri.attn_fwd(qkv, heads)
            return tri.attn_bwd(do, qkv, o_, lse_, heads)

        for op, fn, row, flops in (("attention_fwd", lambda: tri.attn_fwd(qkv, heads), fwd_row, None),
                                   ("attention_fwd_bwd", fwd_bwd, fwd_row, fb_flops)):
            rec = _record(suite, "attention", sid, op, "triton", harness.do_bench_ms(fn), row, ceilings, dn,
                          flops=flops)
            rec["max_rel_err"] = errs

    suite.piece(f"targets/{sid}/sdpa", sdpa)
    suite.piece(f"targets/{sid}/triton", ours)
