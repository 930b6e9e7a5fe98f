"""Op- and model-level tests of spin_kernels.ops.convmixer (Triton backend) against the float64 reference.

convmixer_run (the shared-run op) forward + backward for every input and parameter, r = 1, 2, 4, both layer
variants, train and eval, fp32 and fp16; whole small models backend="triton" vs "reference" (logits, every
gradient, running statistics); torch.compile(fullgraph=True) tracing; input validation and the fallback.
"""
import copy
import warnings

import pytest
import torch

from spin_triton_testutils import DEVICE, TOL, rel_err
from spin_kernels.models.convmixer import ConvMixer
from spin_kernels.ops import convmixer as ops
from spin_kernels.reference import convmixer_ops as ref
from spin_kernels.sharing import SharingPlan

NO_GRAD = ("n1_rm", "n1_rv", "n2_rm", "n2_rv")


def make_args(R, B, H, W, C, K, dtype, spin, training, act, with_u_in=True):
    M = B * H * W

    def t(*s, scale=1.0):
        return (torch.randn(*s, device=DEVICE) * scale).to(dtype)

    def pos(C):
        return (torch.rand(C, device=DEVICE) + 0.5).to(dtype)

    # well-conditioned like a trained net: the input BN uses the batch statistics of act(z_in), BN shifts are
    # O(0.3), so no channel ends up with a large mean over a tiny spread (ill-conditioned for every fp16 path)
    z_in = t(M, C)
    h_in = ref.act_ref(z_in.double(), act)
    return dict(
        z_in=z_in, u_in=t(M, C) if (spin and with_u_in) else None,
        in_mean=h_in.mean(0).float(), in_invstd=torch.rsqrt(h_in.var(0, unbiased=False) + 1e-5).float(),
        in_w=pos(C), in_b=t(C, scale=0.3),
        dw_w=[t(C, 1, K, K, scale=2.0 / K) for _ in range(R)], dw_b=[t(C, scale=0.3) for _ in range(R)],
        pw_w=t(C, C, 1, 1, scale=1.5 * C ** -0.5), pw_b=t(C, scale=0.3),
        n1_w=[pos(C) for _ in range(R)], n1_b=[t(C, scale=0.3) for _ in range(R)],
        n1_rm=[t(C, scale=0.1) for _ in range(R)], n1_rv=[pos(C) for _ in range(R)],
        n2_w=[pos(C) for _ in range(R)], n2_b=[t(C, scale=0.3) for _ in range(R)],
        n2_rm=[t(C, scale=0.1) for _ in range(R)], n2_rv=[pos(C) for _ in range(R)],
        B=B, H=H, W=W, eps1=1e-5, eps2=1e-5, training=training, act=act, spin=spin)


def leaves(args, dtype=None):
    out = {}
    for k, v in args.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.detach().to(dtype or v.dtype).requires_grad_(k not in NO_GRAD)
        elif isinstance(v, list):
            out[k] = [x.detach().to(dtype or x.dtype).requires_grad_(k not in NO_GRAD) for x in v]
        else:
            out[k] = v
    return out


def run_and_backward(fn, a, probes):
    out = fn(**a)
    z, u, bn = out[:3]
    rz, ru, rm, ri = probes
    loss = (z.double() * rz).sum() + (bn[0].double() * rm).sum() + (bn[1].double() * ri).sum()
    if a["spin"]:
        loss = loss + (u.double() * ru).sum()
    loss.backward()
    return out


