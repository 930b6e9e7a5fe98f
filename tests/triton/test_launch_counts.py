"""Launch and PyTorch-op budget of the fused ConvMixer run (issue 15), counted on the CPU.

Issue 15: "Launches per layer in a training step: <= 4 forward and <= 5 backward plus one per shared run, and at
most a few PyTorch compute ops per layer (none on the activation-sized tensors)".

How it is counted (interpreter only: on a GPU the kernels are compiled and these hooks see nothing):
* Triton launches: ``triton.runtime.interpreter.InterpretedFunction.run`` is wrapped (one call = one launch).
* PyTorch ops: a TorchDispatchMode entered inside ``spin_kernels.ops.convmixer.run_forward`` / ``run_backward``
  (region "run": a mode outside a custom op sees only the op itself, not its body), and a second one around the
  op call and the backward (region "glue": what autograd does between the ops, e.g. zero-filled [R, M, C]
  gradients materialised for outputs the loss does not use; reported in the measured dicts, not asserted).
  Ops issued by the interpreter during a launch
  are not counted. What is compute is :func:`spin_kernels.perf.launches.is_compute_op` (the cost report counts
  with it too): not allocations, not aliases of an input (found by storage, not by name); in-place and out= ops
  and factories such as zeros / ones_like are (kernel launches on a GPU).
* Per layer / per run: the op is called on runs of R = 1, 2, 3 layers; per layer = count(3) - count(2),
  per run = count(2) - 2 * per layer.
An op "on an activation" touches (reads or writes) a tensor of >= M*C elements (M = B*H*W rows, C channels).

Each limit is its own test, and today's code meets every one (training forward: dw_fwd with BN1 finalized in
its launch, pw_input, pw_fwd, bn_finalize of BN2).
"""
import collections
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from spin_kernels.ops import convmixer as convmixer_ops
from spin_kernels.perf.launches import is_compute_op

# ------------------------------------------------------------------------------------------------ the limits
FWD_LAUNCHES_PER_LAYER_MAX = 4      # Triton launches per layer, forward (training and eval)
FWD_LAUNCHES_PER_RUN_MAX = 0        # ... beyond the per-layer ones, forward ("plus one per run" is backward's)
BWD_LAUNCHES_PER_LAYER_MAX = 5      # Triton launches per layer, backward
BWD_LAUNCHES_PER_RUN_MAX = 1        # ... beyond the per-layer ones, backward (the run's weight-gradient GEMM)
FWD_TORCH_OPS_PER_LAYER_MAX = 4     # PyTorch compute ops per layer inside run_forward ("a few")
BWD_TORCH_OPS_PER_LAYER_MAX = 4     # PyTorch compute ops per layer inside run_backward ("a few")
ACT_TORCH_OPS_PER_LAYER_MAX = 0     # PyTorch ops per layer on activation-sized tensors inside run_forward/backward

# small problem: M = 72 rows, so that M*C (2304) is above every weight-sized tensor (a [2, C, C] split-K partial
# of the weight gradient is 2048), and an op on >= M*C elements is a pass over an activation
B, H, W, C, K = 2, 6, 6, 32, 3
M = B * H * W
ACT_NUMEL = M * C
LAYERS = (1, 2, 3)

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="counts interpreter launches (TRITON_INTERPRET=1, no GPU)")


# ------------------------------------------------------------------------------------------------ counting
class _Tally:
    """Everything one op call (+ backward) did, by phase ("fwd" / "bwd") and region ("run" / "glue")."""

    def __init__(self):
        self.phase = None          # None: not counted (building inputs, the loss)
        self.in_launch = 0
        self.launches = collections.Counter()   # (phase, kernel name)
        self.ops = collections.Counter()        # (phase, region, op name)
        self.act_ops = collections.Counter()    # (phase, region, op name), ops on >= ACT_NUMEL elements
        self.max_numel = collections.Counter()  # (phase, region) -> largest numel a counted op touched
        self.fused = collections.Counter()      # (phase, fused op name seen by the glue mode | run_* body entered)


