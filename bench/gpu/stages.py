"""The subprocess stages of ``make gpu-proof``: build, ``spin info``, the compiled test suite, compute-sanitizer.

Each runs as a child process with a hard time limit (its whole process group is killed at the limit, so a hung
kernel or compile cannot eat the window), its output appended to a log file, and returns a record
``{status, seconds, rc, ...}`` with ``status`` one of passed / failed / skipped.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .pytest_outcomes import PATH_ENV, read_outcomes

ROOT = Path(__file__).resolve().parents[2]

# What the compiled correctness stage runs: every kernel test (the interpreter / emulation runs them here) and the
# GPU-only cases (real sizes, bf16, whole models).
TEST_PATHS = ("tests/gpu", "tests/cuda", "tests/triton", "tests/triton_vit")
# The smallest case of each CUDA kernel (depthwise forward / backward-data / weight gradient, the shared run) for
# compute-sanitizer, whose instrumentation slows kernels by orders of magnitude.
SANITIZE_CASES = ("tests/cuda", "-m", "gpu", "-k",
                  "(small_models and spin_convmixer_768_32 and dtype0) or (test_kernel_against_reference and 64) or "
                  "(test_backward_data_and_weight and shape0) or (test_forward_with_input_prologue and shape0)")
SANITIZER_TOOLS = ("memcheck", "racecheck")


def run_logged(cmd: list[str], log: Path, timeout_s: float, env: dict | None = None) -> dict:
    """Run ``cmd`` in the repository root with output appended to ``log``; kill its process group after
    ``timeout_s``. Returns ``{rc, seconds, timed_out}`` (rc None when killed)."""
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}   (limit {timeout_s:.0f} s)\n")
        f.flush()
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                             start_new_session=True)
        try:
            rc = p.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            rc = None
            f.write(f"\n[gpu_proof] killed at the {timeout_s:.0f} s limit\n")
    return {"rc": rc, "seconds": round(time.perf_counter() - t0, 1), "timed_out": rc is None}


def _tail(log: Path, chars: int = 1500) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _status(run: dict) -> str:
    return "passed" if run["rc"] == 0 else "failed"


def build(out: Path, timeout_s: float) -> dict:
    """Compile the extension against this machine's torch (``pip install -e . --no-build-isolation --no-deps``,
    ``MAX_JOBS`` = the cores): nothing is downloaded."""
    log = out / "build.log"
    run = run_logged([sys.executable, "-m", "pip", "install", "-e", ".", "--no-build-isolation", "--no-deps"], log,
                     timeout_s, env={"MAX_JOBS": str(os.cpu_count() or 4)})
    rec = {"status": _status(run), **run}
    if run["rc"] != 0:
        rec["reason"] = ("build timed out" if run["timed_out"] else "build failed") + ": " + _tail(log, 600)
    return rec


def info(out: Path, timeout_s: float) -> dict:
    """``spin info`` (versions, backends, the extension's status), kept in the log and the record."""
    log = out / "build.log"
    before = len(_tail(log, 10 ** 7))
    run = run_logged([sys.executable, "-m", "spin_kernels.cli", "info"], log, timeout_s)
    text = _tail(log, 10 ** 7)[before:]
    return {"status": _status(run), **run, "output": text[-3000:]}


def correctness(out: Path, timeout_s: float, paths=TEST_PATHS, extra: tuple = (), workers: int | None = None) -> dict:
    """The test suite on this machine (compiled kernels on a GPU), outcomes streamed to ``tests.jsonl``: counts,
    failures with their messages, and why tests were skipped."""
    log, outcomes = out / "pytest.log", out / "tests.jsonl"
    outcomes.unlink(missing_ok=True)
    workers = workers or min(8, os.cpu_count() or 1)
    cmd = [sys.executable, "-m", "pytest", "-q", "-rN", "-p", "no:cacheprovider", "-p", "bench.gpu.pytest_outcomes",
           "--benchmark-disable", *(["-n", str(workers)] if workers > 1 and _has_xdist() else []), *paths, *extra]
    run = run_logged(cmd, log, timeout_s, env={PATH_ENV: str(outcomes)})
    res = read_outcomes(outcomes)
    rc_ok = run["rc"] in (0, 5)         # 5: nothing collected (e.g. a selection that matched no test)
    rec = {"status": "passed" if rc_ok and not res["failed"] else "failed", **run, **res}
    if run["timed_out"]:
        rec["reason"] = f"stopped at the {timeout_s:.0f} s limit after {sum(res['counts'].values())} test(s)"
    elif not rc_ok and not res["failed"]:
        rec["reason"] = "pytest exited with status %s: %s" % (run["rc"], _tail(log, 600))
    return rec


def _has_xdist() -> bool:
    try:
        import xdist  # noqa: F401
    except ImportError:
        return False
    return True


def sanitizer(out: Path, timeout_s: float, on_gpu: bool) -> dict:
    """compute-sanitizer memcheck and racecheck on the smallest case of each CUDA kernel, half the time each."""
    exe = shutil.which("compute-sanitizer")
    if not on_gpu or exe is None:
        return {"status": "skipped", "reason": "needs a CUDA GPU" if not on_gpu else "compute-sanitizer not found"}
    log = out / "sanitizer.log"
    tools = {}
    for i, tool in enumerate(SANITIZER_TOOLS):
        budget = timeout_s / (len(SANITIZER_TOOLS) - i)
        t0 = time.perf_counter()
        run = run_logged([exe, "--tool", tool, "--error-exitcode", "1", sys.executable, "-m", "pytest", "-q",
                          "-p", "no:cacheprovider", *SANITIZE_CASES], log, budget)
        timeout_s -= time.perf_counter() - t0
        tools[tool] = {"status": _status(run), **run}
    failed = [t for t, r in tools.items() if r["status"] != "passed"]
    rec = {"status": "failed" if failed else "passed", "tools": tools}
    if failed:
        rec["reason"] = f"{', '.join(failed)} reported errors or timed out (sanitizer.log)"
    return rec