RUN_CASES = [  # (R, spin, training, act, dtype, k, (B, H, W, C))
    (1, False, True, "gelu", torch.float32, 3, (1, 5, 7, 32)),
    (2, False, True, "relu", torch.float32, 5, (3, 3, 5, 16)),
    (4, False, True, "gelu", torch.float32, 3, (1, 4, 6, 16)),
    (2, True, True, "gelu", torch.float32, 7, (1, 5, 6, 16)),
    (4, True, True, "relu", torch.float32, 3, (3, 4, 5, 16)),
    (1, True, True, "gelu", torch.float32, 9, (1, 4, 5, 16)),
    (2, False, False, "gelu", torch.float32, 3, (1, 5, 7, 32)),
    (2, True, False, "relu", torch.float32, 5, (1, 4, 5, 16)),
    (2, False, True, "gelu", torch.float16, 3, (3, 4, 5, 32)),
    (2, True, True, "gelu", torch.float16, 5, (1, 5, 7, 16)),
    (4, True, False, "gelu", torch.float16, 3, (1, 4, 4, 16)),
]


@pytest.fixture
def poisoned_empty(monkeypatch):
    """torch.empty / empty_like / Tensor.new_empty return NaN-filled float tensors while the test runs, so an output
    element (or a partial-statistics slot) that no kernel writes shows up as NaN instead of stale memory."""
    def poison(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    empty, empty_like, new_empty = torch.empty, torch.empty_like, torch.Tensor.new_empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poison(empty_like(*a, **k)))
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *a, **k: poison(new_empty(self, *a, **k)))


@pytest.mark.parametrize("R,spin,training,act,dtype,k,shape", RUN_CASES)
def test_convmixer_run_fwd_bwd(R, spin, training, act, dtype, k, shape, poisoned_empty):
    B, H, W, C = shape
    M = B * H * W
    args = make_args(R, B, H, W, C, k, dtype, spin, training, act)
    a, r = leaves(args), leaves(args, torch.float64)
    probes = tuple(torch.randn(*shape, dtype=torch.float64, device=DEVICE) for shape in ((M, C), (M, C), (C,), (C,)))
    out = run_and_backward(ops.convmixer_run, a, probes)
    exp = run_and_backward(ref.convmixer_run_ref, r, probes)
    # PyTorch itself in the same dtype: our error may reach max(TOL, 2 × PyTorch's) (flash-attention's rule;
    # deep chains of batch-stat BNs on few rows amplify rounding for every implementation)
    p = leaves(args, dtype)
    same = run_and_backward(ref.convmixer_run_ref, p, probes)

    def tol_for(x_torch, y):
        return max(TOL[dtype], 2 * rel_err(x_torch, y))

    for name, x, xt, y in zip(("z", "u", "bn", "Z", "Q", "U", "stats"), out, same, exp):
        assert x.shape == y.shape, name
        if y.numel():
            assert not torch.isnan(x).any(), name
            assert rel_err(x, y) <= tol_for(xt, y), name
    checked = 0
    for key, v in a.items():
        if key in NO_GRAD or not isinstance(v, (torch.Tensor, list)):
            continue
        pairs = [(v, r[key], p[key])] if isinstance(v, torch.Tensor) else list(zip(v, r[key], p[key]))
        for i, (x, y, xt) in enumerate(pairs):
            if y.grad is None:  # the last layer's BN2 weight/bias belong to the consumer
                assert key in ("n2_w", "n2_b") and i == R - 1
                continue
            assert x.grad is not None, (key, i)
            err, tol = rel_err(x.grad, y.grad), tol_for(xt.grad, y.grad)
            assert err <= tol, (key, i, err, tol)
            checked += 1
    assert checked >= 8 + 4 * R - 2 + (1 if spin else 0)


@pytest.mark.skipif(DEVICE == "cuda", reason="a GPU runs these tiles natively")
@pytest.mark.parametrize("spin,big", [(False, True), (True, False)])
def test_convmixer_run_at_gpu_gemm_tiles(monkeypatch, poisoned_empty, spin, big):
    """The whole run with the pointwise GEMMs at their GPU tiles in the interpreter — the large-M configs
    (``big``: 128x128x64, 128x128 with N steps of 64) or the small-M ones (64x64x64), and the weight gradient's
    64x128x256 — at several row and column tiles with partial ones (M = 300, C = 160); dw_fwd / dw_bwd at GPU
    tilings are tested in test_kernels.py."""
    from spin_kernels.triton import pointwise

    monkeypatch.setattr(pointwise, "_on_gpu", lambda t: True)
    monkeypatch.setattr(pointwise, "BIG_TILE_MIN_ROWS", 0 if big else 10 ** 9)
    test_convmixer_run_fwd_bwd(2, spin, True, "gelu", torch.float32, 3, (2, 10, 15, 160), poisoned_empty)


