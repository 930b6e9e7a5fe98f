"""The epilogue GEMM (spin_kernels/triton/vit_gemm.py) in the interpreter vs float64 references."""
import pytest
import torch
from vit_testutil import DTYPES, check

from spin_kernels.reference import vit_ops as ref
from spin_kernels.triton import layernorm as tln
from spin_kernels.triton.vit_gemm import gemm

DT = DTYPES


def _ln_params(c, dtype):
    return (1 + 0.3 * torch.randn(c)).to(dtype), (0.3 * torch.randn(c)).to(dtype)


@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("m,k,n", [(1, 48, 80), (34, 48, 80), (197, 32, 96)])
@pytest.mark.parametrize("act", ["none", "gelu"])
def test_ln_linear(m, k, n, act, dtype):
    """The block's qkv / fc1 step: LN materialised by ln_fwd, then the bias (+ GELU) GEMM; with GELU also the
    pre-activation kept for the backward (pre_out)."""
    x = (torch.randn(m, k) * 2 + 1).to(dtype)
    lnw, lnb = _ln_params(k, dtype)
    w = (torch.randn(n, k) / k ** 0.5).to(dtype)
    b = (0.1 * torch.randn(n)).to(dtype)
    xn = tln.ln_fwd(x, lnw, lnb)[0]
    pre = torch.full((m, n), float("nan"), dtype=dtype) if act == "gelu" else None
    out = gemm(xn, w.t(), bias=b, act=act, pre_out=pre)
    m64, r64 = ref.ln_stats(x.double())
    z64, y64 = ref.ln_linear(x.double(), m64, r64, lnw.double(), lnb.double(), w.double(), b.double(), act)
    check(out, y64, None, dtype, "ln_linear")
    if act == "gelu":
        check(pre, z64, None, dtype, "pre_out")


@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("bsz,ntok,k,n", [(2, 17, 48, 40), (1, 1, 32, 48)])
@pytest.mark.parametrize("with_scale", [False, True])
def test_linear_residual(bsz, ntok, k, n, with_scale, dtype):
    a = torch.randn(bsz * ntok, k).to(dtype)
    w = (torch.randn(n, k) / k ** 0.5).to(dtype)
    b = (0.1 * torch.randn(n)).to(dtype)
    res = torch.randn(bsz * ntok, n).to(dtype)
    scale = (torch.rand(bsz) < 0.5).float() / 0.5 if with_scale else None
    out = gemm(a, w.t(), bias=b, res=res, scale=scale, rows_per_sample=ntok)
    s64 = scale.double().repeat_interleave(ntok) if with_scale else None
    y64 = ref.linear_residual(a.double(), w.double(), b.double(), res.double(), s64)
    check(out, y64, None, dtype, "linear_residual")


@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("m,k,n", [(34, 48, 80), (5, 32, 40)])
def test_backward_gemms(m, k, n, dtype):
    """dgrad (± gelu', with gelu(z) written beside it, z in place), wgrad with the bias-gradient row sums."""
    x = (torch.randn(m, k) * 2 + 1).to(dtype)
    w = (torch.randn(n, k) / k ** 0.5).to(dtype)
    dz = torch.randn(m, n).to(dtype)
    d64, w64, x64 = dz.double(), w.double(), x.double()
    # dA = dZ W, and (dZ W) * gelu'(z) with z [M, K]
    check(gemm(dz, w), d64 @ w64, None, dtype, "dgrad")
    check(gemm(dz, w, split_k=2), d64 @ w64, None, dtype, "dgrad split-K")
    zk = torch.randn(m, k).to(dtype)
    h = torch.full((m, k), float("nan"), dtype=dtype)
    want = (d64 @ w64) * ref.gelu_grad(zk.double())
    check(gemm(dz, w, gelu_grad_z=zk, gelu_out=h), want, None, dtype, "dgrad_gelu")
    check(h, ref.gelu(zk.double()), None, dtype, "gelu_out")
    # the backward's layout: z1 sits in the output buffer and is replaced by dz1 (each element read, then written)
    buf, h2 = zk.clone(), torch.full((m, k), float("nan"), dtype=dtype)
    got = gemm(dz, w, gelu_grad_z=buf, gelu_out=h2, out=buf)
    assert got.data_ptr() == buf.data_ptr()
    check(buf, want, None, dtype, "dgrad_gelu in place")
    check(h2, ref.gelu(zk.double()), None, dtype, "gelu_out in place")
    # dW = dZᵀ x (fp32 out), db = Σ dZ; split-K over the rows
    for split in (1, 3):
        dw, db = gemm(dz.t(), x, torch.float32, rowsum=True, split_k=split)
        check(dw, d64.t() @ x64, None, dtype, f"wgrad split {split}")
        check(db, d64.sum(0), None, dtype, f"db split {split}")


