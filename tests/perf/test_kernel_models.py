"""The cost model's loop descriptors against the loops' real iteration counts, taken in Triton's interpreter.

The fused ops run at small shapes on the CPU (tests/conftest.py turns the interpreter on); every kernel launch is
intercepted, the kernel's ``range`` calls are counted per source line while it runs, and the total iterations of
each descriptor loop must equal programs × the descriptor's trip counts along the loop nest. A descriptor whose
formula is wrong (or a loop added to a kernel without one) fails here.
"""
from __future__ import annotations

import builtins
import inspect
import os
import sys
from types import SimpleNamespace

import pytest
import torch

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs Triton's interpreter")


class CountingRange:
    """Stands in for ``range`` inside kernel modules: counts iterations per (file, line) of the caller."""

    def __init__(self):
        self.counts: dict = {}

    def __call__(self, *args):
        frame = sys._getframe(1)
        r = builtins.range(*(int(a) for a in args))
        key = (frame.f_code.co_filename, frame.f_lineno)
        self.counts[key] = self.counts.get(key, 0) + len(r)
        return r


def _loop_lines(fn):
    """{site: (absolute line, absolute line past the loop's body)} of each descriptor loop in the kernel's source."""
    from spin_kernels.perf.kernel_models import TRITON_MODELS

    def indent(line):
        return len(line) - len(line.lstrip())

    lines, start = inspect.getsourcelines(fn)
    out = {}
    for spec in TRITON_MODELS[fn.__name__].loops:
        hits = [i for i, line in enumerate(lines) if spec.site in line]
        assert len(hits) == 1, f"{fn.__name__}: loop site {spec.site!r} found {len(hits)} times in the source"
        i = hits[0]
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() and indent(lines[j]) <= indent(lines[i])),
                   len(lines))
        out[spec.site] = (start + i, start + end)
    return out


@pytest.fixture
def checked_launches(monkeypatch):
    """Run kernels under the interpreter, checking every launch's descriptor; yields the checked kernel names."""
    from triton.runtime.interpreter import InterpretedFunction

    from spin_kernels.perf.kernel_models import TRITON_MODELS
    from spin_kernels.perf.launches import _record

    seen = []
    real_run = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        fn = self.fn
        counter = CountingRange()
        module = sys.modules[fn.__module__]
        monkeypatch.setattr(module, "range", counter, raising=False)
        try:
            out = real_run(self, *args, grid=grid, warmup=warmup, **kwargs)
        finally:
            monkeypatch.delattr(module, "range", raising=False)
        launch = _record(self, args, kwargs, grid, "")
        model = TRITON_MODELS[fn.__name__]
        a = SimpleNamespace(**launch.args, grid=launch.grid, ctas=launch.ctas)
        sites = _loop_lines(fn)
        file = inspect.getsourcefile(fn)
        for i, spec in enumerate(model.loops):
            line, _ = sites[spec.site]
            # the loops around this one: earlier descriptor loops whose body holds its line (the source nest)
            nest = [s for s in model.loops[:i] if sites[s.site][0] < line < sites[s.site][1]] + [spec]
            expected = launch.ctas
            for s in nest:
                trips = s.trips(a)
                expected *= 0 if trips is None else trips  # None: compiled out, never runs
            got = counter.counts.get((file, line), 0)
            assert got == pytest.approx(expected), (fn.__name__, spec.site, launch.grid, got, expected)
        seen.append(fn.__name__)
        return out

    monkeypatch.setattr(InterpretedFunction, "run", run)
    yield seen


@pytest.mark.parametrize("spin,k,act,R,B,hw", [(True, 3, "relu", 2, 1, 5), (False, 5, "gelu", 1, 3, 4),
                                               (False, 3, "gelu", 3, 2, 6)])
def test_convmixer_loops(checked_launches, spin, k, act, R, B, hw):
    from spin_kernels.ops import convmixer as op

    C, M = 32, B * hw * hw
    g = torch.Generator().manual_seed(0)

    def t(*shape):
        return torch.randn(*shape, generator=g)

    vec = [t(C), t(C).abs() + 0.5, t(C), t(C)]
    per = [[t(C) for _ in range(R)] for _ in range(8)]
    for lst in (per[3], per[7]):
        for v in lst:
            v.abs_()
    dw_w, dw_b = [t(C, 1, k, k) for _ in range(R)], [t(C) for _ in range(R)]
    pw_w, pw_b = t(C, C, 1, 1), t(C)
    z_in, u_in = t(M, C), (t(M, C) if spin else None)
    z, u, _, Z, Q, U, stats = op.run_forward(z_in, u_in, *vec, dw_w, dw_b, pw_w, pw_b, *per, B, hw, hw, 1e-5, 1e-5,
                                             True, act, spin, "triton", False)
    op.run_backward(t(M, C), t(M, C) if spin else None, t(2, C), z_in, u_in, *vec, pw_w, z, Z, Q, u, U, stats, dw_w,
                    per[0], per[1], per[4], per[5], B, hw, hw, True, act, spin, "triton")
    from spin_kernels.triton.dwconv import DW_BWD_FUSED_MAX_K

    wgrad = {"dw_wgrad_kernel"} if k > DW_BWD_FUSED_MAX_K else set()   # else inside dw_bwd_dx_kernel
    assert {"dw_fwd_kernel", "bn_finalize_kernel", "bn_bwd_vectors_kernel", "pw_input_kernel", "pw_fwd_kernel",
            "pw_dz_kernel", "pw_bwd_dx_kernel", "dw_bwd_dx_kernel", "pw_bwd_dw_kernel"} | wgrad <= set(checked_launches)


def test_vit_loops(checked_launches):
    from spin_kernels.ops import vit as op

    B, N, C, heads, R = 2, 11, 32, 2, 2
    g = torch.Generator().manual_seed(1)

    def t(*shape):
        return torch.randn(*shape, generator=g) * 0.2

    w = (t(3 * C, C), t(3 * C), t(C, C), t(C), t(4 * C, C), t(4 * C), t(C, 4 * C), t(C))
    norms = [[t(C) + 1 for _ in range(R)], [t(C) for _ in range(R)], [t(C) + 1 for _ in range(R)],
             [t(C) for _ in range(R)]]
    _, *state = op.run_forward(t(B, N, C), *w, *norms, None, heads, 1e-6, 0.0, 0)
    op.run_backward(t(B, N, C), *state, *w, *norms, None, heads, 1e-6, 0.0, 0)
    assert {"ln_fwd_kernel", "gemm_kernel", "attn_fwd_kernel", "attn_bwd_pre_kernel", "attn_bwd_kernel",
            "ln_bwd_kernel"} <= set(checked_launches)


def test_calibration_loops(checked_launches):
    from spin_kernels.triton import calibration

    calibration.copy(torch.randn(1000))
    a = torch.randn(70, 40)
    torch.testing.assert_close(calibration.matmul(a, torch.randn(40, 90)).shape, torch.Size([70, 90]))
    assert set(checked_launches) == {"copy_kernel", "matmul_kernel"}


def test_every_shipped_kernel_has_a_descriptor():
    import spin_kernels.triton as kernels
    from spin_kernels.perf.kernel_models import TRITON_MODELS

    names = {e["fn"].__name__ for e in kernels.AOT_KERNELS}
    missing = names - set(TRITON_MODELS) - {"attn_dropout_mask_kernel"}  # a test helper, never in a model
    assert not missing, f"kernels without a cost-model descriptor: {sorted(missing)}"
