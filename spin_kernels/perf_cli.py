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
    """Compile every registered Triton kernel (and read the CUDA extension) for sm_90; print and save the table.

    With ``--cost``: the machine-code cost model at the target shapes instead (spin_kernels.perf.cost_report)."""
    if os.environ.get("TRITON_INTERPRET") and "triton" not in sys.modules:
        # The interpreter replaces @triton.jit by Python functions that cannot be compiled for sm_90; triton reads
        # the variable at import, which has not happened yet, so dropping it here is enough.
        os.environ.pop("TRITON_INTERPRET")
    if args.cost:
        return _cost_report(args)
    rows = perf.kernel_report(include_cuda=not args.no_cuda, so_path=args.so, ptxas_log=args.ptxas_log)
    print(perf.format_kernel_report(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=str)
        print(f"wrote {args.json}")
    # A kernel that spills or a GEMM without wgmma is a failure worth a non-zero exit in CI.
    return 0 if all(r.get("ok", False) for r in rows) else 1


def _cost_report(args: argparse.Namespace) -> int:
    """``spin kernels-report --cost``: the cost tables; exit 1 when a calibration kernel misses its range or a
    ratio grew past its budget (``--budgets``)."""
    from .perf import cost_report

    unknown = [s for s in args.shape or [] if s not in cost_report.TARGET_SHAPES]
    if unknown:
        raise ValueError(f"--shape: unknown {unknown}; known: {', '.join(cost_report.TARGET_SHAPES)}")
    # the CUDA C++ kernels too (backend="cuda"), read from the built extension when there is one
    report = cost_report.cost_report(args.shape or None, card=args.card, cuda=not args.no_cuda,
                                     results_root=args.results)
    print(cost_report.format_cost_report(report))
    if args.json:
        cost_report.write_json(report, args.json)
        print(f"wrote {args.json}")
    failures = [f"calibration {r['label']}: {r['binding']}-bound at {r['ratio']:.2f}x, expected "
                f"{r['expected_binding']} within {r['expected_ratio']}" for r in report["calibration"] if not r["ok"]]
    if args.record_budgets:
        import pathlib

        pathlib.Path(args.record_budgets).write_text(
            json.dumps(cost_report.budgets_of(report), indent=1, sort_keys=True) + "\n")
        print(f"recorded the budgets in {args.record_budgets}")
    elif args.budgets:
        failures += cost_report.check_budgets(report, cost_report.read_budgets(args.budgets))
    for f in failures:
        print(f"FAIL {f}", file=sys.stderr)
    return 1 if failures else 0


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
    k.add_argument("--no-cuda", action="store_true", help="skip the built CUDA extension (with --cost: its kernels)")
    k.add_argument("--so", default=None, help="the CUDA extension to read (default: spin_kernels/_C*.so)")
    k.add_argument("--ptxas-log", default=None, help="a saved `nvcc -Xptxas -v` build log (spills per kernel)")
    k.add_argument("--cost", action="store_true", help="the machine-code cost model: per target shape, every "
                   "kernel's lower bounds (issue, pipes, tensor, shared memory, HBM, latency) against its floor")
    k.add_argument("--shape", action="append", default=None, metavar="NAME",
                   help="with --cost: only this target shape (repeatable; default: all)")
    k.add_argument("--card", default="h100", choices=["h100", "h200"], help="with --cost: the card's constants")
    k.add_argument("--budgets", default=None, metavar="JSON", help="with --cost: fail when a kernel's ratio grew "
                   "past its recorded budget (bench/results/static/cost_budgets.json)")
    k.add_argument("--results", default="bench/results", metavar="DIR",
                   help="with --cost: the newest GPU run of the card under DIR replaces the nominal bandwidth and "
                        "tensor rate by its measured ones")
    k.add_argument("--record-budgets", default=None, metavar="JSON",
                   help="with --cost: record today's ratios as the budgets (after a kernel got faster)")
    k.set_defaults(func=_kernels_report)
