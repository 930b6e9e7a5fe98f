"""The suite's plumbing: pieces that fail on their own, timing, time limits, the results folder."""
from __future__ import annotations

import contextlib
import re
import signal
import threading
import traceback
from collections.abc import Callable

import torch

# ---------------------------------------------------------------------------------------------------- plumbing

class Suite:
    """Collects results; :meth:`piece` runs one unit of work and records a failure instead of raising."""

    def __init__(self, results: dict, verbose: bool = True):
        self.results = results
        self.verbose = verbose

    def piece(self, name: str, fn: Callable, *args, **kwargs):
        """Run ``fn``; on any exception record ``{piece, error, traceback}`` under ``failed`` and return None."""
        if self.verbose:
            print(f"[gpu_suite] {name} ...", flush=True)
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - one failing piece must not stop the suite
            self.results["failed"].append({"piece": name, "error": f"{type(e).__name__}: {e}"[:2000],
                                           "traceback": traceback.format_exc()[-4000:]})
            print(f"[gpu_suite] {name} FAILED: {type(e).__name__}: {str(e)[:300]}", flush=True)
            torch.cuda.empty_cache()
            return None


def do_bench_ms(fn: Callable, warmup: int = 25, rep: int = 100) -> float:
    """Median milliseconds of ``fn`` (triton.testing.do_bench flushes L2 between runs). Without CUDA (the CPU
    smoke runs of the suites' plumbing): one warm call, then the median of three timed calls."""
    if not torch.cuda.is_available():
        import statistics
        import time
        fn()
        times = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times)
    import triton.testing
    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def time_steps_ms(step: Callable, steps: int) -> float:
    """Mean milliseconds per call of ``step`` over ``steps`` back-to-back calls (CUDA events on a GPU, the wall
    clock on the CPU): for training steps, whose state changes from call to call."""
    import time
    if not torch.cuda.is_available():
        t = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - t) * 1e3 / steps
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / steps


def gpu_slug() -> str:
    """File-system friendly card name, e.g. ``nvidia-h100-80gb-hbm3``."""
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")


class PieceTimeout(Exception):
    """Raised inside a piece that ran past its :func:`time_limit`."""


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise :class:`PieceTimeout` in the body once ``seconds`` of wall time have passed (SIGALRM; the main thread
    of a POSIX process only, elsewhere and for ``None`` / ``<= 0`` no limit). Code inside C / CUDA calls is only
    interrupted when it returns to Python. An alarm whose exception was swallowed (raised inside a garbage-collector
    callback or a ``__del__``, where Python only prints it) still ends the piece: PieceTimeout is raised when the
    body returns."""
    usable = (seconds is not None and seconds > 0 and hasattr(signal, "SIGALRM")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return
    message = f"stopped after the {seconds:g} s time limit"
    fired = []

    def on_alarm(signum, frame):
        fired.append(True)
        raise PieceTimeout(message)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if fired:  # the body returned normally although the alarm went off: its exception was swallowed
        raise PieceTimeout(message + " (the alarm's exception was swallowed; raised when the piece returned)")


