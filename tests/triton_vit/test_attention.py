"""Flash attention kernels (spin_kernels/triton/attention.py) in the interpreter vs the float64 reference."""
import pytest
import torch
import torch.nn.functional as F
from vit_testutil import DTYPES, check

from spin_kernels.reference import vit_ops as ref
from spin_kernels.triton import attention as tri

CASES = [  # (B, N, H, D)
    (2, 1, 1, 16),
    (1, 17, 3, 32),
    (1, 197, 6, 16),
    (2, 70, 1, 64),
    (1, 9, 2, 128),
]


def _torch_attn(qkv, h):
    b, n, c3 = qkv.shape
    q, k, v = qkv.reshape(b, n, 3, h, c3 // (3 * h)).permute(2, 0, 3, 1, 4)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c3 // 3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,n,h,d", CASES)
def test_attn_fwd_bwd(b, n, h, d, dtype):
    qkv = torch.randn(b, n, 3 * h * d, dtype=dtype)
    do = torch.randn(b, n, h * d, dtype=dtype)
    o, lse = tri.attn_fwd(qkv, h)
    o64, lse64 = ref.attn_fwd(qkv.double(), h)
    # PyTorch in the same dtype (fp16 math on CPU is emulated; compute through fp32 and round like a fp16 kernel)
    check(o, o64, _torch_attn(qkv, h) if dtype == torch.float32 else None, dtype, "o")
    check(lse, lse64, None, torch.float32, "lse")
    dqkv = tri.attn_bwd(do, qkv, o, lse, h)
    dqkv64 = ref.attn_bwd(do.double(), qkv.double(), o64, lse64, h)
    check(dqkv, dqkv64, None, dtype, "dqkv")
    # the explicit reference backward agrees with autograd
    if dtype == torch.float32 and n > 1:
        x = qkv.double().requires_grad_()
        ref.attention(x, h).backward(do.double())
        assert torch.allclose(x.grad, dqkv64, atol=1e-10, rtol=1e-8)


def test_attn_errors():
    with pytest.raises(ValueError, match="head_dim"):
        tri.attn_fwd(torch.randn(1, 4, 3 * 2 * 12), 2)
    with pytest.raises(ValueError, match="qkv"):
        tri.attn_fwd(torch.randn(1, 4, 10), 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,n,h,d", [(1, 17, 3, 32), (2, 70, 1, 64), (1, 197, 6, 16)])
def test_attn_dropout(b, n, h, d, dtype):
    """Philox dropout: the kernels match the float64 math under the same keep mask, fwd and bwd."""
    p, seed = 0.3, int(torch.randint(0, 2 ** 31 - 1, ()).item())
    qkv = torch.randn(b, n, 3 * h * d, dtype=dtype)
    do = torch.randn(b, n, h * d, dtype=dtype)
    o, lse = tri.attn_fwd(qkv, h, dropout_p=p, seed=seed)
    keep = tri.attn_dropout_mask(seed, b, h, n, p)
    x = qkv.double().requires_grad_()
    o64 = ref.attention(x, h, keep=keep, dropout_p=p)
    check(o, o64, None, dtype, "o")
    dqkv = tri.attn_bwd(do, qkv, o, lse, h, dropout_p=p, seed=seed)
    o64.backward(do.double())
    check(dqkv, x.grad, None, dtype, "dqkv")
    # the explicit reference (same signature as the kernels) agrees
    r_o, r_lse = ref.attn_fwd(qkv.double(), h, dropout_p=p, seed=seed)
    assert torch.allclose(r_o, o64.detach(), atol=1e-10)
    assert torch.allclose(ref.attn_bwd(do.double(), qkv.double(), r_o, r_lse, h, dropout_p=p, seed=seed), x.grad,
                          atol=1e-9)


def test_attn_dropout_mask_stats():
    keep = tri.attn_dropout_mask(1234, 2, 3, 40, 0.25)
    rate = keep.float().mean().item()
    assert abs(rate - 0.75) < 0.025, rate  # 9600 draws: 4 sigma ~ 0.018
    assert not torch.equal(keep, tri.attn_dropout_mask(1235, 2, 3, 40, 0.25))
    assert torch.equal(keep, tri.attn_dropout_mask(1234, 2, 3, 40, 0.25))
    with pytest.raises(ValueError, match="dropout_p"):
        tri.attn_fwd(torch.randn(1, 4, 96), 2, dropout_p=1.0)


def test_batch_times_heads_is_on_the_uncapped_grid_axis(monkeypatch):
    """CUDA caps grid axes 1 and 2 at 65535: batch x heads (5462 images at 12 heads already exceed it) must be
    on axis 0 for every attention launch, the query / key blocks on axis 1. Outputs still match the reference."""
    grids = {}

    class Spy:
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel

        def __getitem__(self, grid):
            grids[self.name] = grid
            return self.kernel[grid]

    for name in ("attn_fwd_kernel", "attn_bwd_pre_kernel", "attn_bwd_kernel", "attn_dropout_mask_kernel"):
        monkeypatch.setattr(tri, name, Spy(name, getattr(tri, name)))
    b, n, h, d = 3, 70, 5, 16
    qkv = torch.randn(b, n, 3 * h * d)
    o, lse = tri.attn_fwd(qkv, h)
    tri.attn_bwd(torch.randn_like(o), qkv, o, lse, h)
    tri.attn_dropout_mask(1, b, h, n, 0.1)
    assert set(grids) == {"attn_fwd_kernel", "attn_bwd_pre_kernel", "attn_bwd_kernel", "attn_dropout_mask_kernel"}
    for name, grid in grids.items():
        # axes 1 and 2: the sequence's blocks (at most cdiv(n, 16), the smallest tile) and the bwd program kind
        assert grid[0] == b * h and grid[1] <= -(-n // 16) and all(g <= 2 for g in grid[2:]), (name, grid)
    expected, _ = ref.attn_fwd(qkv.double(), h)
    assert (o.double() - expected).abs().max() < 1e-4
