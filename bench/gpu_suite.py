"""The GPU benchmark suite: ``python -m bench.gpu_suite [--out DIR] [--max-autotune] [--quick] [--only GROUPS]``.

On one CUDA GPU it

1. measures the card's ceilings: device-to-device copy bandwidth and bf16 / tf32 ``torch.matmul`` throughput;
2. times every op of the ConvMixer layer and the ViT block at the real shapes of spin_convmixer_768_32,
   convmixer_1536_20 (k=9), DeiT-S and DeiT-B with ``triton.testing.do_bench`` (median, L2 flushed) for eager,
   torch.compile (default; ``--max-autotune`` adds that mode) and the fused kernels where present;
3. times an end-to-end training step (img/s, peak memory) of spin_convmixer_768_32 and DeiT-S at r=1 and r=2,
   batch 64, bf16 autocast, for each backend that runs;
4. times batch-1 inference latency, eager and with CUDA-graph replay, and, for spin_convmixer_768_32 at r=2 only,
   the reference model under ``torch.compile(mode="max-autotune")`` (which replays CUDA graphs itself);
5. times the depthwise conv forward and forward+backward (bf16, channels-last, B=64, 32x32 as in
   convmixer_768_32 / convmixer_1536_20 at 224 px, patch 7; C=768 at k=7 and k=9, C=1536 at k=9): the CUDA kernels
   of ``spin_kernels.cuda`` (forward + backward_input + backward_weight, outputs checked against an fp32
   ``F.conv2d``) against PyTorch's ``F.conv2d(groups=C)`` + autograd, with cuDNN's default algorithm choice
   (``eager``) and with ``cudnn.benchmark`` (``eager-cudnn-benchmark``);

and writes ``bench/results/<gpu>-<date>/results.json``, ``report.md`` (time, GB/s, TFLOP/s, % of the floor from the
measured ceilings, speed-up vs eager and vs compile) and PNG plots (bars per op, roofline). Every piece runs in
isolation: a failure is recorded (with its error) under ``failed`` and the rest still runs. Without CUDA it exits
with a message and status 2.

Targets (issue 4) are computed from those measurements into ``results["targets"]`` (a list of ``{name, measured,
target, met, ...}``) and the "Targets (issue 4)" table of report.md; a target whose measurement is missing, failed
or skipped has ``measured`` / ``met`` None and shows "not measured" with the reason, never a number:

- batch-1 latency of spin_convmixer_768_32, r=2: backend ``cuda`` (the weights-resident persistent kernel of eval
  models), CUDA-graph replay, is >= 2.5x faster than the reference under torch.compile max-autotune and >= 15x
  faster than the eager reference (``reference`` backend, eager);
- depthwise conv k=7 and k=9 forward+backward at B=64, C=768, 32x32: the CUDA kernels are >= 2x faster than the
  faster of ``eager`` / ``eager-cudnn-benchmark`` (the C=1536 shape is reported in the ops table only).

``--only`` takes a comma list of the groups ``ceilings,ops,train,latency,targets`` (default: all). ``latency`` runs
the batch-1 latency pieces, with the max-autotune one last; ``targets`` runs the depthwise-conv comparison and, when
``latency`` is not selected too, just the three latency pieces the targets need (reference, cuda, max-autotune of
spin_convmixer_768_32 at r=2), so ``--only targets`` measures every issue-4 target on its own. The max-autotune
latency compiles for minutes: it runs after everything else, the report is written just before it (so a kill
during the compile keeps the rest), it is stopped after ``--max-autotune-latency-timeout`` seconds (default 600;
recorded as a failed piece), and ``--no-max-autotune-latency`` skips it (recorded as skipped).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import sys

import torch

from spin_kernels import perf

from .gpu.ceilings import measure_ceilings
from .gpu.dwconv import DWCONV_SHAPES, dwconv_compare, dwconv_shape_id
from .gpu.e2e import ISSUE4_LATENCY, compile_latency, latency, train_step
from .gpu.harness import Suite, gpu_slug
from .gpu.ops import _impls, convmixer_ops, vit_ops
from .gpu.report import write_report

RESULTS_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# ------------------------------------------------------------------------------------------------------ main

GROUPS = ("ceilings", "ops", "train", "latency", "targets")


def main(argv: list[str] | None = None) -> int:
    """Run the suite; returns 0 when every piece ran, 1 when some failed, 2 without CUDA."""
    p = argparse.ArgumentParser(prog="python -m bench.gpu_suite", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="output directory (default bench/results/<gpu>-<date>[/<part>])")
    p.add_argument("--part", default=None, help="subdirectory of the default output directory, so that stages run "
                   "as separate commands (make gpu-targets, gpu-bench, gpu-bench-e2e) keep their own results")
    p.add_argument("--max-autotune", action="store_true", help="also time torch.compile(mode='max-autotune')")
    p.add_argument("--quick", action="store_true", help="smaller ceilings buffers, fewer train steps")
    p.add_argument("--only", default=None, help=f"comma list of: {','.join(GROUPS)} (default: all; 'targets' is the "
                   "depthwise-conv comparison, plus the issue-4 latency pieces when 'latency' is not selected)")
    p.add_argument("--no-max-autotune-latency", action="store_true",
                   help=f"skip the torch.compile(mode='max-autotune') batch-1 latency of {ISSUE4_LATENCY[0]} "
                   f"r={ISSUE4_LATENCY[1]} (minutes of compiling; its target then shows 'not measured')")
    p.add_argument("--max-autotune-latency-timeout", type=float, default=600.0, metavar="S",
                   help="stop that compile after S seconds, recorded as a failed piece (default 600; 0: no limit)")
    args = p.parse_args(argv)
    only = {g for g in (args.only.split(",") if args.only else GROUPS) if g}
    if only - set(GROUPS):
        p.error(f"--only: unknown group(s) {', '.join(sorted(only - set(GROUPS)))}; known: {', '.join(GROUPS)}")
    if not torch.cuda.is_available():
        print("bench.gpu_suite needs a CUDA GPU, and torch.cuda.is_available() is False on this machine "
              f"(torch {torch.__version__}). On the CPU use `spin bench --analytic` for the floors and "
              "`pytest bench` to exercise the micro-benchmark harness.", file=sys.stderr)
        return 2
    import triton

    from bench import common
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    out_dir = args.out or os.path.join(RESULTS_ROOT, f"{gpu_slug()}-{date}", args.part or "")
    results = {"device": torch.cuda.get_device_name(), "date": date, "torch": torch.__version__,
               "triton": triton.__version__, "cuda": torch.version.cuda, "host": platform.node(),
               "ceilings": None, "ops": [], "train": [], "latency": [], "skipped": [], "failed": []}
    suite = Suite(results)
    if "ceilings" in only:
        results["ceilings"] = suite.piece("ceilings", measure_ceilings, args.quick)
    ceilings = perf.Ceilings.from_dict(results["ceilings"]) if results["ceilings"] else perf.H100
    if "ops" in only:
        impls = _impls(args.max_autotune)
        for shape in common.CONVMIXER_SHAPES:
            suite.piece(f"convmixer/{shape.id}", convmixer_ops, suite, shape, ceilings, impls)
        for shape in common.VIT_SHAPES:
            suite.piece(f"vit/{shape.id}", vit_ops, suite, shape, ceilings, impls)
    backends = ["reference"] + [b for b in common.fused_backends()]
    steps = 5 if args.quick else 20
    for name in ("spin_convmixer_768_32", "deit_small_patch16_224"):
        for rate in (1, 2):
            if "train" in only:
                for backend in backends:
                    suite.piece(f"train/{name}/r{rate}/{backend}", train_step, suite, name, rate, backend, 64,
                                steps, False)
                suite.piece(f"train/{name}/r{rate}/compile", train_step, suite, name, rate, "reference", 64, steps,
                            True)
            if "latency" in only:
                for backend in backends:
                    suite.piece(f"latency/{name}/r{rate}/{backend}", latency, suite, name, rate, backend)
    lat_name, lat_rate = ISSUE4_LATENCY
    if "targets" in only:
        for shape in DWCONV_SHAPES:
            suite.piece(f"targets/dwconv/{dwconv_shape_id(*shape)}", dwconv_compare, suite, shape, ceilings)
        if "latency" not in only:
            for backend in ("reference", "cuda"):
                suite.piece(f"latency/{lat_name}/r{lat_rate}/{backend}", latency, suite, lat_name, lat_rate, backend)
    if "latency" in only or "targets" in only:
        piece = f"latency/{lat_name}/r{lat_rate}/compile-max-autotune"
        if args.no_max_autotune_latency:
            results["skipped"].append({"piece": piece, "reason": "--no-max-autotune-latency"})
        else:
            # Minutes of compiling, last: write what is measured so far first, so a kill here loses nothing else.
            write_report(results, out_dir)
            suite.piece(piece, compile_latency, suite, lat_name, lat_rate, args.max_autotune_latency_timeout)
    paths = write_report(results, out_dir)
    print(f"[gpu_suite] wrote {paths['json']}, {paths['report']} and {len(paths['plots'])} plots; "
          f"{len(results['failed'])} piece(s) failed")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
