"""spin_kernels::vit_run (ops/vit.py) forward and backward vs a float64 PyTorch reference, and a small DeiT with
backend="triton" against backend="reference"."""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from vit_testutil import DTYPES, TOL, check, rel_err

from spin_kernels.ops import vit as ops

EPS = 1e-6


def _ref_run(x, w, n1w, n1b, n2w, n2b, dp, heads, keeps=None, p_attn=0.0):
    """The blocks in plain PyTorch (any dtype): x' = y + s2·fc2(gelu(fc1(LN2(y)))), y = x + s1·proj(attn(LN1(x)))."""
    qkv_w, qkv_b, proj_w, proj_b, fc1_w, fc1_b, fc2_w, fc2_b = w
    b, n, c = x.shape
    d = c // heads
    for i in range(len(n1w)):
        a = F.layer_norm(x, (c,), n1w[i], n1b[i], EPS)
        q, k, v = F.linear(a, qkv_w, qkv_b).reshape(b, n, 3, heads, d).permute(2, 0, 3, 1, 4)
        p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), -1)
        if keeps is not None:
            p = p * keeps[i].to(p.dtype) / (1.0 - p_attn)
        o = (p @ v).transpose(1, 2).reshape(b, n, c)
        t = F.linear(o, proj_w, proj_b)
        y = x + (t * dp[i, 0][:, None, None].to(t.dtype) if dp is not None else t)
        hdn = F.gelu(F.linear(F.layer_norm(y, (c,), n2w[i], n2b[i], EPS), fc1_w, fc1_b))
        t = F.linear(hdn, fc2_w, fc2_b)
        x = y + (t * dp[i, 1][:, None, None].to(t.dtype) if dp is not None else t)
    return x


def _inputs(r, b, n, c, dtype):
    hid = 4 * c

    def lin(o, i):
        return (torch.randn(o, i) / math.sqrt(i)).to(dtype), (0.1 * torch.randn(o)).to(dtype)

    w = [*lin(3 * c, c), *lin(c, c), *lin(hid, c), *lin(c, hid)]
    norms = [[(1 + 0.2 * torch.randn(c)).to(dtype) for _ in range(r)], [(0.2 * torch.randn(c)).to(dtype)
                                                                       for _ in range(r)],
             [(1 + 0.2 * torch.randn(c)).to(dtype) for _ in range(r)], [(0.2 * torch.randn(c)).to(dtype)
                                                                       for _ in range(r)]]
    x = torch.randn(b, n, c).to(dtype)
    return x, w, norms


