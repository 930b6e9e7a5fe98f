"""`make gpu-proof`'s plumbing on the CPU: the whole run end to end at tiny sizes (interpreter / emulation, the
GPU-only stages skipped with their reason), its time boxes, and the join of measured kernel times with the cost
model (made-up measurements here; a GPU run brings real ones)."""
import json
import sys
from pathlib import Path

import pytest

from bench import gpu_proof
from bench.gpu import stages
from bench.gpu.pytest_outcomes import read_outcomes
from spin_kernels.perf import measured

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "bench" / "results" / "static" / "cost_model.json"


@pytest.fixture(scope="module")
def cost_report():
    return json.loads(COMMITTED.read_text())


@pytest.mark.parametrize("name,key", [
    ("void (anonymous namespace)::dw_forward_kernel<__nv_bfloat16>(DwParams)", "dw_forward_kernel"),
    ("dw_forward_kernel<__nv_bfloat16>", "dw_forward_kernel"),
    ("pw_fwd_kernel", "pw_fwd_kernel"),
    ("void spin::shared_run_kernel<__nv_bfloat16, std::integral_constant<int, 3> >(RunParams const&)",
     "shared_run_kernel"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>, at::detail::Array<char*, 1> >"
     "(int, at::native::FillFunctor<float>, at::detail::Array<char*, 1>)", "vectorized_elementwise_kernel"),
])
def test_kernel_key(name, key):
    assert measured.kernel_key(name) == key


def _shape():
    row = {"phase": "fwd", "estimate_s": 1e-5, "floor_s": 5e-6}
    return {"shape": "toy", "runs": 4, "rows": [
        {**row, "kernel": "dw_fwd_kernel", "count": 1},
        {**row, "kernel": "pw_fwd_kernel", "count": 2},
        {**row, "phase": "bwd", "kernel": "dw_bwd_dx_kernel", "count": 1},
        {**row, "phase": "eval", "kernel": "pw_fwd_kernel", "count": 1},
        {**row, "kernel": "dw_forward_kernel<__nv_bfloat16>", "count": 1, "scope": "run", "backend": "cuda"},
        {**row, "phase": "bwd", "kernel": "dw_backward_data_kernel<__nv_bfloat16>", "count": 1, "scope": "run",
         "backend": "cuda"},
        {**row, "phase": "eval", "kernel": "shared_run_kernel<__nv_bfloat16>", "count": 1, "scope": "trunk",
         "estimate_s": 3e-4, "floor_s": 1e-4, "backend": "cuda"}]}


def test_compare_joins_measured_with_estimates_by_kernel():
    sh = _shape()
    got = measured.compare(sh, "triton", "train", {
        "pw_fwd_kernel": {"s": 2e-4, "launches": 8},
        "dw_fwd_kernel": {"s": 8e-5, "launches": 4},
        "void at::native::fill_kernel<float>(float*)": {"s": 1e-5, "launches": 3}})
    rows = {r["kernel"]: r for r in got["rows"]}
    assert set(rows) == {"dw_fwd_kernel", "pw_fwd_kernel", "dw_bwd_dx_kernel"}
    pw = rows["pw_fwd_kernel"]
    assert pw["launches_estimated"] == 8 and pw["launches_measured"] == 8
    assert pw["estimate_s"] == pytest.approx(8e-5) and pw["measured_over_estimate"] == pytest.approx(2.5)
    assert pw["measured_over_floor"] == pytest.approx(5.0)
    assert rows["dw_bwd_dx_kernel"]["measured_s"] is None          # not seen: the comparison says so, not zero
    assert got["ours"]["measured_s"] is None                     # so the total is not made up either
    assert got["other"] == {"s": 1e-5, "launches": 3, "kernels": 1}


def test_cuda_variant_swaps_depthwise_and_eval_is_the_persistent_kernel():
    sh = _shape()
    train = measured.estimates_by_kernel(sh, "cuda", "train")
    assert set(train) == {"pw_fwd_kernel", "dw_forward_kernel", "dw_backward_data_kernel"}
    ev = measured.estimates_by_kernel(sh, "cuda", "eval")
    assert ev == {"shared_run_kernel": {"launches": 1, "estimate_s": 3e-4, "floor_s": 1e-4}}
    with pytest.raises(ValueError, match="step"):
        measured.step_rows(sh, "cuda", "inference")
    with pytest.raises(ValueError, match="backend"):
        measured.step_rows(sh, "reference", "train")


