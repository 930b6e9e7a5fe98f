"""``spin bench`` and ``spin kernels-report``: the analytic cost tables and the sm_90 kernel resource report.

``spin bench --analytic`` needs neither a GPU nor the model code (perf.roofline carries the architectures); without
``--analytic`` it points at the measured benchmarks (pytest-benchmark in bench/, the GPU suite).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import perf


def _bench(args: argparse.Namespace) -> int:
    """Print (and optionally save) the analytic per-op table of one or all models."""
    if not args.analytic:
        print("measured benchmarks: `python -m pytest bench` (micro-benchmarks, CPU or GPU) and "
              "`python -m bench.gpu_suite` (GPU only, writes bench/results/<gpu>-<date>/); "
              "pass --analytic for the FLOPs / bytes / floor tables", file=sys.stderr)
        return 2
    try:
        ceilings = perf.get_ceilings(args.card, args.ceilings)
        names = [args.model] if args.model else sorted(perf.ARCHS)
        out = []
        for name in names:
            cost = perf.model_costs(name, args.batch, args.dtype, train=args.train, img_size=args.img_size)
            print(perf.format_table(cost, ceilings))
            print()
            out.append(cost.to_dict(ceilings))
    except (ValueError, OSError) as e:
        print(f"spin bench: {e}", file=sys.stderr)
        return 2
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out if len(out) > 1 else out[0], f, indent=1)
        print(f"wrote {args.json}")
    return 0


def _kernels_report(args: argparse.Namespace) -> int:
    """Compile every registered Triton kernel (and read the CUDA extension) for sm_90; print and save the table."""
    if os.environ.get("TRITON_INTERPRET") and "triton" not in sys.modules:
        # The interpreter replaces @triton.jit by Python functions that cannot be compiled for sm_90; triton reads
        # the variable at import, which has not happened yet, so dropping it here is enough.
        os.environ.pop("TRITON_INTERPRET")
    rows = perf.kernel_report(include_cuda=not args.no_cuda, so_path=args.so, ptxas_log=args.ptxas_log)
    print(perf.format_kernel_report(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=str)
        print(f"wrote {args.json}")
    # A kernel that spills or a GEMM without wgmma is a failure worth a non-zero exit in CI.
    return 0 if all(r.get("ok", False) for r in rows) else 1


def register(subparsers) -> None:
    """Add ``bench`` and ``kernels-report`` to the ``spin`` command."""
    p = subparsers.add_parser("bench", help="analytic FLOPs / bytes / roofline floors per op (--analytic)",
                              description="Per-op FLOPs, minimum / fused-design / eager HBM bytes, activation "
                              "passes and floor times on a named card.")
    p.add_argument("--analytic", action="store_true", help="print the analytic cost tables")
    p.add_argument("--model", default=None, choices=sorted(perf.ARCHS), help="one model (default: all)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--dtype", default="bf16", choices=sorted(perf.DTYPE_BYTES))
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--train", action="store_true", help="include the backward pass")
    p.add_argument("--card", default="h100", choices=sorted(perf.CARDS), help="nominal ceilings of this card")
    p.add_argument("--ceilings", default=None, help="JSON of measured ceilings (or a GPU-suite results.json)")
    p.add_argument("--json", default=None, help="also write the tables as JSON here")
    p.set_defaults(func=_bench)

    k = subparsers.add_parser("kernels-report", help="registers / spills / smem / wgmma / occupancy of every "
                              "kernel, compiled for sm_90 (no GPU needed)")
    k.add_argument("--json", default=None, help="write the report as JSON here")
    k.add_argument("--no-cuda", action="store_true", help="skip the built CUDA extension")
    k.add_argument("--so", default=None, help="the CUDA extension to read (default: spin_kernels/_C*.so)")
    k.add_argument("--ptxas-log", default=None, help="a saved `nvcc -Xptxas -v` build log (spills per kernel)")
    k.set_defaults(func=_kernels_report)