CASES = [  # (r, B, N, heads, C, drop_path, attention dropout)
    (1, 1, 197, 3, 48, False, 0.0),
    (2, 1, 17, 6, 96, False, 0.0),
    (3, 2, 1, 1, 32, False, 0.0),
    (2, 3, 17, 3, 48, True, 0.0),
    (2, 2, 17, 2, 32, True, 0.25),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("r,b,n,heads,c,drop,p_attn", CASES)
def test_vit_run(r, b, n, heads, c, drop, p_attn, dtype):
    from spin_kernels.triton.attention import attn_dropout_mask
    x, w, norms = _inputs(r, b, n, c, dtype)
    dp = ((torch.rand(r, 2, b) < 0.7).float() / 0.7) if drop else None
    seed = int(torch.randint(0, 2 ** 30, (), device="cpu"))
    keeps = [attn_dropout_mask(seed + i, b, heads, n, p_attn) for i in range(r)] if p_attn else None
    g = torch.randn(b, n, c).to(dtype)
    leaves = [x, *w, *[t for lst in norms for t in lst]]

    def run(leaves_, fn):
        ls = [t.detach().clone().requires_grad_() for t in leaves_]
        xx, ww = ls[0], ls[1:9]
        nn_ = [ls[9 + k * r: 9 + (k + 1) * r] for k in range(4)]
        out = fn(xx, ww, nn_)
        out.backward(g.to(out.dtype))
        return out.detach(), [t.grad for t in ls]

    tri_out, tri_grads = run(leaves, lambda xx, ww, nn_: ops.vit_run(xx, *ww, *nn_, dp, heads, EPS, p_attn,
                                                                     seed)[0])
    ref_out, ref_grads = run([t.double() for t in leaves],
                             lambda xx, ww, nn_: _ref_run(xx, ww, *nn_, dp.double() if drop else None, heads,
                                                          keeps, p_attn))
    torch_out, torch_grads = (None, [None] * len(leaves))
    if dtype == torch.float16:  # PyTorch's own error in the same dtype (the 2x rule)
        torch_out, torch_grads = run(leaves, lambda xx, ww, nn_: _ref_run(xx, ww, *nn_, dp, heads, keeps, p_attn))
    check(tri_out, ref_out, torch_out, dtype, "out")
    names = ["x", "qkv_w", "qkv_b", "proj_w", "proj_b", "fc1_w", "fc1_b", "fc2_w", "fc2_b"] + \
        [f"{k}[{i}]" for k in ("n1_w", "n1_b", "n2_w", "n2_b") for i in range(r)]
    for name, a, ref, tg in zip(names, tri_grads, ref_grads, torch_grads):
        check(a, ref, tg, dtype, f"d{name}")


def test_model_runs():
    from types import SimpleNamespace as NS
    model = NS(attn_plan=NS(layer_to_unique=[0, 0, 1, 1, 2, 2]), mlp_plan=NS(layer_to_unique=[0, 0, 0, 1, 1, 2]))
    assert ops._model_runs(model) == [(0, 2), (2, 3), (3, 4), (4, 5), (5, 6)]


def _models(depth=4, rate=2, heads=3, dim=48, **kw):
    from spin_kernels.models.vit import VisionTransformer
    from spin_kernels.sharing import SharingPlan
    plan = SharingPlan(depth, rate=rate, mapping="sequential")
    torch.manual_seed(0)
    ref = VisionTransformer(img_size=16, patch_size=4, embed_dim=dim, depth=depth, num_heads=heads, num_classes=7,
                            plan=plan, backend="reference", **kw)
    tri = VisionTransformer(img_size=16, patch_size=4, embed_dim=dim, depth=depth, num_heads=heads, num_classes=7,
                            plan=plan, backend="triton", **kw)
    tri.load_state_dict(ref.state_dict())
    # non-trivial norms and biases
    with torch.no_grad():
        for p_ref, p_tri in zip(ref.parameters(), tri.parameters()):
            p_ref.add_(0.05 * torch.randn_like(p_ref))
            p_tri.copy_(p_ref)
    return ref, tri


def _fused_calls(monkeypatch):
    """Record the arguments of every spin_kernels::vit_run call (the spy passes them on to the real op)."""
    calls = []
    real = ops.vit_run

    def spy(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(ops, "vit_run", spy)
    return calls


def _check_logits_and_grads(tri, out, ref, imgs):
    """``out`` = tri(imgs) against the float64 reference model: logits, then every parameter's gradient."""
    ref64 = ref.double()
    out64 = ref64(imgs.double())
    check(out, out64, None, torch.float32, "logits")
    gl = torch.randn_like(out)
    out.backward(gl)
    out64.backward(gl.double())
    for (name, p), p64 in zip(tri.named_parameters(), ref64.parameters()):
        check(p.grad, p64.grad, None, torch.float32, f"grad {name}")


def test_deit_triton_matches_reference(monkeypatch):
    """A small DeiT (17 tokens, 3 heads, depth 4, r = 2 sequential): same logits and gradients, fp32."""
    ref, tri = _models()
    imgs = torch.randn(2, 3, 16, 16)
    calls = _fused_calls(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fused path must run, not fall back
        out = tri(imgs)
    assert [len(args[9]) for args in calls] == [2, 2]  # two runs of two layers
    _check_logits_and_grads(tri, out, ref, imgs)


def test_deit_attention_dropout():
    """attention dropout in training runs fused (no fallback warning), is reproducible under torch.manual_seed,
    and eval mode matches the reference model."""
    ref, tri = _models(depth=2, attn_drop_rate=0.2)
    imgs = torch.randn(1, 3, 16, 16)
    tri.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.manual_seed(5)
        a = tri(imgs)
        torch.manual_seed(5)
        b = tri(imgs)
    assert torch.equal(a, b)
    a.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in tri.parameters() if p.grad is not None)
    tri.eval()
    ref.eval()
    with torch.no_grad():
        assert rel_err(tri(imgs), ref.double()(imgs.double())) < TOL[torch.float32]


def test_deit_drop_path_training_runs():
    """drop-path in training runs fused (the scales themselves are checked against the reference in
    test_vit_run); the eval output matches the reference model."""
    ref, tri = _models(depth=2, drop_path_rate=0.5)
    imgs = torch.randn(2, 3, 16, 16)
    tri.train()
    out = tri(imgs)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in tri.parameters() if p.grad is not None)

    tri.eval()
    ref.eval()
    with torch.no_grad():
        assert rel_err(tri(imgs), ref.double()(imgs.double())) < TOL[torch.float32]


def test_vit_run_validation():
    x, w, norms = _inputs(1, 1, 3, 32, torch.float32)
    with pytest.raises(ValueError, match="qkv_w"):
        ops.vit_run(x, w[0][:10], *w[1:], *norms, None, 2, EPS)
    with pytest.raises(ValueError, match="num_heads"):
        ops.vit_run(x, *w, *norms, None, 5, EPS)
    with pytest.raises(ValueError, match="n1_b"):
        ops.vit_run(x, *w, norms[0], norms[1] * 2, *norms[2:], None, 2, EPS)


def test_opcheck():
    """Schema, fake (meta) registration and autograd registration are consistent (torch.compile can trace)."""
    r = 2
    x, w, norms = _inputs(r, 1, 3, 32, torch.float32)
    leaves = [t.requires_grad_() for t in [x, *w, *[t for lst in norms for t in lst]]]
    n = [leaves[9 + k * r: 9 + (k + 1) * r] for k in range(4)]
    dp = torch.ones(r, 2, 1)
    torch.library.opcheck(ops.vit_run, (leaves[0], *leaves[1:9], *n, dp, 2, EPS),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@pytest.mark.parametrize("recompute", ["all", "qkv", "fc1", "none"])
def test_saved_activation_budget(recompute):
    """What each recompute mode saves for backward is what perf.roofline.vit_recompute_costs counts: 3 tensors of
    N·C per block ("all"), + LN1(x), qkv (4) and / or LN2(y), z1 (5); fp32 statistics beside; no N×N matrix."""
    from spin_kernels.perf import vit_recompute_costs
    r, b, n, c, heads = 2, 1, 5, 32, 2
    x, w, norms = _inputs(r, b, n, c, torch.float32)
    x.requires_grad_()
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        ops.vit_run(x, *w, *norms, None, heads, EPS, 0.0, 0, recompute)
    params = {id(t) for t in [*w, *[t for lst in norms for t in lst]]}
    mine = [t for t in saved if id(t) not in params]
    is_act = [t.dim() == 3 and t.shape[1] == b * n for t in mine]  # [R, B·N, ·]; stats [R, 4, B·N], lse 4-d
    act = sum(t.numel() for t, a in zip(mine, is_act) if a)
    other = sum(t.numel() for t, a in zip(mine, is_act) if not a)
    model = vit_recompute_costs(b, c, heads, n, "fp32")[recompute]
    assert act == model["saved_passes"] * r * b * n * c, (act, model)
    assert other == r * (4 * b * n + heads * b * n), other  # mean/rstd of both norms + lse, fp32
    assert act * 4 + other * 4 == model["saved_bytes"] * r
    assert all(t.shape[-2:] != (n, n) for t in saved)


@pytest.mark.parametrize("recompute", ["qkv", "fc1", "none"])
def test_recompute_modes_same_gradients(recompute):
    """Every recompute mode gives the default mode's outputs and gradients: recomputed LN outputs / GEMMs come
    from the same kernels on the same inputs, so the interpreter gives the same numbers bit for bit; checked
    against the float64 reference too (drop-path on, r = 2, N = 17)."""
    r, b, n, heads, c = 2, 2, 17, 3, 48
    x, w, norms = _inputs(r, b, n, c, torch.float32)
    dp = (torch.rand(r, 2, b) < 0.7).float() / 0.7
    g = torch.randn(b, n, c)
    leaves = [x, *w, *[t for lst in norms for t in lst]]

    def run(mode, dtype=torch.float32, fn=None):
        ls = [t.detach().to(dtype).clone().requires_grad_() for t in leaves]
        nn_ = [ls[9 + k * r: 9 + (k + 1) * r] for k in range(4)]
        out = (fn or (lambda: ops.vit_run(ls[0], *ls[1:9], *nn_, dp, heads, EPS, 0.0, 0, mode)[0]))(ls, nn_)
        out.backward(g.to(dtype))
        return [out.detach()] + [t.grad for t in ls]

    base = run("all", fn=lambda ls, nn_: ops.vit_run(ls[0], *ls[1:9], *nn_, dp, heads, EPS, 0.0, 0, "all")[0])
    got = run(recompute, fn=lambda ls, nn_: ops.vit_run(ls[0], *ls[1:9], *nn_, dp, heads, EPS, 0.0, 0,
                                                        recompute)[0])
    ref = run(None, torch.float64, lambda ls, nn_: _ref_run(ls[0], ls[1:9], *nn_, dp.double(), heads))
    for i, (a, b_, want) in enumerate(zip(got, base, ref)):
        assert torch.equal(a, b_), i
        check(a, want, None, torch.float32, f"output/grad {i}")


def test_recompute_validation():
    from spin_kernels.models.vit import VisionTransformer
    x, w, norms = _inputs(1, 1, 3, 32, torch.float32)
    with pytest.raises(ValueError, match="recompute"):
        ops.vit_run(x, *w, *norms, None, 2, EPS, 0.0, 0, "some")
    with pytest.raises(ValueError, match="recompute"):
        VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, recompute="qkv+fc1")
    model = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2)
    with pytest.raises(ValueError, match="recompute"):
        model.set_recompute("everything")