def test_the_join_adds_up_to_the_cost_reports_own_totals(cost_report):
    """The rows a measured step is compared with are exactly the ones the report sums (same launches per trunk)."""
    checked = 0
    for sh in cost_report["shapes"]:
        train = sum(e["estimate_s"] for e in measured.estimates_by_kernel(sh, "triton", "train").values())
        assert train == pytest.approx(sh["train_step"]["model_estimate_s"], rel=1e-5)
        ev = sum(e["estimate_s"] for e in measured.estimates_by_kernel(sh, "triton", "eval").values())
        assert ev == pytest.approx(sh["eval_forward"]["model_estimate_s"], rel=1e-5)
        if "train_step_cuda" in sh:
            t = sum(e["estimate_s"] for e in measured.estimates_by_kernel(sh, "cuda", "train").values())
            assert t == pytest.approx(sh["train_step_cuda"]["model_estimate_s"], rel=1e-5)
            e = sum(e["estimate_s"] for e in measured.estimates_by_kernel(sh, "cuda", "eval").values())
            assert e == pytest.approx(sh["eval_forward_cuda"]["model_estimate_s"], rel=1e-5)
            checked += 1
    assert checked >= 5


def test_calibration_shapes_are_target_shapes(cost_report):
    from spin_kernels.perf.targets import TARGET_SHAPES
    assert set(gpu_proof.GPU_SIZES["calibration_shapes"]) == set(TARGET_SHAPES)
    assert {sh["shape"] for sh in cost_report["shapes"]} == set(TARGET_SHAPES)


def test_a_stage_past_its_limit_is_killed(tmp_path):
    run = stages.run_logged([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
                            tmp_path / "x.log", 1.0)
    assert run["timed_out"] and run["rc"] is None and run["seconds"] < 10
    assert "killed at the 1 s limit" in (tmp_path / "x.log").read_text()


def test_outcomes_file_survives_a_cut_line(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"test": "a", "when": "call", "outcome": "passed", "s": 0.1}\n'
                 '{"test": "b", "when": "call", "outcome": "failed", "s": 0.1, "detail": "AssertionError: x"}\n'
                 '{"test": "c", "when": "setup", "outcome": "skipped", "s": 0.0, "detail": "needs a CUDA GPU"}\n'
                 '{"test": "d", "wh')
    got = read_outcomes(p)
    assert got["counts"] == {"passed": 1, "failed": 1, "skipped": 1}
    assert got["failed"][0]["test"] == "b" and got["skipped_reasons"] == {"needs a CUDA GPU": 1}


def test_without_time_every_stage_is_skipped_with_the_reason(tmp_path):
    assert gpu_proof.main(["--smoke", "--out", str(tmp_path), "--budget-s", "8"]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert [s for s, _ in gpu_proof.STAGES] == list(res["stages"])
    assert all(r["status"] == "skipped" and "out of time" in r["reason"] for r in res["stages"].values())


@pytest.mark.slow
def test_smoke_run_end_to_end(tmp_path):
    """The whole proof on the CPU at tiny sizes: every stage reported, the GPU-only ones skipped with their reason,
    the targets measured after their outputs were checked, and a report small enough to copy back."""
    out = tmp_path / "proof"
    rc = gpu_proof.main(["--smoke", "--out", str(out), "--budget-s", "600"])
    res = json.loads((out / "results.json").read_text())
    st = res["stages"]
    assert list(st) == [s for s, _ in gpu_proof.STAGES]
    for s in gpu_proof.GPU_ONLY:
        assert (st[s]["status"], st[s]["reason"]) == ("skipped", "needs a CUDA GPU"), s
    assert st["build"]["status"] == "skipped"
    assert st["info"]["status"] == "passed" and "spin_kernels" in st["info"]["output"]
    assert st["correctness"]["status"] == "passed", res["tests"]
    assert res["tests"]["counts"]["passed"] > 0 and res["tests"]["counts"]["skipped"] > 0    # tests/gpu: no GPU
    assert st["targets"]["status"] == "passed", (st["targets"], res["failed"])
    assert rc == 0
    model, rate = gpu_proof.LATENCY_MODEL
    lat = {r["backend"]: r for r in res["latency"]}
    assert set(lat) == {"reference", "triton", "cuda"} and lat["triton"]["max_rel_err"] < 1e-3
    train = {(r["model"], r["backend"]) for r in res["train"]}
    assert train == {(m, b) for m, _ in gpu_proof.TRAIN_MODELS for b in ("reference",) + gpu_proof.backends_of(m)}
    assert {r["family"] for r in res["ops"]} == {"dwconv", "attention"}
    measured_cmp = [c for c in res["comparisons"] if c["speedup"] is not None]
    assert any("train step" in c["what"] for c in measured_cmp) and any("attention" in c["what"]
                                                                         for c in measured_cmp)
    md = (out / "report.md").read_text()
    for needle in ("## Stages", "## Tests", "## Targets (ours vs baseline)", "needs a CUDA GPU"):
        assert needle in md
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(p.parent == out for p in files), files
    assert all(p.stat().st_size < 16 * 2 ** 20 for p in files)