def _model(spin, act="gelu", dim=32, depth=4, rate=2, k=3, mapping="sequential", momentum=0.1):
    m = ConvMixer(dim=dim, depth=depth, kernel_size=k, patch_size=2, in_chans=3, num_classes=10, act=act,
                  spin_residual=spin, plan=SharingPlan(depth, rate=rate, mapping=mapping), backend="reference")
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.momentum = momentum
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return m.to(DEVICE)


@pytest.mark.parametrize("spin,act,rate,mapping,momentum", [
    (False, "gelu", 2, "sequential", 0.1),
    (True, "relu", 2, "sequential", None),
    (True, "gelu", 1, "sequential", 0.1),
    (False, "gelu", 2, "strided", 0.2),
    (True, "gelu", 4, "sequential", 0.1),
])
def test_model_triton_vs_reference(monkeypatch, spin, act, rate, mapping, momentum):
    """Same logits, every parameter gradient and running statistics as the reference backend (float64); the fused
    run op really runs every layer (a spy on its body) and nothing falls back (warnings are errors)."""
    ref_model = _model(spin, act, rate=rate, mapping=mapping, momentum=momentum).double().train()
    tri = copy.deepcopy(ref_model).float()
    tri.backend = "triton"
    layers_run = []
    real_run_forward = ops.run_forward

    def spy(*args):
        layers_run.append(len(args[6]))  # dw_w: one weight per layer of the run
        return real_run_forward(*args)

    monkeypatch.setattr(ops, "run_forward", spy)
    warnings.simplefilter("error")  # (pytest restores the filters after the test)
    x = torch.randn(3, 3, 10, 6, dtype=torch.float64, device=DEVICE)
    for step in range(2):  # two steps: running stats (cumulative average when momentum is None) evolve
        layers_run.clear()
        yt = tri(x.float())
        assert sum(layers_run) == 4, layers_run  # every layer of _model's depth-4 trunk, fused
        yr = ref_model(x)
        assert rel_err(yt, yr) <= TOL[torch.float32]
        tri.zero_grad()
        ref_model.zero_grad()
        yt.square().sum().backward()
        yr.square().sum().backward()
    for (name, pt), (_, pr) in zip(tri.named_parameters(), ref_model.named_parameters()):
        assert pt.grad is not None, name
        assert rel_err(pt.grad, pr.grad) <= TOL[torch.float32], name
    for (name, bt), (_, br) in zip(tri.named_buffers(), ref_model.named_buffers()):
        if bt.is_floating_point():
            assert rel_err(bt, br) <= TOL[torch.float32], name
        else:
            assert torch.equal(bt, br), name
    tri.eval()
    ref_model.eval()
    assert rel_err(tri(x.float()), ref_model(x)) <= TOL[torch.float32]


@pytest.mark.parametrize("train", [True, False])
def test_batch_of_one(train):
    """B = 1: the stem output's NHWC rows come from a reshape that can be a strided view (H, W merge): the
    trunk must make them contiguous, in training and eval."""
    ref_model = _model(False).double().train(train)
    tri = copy.deepcopy(ref_model).float()
    tri.backend = "triton"
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64, device=DEVICE)
    f = ops.convmixer_features(tri, x.float())
    assert rel_err(f, ref.convmixer_features_ref(ref_model, x)) <= TOL[torch.float32]


