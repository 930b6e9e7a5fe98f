"""The prologue/epilogue GEMM (spin_kernels/triton/vit_gemm.py) in the interpreter vs float64 references."""
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
    x = (torch.randn(m, k) * 2 + 1).to(dtype)
    lnw, lnb = _ln_params(k, dtype)
    w = (torch.randn(n, k) / k ** 0.5).to(dtype)
    b = (0.1 * torch.randn(n)).to(dtype)
    _, mean, rstd = tln.ln_fwd(x, write_y=False)
    out = gemm(x, w.t(), bias=b, act=act, ln=(mean, rstd, lnw, lnb))
    m64, r64 = ref.ln_stats(x.double())
    _, y64 = ref.ln_linear(x.double(), m64, r64, lnw.double(), lnb.double(), w.double(), b.double(), act)
    check(out, y64, None, dtype, "ln_linear")


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
    """dgrad (± gelu'), wgrad with the LN / gelu B-prologue and the bias-gradient row sums."""
    x = (torch.randn(m, k) * 2 + 1).to(dtype)
    lnw, lnb = _ln_params(k, dtype)
    w = (torch.randn(n, k) / k ** 0.5).to(dtype)
    dz = torch.randn(m, n).to(dtype)
    d64, w64, x64 = dz.double(), w.double(), x.double()
    # dA = dZ W, and (dZ W) * gelu'(z) with z [M, K]
    check(gemm(dz, w), d64 @ w64, None, dtype, "dgrad")
    check(gemm(dz, w, split_k=2), d64 @ w64, None, dtype, "dgrad split-K")
    zk = torch.randn(m, k).to(dtype)
    check(gemm(dz, w, gelu_grad_z=zk), (d64 @ w64) * ref.gelu_grad(zk.double()), None, dtype, "dgrad_gelu")
    # dW = dZᵀ LN(x) (fp32 out), db = Σ dZ
    _, mean, rstd = tln.ln_fwd(x, write_y=False)
    dw, db = gemm(dz.t(), x, torch.float32, ln_b=(mean, rstd, lnw, lnb), rowsum=True)
    m64, r64 = ref.ln_stats(x64)
    a64 = (x64 - m64[:, None]) * r64[:, None] * lnw.double() + lnb.double()
    check(dw, d64.t() @ a64, None, dtype, "wgrad_ln")
    check(db, d64.sum(0), None, dtype, "db")
    # dW2 = dOutᵀ gelu(z)
    dw2, db2 = gemm(dz.t(), zk, torch.float32, gelu_b=True, rowsum=True, split_k=3)
    check(dw2, d64.t() @ ref.gelu(zk.double()), None, dtype, "wgrad_gelu")
    check(db2, d64.sum(0), None, dtype, "db2")


@pytest.mark.parametrize("dtype", DT)
def test_wgrad_grouped_ln(dtype):
    """dW over the concatenated rows of 3 layers, each with its own LayerNorm parameters (shared-run wgrad)."""
    r, m, k, n = 3, 13, 32, 40
    x = (torch.randn(r * m, k) * 2 + 1).to(dtype)
    lnw = (1 + 0.3 * torch.randn(r, k)).to(dtype)
    lnb = (0.3 * torch.randn(r, k)).to(dtype)
    dz = torch.randn(r * m, n).to(dtype)
    _, mean, rstd = tln.ln_fwd(x, write_y=False)
    dw, db = gemm(dz.t(), x, torch.float32, ln_b=(mean, rstd, lnw, lnb), rowsum=True, rows_per_group=m,
                  split_k=2)  # 39 rows: slices of 32 and 7 rows, both crossing a group boundary
    m64, r64 = ref.ln_stats(x.double())
    a64 = (x.double() - m64[:, None]) * r64[:, None] * lnw.double().repeat_interleave(m, 0) \
        + lnb.double().repeat_interleave(m, 0)
    check(dw, dz.double().t() @ a64, None, dtype, "wgrad_ln grouped")
    check(db, dz.double().sum(0), None, dtype, "db grouped")


def test_split_k_rejects_epilogue():
    with pytest.raises(ValueError, match="split_k"):
        gemm(torch.randn(4, 8), torch.randn(8, 4), bias=torch.randn(4), split_k=2)


@pytest.mark.parametrize("dtype", DT)
def test_gemm_matches_reference_signature(dtype):
    """spin_kernels.reference.vit_ops.gemm takes the same arguments; the kernel matches it in float64 terms."""
    bsz, ntok, k, n = 2, 9, 32, 48
    m = bsz * ntok
    x = (torch.randn(m, k) + 1).to(dtype)
    lnw, lnb = _ln_params(k, dtype)
    w = (torch.randn(n, k) / k ** 0.5).to(dtype)
    b = (0.1 * torch.randn(n)).to(dtype)
    res = torch.randn(m, n).to(dtype)
    scale = torch.tensor([0.0, 2.0])
    _, mean, rstd = tln.ln_fwd(x, write_y=False)
    for kw in (dict(bias=b, act="gelu", ln=(mean, rstd, lnw, lnb)),
               dict(bias=b, res=res, scale=scale, rows_per_sample=ntok)):
        out = gemm(x, w.t(), **kw)
        kw64 = {key: (tuple(t.double() for t in v) if isinstance(v, tuple) else
                      v.double() if isinstance(v, torch.Tensor) else v) for key, v in kw.items()}
        check(out, ref.gemm(x.double(), w.double().t(), **kw64), None, dtype, str(sorted(kw)))
