"""The GPU suite's plumbing on the CPU: the no-CUDA exit, failure isolation, and the report / plots writer."""
import json
import os

import pytest
import torch

from bench import gpu_suite


def test_exits_with_message_without_cuda(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_suite.main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_failing_piece_is_recorded_and_the_rest_runs():
    results = {"failed": []}
    suite = gpu_suite.Suite(results, verbose=False)
    assert suite.piece("boom", lambda: 1 / 0) is None
    assert suite.piece("fine", lambda: 3) == 3
    assert results["failed"][0]["piece"] == "boom" and "ZeroDivisionError" in results["failed"][0]["error"]


def _fake_results():
    from spin_kernels import perf
    suite = gpu_suite.Suite({"ops": [], "failed": []}, verbose=False)
    rows = {r.name: r for r in perf.convmixer_layer_costs(64, 768, 16, 3, "bf16", act="relu", spin_residual=True)}
    for op, times in (("dwconv", {"eager": 0.20, "compile": 0.10}),
                      ("pointwise_gemm", {"eager": 0.08, "compile": 0.07})):
        for impl, ms in times.items():
            gpu_suite._record(suite, "convmixer", "s", op, impl, ms, rows[op], perf.H100, "bf16")
    gpu_suite._record(suite, "convmixer", "s", "K1_dwconv_fused", "triton", 0.05, rows["K1_dwconv_fused"],
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
    paths = gpu_suite.write_report(res, str(tmp_path))
    data = json.loads(open(paths["json"]).read())
    dw = {r["impl"]: r for r in data["ops"] if r["op"] == "dwconv"}
    assert dw["compile"]["speedup_vs_eager"] == pytest.approx(2.0)
    assert dw["eager"]["speedup_vs_compile"] == pytest.approx(0.5)
    assert 0 < dw["eager"]["pct_of_floor"] <= 100
    md = open(paths["report"]).read()
    for needle in ("% of floor", "Training step", "Batch-1 latency", "Failed pieces", "vit/x", "roofline.png"):
        assert needle in md
    assert len(paths["plots"]) == 2
    for p in paths["plots"]:
        assert os.path.getsize(p) > 1000


def test_op_pieces_run_on_cpu_smoke(monkeypatch, tmp_path):
    """Run the suite's op pieces at the CPU's tiny shapes (eager only, a simple timer instead of do_bench), so a
    GPU run does not discover plumbing bugs; kernels that need a GPU are recorded as failed, not raised."""
    import time

    from bench import common

    def fake_bench(fn, warmup=0, rep=0):
        fn()
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3

    monkeypatch.setattr(gpu_suite, "do_bench_ms", fake_bench)
    results = {"ops": [], "failed": [], "skipped": []}
    suite = gpu_suite.Suite(results, verbose=False)
    from spin_kernels import perf
    gpu_suite.convmixer_ops(suite, common.CONVMIXER_SHAPES[0], perf.H100, ["eager"])
    gpu_suite.vit_ops(suite, common.VIT_SHAPES[0], perf.H100, ["eager"])
    ops = {r["op"] for r in results["ops"]}
    assert {"dwconv", "pointwise_gemm", "bn_train", "layer_fwd", "layer_fwd_bwd", "trunk2_fwd", "layernorm",
            "qkv_gemm", "fc2_gemm", "attention", "block_fwd", "block_fwd_bwd"} <= ops
    assert all(f["piece"].endswith(("K1/triton", "K2/triton")) for f in results["failed"]), results["failed"]
    paths = gpu_suite.write_report({**results, "device": "cpu", "ceilings": None, "train": [], "latency": []},
                                   str(tmp_path))
    assert paths["plots"]
