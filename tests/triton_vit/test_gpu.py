"""The ViT kernels on a real GPU (skipped without CUDA): bf16 (which the interpreter cannot run), DeiT-S shapes,
and fp32 through tf32 tensor cores. Tolerances from DESIGN.md §5: tf32 5e-4, fp16 5e-3, bf16 2e-2."""
import math

import pytest
import torch
from vit_testutil import rel_err

from spin_kernels.reference import vit_ops as ref
from spin_kernels.testing import TF32_TOLERANCE, TOLERANCES

pytestmark = pytest.mark.gpu
GPU_TOL = {**TOLERANCES, torch.float32: TF32_TOLERANCE}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("b,n,h,d", [(4, 197, 6, 64), (2, 197, 3, 64), (2, 50, 2, 128), (3, 17, 1, 32)])
def test_attention_gpu(b, n, h, d, dtype):
    from spin_kernels.triton import attention as tri
    qkv = torch.randn(b, n, 3 * h * d, device="cuda", dtype=dtype)
    do = torch.randn(b, n, h * d, device="cuda", dtype=dtype)
    o, lse = tri.attn_fwd(qkv, h)
    o64, lse64 = ref.attn_fwd(qkv.double(), h)
    assert rel_err(o, o64) <= GPU_TOL[dtype]
    dqkv = tri.attn_bwd(do, qkv, o, lse, h)
    dqkv64 = ref.attn_bwd(do.double(), qkv.double(), o64, lse64, h)
    err = rel_err(dqkv, dqkv64)
    # PyTorch's own error in the same dtype (SDPA autograd)
    x = qkv.clone().requires_grad_()
    ref.attention(x, h).backward(do)
    assert err <= max(GPU_TOL[dtype], 2 * rel_err(x.grad, dqkv64)), err


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("r", [1, 2])
def test_vit_run_gpu(r, dtype):
    from spin_kernels.ops import vit as ops
    torch.manual_seed(0)
    b, n, c, heads = 4, 197, 384, 6
    dev = "cuda"

    def lin(o, i):
        return [(torch.randn(o, i, device=dev) / math.sqrt(i)).to(dtype), (0.1 * torch.randn(o, device=dev)).to(dtype)]

    w = lin(3 * c, c) + lin(c, c) + lin(4 * c, c) + lin(c, 4 * c)
    norms = [[(1 + 0.2 * torch.randn(c, device=dev)).to(dtype) for _ in range(r)] for _ in range(4)]
    x = torch.randn(b, n, c, device=dev, dtype=dtype)
    leaves = [t.requires_grad_() for t in [x, *w, *[t for lst in norms for t in lst]]]
    out = ops.vit_run(x, *w, *norms, None, heads, 1e-6)[0]
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, g)
    # float64 reference
    from test_vit_ops import _ref_run
    l64 = [t.detach().double().requires_grad_() for t in leaves]
    n64 = [l64[9 + k * r: 9 + (k + 1) * r] for k in range(4)]
    out64 = _ref_run(l64[0], l64[1:9], *n64, None, heads)
    grads64 = torch.autograd.grad(out64, l64, g.double())
    assert rel_err(out, out64) <= GPU_TOL[dtype]
    for a, e in zip(grads, grads64):
        assert rel_err(a, e) <= GPU_TOL[dtype]


def test_deit_gpu_bf16():
    from spin_kernels.models.vit import VisionTransformer
    from spin_kernels.sharing import SharingPlan
    plan = SharingPlan(4, rate=2, mapping="sequential")
    torch.manual_seed(0)
    kw = dict(img_size=64, patch_size=16, embed_dim=192, depth=4, num_heads=3, num_classes=10, plan=plan)
    m_ref = VisionTransformer(backend="reference", **kw).cuda()
    m_tri = VisionTransformer(backend="triton", **kw).cuda()
    m_tri.load_state_dict(m_ref.state_dict())
    imgs = torch.randn(8, 3, 64, 64, device="cuda")
    with torch.autocast("cuda", enabled=False):
        out64 = m_ref.double()(imgs.double())
        out = m_tri.bfloat16()(imgs.bfloat16())
    assert rel_err(out, out64) <= GPU_TOL[torch.bfloat16]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_attention_dropout_gpu(dtype):
    from spin_kernels.triton import attention as tri
    b, n, h, d, p, seed = 2, 197, 6, 64, 0.1, 1234
    qkv = torch.randn(b, n, 3 * h * d, device="cuda", dtype=dtype)
    do = torch.randn(b, n, h * d, device="cuda", dtype=dtype)
    o, lse = tri.attn_fwd(qkv, h, dropout_p=p, seed=seed)
    keep = tri.attn_dropout_mask(seed, b, h, n, p, device="cuda")
    x = qkv.double().requires_grad_()
    o64 = ref.attention(x, h, keep=keep, dropout_p=p)
    o64.backward(do.double())
    assert rel_err(o, o64) <= GPU_TOL[dtype]
    assert rel_err(tri.attn_bwd(do, qkv, o, lse, h, dropout_p=p, seed=seed), x.grad) <= GPU_TOL[dtype]
