"""The CUDA C++ kernels in the machine-code cost model (spin_kernels.perf.cuda_kernels).

(a) every loop descriptor matches the SASS of the built extension at every ConvMixer target shape; (b) one kernel's
SASS, checked in, with counts made by hand (awk over the listing, not the parser); (c) grids, blocks and shared
memory against numbers derived by hand from the C++ launchers; (d) the persistent kernel's critical path.

Reading SASS needs the built extension and cuobjdump, not a GPU (TRITON_INTERPRET, set by tests/conftest.py, does
not matter here); tests that need them skip with the reason.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from spin_kernels.perf import cost_model, sass
from spin_kernels.perf import cuda_kernels as ck
from spin_kernels.perf.cost_report import TARGET_SHAPES
from spin_kernels.perf.machine_code import find_extension_so, triton_nvidia_bin
from spin_kernels.perf.roofline import ARCHS

CSRC = Path(__file__).resolve().parents[2] / "csrc"
FIXTURE = Path(__file__).parent / "fixtures" / "dw_wgrad_reduce_kernel.sm90a.sass"
CONVMIXER_SHAPES = [n for n, (model, _, _) in TARGET_SHAPES.items() if ARCHS[model]["family"] == "convmixer"]


@pytest.fixture(scope="module")
def functions():
    so = find_extension_so()
    if so is None:
        pytest.skip("the CUDA extension (spin_kernels/_C*.so) is not built here")
    if triton_nvidia_bin("cuobjdump") is None:
        pytest.skip("cuobjdump not found (neither Triton's bundled one nor on PATH)")
    fns = ck.extension_functions(so)
    if not fns:
        pytest.skip("cuobjdump found no SASS in the extension")
    return fns


def _launches(name, dtype="bf16"):
    return ck.shape_launches(name, dtype)[0]


def _one(launches, kernel, phase):
    hits = [lp for lp in launches if lp.template == kernel and lp.phase == phase]
    assert hits, f"no {kernel} launch in phase {phase}"
    return hits[0]


# ------------------------------------------------------------------------------------------------ (a)
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("name", CONVMIXER_SHAPES)
def test_descriptors_match_the_sass_loops(functions, name, dtype):
    used = set()
    for launch in _launches(name, dtype):
        fn = ck.find_function(launch, functions)
        trips = launch.model.trips(launch.namespace(), len(fn.loops))    # ValueError on a loop-count mismatch
        assert len(trips) == len(fn.loops) and all(t >= 0 for t in trips), (launch.label, trips)
        counts = cost_model.count(fn, trips)
        assert counts.instructions > 0
        used.add(launch.template)
    assert used >= {"dw_forward_kernel", "dw_backward_data_kernel", "dw_wgrad_partial_kernel",
                    "dw_wgrad_reduce_kernel"}


def test_the_persistent_kernel_is_costed_where_it_applies():
    kernels = {name: {lp.template for lp in _launches(name) if lp.phase == "eval"} for name in CONVMIXER_SHAPES}
    assert kernels["spin_convmixer_768_32-r2-b1"] == {"shared_run_kernel"}
    assert kernels["spin_convmixer_768_32-r2-b16"] == {"shared_run_kernel"}
    for name in ("spin_convmixer_768_32-r2-b64", "convmixer_768_32-b64", "convmixer_1536_20-b64"):
        assert kernels[name] == {"dw_forward_kernel"}, name                # batch 64 > 16: the per-layer path


def test_every_loop_site_is_a_line_of_csrc():
    # kernels and the device helpers they inline (flag_wait_geq's spin loop is in device_utils.cuh)
    text = "\n".join(p.read_text() for p in [*CSRC.glob("*.cu"), *CSRC.glob("*.cuh")])
    for kernel, model in ck.CUDA_MODELS.items():
        for spec in model.loops:
            line = spec.site.split(" [")[0].rstrip(" {")
            assert line in text, f"{kernel}: loop site {line!r} is not in csrc/*.cu"


# ------------------------------------------------------------------------------------------------ (b)
@pytest.fixture(scope="module")
def reduce_fn():
    fns = sass.parse_sass(FIXTURE.read_text())
    assert len(fns) == 1
    return next(iter(fns.values()))


def test_fixture_instructions_and_loops(reduce_fn):
    # 264 instructions in the listing (0x0000-0x1070); the last EXIT is at 0x0fc0: 253 run, the BRA-to-self and
    # 10 NOPs after it do not
    assert len(reduce_fn.instructions) == 253
    assert reduce_fn.instructions[-1].addr == 0xFC0 and reduce_fn.instructions[-1].opcode == "EXIT"
    # backward branches: 0x8f0 -> 0x4a0 (by 16), 0xcc0 -> 0xb90 (by 4), 0xeb0 -> 0xe30 (one at a time); no nesting
    assert [(lp.start, lp.end, lp.parent, lp.depth) for lp in reduce_fn.loops] == [
        (0x4A0, 0x8F0, None, 0), (0xB90, 0xCC0, None, 0), (0xE30, 0xEB0, None, 0)]


def test_fixture_loop_bodies_by_hand(reduce_fn):
    # 0xb90-0xcc0 by awk: BRA 1, FADD 4, IADD3 7, IMAD 2, ISETP 1, LDG 4, VIADD 1 (20 instructions)
    assert reduce_fn.histogram(1) == {"int": 7 + 2 + 1 + 1, "fp32": 4, "ldg": 4, "control": 1}
    # 0xe30-0xeb0: BRA, FADD, IADD3, IMAD, ISETP, LDG, LEA, MOV, VIADD (9; MOV is "other")
    assert reduce_fn.histogram(2) == {"int": 5, "fp32": 1, "ldg": 1, "control": 1, "other": 1}
    # 0x4a0-0x8f0: BRA 1, FADD 16, IADD3 23, IMAD 11, ISETP 1, LDG 16, MOV 1, VIADD 1 (70)
    assert reduce_fn.histogram(0) == {"int": 23 + 11 + 1 + 1, "fp32": 16, "ldg": 16, "control": 1, "other": 1}
    # by 4: the four loads issue, then the first FADD (0xc70) reads R23 from the first: one round trip per trip
    body = [i for i in reduce_fn.instructions if reduce_fn.innermost_loop(i.addr) == 1]
    assert cost_model.load_waves(body) == 1


@pytest.mark.parametrize("partial_ctas, trips, instructions", [
    # P = 264: 264 by 16 (16 trips, 8 left), the straight block of 8; P = 4: one trip by 4; P = 7: 4 by 4, 3 singly.
    # Straight-line code outside the loops: 253 - 70 - 20 - 9 = 154 instructions
    (264, [16, 0, 0], 154 + 16 * 70),
    (4, [0, 1, 0], 154 + 20),
    (7, [0, 1, 3], 154 + 20 + 3 * 9),
])
def test_reduce_descriptor_trips(reduce_fn, partial_ctas, trips, instructions):
    launch = ck.convmixer_cuda_launches(1, 768, 16, 3, act="relu", spin=True, run_length=1, depth=1)
    args = _one(launch, "dw_wgrad_reduce_kernel", "bwd").namespace()
    args.P = partial_ctas
    got = ck.DW_WGRAD_REDUCE.trips(args, len(reduce_fn.loops))
    assert got == trips                          # (kk + 1) C = 7680 = 30 x 256: every warp has work
    assert cost_model.count(reduce_fn, got).instructions == instructions


# ------------------------------------------------------------------------------------------------ (c)
# Hand derivations from csrc/dw_row_stream.cu (launch_forward, dw_forward_band_rows, row_stream_smem_bytes),
# csrc/depthwise_conv.cu (launch_backward_data, launch_wgrad, dw_num_tiles, conv_smem_bytes), csrc/bindings.cpp
# (partial_ctas = min(264, tiles)) and csrc/shared_run.cu (launch, shared_run_smem_bytes). The host emulation runs
# the kernels but reports no launch geometry, so the C++ formulas are evaluated by hand here:
#   forward: 64 channels per CTA; k = 3: 16-column tiles, 2 warps (64 threads); k > 3: 32 columns, 8 warps (256);
#     smem (k*k + 2 * (tile width + 2 * (k // 2))) * 32 lanes * 8 bytes; bands: the whole image unless
#     B * column tiles * C / 64 < 2 * 132 SMs, then min(ceil(264 / that), ceil(H / 4)) bands
#   backward: bf16: V = 16 / 2 = 8, CB = kThreadsC * V = 64 channels per CTA; block (8, 8, 4) = 256 threads
#   spin_convmixer_768_32 b1: 224 / 14 = 16 pixels a side, k = 3, C = 768
#     forward: 1 * 1 * 12 = 12 < 264 CTAs: min(22, 4) = 4 bands of 4 rows -> grid (4, 12); smem (9 + 36) * 256
#       = 11520
#     tiles = 1 * ceil(16/8) * ceil(16/8) = 4; grid.y = 768 / 64 = 12
#     conv smem = max((10*10 + 9) * 64 * 4, 256 * 2 * 8 * 4) = max(27904, 16384) = 27904
#     wgrad: P = min(264, 4) = 4; smem (10*10 + 64) * 64 * 4 = 41984; reduce grid ceil((9+1) * 768 / 256) = 30
#     shared run: smem 64 * (768 + 8) * 2 + 4 * 6 * 32 * 4 * 4 = 99328 + 12288 = 111616; 2 CTAs per SM
#       (233472 // (111616 + 1024 static + 1024 reserved) = 2), 132 * 2 = 264 = 22 row groups of 12 slices,
#       but only 16 x 16 / 16 = 16 row tiles -> 16 groups, 192 CTAs
#   convmixer_1536_20 b64: 224 / 7 = 32 a side, k = 9, C = 1536
#     forward: 64 * 1 * 24 = 1536 >= 264 CTAs: whole images, grid (64, 24); smem (81 + 2 * 40) * 256 = 41216
#     tiles = 64 * 4 * 4 = 1024; grid.y = 1536 / 64 = 24; conv smem (16*16 + 81) * 256 = 86272
#     wgrad: P = min(264, 1024) = 264; smem (256 + 64) * 256 = 81920; reduce grid ceil(82 * 1536 / 256) = 492
#   convmixer_768_32 b64: 32 a side, k = 7: forward grid (64, 12), smem (49 + 2 * 38) * 256 = 32000;
#     tiles 1024, grid.y 12, conv smem (14*14 + 49) * 256 = 62720,
#     wgrad smem (196 + 64) * 256 = 66560, reduce grid ceil(50 * 768 / 256) = 150
HAND = {
    "spin_convmixer_768_32-r2-b1": {
        ("dw_forward_kernel", "fwd"): ((4, 12, 1), 64, 11520),
        ("dw_backward_data_kernel", "bwd"): ((4, 12, 1), 256, 27904),
        ("dw_wgrad_partial_kernel", "bwd"): ((4, 12, 1), 256, 41984),
        ("dw_wgrad_reduce_kernel", "bwd"): ((30, 1, 1), 256, 0),
        ("shared_run_kernel", "eval"): ((192, 1, 1), 128, 111616),   # 16 row tiles x 12 slices
    },
    "convmixer_1536_20-b64": {
        ("dw_forward_kernel", "fwd"): ((64, 24, 1), 256, 41216),
        ("dw_forward_kernel", "eval"): ((64, 24, 1), 256, 41216),
        ("dw_backward_data_kernel", "bwd"): ((1024, 24, 1), 256, 86272),
        ("dw_wgrad_partial_kernel", "bwd"): ((264, 24, 1), 256, 81920),
        ("dw_wgrad_reduce_kernel", "bwd"): ((492, 1, 1), 256, 0),
    },
    "convmixer_768_32-b64": {
        ("dw_forward_kernel", "fwd"): ((64, 12, 1), 256, 32000),
        ("dw_wgrad_partial_kernel", "bwd"): ((264, 12, 1), 256, 66560),
        ("dw_wgrad_reduce_kernel", "bwd"): ((150, 1, 1), 256, 0),
    },
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_grids_match_the_launchers(name):
    launches = _launches(name)
    for (kernel, phase), (grid, threads, smem) in HAND[name].items():
        lp = _one(launches, kernel, phase)
        assert (lp.grid, lp.threads, lp.dynamic_smem) == (grid, threads, smem), (kernel, phase)


def test_launch_counts_per_run():
    # spin r=2: per layer one forward; backward per layer data + partial + reduce; eval one launch for the trunk
    by = {}
    for lp in _launches("spin_convmixer_768_32-r2-b1"):
        by[(lp.template, lp.phase)] = by.get((lp.template, lp.phase), 0) + 1
    assert by == {("dw_forward_kernel", "fwd"): 2, ("dw_backward_data_kernel", "bwd"): 2,
                  ("dw_wgrad_partial_kernel", "bwd"): 2, ("dw_wgrad_reduce_kernel", "bwd"): 2,
                  ("shared_run_kernel", "eval"): 1}


def test_persistent_grid_by_hand():
    # C = 768, 165 registers: registers allow 3 CTAs (5376 per warp, 12 warps), shared memory 2 -> 264 CTAs
    # 264 / 12 = 22 row groups, all used at 1024 rows (64 tiles)
    assert ck.persistent_grid(768, 1024, 132, registers=165, static_smem=1024) == 264
    # batch 1 at 224 px / patch 14: 256 rows = 16 tiles, so 16 groups of 12 slices (the other 6 would only load W)
    assert ck.persistent_grid(768, 256, 132, registers=165, static_smem=1024) == 192
    # C = 1536: 64 * 1544 * 2 + 12288 = 209920 bytes, 1 CTA per SM; 132 // 24 slices * 24 = 120
    assert ck.persistent_grid(1536, 1024, 132, registers=165, static_smem=1024) == 120
    # fewer co-resident CTAs than slices: the launcher refuses (cooperative launch too large)
    assert ck.persistent_grid(1536, 1024, 16, registers=165, static_smem=1024) == 0


# ------------------------------------------------------------------------------------------------ (d)
def test_persistent_critical_path_b1(functions):
    launch = _one(_launches("spin_convmixer_768_32-r2-b1"), "shared_run_kernel", "eval")
    # no grid-wide barrier: two ready-flag hops per layer (u_ready, x_ready)
    assert launch.flag_hops == 2 * 32
    cp = ck.persistent_critical_path(launch, ck.find_function(launch, functions), cost_model.H100_RATES)
    assert cp["per_layer"]["flag_hops"] == 2
    assert cp["trunk"]["flag_hops"] == launch.flag_hops
    # the W slice: 64 x 768 16-bit elements = 6144 16-byte vectors over 128 threads, 16 in flight per thread:
    # 48 per thread in 3 iterations, each one dependent round trip (the loads issue before any store)
    assert cp["w_slice_load"]["iterations_per_thread"] == 3
    assert cp["w_slice_load"]["round_trips_per_thread"] == 3
    # k = 3 (SPIN's ConvMixer-768/32): the 9 taps of a pixel unroll and load branch-free, with the pixel's other
    # loads — at most two dependent round trips per pixel (12 when k was a runtime value)
    assert cp["per_layer"]["tap_groups"] == 1 and cp["per_layer"]["round_trips_per_pixel"] <= 2
    # the pointwise half: each warp's 12 k-steps in one group, the epilogue's vectors loaded per layer
    assert cp["per_layer"]["round_trips_per_tile"] <= 2
    assert cp["per_layer"]["round_trips"]["total"] > 0 and cp["per_layer"]["latency_s"] > 0
    l2_s = cost_model.H100_RATES.l2_round_trip_s
    assert cp["trunk"]["latency_s"] > cp["trunk"]["flag_s"] == pytest.approx(64 * l2_s)
    # the latency target for this trunk: <= 80 us modelled
    assert cp["trunk"]["latency_s"] <= 80e-6
    assert cp["trunk"]["latency_all_l2_s"] < cp["trunk"]["latency_s"]


def test_persistent_w_slice_loads_are_16_bytes_with_16_in_flight(functions):
    """The W-slice copy's SASS: 16 LDG.E.128 in its loop, every one issued before the first store."""
    launch = _one(_launches("spin_convmixer_768_32-r2-b1"), "shared_run_kernel", "eval")
    fn = ck.find_function(launch, functions)
    body = ck._own_body(fn, ck.shared_run_loops(launch.namespace())["w_slice"])
    loads = [i for i, ins in enumerate(body) if ins.opcode == "LDG" and "128" in ins.modifiers]
    stores = [i for i, ins in enumerate(body) if ins.opcode == "STS"]
    assert len(loads) == ck.W_LOAD_BATCH == 16 and stores and max(loads) < min(stores)