def test_model_fp16_and_features_layout():
    ref_model = _model(True).double().train()
    tri = copy.deepcopy(ref_model).half()
    tri.backend = "triton"
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, device=DEVICE)
    f = ops.convmixer_features(tri, x.half())
    assert f.shape == (2, 32, 4, 4) and f.dtype == torch.float16
    assert rel_err(f, ref.convmixer_features_ref(ref_model, x)) <= 5e-3


def test_compile_fullgraph():
    """torch.compile(fullgraph=True) traces the trunk: the ops' fakes and the traceable backward."""
    m = _model(True).train()
    m.backend = "triton"
    x = torch.randn(2, 3, 8, 8, device=DEVICE)
    m2 = copy.deepcopy(m)
    f = torch.compile(lambda inp: m.forward_head(ops.convmixer_features(m, inp)), fullgraph=True,
                      backend="aot_eager")
    y = f(x)
    y.sum().backward()
    y2 = m2.forward_head(ops.convmixer_features(m2, x))
    y2.sum().backward()
    assert rel_err(y, y2) <= 1e-6
    for (n, p), (_, p2) in zip(m.named_parameters(), m2.named_parameters()):
        assert rel_err(p.grad, p2.grad) <= 1e-6, n


def test_validation_errors():
    m = _model(False)
    m.backend = "triton"
    with pytest.raises(TypeError, match="images"):
        ops.convmixer_features(m, [1, 2, 3])
    with pytest.raises(ValueError, match="images"):
        ops.convmixer_features(m, torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match="images"):
        ops.convmixer_features(m, torch.randn(1, 4, 8, 8))
    with pytest.raises(TypeError, match="images"):
        ops.convmixer_features(m, torch.zeros(1, 3, 8, 8, dtype=torch.int64))


def test_fallback_warns_once_and_matches():
    """dim not a multiple of 16 is valid but unsupported: the reference path runs, with one warning."""
    m = _model(False, dim=24).train()
    m2 = copy.deepcopy(m)
    m.backend = "triton"
    x = torch.randn(2, 3, 8, 8, device=DEVICE)
    from spin_kernels import _util

    _util._WARNED.clear()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        y = ops.convmixer_features(m, x)
        ops.convmixer_features(m, x)
    assert sum("reference" in str(i.message) for i in w) == 1
    assert rel_err(y, ref.convmixer_features_ref(m2, x)) <= 1e-6


def _saved_activation_bytes(model, x):
    """Bytes of the distinct non-parameter storages autograd saves for backward (activations and statistics)."""
    params = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    storages = {}

    def pack(t):
        if isinstance(t, torch.Tensor):
            s = t.untyped_storage()
            if s.data_ptr() not in params:
                storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = model(x)
    del y
    return sum(storages.values())


@pytest.mark.parametrize("spin", [False, True])
def test_saved_tensor_budget(spin):
    """Per extra layer the fused path saves ≤ 2 activations (timm) / 3 (SPIN) + stats (eager PyTorch: ~6)."""
    x = torch.randn(2, 3, 16, 16, device=DEVICE)
    C = 32
    act_bytes = 2 * 8 * 8 * C * 4
    per_layer = {}
    for backend in ("triton", "reference"):
        sizes = []
        for depth in (2, 4):
            m = _model(spin, depth=depth, rate=1).train()
            m.backend = backend
            sizes.append(_saved_activation_bytes(m, x))
        per_layer[backend] = (sizes[1] - sizes[0]) / 2
    # + per-layer statistics [6, C] fp32, + the run's output BN2 (mean, invstd) [2, C] fp32 that the next run
    # saves (rate=1: a run per layer)
    budget = (3 if spin else 2) * act_bytes + (6 + 2) * C * 4
    assert per_layer["triton"] <= budget, per_layer
    assert per_layer["reference"] >= 6 * act_bytes, per_layer  # what the fusion saves (eager: ~6 activations)
    assert per_layer["triton"] < per_layer["reference"], per_layer