class _Mode(TorchDispatchMode):
    def __init__(self, tally, region):
        super().__init__()
        self.tally, self.region = tally, region

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        t = self.tally
        if t.phase is None or t.in_launch:
            return out  # not counted: outside the step, the interpreter's own ops
        if func.namespace == "spin_kernels":
            t.fused[(t.phase, func.overloadpacket.__name__)] += 1  # the fused ops themselves
            return out
        if not is_compute_op(func, args, kwargs, out):
            return out
        key = (t.phase, self.region, func.overloadpacket.__name__)
        t.ops[key] += 1
        numel = max([x.numel() for x in tree_leaves((args, kwargs, out)) if isinstance(x, torch.Tensor)] + [0])
        t.max_numel[key[:2]] = max(t.max_numel[key[:2]], numel)
        if numel >= ACT_NUMEL:  # named with the largest shape it touched, e.g. "zeros[2, 72, 32]"
            shape = max((tuple(x.shape) for x in tree_leaves((args, kwargs, out)) if isinstance(x, torch.Tensor)),
                        key=lambda s: torch.Size(s).numel())
            t.act_ops[key[:2] + (f"{key[2]}{list(shape)}",)] += 1
        return out


def _patch(mp, tally):
    from triton.runtime.interpreter import InterpretedFunction

    orig_run = InterpretedFunction.run

    def run(self, *args, **kwargs):
        if tally.phase is not None and not tally.in_launch and not kwargs.get("warmup"):
            tally.launches[(tally.phase, self.fn.__name__)] += 1
        tally.in_launch += 1
        try:
            return orig_run(self, *args, **kwargs)
        finally:
            tally.in_launch -= 1

    mp.setattr(InterpretedFunction, "run", run)
    for name in ("run_forward", "run_backward"):
        body = getattr(convmixer_ops, name)

        def counted(*args, _body=body, _name=name, **kwargs):
            tally.fused[(tally.phase, _name)] += 1
            with _Mode(tally, "run"):
                return _body(*args, **kwargs)

        mp.setattr(convmixer_ops, name, counted)


def _inputs(R, spin, training):
    g = torch.Generator().manual_seed(0)

    def t(*shape, grad=training):
        return torch.randn(*shape, generator=g).requires_grad_(grad)

    def pos(grad=training):
        return (torch.rand(C, generator=g) + 0.5).requires_grad_(grad)

    return dict(
        z_in=t(M, C), u_in=t(M, C) if spin else None, in_mean=t(C), in_invstd=pos(), in_w=pos(), in_b=t(C),
        dw_w=[t(C, 1, K, K) for _ in range(R)], dw_b=[t(C) for _ in range(R)], pw_w=t(C, C, 1, 1), pw_b=t(C),
        n1_w=[pos() for _ in range(R)], n1_b=[t(C) for _ in range(R)],
        n1_rm=[t(C, grad=False) for _ in range(R)], n1_rv=[pos(grad=False) for _ in range(R)],
        n2_w=[pos() for _ in range(R)], n2_b=[t(C) for _ in range(R)],
        n2_rm=[t(C, grad=False) for _ in range(R)], n2_rv=[pos(grad=False) for _ in range(R)],
        B=B, H=H, W=W, eps1=1e-5, eps2=1e-5, training=training, act="gelu", spin=spin)


def _consumed(outputs, spin):
    """The outputs the model consumes: the last layer's z, u (SPIN) and BN2 mean / invstd."""
    if len(outputs) == 4:  # (Z, Q, U, stats): stacks of all R layers
        Z, _, U, stats = outputs
        return [Z[-1], stats[-1, 3], stats[-1, 5]] + ([U[-1]] if spin else [])
    z, u, bn = outputs[:3]  # (z, u, bn, Z, Q, U, stats): the last layer's apart
    return [z, bn] + ([u] if spin else [])


def _count(R, spin, training):
    """One training step (forward + backward) or eval forward of a run of R layers, counted."""
    tally = _Tally()
    args = _inputs(R, spin, training)
    leaves = [x for x in tree_leaves(args) if isinstance(x, torch.Tensor) and x.requires_grad]
    with pytest.MonkeyPatch.context() as mp:
        _patch(mp, tally)
        with _Mode(tally, "glue"):
            tally.phase = "fwd"
            outputs = torch.ops.spin_kernels.convmixer_run(**args)
            tally.phase = None
            if training:
                loss = sum(t.sum() for t in _consumed(outputs, spin))
                tally.phase = "bwd"
                torch.autograd.grad(loss, leaves)  # (not .backward(): no AccumulateGrad copies counted)
                tally.phase = None
    return tally


def _split(totals):
    """{R: count} -> (per layer, per run) from R = 2, 3."""
    layer = totals[3] - totals[2]
    return layer, totals[2] - 2 * layer