def test_persistent_tap_groups_follow_the_kernel_size(functions):
    """k = 9 keeps a loop over three groups of tap rows (81 taps at once would spill); k <= 7 has none."""
    launch = _one(_launches("spin_convmixer_768_32-r2-b1"), "shared_run_kernel", "eval")
    for k in (1, 3, 5, 7, 9):
        args = SimpleNamespace(**{**vars(launch.namespace()), "k": k})
        idx = ck.shared_run_loops(args)
        assert (idx["dw_tap_groups"] is None) == (k <= 7), k
        fn = ck.find_function(replace(launch, kernel=ck.shared_run_name("__nv_bfloat16", k), symbol=""), functions)
        assert len(fn.loops) == sum(i is not None for i in idx.values()), k


def test_cuda_rows_and_totals(functions):
    out = ck.cuda_shape_costs("spin_convmixer_768_32-r2-b1", [], 16)
    rows = out["cuda_rows"]
    assert rows and all(r["backend"] == "cuda" and r["id"].startswith("cuda ") for r in rows)
    for r in rows:
        assert r["estimate_s"] >= r["floor_s"] > 0 and r["binding"] in cost_model.BOUNDS
    trunk = [r for r in rows if r["scope"] == "trunk"]
    assert len(trunk) == 1 and trunk[0]["flag_hops"] == 64
    assert trunk[0]["bounds_s"]["latency"] >= 64 * cost_model.H100_RATES.l2_round_trip_s
    assert out["totals_cuda"]["eval"] is None
    assert out["eval_forward_persistent"]["model_estimate_s"] == trunk[0]["estimate_s"]
    assert out["persistent_critical_path"]["per_layer"]["flag_hops"] == 2
