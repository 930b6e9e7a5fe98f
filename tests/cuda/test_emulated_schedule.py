"""Inter-CTA correctness of the weights-resident trunk kernel on the host emulation under seeded CTA schedules.

The emulation runs the CTAs of every launch in a seeded random order and, with jitter, delays each CTA by a seeded
amount at its start and after every flag wait (spin_kernels.cuda_emulation.set_schedule), so a CTA that reads
another CTA's output without the ready flag that orders them reads it early (the kernel's scratch buffers are NaN
in the emulation). The whole trunk must match the float64 reference under every seed, and a build with one of the
two waits deliberately removed (SPIN_MUTATE_DROP_U_WAIT / _X_WAIT, macros only these tests define) must fail under
every seed.
"""
import pytest
import torch

from spin_kernels import cuda, cuda_emulation
from spin_kernels.reference.shared_run import shared_run
from spin_kernels.testing import rel_err

SEEDS = [11, 23, 37]
JITTER_US = 3000          # up to 3 ms per CTA at its start and after each flag wait
SMS = 4                   # C = 128: two W slices; 4 SMs x (CTAs per SM) gives several row groups per slice
# the ready-flag waits of csrc/shared_run.cu a mutation build drops (macros only these tests define)
MUTATIONS = ["SPIN_MUTATE_DROP_U_WAIT",    # the pointwise half reads u before every slice's depthwise half wrote it
             "SPIN_MUTATE_DROP_X_WAIT"]    # the depthwise half reads x (its halo) before the previous layer wrote it


def _trunk(seed_data=3, run_lengths=(2, 1), k=3):
    torch.manual_seed(seed_data)
    B, H, W, C, L = 2, 6, 7, 128, sum(run_lengths)
    x = torch.randn(B, H, W, C).to(torch.float16)
    ws = [(torch.randn(C, C) / C ** 0.5).to(torch.float16) for _ in run_lengths]
    bs = [torch.randn(C) * 0.1 for _ in run_lengths]
    per_layer = (torch.randn(L, C, k, k) / k, torch.randn(L, C) * 0.1, torch.rand(L, C) + 0.5,
                 torch.randn(L, C) * 0.1, torch.rand(L, C) * 0.5 + 0.25, torch.randn(L, C) * 0.1)
    kw = dict(act="gelu", spin_residual=True, run_lengths=list(run_lengths))
    expected = shared_run(x, ws, bs, *per_layer, **kw)
    low = shared_run(x, ws, bs, *per_layer, dtype=torch.float16, **kw)
    return (x, ws, bs, *per_layer), kw, expected, max(5e-3, 2 * rel_err(low, expected))


def _errors(mutations=(), sms=SMS, **trunk):
    """rel. error of the trunk under each seed of SEEDS (jittered), on the build with ``mutations``."""
    args, kw, expected, tol = _trunk(**trunk)
    try:
        cuda_emulation.enable(True, sm_count=sms, mutations=mutations)
    except RuntimeError as e:
        pytest.fail(f"CUDA emulation unavailable: {e}")
    out = []
    try:
        for seed in SEEDS:
            cuda_emulation.set_schedule(seed, JITTER_US)
            got = cuda.shared_run_forward(*args, **kw)
            out.append(float(rel_err(got, expected)) if torch.isfinite(got).all() else float("inf"))
    finally:
        cuda_emulation.set_schedule(0)
        cuda_emulation.enable(False)
    return out, tol


def test_trunk_correct_under_every_seeded_schedule():
    errors, tol = _errors()
    assert all(e <= tol for e in errors), (errors, tol)


def test_several_tiles_per_cta_and_buffer_reuse_under_every_seeded_schedule():
    """One SM: 6 CTAs (3 row groups per slice) for 6 row tiles — each CTA runs two tiles per half; k = 9 (a halo
    of every tile of a 6 x 7 image) and 4 layers over two runs, so each ping-pong buffer is rewritten while other
    CTAs may still be a layer behind."""
    errors, tol = _errors(sms=1, run_lengths=(3, 1), k=9)
    assert all(e <= tol for e in errors), (errors, tol)


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_planted_missing_flag_wait_is_caught(mutation):
    """Each mutation drops one flag wait, so CTAs read rows other CTAs have not written yet (u of this layer, or
    the halo rows of x of the previous one): under the jittered schedules every seed must give a wrong trunk."""
    errors, tol = _errors((mutation,))
    assert all(e > tol for e in errors), (errors, tol)


def test_schedule_seed_zero_is_the_blockidx_order():
    """seed 0 restores one-CTA-at-a-time blockIdx order; the trunk is correct there too (same answer as a seed)."""
    args, kw, expected, tol = _trunk(seed_data=4, run_lengths=(1,))
    cuda_emulation.enable(True, sm_count=SMS)
    try:
        cuda_emulation.set_schedule(0)
        a = cuda.shared_run_forward(*args, **kw)
        cuda_emulation.set_schedule(5, 500)
        b = cuda.shared_run_forward(*args, **kw)
    finally:
        cuda_emulation.set_schedule(0)
        cuda_emulation.enable(False)
    assert rel_err(a, expected) <= tol and torch.equal(a, b)
