"""The GPU suite's plumbing on the CPU: the no-CUDA exit, failure isolation, and the report / plots writer."""
import json
import os
import re
import time

import pytest
import torch

from bench import gpu_suite
from bench.gpu import dwconv, e2e, harness, ops, report


def _fake_bench(fn, warmup=0, rep=0):
    """Stand-in for do_bench_ms on the CPU: one warm call, then one timed call (ms)."""
    fn()
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def test_exits_with_message_without_cuda(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_suite.main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_failing_piece_is_recorded_and_the_rest_runs():
    results = {"failed": []}
    suite = harness.Suite(results, verbose=False)
    assert suite.piece("boom", lambda: 1 / 0) is None
    assert suite.piece("fine", lambda: 3) == 3
    assert results["failed"][0]["piece"] == "boom" and "ZeroDivisionError" in results["failed"][0]["error"]


def _fake_results():
    from spin_kernels import perf
    suite = harness.Suite({"ops": [], "failed": []}, verbose=False)
    rows = {r.name: r for r in perf.convmixer_layer_costs(64, 768, 16, 3, "bf16", act="relu", spin_residual=True)}
    for op, times in (("dwconv", {"eager": 0.20, "compile": 0.10}),
                      ("pointwise_gemm", {"eager": 0.08, "compile": 0.07})):
        for impl, ms in times.items():
            ops._record(suite, "convmixer", "s", op, impl, ms, rows[op], perf.H100, "bf16")
    ops._record(suite, "convmixer", "s", "K1_dwconv_fused", "triton", 0.05, rows["K1_dwconv_fused"],
                      perf.H100, "bf16")
    return {"device": "Fake GPU", "date": "2026-01-01", "torch": torch.__version__, "triton": "x", "cuda": "13.0",
            "ceilings": {"name": "Fake GPU", "hbm_bytes_per_s": 3.0e12, "tensor_flops": {"bf16": 7e14}},
            "ops": suite.results["ops"],
            "train": [{"model": "spin_convmixer_768_32", "share_rate": 2, "backend": "reference", "compile": False,
                       "batch": 64, "ms_per_step": 100.0, "img_per_s": 640.0, "peak_mem_gib": 10.0,
                       "params": 11016424}],
            "latency": [{"model": "deit_small_patch16_224", "share_rate": 1, "backend": "reference",
                         "eager_ms": 3.0, "cuda_graph_ms": 1.0, "launch_overhead_ms": 2.0}],
            "skipped": [{"piece": "convmixer/s/trunk2/cuda", "reason": "no extension"}],
            "failed": [{"piece": "vit/x", "error": "RuntimeError: boom", "traceback": ""}]}


def test_write_report(tmp_path):
    res = _fake_results()
    paths = report.write_report(res, str(tmp_path))
    data = _read_json(paths["json"])
    dw = {r["impl"]: r for r in data["ops"] if r["op"] == "dwconv"}
    assert dw["compile"]["speedup_vs_eager"] == pytest.approx(2.0)
    assert dw["eager"]["speedup_vs_compile"] == pytest.approx(0.5)
    assert 0 < dw["eager"]["pct_of_floor"] <= 100
    md = _read(paths["report"])
    for needle in ("% of floor", "Training step", "Batch-1 latency", "Failed pieces", "vit/x", "roofline.png"):
        assert needle in md
    assert len(paths["plots"]) == 2
    for p in paths["plots"]:
        assert os.path.getsize(p) > 1000


def test_op_pieces_run_on_cpu_smoke(monkeypatch, tmp_path):
    """Run the suite's op pieces at the CPU's tiny shapes (eager only, a simple timer instead of do_bench), so a
    GPU run does not discover plumbing bugs; kernels that need a GPU are recorded as failed, not raised."""
    from bench import common

    monkeypatch.setattr(harness, "do_bench_ms", _fake_bench)
    results = {"ops": [], "failed": [], "skipped": []}
    suite = harness.Suite(results, verbose=False)
    from spin_kernels import perf
    ops.convmixer_ops(suite, common.CONVMIXER_SHAPES[0], perf.H100, ["eager"])
    ops.vit_ops(suite, common.VIT_SHAPES[0], perf.H100, ["eager"])
    timed = {r["op"] for r in results["ops"]}
    assert {"dwconv", "pointwise_gemm", "bn_train", "layer_fwd", "layer_fwd_bwd", "trunk2_fwd", "layernorm",
            "qkv_gemm", "fc2_gemm", "attention", "block_fwd", "block_fwd_bwd"} <= timed
    assert all(f["piece"].endswith(("K1/triton", "K2/triton")) for f in results["failed"]), results["failed"]
    paths = report.write_report({**results, "device": "cpu", "ceilings": None, "train": [], "latency": []},
                                str(tmp_path))
    assert paths["plots"]


# ------------------------------------------------------------------------------------------- issue-4 targets

def _read(path):
    with open(path) as f:
        return f.read()


def _read_json(path):
    return json.loads(_read(path))


def _target_results(cuda_graph_ms=1.5, compiled_ms=4.5, eager_ref_ms=30.0, dw_cuda=(0.4, 0.6),
                    dw_native=((1.0, 0.9), (1.2, 1.5))):
    """Synthetic latency and depthwise-conv records at the shapes the targets look for. ``dw_cuda`` / each
    ``dw_native`` entry hold fwd+bwd ms per target shape (k=7, k=9); ``None`` leaves that record out."""
    from spin_kernels import perf
    suite = harness.Suite({"ops": [], "failed": [], "skipped": []}, verbose=False)
    for i, shape in enumerate(dwconv.DWCONV_TARGET_SHAPES):
        _, fb = dwconv._dwconv_costs(*shape, "bf16")
        sid = dwconv.dwconv_shape_id(*shape)
        for impl, ms in (("cuda", dw_cuda[i]), ("eager", dw_native[i][0]), ("eager-cudnn-benchmark", dw_native[i][1])):
            if ms is not None:
                ops._record(suite, "dwconv", sid, "dwconv_fwd_bwd", impl, ms, fb, perf.H100, "bf16")
    model, rate = e2e.ISSUE4_LATENCY
    lat = [{"model": model, "share_rate": rate, "backend": "reference", "compile": False, "eager_ms": eager_ref_ms,
            "cuda_graph_ms": 20.0, "launch_overhead_ms": 10.0},
           {"model": model, "share_rate": 1, "backend": "cuda", "compile": False, "eager_ms": 0.1,
            "cuda_graph_ms": 0.1, "launch_overhead_ms": 0.0}]          # another rate: must not be picked
    if cuda_graph_ms is not None:
        lat.append({"model": model, "share_rate": rate, "backend": "cuda", "compile": False, "eager_ms": 2.0,
                    "cuda_graph_ms": cuda_graph_ms, "launch_overhead_ms": 0.5})
    if compiled_ms is not None:
        lat.append({"model": model, "share_rate": rate, "backend": "reference", "compile": "max-autotune",
                    "eager_ms": None, "cuda_graph_ms": None, "compiled_ms": compiled_ms, "compile_s": 300.0})
    return {"device": "Fake GPU", "date": "2026-01-01", "ceilings": None, "ops": suite.results["ops"], "train": [],
            "latency": lat, "skipped": [], "failed": []}


def _targets_by_kind(targets):
    lat_compile = next(t for t in targets if "max-autotune" in t["name"])
    lat_eager = next(t for t in targets if "eager reference" in t["name"])
    dw = [t for t in targets if t["name"].startswith("depthwise conv")]
    return lat_compile, lat_eager, dw


def test_targets_from_synthetic_results(tmp_path):
    res = _target_results()
    paths = report.write_report(res, str(tmp_path))
    targets = _read_json(paths["json"])["targets"]
    assert len(targets) == 2 + len(dwconv.DWCONV_TARGET_SHAPES)
    lat_compile, lat_eager, (dw7, dw9) = _targets_by_kind(targets)
    assert lat_compile["measured"] == pytest.approx(3.0) and lat_compile["target"] == 2.5 and lat_compile["met"]
    assert lat_compile["ours_ms"] == 1.5 and lat_compile["baseline_ms"] == 4.5
    assert lat_eager["measured"] == pytest.approx(20.0) and lat_eager["target"] == 15 and lat_eager["met"]
    # the faster native (cudnn.benchmark at k=7, default at k=9) is the baseline
    assert "k=7" in dw7["name"] and dw7["measured"] == pytest.approx(0.9 / 0.4) and dw7["met"]
    assert "eager-cudnn-benchmark" in dw7["baseline"]
    assert "k=9" in dw9["name"] and dw9["measured"] == pytest.approx(1.2 / 0.6) and dw9["met"]  # exactly 2x: met
    md = _read(paths["report"])
    assert "## Targets (issue 4)" in md and "| not measured |" not in md
    assert "| 3.00x | yes |" in md and "| 20.00x | yes |" in md
    # the max-autotune latency row shows in the latency table
    assert "max-autotune" in md.split("## Batch-1 latency")[1]


def test_target_not_met_is_reported(tmp_path):
    res = _target_results(cuda_graph_ms=2.0, dw_cuda=(0.5, 1.0))
    targets = report.compute_targets(res)
    lat_compile, lat_eager, (_, dw9) = _targets_by_kind(targets)
    assert lat_compile["measured"] == pytest.approx(2.25) and lat_compile["met"] is False
    assert lat_eager["measured"] == pytest.approx(15.0) and lat_eager["met"] is True
    assert dw9["measured"] == pytest.approx(1.2) and dw9["met"] is False
    md = _read(report.write_report(res, str(tmp_path))["report"])
    assert "| 2.25x | NO |" in md


def test_targets_not_measured_never_show_a_number(tmp_path):
    """Missing / failed / skipped measurements give ``measured`` None and "not measured" with the reason."""
    model, rate = e2e.ISSUE4_LATENCY
    res = _target_results(compiled_ms=None, cuda_graph_ms=None, dw_cuda=(None, 0.6), dw_native=((1.0, 0.9),
                                                                                                   (None, None)))
    sid9 = dwconv.dwconv_shape_id(*dwconv.DWCONV_TARGET_SHAPES[1])
    res["failed"] += [{"piece": f"latency/{model}/r{rate}/cuda", "error": "RuntimeError: persistent kernel boom",
                       "traceback": ""},
                      {"piece": f"targets/dwconv/{sid9}/eager", "error": "OutOfMemoryError: oom", "traceback": ""}]
    res["skipped"].append({"piece": f"latency/{model}/r{rate}/compile-max-autotune",
                           "reason": "--no-max-autotune-latency"})
    # a bogus time (0 / NaN) is no measurement either
    res["latency"][0]["eager_ms"] = float("nan")
    paths = report.write_report(res, str(tmp_path))
    targets = _read_json(paths["json"])["targets"]
    assert [t["measured"] for t in targets] == [None] * len(targets)
    assert [t["met"] for t in targets] == [None] * len(targets)
    lat_compile, lat_eager, (dw7, dw9) = _targets_by_kind(targets)
    assert "persistent kernel boom" in lat_compile["note"] and "--no-max-autotune-latency" in lat_compile["note"]
    assert "persistent kernel boom" in lat_eager["note"] and f"not run (latency/{model}/r{rate}/reference)" in \
        lat_eager["note"]
    assert "not run" in dw7["note"] and "oom" in dw9["note"]
    md = _read(paths["report"])
    table = md.split("## Targets (issue 4)")[1].split("\n## ")[0]
    rows = [ln for ln in table.splitlines() if ln.startswith("| ") and not ln.startswith("| target")]
    assert len(rows) == len(targets)
    for ln in rows:
        cells = [c.strip() for c in ln.split("|")[1:-1]]
        assert cells[2] == "not measured" and cells[3] == "not measured", ln
        assert not re.search(r"\d+\.\d+x", cells[2])


def test_targets_listed_when_nothing_was_measured(tmp_path):
    res = {"device": "Fake GPU", "date": "2026-01-01", "ceilings": None, "ops": [], "train": [], "latency": [],
           "skipped": [], "failed": []}
    md = _read(report.write_report(res, str(tmp_path))["report"])
    assert md.count("| not measured | not measured |") == 2 + len(dwconv.DWCONV_TARGET_SHAPES)


def test_dwconv_compare_cpu_smoke(monkeypatch):
    """The native side runs at a tiny shape on the CPU; the CUDA kernels cannot, and are a failed piece (the
    target then is not measured), not a crash."""
    from spin_kernels import perf
    monkeypatch.setattr(harness, "do_bench_ms", _fake_bench)
    results = {"ops": [], "failed": [], "skipped": []}
    suite = harness.Suite(results, verbose=False)
    shape = (2, 16, 8, 7)
    dwconv.dwconv_compare(suite, shape, perf.H100)
    got = {(r["op"], r["impl"]) for r in results["ops"]}
    assert got == {(op, impl) for op in ("dwconv_fwd", "dwconv_fwd_bwd") for impl in dwconv.NATIVE_DW_IMPLS}
    assert [f["piece"] for f in results["failed"]] == [f"targets/dwconv/{dwconv.dwconv_shape_id(*shape)}/cuda"]
    assert all(r["ms"] > 0 and r["bytes"] > 0 for r in results["ops"])
    fb = next(r for r in results["ops"] if r["op"] == "dwconv_fwd_bwd")
    fwd = next(r for r in results["ops"] if r["op"] == "dwconv_fwd")
    assert fb["flops"] == pytest.approx(3 * fwd["flops"])


def test_compile_latency_failure_is_isolated(monkeypatch):
    """A compile that fails (here: torch.compile raising, as max-autotune does without CUDA) is recorded as a failed
    piece and its target says so. (It once relied on the real compile outlasting a 5 s alarm: flaky, see below.)"""
    def no_compile(*args, **kwargs):
        raise RuntimeError("max-autotune needs CUDA")

    monkeypatch.setattr(e2e.torch, "compile", no_compile)
    model, rate = e2e.ISSUE4_LATENCY
    results = {"latency": [], "failed": [], "skipped": [], "ops": []}
    suite = harness.Suite(results, verbose=False)
    piece = f"latency/{model}/r{rate}/compile-max-autotune"
    assert suite.piece(piece, e2e.compile_latency, suite, model, rate, 5.0) is None
    assert results["latency"] == [] and results["failed"][0]["piece"] == piece
    t = next(t for t in report.compute_targets(results) if "max-autotune" in t["name"])
    assert t["measured"] is None and piece in t["note"]


def test_time_limit_stops_a_piece():
    results = {"failed": []}
    suite = harness.Suite(results, verbose=False)

    def slow():
        with harness.time_limit(0.2):
            t = time.perf_counter()
            while time.perf_counter() - t < 5:
                time.sleep(0.01)
        return "done"

    t0 = time.perf_counter()
    assert suite.piece("slow", slow) is None
    assert time.perf_counter() - t0 < 3
    assert "PieceTimeout" in results["failed"][0]["error"]
    with harness.time_limit(None):          # no limit
        pass
    assert suite.piece("fast", lambda: 1) == 1


def test_time_limit_survives_a_swallowed_alarm():
    """The alarm's exception can land where Python swallows it (a gc callback, a __del__): the piece still ends
    as timed out when its body returns, instead of being recorded as a success."""
    results = {"failed": []}
    suite = harness.Suite(results, verbose=False)

    def swallowing():
        with harness.time_limit(0.1):
            try:
                time.sleep(1.0)
            except harness.PieceTimeout:    # what a gc callback does to an exception raised inside it
                pass
        return "done"

    assert suite.piece("swallowed", swallowing) is None
    assert "swallowed" in results["failed"][0]["error"]


def test_help_documents_the_flags(capsys):
    with pytest.raises(SystemExit) as e:
        gpu_suite.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--no-max-autotune-latency" in out and "targets" in out


def _fake_dw_kernels(monkeypatch, wrong_dh=False):
    """Stand-ins for spin_kernels.cuda's depthwise kernels (plain torch on [B, H, W, C]), so the CUDA side of
    dwconv_compare runs on the CPU."""
    import torch.nn.functional as F

    from spin_kernels import cuda as sk_cuda

    def fwd(h, weight, bias=None, a=None, b=None, *, act="gelu", post_scale=None, flip=False, with_stats=True):
        assert act == "none" and not with_stats
        C, k = h.shape[-1], weight.shape[-1]
        w = weight.flip(-1, -2) if flip else weight
        y = F.conv2d(h.permute(0, 3, 1, 2), w, None if bias is None else bias.to(h.dtype), padding=k // 2, groups=C)
        return y.permute(0, 2, 3, 1).contiguous(), None

    def bwd_input(dz, weight, a=None):
        dh = fwd(dz, weight, act="none", flip=True, with_stats=False)[0]
        return dh * 0.5 if wrong_dh else dh

    def bwd_weight(dz, h, kernel_size, a=None, b=None, partial_ctas=264):
        C = h.shape[-1]
        hx, dzx = h.permute(0, 3, 1, 2).float(), dz.permute(0, 3, 1, 2).float()
        w = torch.zeros(C, 1, kernel_size, kernel_size, requires_grad=True)
        y = F.conv2d(hx, w, padding=kernel_size // 2, groups=C)
        (dw,) = torch.autograd.grad(y, w, dzx)
        return dw, dzx.sum((0, 2, 3))

    monkeypatch.setattr(sk_cuda, "dwconv_forward", fwd)
    monkeypatch.setattr(sk_cuda, "dwconv_backward_input", bwd_input)
    monkeypatch.setattr(sk_cuda, "dwconv_backward_weight", bwd_weight)


@pytest.mark.parametrize("wrong", [False, True])
def test_dwconv_compare_checks_the_kernels(monkeypatch, wrong):
    """The CUDA side is recorded only after its four outputs match F.conv2d; a wrong kernel is a failed piece."""
    from spin_kernels import perf
    _fake_dw_kernels(monkeypatch, wrong_dh=wrong)
    monkeypatch.setattr(harness, "do_bench_ms", lambda fn, warmup=0, rep=0: (fn(), 0.5)[1])
    results = {"ops": [], "failed": [], "skipped": []}
    suite = harness.Suite(results, verbose=False)
    shape = (2, 16, 8, 9)
    dwconv.dwconv_compare(suite, shape, perf.H100)
    ours = [r for r in results["ops"] if r["impl"] == "cuda"]
    if wrong:
        assert ours == [] and len(results["failed"]) == 1
        assert "disagrees with F.conv2d" in results["failed"][0]["error"] and "dh" in results["failed"][0]["error"]
    else:
        assert results["failed"] == [] and {r["op"] for r in ours} == {"dwconv_fwd", "dwconv_fwd_bwd"}
        assert max(ours[0]["max_rel_err"].values()) < 1e-5
