"""``make gpu-proof``: one command that proves the engine in one short GPU window (≤ 9 minutes by default).

    python3 -m bench.gpu_proof [--out DIR] [--budget-s 540] [--only STAGES] [--smoke]

Stages, in order, each a child process with its own time box (the unused part of a box rolls over to the next
stage; the total never exceeds ``--budget-s``), each reported as passed / failed / skipped with its reason:

1. ``build``        the extension compiled against this machine's torch (MAX_JOBS = the cores);
2. ``info``         ``spin info``: versions, backends, the extension's status;
3. ``ceilings``     measured copy bandwidth and bf16 / tf32 GEMM rate;
4. ``correctness``  every kernel test (the CPU runs them in the interpreter / emulation) compiled on this machine,
                    plus bf16 and the whole-model cases of tests/gpu, outcomes streamed as they come;
5. ``targets``      outputs checked first, then medians: batch-1 latency of spin_convmixer_768_32 r=2 (eager, CUDA
                    graph, backend triton, backend cuda); train steps at batch 64 (spin_convmixer_768_32 r=2,
                    convmixer_768_32, DeiT-S r=2) per backend; depthwise conv k=3/7/9 vs F.conv2d; attention vs
                    SDPA at N=197;
6. ``calibration``  device time per kernel of whole train steps / eval forwards at the cost model's target shapes,
                    next to the machine-code estimate and the analytic floor;
7. ``sanitizer``    compute-sanitizer memcheck and racecheck on the smallest case of each CUDA kernel;
8. ``compile``      torch.compile baselines, last because compiling is slow: batch-1 latency (default,
                    "reduce-overhead") and the train steps (default). max-autotune stays in ``make gpu-bench``.

Output (≤ 8 files, one folder): ``results.json`` and ``report.md`` rewritten after every stage (a kill at the limit
keeps what was measured), ``proof.log`` (the children's output), ``build.log``, ``pytest.log``, ``tests.jsonl``,
``sanitizer.log``, and while an in-process stage runs ``stage_in_progress.json`` (its pieces so far). The folder: ``--out``, else ``$SPIN_PROOF_OUT``, else ``bench/results/<gpu>-<date>/``.

``--smoke`` runs the same plumbing on a CPU at tiny sizes (Triton interpreter, emulated CUDA kernels), marking the
GPU-only pieces skipped: CI's check that a GPU window is not lost to a bug in this script.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_ROOT = ROOT / "bench" / "results"
COST_MODEL_JSON = RESULTS_ROOT / "static" / "cost_model.json"

# (stage, time box in seconds); the boxes add up to more than the default budget on purpose: stages that finish
# early hand their time on, and the last stage takes whatever is left.
STAGES = (("build", 150), ("info", 30), ("ceilings", 30), ("correctness", 150), ("targets", 120),
          ("calibration", 75), ("sanitizer", 60), ("compile", 300))
IN_PROCESS = ("ceilings", "targets", "calibration", "compile")    # run by a child `--child STAGE`
GPU_ONLY = ("ceilings", "calibration", "sanitizer", "compile")
PART_FILE = "stage_in_progress.json"   # an in-process stage's pieces so far (merged and removed at its end)
MIN_STAGE_S = 10            # a stage is not started with less time than this left
# --smoke stretches the stage boxes (its --budget-s still bounds the whole run): the interpreter and the emulation
# run the tiny pieces at CPU speed, and a box sized for a GPU left the smoke's targets stage at 118-125 s of its
# 120 s, so on a loaded CI machine its last pieces were skipped "out of time"
SMOKE_BOX_SCALE = 3
REPORT_RESERVE_S = 5        # kept back for the final report

# Sizes: the real ones on a GPU; tiny ones for the CPU smoke run (fp32, interpreter / emulation).
GPU_SIZES = {
    "models": {},           # model kwargs per model name: none, the real architectures
    "img": 224, "train_batch": 64, "train_steps": 10,
    "dwconv": ((64, 768, 16, 3), (64, 768, 32, 7), (64, 768, 32, 9)),
    "attention": (64, 197, 6, 64),
    "calibration_shapes": ("spin_convmixer_768_32-r2-b64", "deit_small_patch16_224-b64", "convmixer_768_32-b64",
                           "spin_convmixer_768_32-r2-b1", "convmixer_1536_20-b64", "spin_convmixer_768_32-r2-b16",
                           "deit_base_patch16_224-b64"),
}
SMOKE_SIZES = {
    "models": {"spin_convmixer_768_32": {"dim": 32, "depth": 4, "patch_size": 8},
               "convmixer_768_32": {"dim": 32, "depth": 2, "patch_size": 8},
               "deit_small_patch16_224": {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 8,
                                          "img_size": 32}},
    "img": 32, "train_batch": 4, "train_steps": 1,
    "dwconv": ((2, 16, 6, 3),),
    "attention": (1, 17, 2, 16),
    "calibration_shapes": (),
}
LATENCY_MODEL = ("spin_convmixer_768_32", 2)
TRAIN_MODELS = (("spin_convmixer_768_32", 2), ("convmixer_768_32", 1), ("deit_small_patch16_224", 2))


def backends_of(model: str) -> tuple[str, ...]:
    """The fused backends a model has: triton for both families, cuda for ConvMixer."""
    return ("triton", "cuda") if "convmixer" in model else ("triton",)


# ---------------------------------------------------------------------------------------------- child stages

class SavingSuite:
    """A :class:`bench.gpu.harness.Suite` whose results are written to ``path`` after every piece (the parent
    merges them, also after killing the child at its limit)."""

    def __init__(self, results: dict, path: Path):
        from bench.gpu.harness import Suite
        self.suite = Suite(results)
        self.path = path
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.suite.results, default=str))
        os.replace(tmp, self.path)

    def piece(self, name, fn, *args, deadline: float | None = None, **kwargs):
        """Run one piece (skipped, with the reason, when the stage's time is up), then save."""
        if deadline is not None and time.monotonic() > deadline - MIN_STAGE_S / 2:
            self.suite.results["skipped"].append({"piece": name, "reason": "out of time in this stage"})
            self.save()
            return None
        try:
            return self.suite.piece(name, fn, *args, **kwargs)
        finally:
            self.save()


def _sizes(smoke: bool) -> dict:
    return SMOKE_SIZES if smoke else GPU_SIZES


def child_stage(stage: str, part: Path, smoke: bool, seconds: float) -> int:
    """Run one in-process stage (see :data:`IN_PROCESS`) and leave its results in ``part``."""
    deadline = time.monotonic() + seconds
    results = {"ops": [], "train": [], "latency": [], "kernels": [], "skipped": [], "failed": []}
    s = SavingSuite(results, part)
    sizes = _sizes(smoke)
    if smoke:
        from spin_kernels import cuda_emulation
        cuda_emulation.enable(True, sm_count=4)
    if stage == "ceilings":
        from bench.gpu.ceilings import measure_ceilings
        results["ceilings"] = s.piece("ceilings", measure_ceilings, False)
    elif stage == "targets":
        _targets(s, sizes, deadline)
    elif stage == "calibration":
        _calibration(s, sizes, deadline)
    elif stage == "compile":
        _compile(s, sizes, deadline)
    s.save()
    return 0


def _kw(sizes, model):
    return sizes["models"].get(model)


def _targets(s: SavingSuite, sizes: dict, deadline: float) -> None:
    from bench.gpu import e2e
    from bench.gpu.dwconv import dwconv_compare, dwconv_shape_id
    from bench.gpu.ops import attention_vs_sdpa
    from spin_kernels import perf

    ceilings = perf.H100
    img = sizes["img"]
    model, rate = LATENCY_MODEL
    for backend in ("reference",) + backends_of(model):
        s.piece(f"latency/{model}/r{rate}/{backend}", e2e.latency, s.suite, model, rate, backend,
                model_kwargs=_kw(sizes, model), img_size=img, check=True, deadline=deadline)
    for m, r in TRAIN_MODELS:
        for backend in ("reference",) + backends_of(m):
            s.piece(f"train/{m}/r{r}/{backend}", e2e.train_step, s.suite, m, r, backend, sizes["train_batch"],
                    sizes["train_steps"], False, model_kwargs=_kw(sizes, m), img_size=img, check=True,
                    deadline=deadline)
    for shape in sizes["dwconv"]:
        s.piece(f"targets/dwconv/{dwconv_shape_id(*shape)}", dwconv_compare, s.suite, shape, ceilings,
                deadline=deadline)
    s.piece("targets/attention", attention_vs_sdpa, s.suite, *sizes["attention"], ceilings, deadline=deadline)


def _calibration(s: SavingSuite, sizes: dict, deadline: float) -> None:
    from bench.gpu.kernel_times import measure_shape
    from spin_kernels.perf.targets import TARGET_SHAPES

    report = json.loads(COST_MODEL_JSON.read_text())
    s.suite.results["cost_model"] = f"{report['card']}, {COST_MODEL_JSON.relative_to(ROOT)}"
    by_name = {sh["shape"]: sh for sh in report["shapes"]}
    for name in sizes["calibration_shapes"]:
        model = TARGET_SHAPES[name][0]
        for backend in backends_of(model):
            s.piece(f"calibration/{name}/{backend}", measure_shape, s.suite, name, backend, by_name[name],
                    deadline=deadline)


def _compile(s: SavingSuite, sizes: dict, deadline: float) -> None:
    from bench.gpu import e2e
    from bench.gpu.harness import time_limit

    img = sizes["img"]
    model, rate = LATENCY_MODEL

    def left():
        return max(1.0, deadline - time.monotonic() - 2)

    for mode in ("default", "reduce-overhead"):
        s.piece(f"latency/{model}/r{rate}/compile-{mode}", lambda mode=mode: e2e.compile_latency(
            s.suite, model, rate, left(), mode, model_kwargs=_kw(sizes, model), img_size=img), deadline=deadline)
    def compiled_train(m, r):
        with time_limit(left()):
            return e2e.train_step(s.suite, m, r, "reference", sizes["train_batch"], sizes["train_steps"], True,
                                  model_kwargs=_kw(sizes, m), img_size=img)

    for m, r in TRAIN_MODELS:
        s.piece(f"train/{m}/r{r}/compile", compiled_train, m, r, deadline=deadline)


# ------------------------------------------------------------------------------------------------- the parent

def _versions() -> dict:
    import torch
    try:
        import triton
        tv = triton.__version__
    except ImportError:
        tv = None
    return {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__, "triton": tv, "cuda": torch.version.cuda, "host": platform.node(),
            "python": platform.python_version()}


def _default_out(device: str, date: str) -> Path:
    env = os.environ.get("SPIN_PROOF_OUT")
    if env:
        return Path(env)
    import re
    return RESULTS_ROOT / f"{re.sub(r'[^a-z0-9]+', '-', device.lower()).strip('-')}-{date}"


def _merge(results: dict, part: dict) -> None:
    for key in ("ops", "train", "latency", "kernels", "skipped", "failed"):
        results[key].extend(part.get(key) or [])
    for key in ("ceilings", "cost_model"):
        if part.get(key):
            results[key] = part[key]


def run_stage(stage: str, seconds: float, out: Path, smoke: bool, on_gpu: bool, results: dict) -> dict:
    """One stage with at most ``seconds``; its record (status, seconds, reason)."""
    from bench.gpu import stages

    if stage in GPU_ONLY and not on_gpu:
        return {"status": "skipped", "reason": "needs a CUDA GPU"}
    if stage == "build":
        if smoke:
            return {"status": "skipped", "reason": "--smoke: the package is already installed (make install)"}
        return stages.build(out, seconds)
    if stage == "info":
        return stages.info(out, seconds)
    if stage == "correctness":
        if smoke:   # the plumbing only: the GPU cases (all skipped here) and one quick file
            rec = stages.correctness(out, seconds, paths=("tests/gpu", "tests/test_sharing.py"), workers=1)
        else:   # the emulated twins of the CUDA tests are the CPU's stand-in: nothing to learn from them here
            rec = stages.correctness(out, seconds, extra=("-k", "not emulated"))
        results["tests"] = rec
        return {k: rec[k] for k in ("status", "seconds", "rc", "timed_out", "reason") if k in rec}
    if stage == "sanitizer":
        rec = stages.sanitizer(out, seconds, on_gpu)
        results["sanitizer"] = rec
        return {k: v for k, v in rec.items() if k != "tools"}
    # in-process stages run in a child, killed at the limit; what it saved so far is kept (in the output folder,
    # so that even a kill of this process mid-stage leaves the stage's pieces behind)
    part = out / PART_FILE
    part.unlink(missing_ok=True)
    env = {"TRITON_INTERPRET": "1"} if smoke else {}
    cmd = [sys.executable, "-m", "bench.gpu_proof", "--child", stage, "--part", str(part),
           "--child-seconds", str(int(seconds))] + (["--smoke"] if smoke else [])
    run = stages.run_logged(cmd, out / "proof.log", seconds + 5, env=env)
    try:
        data = json.loads(part.read_text())
    except (OSError, ValueError):
        data = {}
    part.unlink(missing_ok=True)
    _merge(results, data)
    failed = [f["piece"] for f in data.get("failed") or []]
    rec = {"status": "passed" if run["rc"] == 0 and not failed else "failed", **run}
    if failed:
        rec["reason"] = f"{len(failed)} piece(s) failed: {', '.join(failed[:6])}"
    elif run["rc"] != 0:
        rec["reason"] = "stopped at its time limit" if run["timed_out"] else f"exit status {run['rc']} (proof.log)"
    return rec


def main(argv: list[str] | None = None) -> int:
    """Run the proof; 0 when every stage that ran passed, 1 otherwise."""
    p = argparse.ArgumentParser(prog="python3 -m bench.gpu_proof", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="output folder (default $SPIN_PROOF_OUT, else "
                   "bench/results/<gpu>-<date>/)")
    p.add_argument("--budget-s", type=float, default=540.0, help="the whole run's limit in seconds (default 540)")
    p.add_argument("--only", default=None, help=f"comma list of stages (default all): {','.join(s for s, _ in STAGES)}")
    p.add_argument("--smoke", action="store_true", help="the plumbing on a CPU at tiny sizes (CI)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--part", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-seconds", type=float, default=60.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child_stage(args.child, Path(args.part), args.smoke, args.child_seconds)
    names = [s for s, _ in STAGES]
    only = [s for s in (args.only.split(",") if args.only else names) if s]
    if set(only) - set(names):
        p.error(f"--only: unknown stage(s) {', '.join(sorted(set(only) - set(names)))}; known: {', '.join(names)}")
    t0 = time.monotonic()
    import torch
    on_gpu = torch.cuda.is_available()
    if not on_gpu and not args.smoke:
        print("bench.gpu_proof needs a CUDA GPU (torch.cuda.is_available() is False); --smoke runs its plumbing on "
              "the CPU at tiny sizes", file=sys.stderr)
        return 2
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    v = _versions()
    out = Path(args.out) if args.out else _default_out(v["device"], date)
    out.mkdir(parents=True, exist_ok=True)
    from bench.gpu.proof_report import write_proof_report
    results = {"kind": "gpu-proof", "date": date, **v, "smoke": args.smoke, "budget_s": args.budget_s,
               "command": "python3 -m bench.gpu_proof " + " ".join(argv if argv is not None else sys.argv[1:]),
               "stages": {}, "ceilings": None, "ops": [], "train": [], "latency": [], "kernels": [], "skipped": [],
               "failed": []}
    for stage, box in STAGES:
        box = box * SMOKE_BOX_SCALE if args.smoke else box
        left = args.budget_s - (time.monotonic() - t0) - REPORT_RESERVE_S
        if stage not in only:
            rec = {"status": "skipped", "reason": "not selected (--only)"}
        elif left < MIN_STAGE_S:
            rec = {"status": "skipped", "reason": f"out of time ({left:.0f} s left of the {args.budget_s:.0f} s budget)"}
        else:
            print(f"[gpu_proof] {stage} (up to {min(box, left):.0f} s) ...", flush=True)
            st = time.monotonic()
            rec = run_stage(stage, min(box, left), out, args.smoke, on_gpu, results)
            rec.setdefault("seconds", round(time.monotonic() - st, 1))
        results["stages"][stage] = rec
        results["elapsed_s"] = round(time.monotonic() - t0, 1)
        print(f"[gpu_proof] {stage}: {rec['status']}" + (f" — {rec['reason'][:200]}" if rec.get("reason") else ""),
              flush=True)
        write_proof_report(results, str(out))
    paths = write_proof_report(results, str(out))
    _print_summary(results, paths)
    return 0 if all(r["status"] != "failed" for r in results["stages"].values()) else 1


def _print_summary(results: dict, paths: dict) -> None:
    """The headline numbers, last on stdout (a remote command's reply carries the end of its output)."""
    print(f"\n[gpu_proof] {results['device']}, {results['elapsed_s']:.0f} s; wrote {paths['json']} and "
          f"{paths['report']}")
    for stage, rec in results["stages"].items():
        print(f"  {stage:12s} {rec['status']:8s} {rec.get('seconds', 0) or 0:6.0f} s  {(rec.get('reason') or '')[:90]}")
    t = (results.get("tests") or {}).get("counts")
    if t:
        print(f"  tests: {t.get('passed', 0)} passed, {t.get('failed', 0)} failed, {t.get('skipped', 0)} skipped")
    for c in results.get("comparisons") or []:
        if c["speedup"] is not None:
            print(f"  {c['what']}: {c['ours']} {c['ours_ms']:.4f} ms vs {c['baseline']} {c['baseline_ms']:.4f} ms "
                  f"= {c['speedup']:.2f}x")
    for k in results.get("kernels") or []:
        o = k["ours"]
        if o.get("measured_over_estimate"):
            print(f"  kernels {k['shape']} {k['backend']} {k['step']}: measured {o['measured_s'] * 1e3:.3f} ms = "
                  f"{o['measured_over_estimate']:.2f}x the estimate, {o['measured_over_floor']:.2f}x the floor")


if __name__ == "__main__":
    sys.exit(main())