def test_deit_recompute_none_matches_reference(monkeypatch):
    """A model built with recompute="none" trains fused (spy: the op is asked to keep its tensors; no fallback)
    with the reference model's logits and gradients; in eval mode nothing is kept."""
    ref, tri = _models(recompute="none")
    imgs = torch.randn(2, 3, 16, 16)
    calls = _fused_calls(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = tri(imgs)
        tri.eval()
        with torch.no_grad():
            tri(imgs)
        tri.train()
    assert [args[-1] for args in calls] == ["none", "none", "all", "all"]
    _check_logits_and_grads(tri, out, ref, imgs)


def test_deit_weight_fusion_form():
    """Fusion-training form (parametrized shared weights, recomputed each forward): same logits and gradients
    for every per-layer source tensor and its alpha."""
    from spin_kernels.fusion import fuse_into
    from spin_kernels.models.vit import VisionTransformer
    from spin_kernels.sharing import SharingPlan
    kw = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=5)
    torch.manual_seed(1)
    src = VisionTransformer(**kw)
    plan = SharingPlan(2, rate=2, mapping="sequential")
    ref = fuse_into(VisionTransformer(plan=plan, backend="reference", **kw), src, "scalar_weighted_mean").double()
    tri = fuse_into(VisionTransformer(plan=plan, backend="triton", **kw), src, "scalar_weighted_mean")
    with torch.no_grad():
        for n_, p in tri.named_parameters():
            if n_.endswith("alpha"):
                p.add_(0.1 * torch.randn_like(p))
                dict(ref.named_parameters())[n_].copy_(p)
    imgs = torch.randn(2, 3, 16, 16)
    out, out64 = tri(imgs), ref(imgs.double())
    check(out, out64, None, torch.float32, "logits")
    g = torch.randn_like(out)
    out.backward(g)
    out64.backward(g.double())
    p64 = dict(ref.named_parameters())
    for name, p in tri.named_parameters():
        check(p.grad, p64[name].grad, None, torch.float32, f"grad {name}")


def test_vit_blocks_fp16_tokens_fp32_weights():
    """fp32 master weights, fp16 tokens (what autocast produces on a GPU): the weights are cast differentiably."""
    ref, tri = _models(depth=2)
    x = torch.randn(2, 17, 48)
    xh = x.half().requires_grad_()
    out = ops.vit_blocks(tri, xh)
    assert out.dtype == torch.float16
    x64 = x.double().requires_grad_()
    out64 = ref.double()._run_blocks(x64)
    check(out, out64, None, torch.float16, "tokens")
    g = torch.randn_like(out64)
    out.backward(g.half())
    out64.backward(g)
    check(xh.grad, x64.grad, None, torch.float16, "dx")
    for (name, p), p64 in zip(tri.named_parameters(), ref.parameters()):
        if p.grad is not None and "head" not in name and "norm." not in name:
            assert p.grad.dtype == torch.float32
            check(p.grad, p64.grad, None, torch.float16, f"grad {name}")