def test_aux_outputs_need_their_epilogue():
    a, b = torch.randn(4, 8), torch.randn(8, 4)
    with pytest.raises(ValueError, match="pre_out"):
        gemm(a, b, pre_out=torch.empty(4, 4))
    with pytest.raises(ValueError, match="gelu_out"):
        gemm(a, b, gelu_out=torch.empty(4, 4))
    with pytest.raises(ValueError, match="pre_out"):
        gemm(a, b, act="gelu", pre_out=torch.empty(4, 5))


def test_split_k_rejects_epilogue():
    with pytest.raises(ValueError, match="split_k"):
        gemm(torch.randn(4, 8), torch.randn(8, 4), bias=torch.randn(4), split_k=2)


@pytest.mark.parametrize("dtype", DT)
def test_gemm_matches_reference_signature(dtype):
    """spin_kernels.reference.vit_ops.gemm takes the same arguments; the kernel matches it in float64 terms."""
    bsz, ntok, k, n = 2, 9, 32, 48
    m = bsz * ntok
    x = (torch.randn(m, k) + 1).to(dtype)
    w = (torch.randn(n, k) / k ** 0.5).to(dtype)
    b = (0.1 * torch.randn(n)).to(dtype)
    res = torch.randn(m, n).to(dtype)
    scale = torch.tensor([0.0, 2.0])
    z = torch.randn(m, n).to(dtype)
    for kw in (dict(bias=b, act="gelu"), dict(bias=b, res=res, scale=scale, rows_per_sample=ntok),
               dict(gelu_grad_z=z)):
        out = gemm(x, w.t(), **kw)
        kw64 = {key: v.double() if isinstance(v, torch.Tensor) else v for key, v in kw.items()}
        check(out, ref.gemm(x.double(), w.double().t(), **kw64), None, dtype, str(sorted(kw)))


def test_residual_tile_needs_launcher_alignment():
    """The 128x128x64 tile is chosen only where Triton's launcher gives the alignment hints it was checked
    spill-free with; otherwise the smaller tiles (compiled without hints in the AOT suite)."""
    from spin_kernels.triton.vit_gemm import gemm_config, launcher_aligned
    x = torch.empty(40, 64)
    assert launcher_aligned(x, x.t(), ints=(64, 48))
    assert not launcher_aligned(x, ints=(50,))
    assert not launcher_aligned(x[:, 1:])                    # misaligned data pointer (4 bytes in)
    assert not launcher_aligned(torch.empty(40, 72)[:, :64])  # row stride 72: not a multiple of 16
    tiles = {(epi, al): (c["BLOCK_N"], c["BLOCK_K"]) for epi in ("plain", "residual", "heavy") for al in (0, 1)
             for c in [gemm_config(torch.bfloat16, True, epi, bool(al))]}
    assert tiles == {("plain", 1): (128, 64), ("plain", 0): (128, 32), ("residual", 1): (128, 64),
                     ("residual", 0): (64, 64), ("heavy", 1): (64, 64), ("heavy", 0): (64, 64)}
    assert gemm_config(torch.float32, False, "residual", True) == gemm_config(torch.float32, False)  # interpreter
    with pytest.raises(ValueError, match="epilogue"):
        gemm_config(torch.bfloat16, True, "fancy")


def test_split_k_choice():
    """Few tiles: ~2 programs per SM; past one wave only weight-gradient shapes split, to fill their waves."""
    from spin_kernels.triton.vit_gemm import choose_split_k
    assert choose_split_k(1536, 384, 25216, 36, 132, 98) == 7         # DeiT-S fc1 weight gradient, r = 2
    assert choose_split_k(3072, 768, 12608, 144, 132, 49) == 3        # DeiT-B: 144 tiles, 82% of 4 waves
    assert choose_split_k(12608, 384, 1536, 297, 132, 6) == 1         # a data gradient: partials too costly
    assert choose_split_k(3072, 768, 12608, 144, 132, 1) == 1         # K too short to slice
    assert choose_split_k(64, 64, 4096, 1, 0, 16) == 1                # CPU: no SMs, no split


def test_split_k_counters_rearmed(monkeypatch):
    """Each tile's last program resets its split-K ticket: a persistent counter buffer (as on a GPU) is zero
    again after the launch, and a second launch through it is right too."""
    from spin_kernels.triton import vit_gemm
    counters = torch.zeros(64, dtype=torch.int32)
    monkeypatch.setattr(vit_gemm, "split_counters", lambda tiles, device: counters)
    dz, x = torch.randn(70, 40), torch.randn(70, 36)
    for _ in range(2):
        dw, db = gemm(dz.t(), x, torch.float32, rowsum=True, split_k=3)
        check(dw, dz.double().t() @ x.double(), None, torch.float32, "wgrad split 3")
        check(db, dz.double().sum(0), None, torch.float32, "db split 3")
        assert int(counters.abs().sum()) == 0