def test_opcheck_run_op():
    """torch.library.opcheck: schema, fake tensor and autograd registrations of the shared-run op."""
    args = make_args(2, 1, 3, 4, 16, 3, torch.float32, True, True, "gelu")
    a = leaves(args)
    torch.library.opcheck(torch.ops.spin_kernels.convmixer_run.default, (), a,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_model_gpu_low_precision(dtype):
    """On a GPU: the whole model in bf16 / fp16 against the float64 reference (bf16 ≤ 2e-2, fp16 ≤ 5e-3)."""
    ref_model = _model(True, dim=64, depth=4).double().train()
    tri = copy.deepcopy(ref_model).to(dtype)
    tri.backend = "triton"
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64, device=DEVICE)
    yt, yr = tri(x.to(dtype)), ref_model(x)
    tol = 2e-2 if dtype == torch.bfloat16 else 5e-3
    assert rel_err(yt, yr) <= tol
    yt.float().square().sum().backward()
    yr.square().sum().backward()
    for (name, pt), (_, pr) in zip(tri.named_parameters(), ref_model.named_parameters()):
        assert rel_err(pt.grad, pr.grad) <= 2 * tol, name


@pytest.mark.parametrize("key,bad,exc", [
    ("z_in", torch.zeros(8, 16, dtype=torch.int32), TypeError),
    ("z_in", torch.zeros(3, 8, 16), ValueError),
    ("B", 5, ValueError),
    ("act", "tanh", ValueError),
    ("pw_w", torch.zeros(16, 8, 1, 1), ValueError),
    ("dw_w", [torch.zeros(16, 1, 4, 4)], ValueError),
    ("n1_w", [], ValueError),
    ("in_mean", torch.zeros(8), ValueError),
])
def test_run_op_validation(key, bad, exc):
    args = make_args(1, 1, 2, 4, 16, 3, torch.float32, False, True, "gelu")
    args[key] = bad
    with pytest.raises(exc, match=key):
        ops.convmixer_run(**args)


def test_run_op_eval_affines():
    """eval_affines (a caller's cache of the eval BatchNorm affines) gives bitwise the outputs of the op computing
    them itself; given to a training run or with a wrong shape, a ValueError names it."""
    args = make_args(2, 1, 3, 4, 16, 3, torch.float32, True, False, "gelu")
    plain = ops.convmixer_run(**args)
    aff = torch.stack([ops._eval_affines(args["n1_rm"], args["n1_rv"], args["n1_w"], args["n1_b"], 1e-5),
                       ops._eval_affines(args["n2_rm"], args["n2_rv"], args["n2_w"], args["n2_b"], 1e-5)])
    cached = ops.convmixer_run(**args, eval_affines=aff)
    for a, b in zip(plain, cached, strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="eval_affines"):
        ops.convmixer_run(**{**args, "training": True}, eval_affines=aff)
    with pytest.raises(ValueError, match="eval_affines"):
        ops.convmixer_run(**args, eval_affines=aff[:, :1])


def test_model_eval_affines_cached_and_never_stale(monkeypatch):
    """An eval model computes its BatchNorm affines once (not per call) and recomputes them whenever a running
    statistic or BN parameter changes — by a training step, in place, or by new data — so eval always matches
    the reference backend."""
    ref_model = _model(True, rate=2).double().eval()
    tri = copy.deepcopy(ref_model).float()
    tri.backend = "triton"
    tri.eval()
    computed = []
    real = ops._eval_affines

    def spy(*a):
        computed.append(1)
        return real(*a)

    monkeypatch.setattr(ops, "_eval_affines", spy)
    x = torch.randn(2, 3, 10, 6, dtype=torch.float64, device=DEVICE)

    def check(expect_computed):
        computed.clear()
        assert rel_err(tri(x.float()), ref_model(x)) <= TOL[torch.float32]
        assert bool(computed) == expect_computed, computed

    check(True)    # first call: 2 runs x 2 BatchNorm groups
    check(False)   # cached
    for model in (tri, ref_model):  # in place (a version bump)
        with torch.no_grad():
            model.norm1[0].running_mean.add_(0.25)
    check(True)
    check(False)
    for model in (tri, ref_model):  # new data (another storage)
        model.norm2[1].weight.data = model.norm2[1].weight.data * 1.5
    check(True)
    for model in (tri, ref_model):  # a training step updates the running statistics
        model.train()
        model(x.to(next(model.parameters()).dtype))
        model.eval()
    check(True)
    check(False)
    clone = copy.deepcopy(tri)  # a copy builds its own cache
    assert clone.__dict__.get("_eval_affine_cache") is None