def _measure(spin, training):
    tallies = {R: _count(R, spin, training) for R in LAYERS}
    out = {}
    for ph in ("fwd", "bwd") if training else ("fwd",):
        launches = {R: sum(n for (p, _), n in tl.launches.items() if p == ph) for R, tl in tallies.items()}
        ops = {R: sum(n for (p, r, _), n in tl.ops.items() if (p, r) == (ph, "run")) for R, tl in tallies.items()}
        act = {R: sum(n for (p, r, _), n in tl.act_ops.items() if (p, r) == (ph, "run")) for R, tl in tallies.items()}
        out[ph] = dict(
            launches=launches, launches_per_layer=_split(launches)[0], launches_per_run=_split(launches)[1],
            torch_ops=ops, torch_ops_per_layer=_split(ops)[0], torch_ops_per_run=_split(ops)[1],
            act_ops=act, act_ops_per_layer=_split(act)[0],
            max_numel={R: tl.max_numel[(ph, "run")] for R, tl in tallies.items()},
            kernels_R2=dict(collections.Counter({k: n for (p, k), n in tallies[2].launches.items() if p == ph})),
            torch_ops_R2=dict(collections.Counter(
                {o: n for (p, r, o), n in tallies[2].ops.items() if (p, r) == (ph, "run")}).most_common()),
            act_ops_R2={o: n for (p, r, o), n in tallies[2].act_ops.items() if (p, r) == (ph, "run")},
            glue_act_ops={R: {o: n for (p, r, o), n in tl.act_ops.items() if (p, r) == (ph, "glue")}
                          for R, tl in tallies.items()},
            fused={R: {o: n for (p, o), n in tl.fused.items() if p == ph} for R, tl in tallies.items()},
        )
    return out


@pytest.fixture(scope="module")
def measured():
    cache = {}

    def get(spin, training):
        if (spin, training) not in cache:
            cache[(spin, training)] = _measure(spin, training)
        return cache[(spin, training)]

    return get


def _msg(what, limit, m):
    return f"{what} > {limit}: measured {m}"


# ------------------------------------------------------------------------------------------------ the tests
SPINS = [pytest.param(True, id="spin"), pytest.param(False, id="timm")]


def test_counting_sees_the_kernels(measured):
    """The hooks are live: each step went through the fused op and its patched body once, and launched kernels."""
    fwd, bwd = "convmixer_run", "convmixer_run_backward"
    for spin in (True, False):
        for training in (True, False):
            for ph, m in measured(spin, training).items():
                expect = {fwd: 1, "run_forward": 1} if ph == "fwd" else {bwd: 1, "run_backward": 1}
                assert all(m["fused"][R] == expect for R in LAYERS), f"{ph}: expected {expect}: {m}"
                assert all(m["launches"][R] > 0 for R in LAYERS) and m["launches_per_layer"] > 0, m


# one case per limit of the issue: (what, phase, measured key, limit, the modes it applies to)
LIMITS = [
    ("fwd-launches-per-layer", "fwd", "launches_per_layer", FWD_LAUNCHES_PER_LAYER_MAX, (True, False)),
    ("fwd-launches-per-run", "fwd", "launches_per_run", FWD_LAUNCHES_PER_RUN_MAX, (True, False)),
    ("bwd-launches-per-layer", "bwd", "launches_per_layer", BWD_LAUNCHES_PER_LAYER_MAX, (True,)),
    ("bwd-launches-per-run", "bwd", "launches_per_run", BWD_LAUNCHES_PER_RUN_MAX, (True,)),
    ("fwd-torch-ops-per-layer", "fwd", "torch_ops_per_layer", FWD_TORCH_OPS_PER_LAYER_MAX, (True, False)),
    ("bwd-torch-ops-per-layer", "bwd", "torch_ops_per_layer", BWD_TORCH_OPS_PER_LAYER_MAX, (True,)),
    # torch ops per layer on >= M*C elements (an activation pass)
    ("fwd-act-torch-ops-per-layer", "fwd", "act_ops_per_layer", ACT_TORCH_OPS_PER_LAYER_MAX, (True, False)),
    ("bwd-act-torch-ops-per-layer", "bwd", "act_ops_per_layer", ACT_TORCH_OPS_PER_LAYER_MAX, (True,)),
]


@pytest.mark.parametrize("spin", SPINS)
@pytest.mark.parametrize("phase,key,limit,training", [
    pytest.param(phase, key, limit, training, id=f"{name}-{'train' if training else 'eval'}")
    for name, phase, key, limit, modes in LIMITS for training in modes])
def test_limit(measured, spin, phase, key, limit, training):
    m = measured(spin, training)[phase]
    assert m[key] <= limit, _msg(f"{phase} {key}", limit, m)