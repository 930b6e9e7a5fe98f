"""The depthwise conv: the CUDA kernels (outputs checked first) against PyTorch's native kernel."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from spin_kernels import perf

from . import harness
from .harness import Suite
from .ops import _record

# --------------------------------------------------------------------------- depthwise conv: CUDA vs native

# (batch, channels, side, kernel size): convmixer_768_32 (k=7) and convmixer_1536_20 (k=9) at 224 px, patch 7.
DWCONV_SHAPES = ((64, 768, 32, 7), (64, 768, 32, 9), (64, 1536, 32, 9))
DWCONV_TARGET_SHAPES = DWCONV_SHAPES[:2]            # issue 4's target: ConvMixer-768 shapes, k=7 and k=9
NATIVE_DW_IMPLS = ("eager", "eager-cudnn-benchmark")
DWCONV_MAX_REL_ERR = 3e-2                           # bf16 outputs against an fp32 F.conv2d


def dwconv_shape_id(batch: int, dim: int, hw: int, k: int) -> str:
    """Shape id of one depthwise-conv comparison (``shape`` of its op records)."""
    return f"dwconv-b{batch}-c{dim}-{hw}x{hw}-k{k}"


def _dwconv_costs(batch: int, dim: int, hw: int, k: int, dtype: str) -> tuple[perf.OpCost, perf.OpCost]:
    """Analytic rows of the depthwise conv forward and forward+backward (conv bias included)."""
    rows = {r.name: r for r in perf.convmixer_layer_costs(batch, dim, hw, k, dtype, act="relu", train=True)}
    f, b = rows["dwconv"], rows["dwconv_bwd"]
    fb = perf.OpCost("dwconv_fwd_bwd", f.flops + b.flops, f.unit, f.act_bytes, f.min_passes + b.min_passes, None,
                     f.eager_passes + b.eager_passes, f.extra_bytes + b.extra_bytes)
    return f, fb


def _max_rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want).abs().max() / want.abs().max().clamp_min(1e-6))


def dwconv_compare(suite: Suite, shape: tuple, ceilings: perf.Ceilings) -> None:
    """Depthwise conv forward and forward+backward: ``F.conv2d(groups=C)`` + autograd (channels-last; cuDNN's
    default choice and ``cudnn.benchmark``) vs the CUDA kernels (forward, backward_input, backward_weight on
    [B, H, W, C]). Records ops ``dwconv_fwd`` / ``dwconv_fwd_bwd`` of family ``dwconv``; each impl is a piece."""
    from bench import common

    batch, C, hw, k = shape
    dt, dn, dev = common.DTYPE, common.DTYPE_NAME, common.DEVICE
    sid = dwconv_shape_id(*shape)
    fwd_row, fb_row = _dwconv_costs(batch, C, hw, k, dn)
    h = torch.randn(batch, hw, hw, C, device=dev, dtype=dt)       # [B, H, W, C] contiguous = channels-last
    dz = torch.randn_like(h)
    w = torch.randn(C, 1, k, k, device=dev, dtype=dt) / k
    bias = torch.randn(C, device=dev, dtype=dt)
    x, dy = h.permute(0, 3, 1, 2), dz.permute(0, 3, 1, 2)         # NCHW views with channels_last strides
    pad = k // 2

    def native(impl):
        xg, wg, bg = (t.detach().requires_grad_(True) for t in (x, w, bias))

        def fwd_bwd():
            y = F.conv2d(xg, wg, bg, padding=pad, groups=C)
            return torch.autograd.grad(y, (xg, wg, bg), dy)

        prev = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = impl == "eager-cudnn-benchmark"
        try:
            _record(suite, "dwconv", sid, "dwconv_fwd", impl,
                    harness.do_bench_ms(lambda: F.conv2d(x, w, bias, padding=pad, groups=C)), fwd_row, ceilings, dn)
            _record(suite, "dwconv", sid, "dwconv_fwd_bwd", impl, harness.do_bench_ms(fwd_bwd), fb_row, ceilings, dn)
        finally:
            torch.backends.cudnn.benchmark = prev

    def ours():
        from spin_kernels import cuda as sk_cuda
        bias32 = bias.float()                    # the kernels take per-channel vectors in fp32

        def fwd():
            return sk_cuda.dwconv_forward(h, w, bias32, act="none", with_stats=False)[0]

        def fwd_bwd():
            y = fwd()
            dh = sk_cuda.dwconv_backward_input(dz, w)
            dw, db = sk_cuda.dwconv_backward_weight(dz, h, k)
            return y, dh, dw, db

        # A fast wrong answer is no result: check all four outputs against fp32 F.conv2d + autograd first.
        xr, wr, br = (t.detach().float().requires_grad_(True) for t in (x, w, bias))
        yr = F.conv2d(xr, wr, br, padding=pad, groups=C)
        want = (yr.detach(), *torch.autograd.grad(yr, (xr, wr, br), dy.float()))
        y, dh, dw, db = fwd_bwd()
        got = (y.permute(0, 3, 1, 2), dh.permute(0, 3, 1, 2), dw.reshape(want[2].shape), db)
        errs = {n: _max_rel_err(g, r) for n, g, r in zip(("y", "dh", "dweight", "dbias"), got, want)}
        del xr, wr, br, yr, want, got, y, dh, dw, db
        bad = {n: e for n, e in errs.items() if not e <= DWCONV_MAX_REL_ERR}
        if bad:
            raise AssertionError(f"CUDA depthwise conv disagrees with F.conv2d (max rel err {bad}, tolerance "
                                 f"{DWCONV_MAX_REL_ERR}); not timed")
        for op, fn, row in (("dwconv_fwd", fwd, fwd_row), ("dwconv_fwd_bwd", fwd_bwd, fb_row)):
            rec = _record(suite, "dwconv", sid, op, "cuda", harness.do_bench_ms(fn), row, ceilings, dn)
            rec["max_rel_err"] = errs

    for impl in NATIVE_DW_IMPLS:
        suite.piece(f"targets/dwconv/{sid}/{impl}", native, impl)
    suite.piece(f"targets/dwconv/{sid}/cuda", ours)