def test_run_op_differentiable_outputs():
    """Only z, u and bn carry gradients. Z, Q, U and stats are saved state, marked non-differentiable: a loss on
    them fails loudly instead of getting a silently wrong (dropped) gradient."""
    a = leaves(make_args(2, 1, 3, 4, 16, 3, torch.float32, True, True, "gelu"))
    z, u, bn, Z, Q, U, st = ops.convmixer_run(**a)
    assert z.requires_grad and u.requires_grad and bn.requires_grad
    for name, t in (("Z", Z), ("Q", Q), ("U", U), ("stats", st)):
        assert not t.requires_grad, name
        with pytest.raises(RuntimeError, match="does not require grad"):
            t.sum().backward()


def test_backward_is_deterministic():
    """No float atomics anywhere: two backward passes give bitwise identical gradients."""
    args = make_args(2, 3, 4, 5, 16, 3, torch.float32, True, True, "gelu")
    grads = []
    for _ in range(2):
        a = leaves(args)
        z, u, bn = ops.convmixer_run(**a)[:3]
        (z.sum() + u.square().sum() + bn[1].sum()).backward()
        grads.append([a["z_in"].grad, a["pw_w"].grad, a["pw_b"].grad, a["dw_w"][0].grad, a["n1_w"][1].grad])
    for g1, g2 in zip(*grads):
        assert torch.equal(g1, g2)


def test_weights_read_every_forward_parametrized():
    """Weights computed by torch.nn.utils.parametrize (the weight-fusion form) get their gradients."""
    from torch.nn.utils import parametrize

    class Scale(torch.nn.Module):
        def forward(self, w):
            return 0.5 * w

    ref_model = _model(False).double().train()
    parametrize.register_parametrization(ref_model.pointwise[0], "weight", Scale())
    parametrize.register_parametrization(ref_model.depthwise[1], "weight", Scale())
    tri = copy.deepcopy(ref_model).float()
    tri.backend = "triton"
    x = torch.randn(2, 3, 8, 6, dtype=torch.float64, device=DEVICE)
    yt, yr = tri(x.float()), ref_model(x)
    assert rel_err(yt, yr) <= TOL[torch.float32]
    yt.square().sum().backward()
    yr.square().sum().backward()
    for (name, pt), (_, pr) in zip(tri.named_parameters(), ref_model.named_parameters()):
        assert rel_err(pt.grad, pr.grad) <= TOL[torch.float32], name


@pytest.mark.skipif(DEVICE != "cpu", reason="CPU autocast to float16 (the GPU variant is test_model_gpu_*)")
def test_autocast_fp16_trunk():
    """Under autocast the trunk runs in the autocast dtype: conv weights are cast (differentiably) on the way in."""
    ref_model = _model(True).double().train()
    tri = copy.deepcopy(ref_model).float()
    tri.backend = "triton"
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.float16):
        f = ops.convmixer_features(tri, x.float())
    assert f.dtype == torch.float16
    assert rel_err(f, ref.convmixer_features_ref(ref_model, x)) <= 5e-3
    f.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for n, p in tri.named_parameters()
               if not n.startswith("head"))
