"""Kernel-level tests of spin_kernels.triton against the float64 reference (spin_kernels.reference.convmixer_ops).

Runs in the Triton interpreter on CPU (conftest sets TRITON_INTERPRET=1 without a GPU); fp32 and fp16, odd
shapes (H, W not tile multiples, B = 1 and 3), k ∈ {3, 5, 7, 9}; outputs are poisoned with NaN before launch.
"""
import pytest
import torch

from spin_triton_testutils import DEVICE, DTYPES, TOL, rel_err
from spin_kernels.reference import convmixer_ops as ref
from spin_kernels.triton import bn, dwconv, pointwise



def rnd(*shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, device=DEVICE) * scale).to(dtype)


def vec(C, lo=0.5):
    return (torch.rand(C, device=DEVICE) + lo)


def d64(*ts):
    return [None if t is None else t.double() for t in ts]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,shape,act,has_res", [
    (3, (1, 5, 7, 32), "gelu", False),
    (5, (3, 4, 6, 16), "relu", True),
    (7, (1, 6, 5, 48), "gelu", True),
    (9, (1, 4, 5, 16), "relu", False),
])
def test_dw_fwd_and_stats(dtype, k, shape, act, has_res):
    B, H, W, C = shape
    M = B * H * W
    hz, res = rnd(M, C, dtype=dtype), (rnd(M, C, dtype=dtype) if has_res else None)
    ax, bx = vec(C), rnd(C)
    w, b = rnd(C, 1, k, k, dtype=dtype, scale=k ** -1), rnd(C, dtype=dtype)
    q = torch.full((M, C), float("nan"), device=DEVICE, dtype=dtype)
    _, part = dwconv.dw_fwd(hz, res, ax, bx, w, b, B, H, W, act, act, emit_stats=True, q_out=q)
    qr, mr, vr = ref.dw_fwd_ref(*d64(hz, res, ax, bx, w, b), B, H, W, act, act)
    assert rel_err(q, qr) <= TOL[dtype]
    out = bn.bn_finalize(part, torch.ones(C, device=DEVICE), torch.zeros(C, device=DEVICE), 1e-5)
    # the statistics are of act(q) as stored (rounded to dtype): compare against that
    g = ref.act_ref(q.double(), act)
    assert rel_err(out[0], g.mean(0)) <= 1e-5
    assert rel_err(out[1], g.var(0, unbiased=False)) <= 1e-5


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,shape,tiling,has_res", [
    # GPU tiling rules at small batch (rows split into tiles with halo rows) at several channel blocks, with a
    # partial last one (C = 80: 2 strips x 64 channels)
    (3, (2, 16, 16, 80), "gpu", True),
    # k = 9 on 32-wide rows: the convmixer_1536_20 tiling (4 strips of 8 columns x 32 channels), several tiles
    # per program (11 rows split into tiles of 2)
    (9, (1, 11, 32, 48), "gpu", False),
    # forced: tiles of 2 rows (H = 7 leaves a partial one), 16-channel blocks, 2 persistent programs for 12 tiles,
    # strips of 4 columns (W = 6: a partial second strip)
    (5, (3, 7, 6, 40), dict(tile_h=2, block_c=16, programs=2, strip=4), True),
    # the kernel wider than the image and than a strip (the halo reaches two strips over)
    (7, (2, 3, 5, 16), dict(tile_h=1, block_c=16, programs=3, strip=1), False),
    # tiles of 3 rows (not a power of 2) with k = 9: halo rows from the neighbouring tiles on both sides
    (9, (2, 10, 9, 24), dict(tile_h=3, block_c=8, programs=5, strip=2), True),
])
def test_dw_fwd_gpu_tilings(dtype, k, shape, tiling, has_res):
    """dw_fwd at the tilings a GPU runs (several tiles per persistent program, several channel blocks, partial
    tiles), in the interpreter: output, the per-tile statistics and the BN finalized in the same launch (Finalize)
    against float64; the counters are left zero for the next launch. (The interpreter runs programs in order, so
    the elected last program is always the highest; on a GPU any program can be.)"""
    B, H, W, C = shape
    M = B * H * W
    if tiling == "gpu":
        tile_h, strip, _, block_c, _ = dwconv.dw_fwd_tiling(H, W, C, k, on_gpu=True, batch=B, sms=132)
        tiling = dict(tile_h=tile_h, block_c=block_c, programs=2, strip=strip)
    hz, res = rnd(M, C, dtype=dtype), (rnd(M, C, dtype=dtype) if has_res else None)
    ax, bx = vec(C), rnd(C)
    w, b = rnd(C, 1, k, k, dtype=dtype, scale=k ** -1), rnd(C, dtype=dtype)
    gamma, beta = vec(C).to(dtype), rnd(C, dtype=dtype)
    q = torch.full((M, C), float("nan"), device=DEVICE, dtype=dtype)
    stats_out = torch.full((3, C), float("nan"), device=DEVICE)
    affine_out = torch.full((2, C), float("nan"), device=DEVICE)
    counters = dwconv.finalize_counters(C, DEVICE)
    fin = dwconv.Finalize(gamma, beta, 1e-5, stats_out, affine_out, counters)
    _, part = dwconv.dw_fwd(hz, res, ax, bx, w, b, B, H, W, "gelu", "gelu", emit_stats=True, q_out=q,
                            finalize=fin, **tiling)
    assert part.shape[1] == B * -(-H // tiling["tile_h"])  # one partial per tile
    assert not counters.any()
    qr, _, _ = ref.dw_fwd_ref(*d64(hz, res, ax, bx, w, b), B, H, W, "gelu", "gelu")
    assert rel_err(q, qr) <= TOL[dtype]
    out = bn.bn_finalize(part, torch.ones(C, device=DEVICE), torch.zeros(C, device=DEVICE), 1e-5)
    # the statistics are of act(q) as stored (rounded to dtype): compare against that
    g = ref.act_ref(q.double(), "gelu")
    exp = ref.bn_finalize_ref(g, gamma.double(), beta.double(), 1e-5)
    assert rel_err(out[0], g.mean(0)) <= 1e-5
    assert rel_err(out[1], g.var(0, unbiased=False)) <= 1e-5
    for i in range(3):
        assert rel_err(stats_out[i], exp[i]) <= 1e-5, i
    for i in range(2):
        assert rel_err(affine_out[i], exp[3 + i]) <= 1e-5, i
    # the same buffers again: the counters were re-armed, the result is the same
    stats_out.fill_(float("nan"))
    dwconv.dw_fwd(hz, res, ax, bx, w, b, B, H, W, "gelu", "gelu", q_out=q, finalize=fin, **tiling)
    assert rel_err(stats_out[0], exp[0]) <= 1e-5 and not counters.any()


def test_dw_fwd_finalize_errors():
    C = 32
    hz, ax, bx = rnd(8, C), vec(C), rnd(C)
    w, b = rnd(C, 1, 3, 3), rnd(C)

    def fin(**kw):
        base = dict(gamma=vec(C), beta=rnd(C), eps=1e-5, stats_out=torch.empty(3, C), affine_out=torch.empty(2, C),
                    counters=dwconv.finalize_counters(C, DEVICE))
        return dwconv.Finalize(**{**base, **kw})

    for kw, name in ((dict(stats_out=torch.empty(5, C)), "finalize.stats_out"),
                     (dict(affine_out=torch.empty(2, C, dtype=torch.float64)), "finalize.affine_out"),
                     (dict(gamma=vec(C + 16)), "finalize.gamma"),
                     (dict(counters=torch.zeros(1, dtype=torch.int32)), "finalize.counters"),
                     (dict(counters=torch.zeros(C, dtype=torch.int64)), "finalize.counters")):
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            dwconv.dw_fwd(hz, None, ax, bx, w, b, 1, 2, 4, finalize=fin(**kw), block_c=16)


@pytest.mark.parametrize("kw,name", [(dict(strip=3), "strip"), (dict(strip=0), "strip"), (dict(block_c=24), "block_c"),
                                     (dict(tile_h=0), "tile_h")])
def test_dw_tiling_overrides_are_checked(kw, name):
    """A tiling override the row-streaming kernels cannot take raises a ValueError naming it, forward and backward
    (strips and channel blocks are tensor dimensions: powers of 2; a tile has at least one row)."""
    C, B, H, W = 16, 1, 3, 4
    hz, ax, bx = rnd(B * H * W, C), vec(C), rnd(C)
    w, b = rnd(C, 1, 3, 3), rnd(C)
    with pytest.raises(ValueError, match=name):
        dwconv.dw_fwd(hz, None, ax, bx, w, b, B, H, W, **kw)
    with pytest.raises(ValueError, match=name):
        dwconv.dw_bwd(hz, hz, torch.zeros(6, C), w, hz, None, torch.zeros(4, C), B, H, W, **kw)


def test_bn_finalize_split_outputs():
    """bn_finalize into separate statistics [3, C] and affine [2, C] buffers (where the fused run keeps them) gives
    the rows of the [5, C] result; wrong buffers raise naming the argument."""
    C, T = 40, 7
    part = torch.stack([torch.full((T, C), 3.0, device=DEVICE), rnd(T, C), vec(T * C).view(T, C)])
    gamma, beta = vec(C), rnd(C)
    full = bn.bn_finalize(part, gamma, beta, 1e-5)
    st, ab = torch.full((3, C), float("nan"), device=DEVICE), torch.full((2, C), float("nan"), device=DEVICE)
    assert bn.bn_finalize(part, gamma, beta, 1e-5, out=st, affine_out=ab) is st
    assert torch.equal(st, full[:3]) and torch.equal(ab, full[3:])
    with pytest.raises(ValueError, match="out: expected a contiguous fp32 \\[3, 40\\]"):
        bn.bn_finalize(part, gamma, beta, 1e-5, out=torch.empty(5, C), affine_out=ab)
    with pytest.raises(ValueError, match="affine_out"):
        bn.bn_finalize(part, gamma, beta, 1e-5, out=st, affine_out=torch.empty(2, C).t().contiguous().t())


@pytest.mark.parametrize("momentum,sizes", [(0.1, [7, 1, 30, 13, 2]), (0.3, [7, 1, 30, 13, 2]),
                                            (0.1, [1 + (5 * i) % 7 for i in range(300)])])
def test_bn_finalize_running_stats(momentum, sizes):
    """Chan merge over uneven tiles (300 of them: two blocks of BN_BLOCK_ROWS, the second partial) + running-stat
    update exactly as nn.BatchNorm2d."""
    C = 24
    h = torch.randn(sum(sizes), C, device=DEVICE, dtype=torch.float64) * 3 + 5  # offset: tests cancellation
    chunks = torch.split(h, sizes)
    part = torch.stack([torch.stack([torch.full((C,), float(c.shape[0]), dtype=torch.float64) for c in chunks]),
                        torch.stack([c.mean(0) for c in chunks]),
                        torch.stack([((c - c.mean(0)) ** 2).sum(0) for c in chunks])]).float()
    gamma, beta = vec(C), torch.randn(C, device=DEVICE)
    rm, rv = torch.randn(C, device=DEVICE), vec(C)
    rm_ref, rv_ref = rm.double().clone(), rv.double().clone()
    out = bn.bn_finalize(part, gamma, beta, 1e-5, rm, rv, momentum)
    exp = ref.bn_finalize_ref(h, gamma.double(), beta.double(), 1e-5, rm_ref, rv_ref, momentum)
    for i in range(5):
        assert rel_err(out[i], exp[i]) <= 1e-5, i
    assert rel_err(rm, rm_ref) <= 1e-5 and rel_err(rv, rv_ref) <= 1e-5
    # the same update as nn.BatchNorm2d on the same batch (default buffers: zeros / ones)
    bn_mod = torch.nn.BatchNorm2d(C, momentum=momentum).double().train()
    with torch.no_grad():
        bn_mod(h.t().reshape(1, C, -1, 1))
    rm_b, rv_b = torch.zeros(C, device=DEVICE), torch.ones(C, device=DEVICE)
    bn.bn_finalize(part, gamma, beta, 1e-5, rm_b, rv_b, momentum)
    assert rel_err(rm_b, bn_mod.running_mean) <= 1e-5 and rel_err(rv_b, bn_mod.running_var) <= 1e-5


@pytest.mark.parametrize("param_dtype", DTYPES)
@pytest.mark.parametrize("P,C,training", [(37, 45, True), (1, 16, False), (70, 130, True), (300, 20, True)])
def test_bn_bwd_vectors(param_dtype, P, C, training):
    """The backward glue of a BN: sums of the partials, parameter gradients in their dtype and the bn_act_bwd
    vectors (a, 0, -a·s1/n, -a·s2/n, mean, invstd) against float64; every output poisoned first."""
    part = rnd(2, P, C)
    gamma, mean, invstd = vec(C).to(param_dtype), rnd(C), vec(C)
    n = 1000
    out = torch.full((6, C), float("nan"), device=DEVICE)
    gw = torch.full((C,), float("nan"), device=DEVICE, dtype=param_dtype)
    gb = torch.full_like(gw, float("nan"))
    sums = bn.bn_bwd_vectors(part, gamma, mean, invstd, n, training, out, gw, gb)
    s1, s2 = part.double().sum(1)
    assert rel_err(sums[0], s1) <= 1e-6 and rel_err(sums[1], s2) <= 1e-6
    assert torch.equal(gw, sums[1].to(param_dtype)) and torch.equal(gb, sums[0].to(param_dtype))
    a = gamma.double() * invstd.double()
    zero = torch.zeros_like(a)
    exp = torch.stack([a, zero, -a * s1 / n if training else zero, -a * s2 / n if training else zero,
                       mean.double(), invstd.double()])
    assert rel_err(out, exp) <= 1e-6
    # sums alone (no vectors, no gradients): the reduction only
    assert torch.equal(bn.bn_bwd_vectors(part), sums)
    with pytest.raises(ValueError, match="vec_out"):
        bn.bn_bwd_vectors(part, vec_out=out)
    with pytest.raises(ValueError, match="grad_w, grad_b"):
        bn.bn_bwd_vectors(part, grad_w=gw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,C,act,spin", [(70, 32, "gelu", False), (33, 48, "relu", True), (1, 16, "gelu", True)])
def test_pw_fwd(dtype, M, C, act, spin):
    hz, q = rnd(M, C, dtype=dtype), rnd(M, C, dtype=dtype)
    res = rnd(M, C, dtype=dtype) if spin else None
    ax, bx, a1, b1 = vec(C), rnd(C), vec(C), rnd(C)
    w, b = rnd(C, C, 1, 1, dtype=dtype, scale=C ** -0.5), rnd(C, dtype=dtype)
    z = torch.full((M, C), float("nan"), device=DEVICE, dtype=dtype)
    u = torch.full((M, C), float("nan"), device=DEVICE, dtype=dtype)
    _, _, part = pointwise.pw_fwd(hz, res, ax, bx, q, a1, b1, w, b, act, act, act, write_u=spin, emit_stats=True,
                                  z_out=z, u_out=u if spin else None)
    zr, ur, _, _ = ref.pw_fwd_ref(*d64(hz, res, ax, bx, q, a1, b1, w, b), act, act, act)
    assert rel_err(z, zr) <= TOL[dtype]
    if spin:
        assert rel_err(u, ur) <= TOL[dtype]
    out = bn.bn_finalize(part, torch.ones(C, device=DEVICE), torch.zeros(C, device=DEVICE), 1e-5)
    h = ref.act_ref(z.double(), act)
    assert rel_err(out[0], h.mean(0)) <= 1e-5
    if M > 1:
        assert rel_err(out[1], h.var(0, unbiased=False)) <= 1e-5


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("R,M,N,K,split", [(1, 37, 48, 32, None), (3, 37, 48, 32, 1), (3, 37, 48, 32, 5),
                                           (2, 33, 16, 80, 7)])
def test_pw_bwd_dw_over_row_ranges(dtype, R, M, N, K, split):
    """The shared-run weight gradient over the concatenated rows of R layers, in any number of row ranges
    (split 7 at 2 layers of 2 row tiles: 3 empty ranges, whose partials must still be zeros)."""
    dzrun, urun = rnd(max(R - 1, 1), M, N, dtype=dtype), rnd(max(R - 1, 1), M, K, dtype=dtype)
    dzlast, ulast = rnd(M, N, dtype=dtype), rnd(M, K, dtype=dtype)
    dw, db = pointwise.pw_bwd_dw(dzrun, dzlast, urun, ulast, R, split=split)
    dz = torch.cat([*dzrun[:R - 1], dzlast]).double()
    u = torch.cat([*urun[:R - 1], ulast]).double()
    # fp32 partials of fp16 products, summed over R·M rows: the fp32 tolerance holds for both input dtypes
    assert rel_err(dw, dz.t() @ u) <= TOL[torch.float32]
    assert rel_err(db, dz.sum(0)) <= TOL[torch.float32]
    for bad in (0, 65536):
        with pytest.raises(ValueError, match="split"):
            pointwise.pw_bwd_dw(dzrun, dzlast, urun, ulast, R, split=bad)


def test_split_for_waves():
    """Split-K slices fill the waves against the partials' traffic (132 SMs, 64-row steps)."""
    from spin_kernels.triton._common import split_for_waves
    assert split_for_waves(72, 1024, 64, 132, 1024) == 7    # C = 1536 b64: 504 programs, 4 waves 95% full
    assert split_for_waves(18, 1024, 64, 132, 1024) == 7    # C = 768 b64: one wave of 126 (was 15: 3 waves)
    assert split_for_waves(18, 8, 64, 132, 8) == 2          # batch 1: partials cost more than idle SMs
    assert split_for_waves(4096, 16, 64, 132, 16) == 1      # many tiles: the waves are full already
    assert split_for_waves(72, 1024, 64, 0, 1024) == 1      # no SMs (CPU): no split
    assert split_for_waves(72, 1024, 64, 132, 1) == 1       # capped


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,shape,act,has_res,training,tiling", [
    (3, (1, 5, 7, 32), "gelu", False, True, None),
    (5, (3, 3, 5, 16), "relu", True, True, None),
    (7, (1, 6, 5, 16), "gelu", True, False, None),
    (9, (1, 4, 5, 16), "gelu", False, True, None),
    # GPU tilings: several tiles per persistent program (partials accumulated across tiles), several and partial
    # channel blocks, row tiles with halo rows from both neighbours, partial strips, 32-wide rows at k = 9
    (3, (2, 16, 16, 80), "gelu", True, True, "gpu"),
    (9, (1, 11, 32, 48), "gelu", False, True, "gpu"),
    (5, (3, 7, 6, 40), "relu", True, True, dict(tile_h=2, block_c=16, programs=2, strip=4)),
    (7, (2, 3, 5, 16), "gelu", False, False, dict(tile_h=1, block_c=16, programs=3, strip=1)),
    # strips past W (W = 5 in 2 strips of 4): the padded columns must stay out of dx, dw and the sums
    (3, (2, 4, 5, 16), "gelu", True, True, dict(tile_h=2, block_c=16, programs=2, strip=4)),
    (9, (2, 10, 9, 24), "relu", True, True, dict(tile_h=3, block_c=8, programs=5, strip=2)),
])
def test_dw_bwd(dtype, k, shape, act, has_res, training, tiling):
    """dx, dhz, dweight, dbias and the previous-BN sums of dw_bwd vs autograd of the float64 layer."""
    B, H, W, C = shape
    if tiling == "gpu":
        tile_h, strip, _, block_c, _ = dwconv.dw_fwd_tiling(H, W, C, k, on_gpu=True, batch=B, sms=132)
        tiling = dict(tile_h=tile_h, block_c=block_c, programs=2, strip=strip)
    M = B * H * W
    hz, res = rnd(M, C, dtype=dtype), (rnd(M, C, dtype=dtype) if has_res else None)
    gin, bin_, min_, iin = vec(C), rnd(C), rnd(C, scale=0.1), vec(C)
    ax = gin * iin
    bx = bin_ - min_ * ax
    w, b = rnd(C, 1, k, k, dtype=dtype, scale=k ** -1), rnd(C, dtype=dtype)
    g1, b1 = vec(C), rnd(C)
    du = rnd(M, C, dtype=dtype)
    q, _ = dwconv.dw_fwd(hz, res, ax, bx, w, b, B, H, W, act, act, emit_stats=False)
    # float64 autograd reference: x -> q -> BN1(act(q)) (batch stats or fixed) -> u = x + y1, loss = <u, du>
    hz64, res64, w64, b64 = [t.double().requires_grad_(True) if t is not None else None for t in (hz, res, w, b)]
    x = ref.x_ref(hz64, res64, ax.double(), bx.double(), act)
    x.retain_grad()
    qq = ref.dwconv_ref(x, w64, b64, B, H, W)
    # The reference runs on exactly the q the kernel receives (value of the fp32 forward, gradient of the float64
    # graph): this tests the backward kernel, not the forward's rounding — which BN1's invstd amplifies on a
    # ReLU channel of small variance past any fixed fp32 bound.
    qq = qq + (q.double() - qq).detach()
    g = ref.act_ref(qq, act)
    if training:
        m1, v1 = g.mean(0), g.var(0, unbiased=False)
    else:
        m1, v1 = torch.randn(C, dtype=torch.float64) * 0.1, torch.rand(C, dtype=torch.float64) + 0.5
    i1 = torch.rsqrt(v1 + 1e-5)
    u = x + (g - m1) * i1 * g1.double() + b1.double()
    (u * du.double()).sum().backward()
    # the kernel's inputs: BN1 backward vectors from sums of du (what pw_bwd_dx emits), rounded once to fp32
    ghat = (ref.act_ref(q.double(), act) - m1.detach()) * i1.detach()
    a1 = g1.double() * i1.detach()
    T1, T2 = du.double().sum(0), (du.double() * ghat).sum(0)
    zero = torch.zeros(C, device=DEVICE, dtype=torch.float64)
    qvec = torch.stack([a1, zero, -a1 * T1 / M if training else zero, -a1 * T2 / M if training else zero,
                        m1.detach(), i1.detach()]).float().contiguous()
    xvec = torch.stack([ax, bx, min_, iin]).contiguous()
    dx = torch.full((M, C), float("nan"), device=DEVICE, dtype=dtype)
    _, dhz, dw, db, s_part = dwconv.dw_bwd(du, q, qvec, w, hz, res, xvec, B, H, W, act, act, write_dx=True,
                                           write_dhz=True, dx_out=dx, **(tiling or {}))
    S1, S2 = s_part.double().sum(1)  # per-program partial sums
    tol = TOL[dtype]
    assert rel_err(dx, x.grad) <= tol
    assert rel_err(dhz, hz64.grad) <= tol
    assert rel_err(dw, w64.grad.reshape(C, k, k)) <= tol
    assert rel_err(db, b64.grad) <= tol
    xhat_in = (ref.act_ref(hz.double(), act) - min_.double()) * iin.double()
    assert rel_err(S1, x.grad.sum(0)) <= tol
    assert rel_err(S2, (x.grad * xhat_in).sum(0)) <= tol
