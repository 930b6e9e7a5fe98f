"""Compile every AOT_KERNELS entry for sm_90 and report registers, spills, shared memory and wgmma use.

    python -m spin_kernels.triton.aot [--capability 90] [NAME ...]     # prints one JSON list

Needs no GPU, but real Triton compilation: run it without TRITON_INTERPRET=1 (under the interpreter, @triton.jit
returns interpreted functions that cannot be compiled; tests therefore call this module in a subprocess).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def aot_report(names=None, capability=90) -> list[dict]:
    from . import AOT_KERNELS, compile_aot, resource_usage

    rows = []
    for entry in AOT_KERNELS:
        if names and entry["name"] not in names:
            continue
        t0 = time.time()
        row = dict(name=entry["name"], kernel=entry["fn"].__name__, is_gemm=entry["is_gemm"],
                   constexprs=entry["constexprs"], options=entry.get("options", {}))
        try:
            usage = resource_usage(compile_aot(entry, capability))
            row.update(usage, ok=True)
        except Exception as e:  # noqa: BLE001 - reported per kernel
            row.update(ok=False, error=f"{type(e).__name__}: {e}")
        row["compile_s"] = round(time.time() - t0, 2)
        rows.append(row)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*")
    p.add_argument("--capability", type=int, default=90)
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("spin_kernels.triton.aot: unset TRITON_INTERPRET to compile kernels")
    json.dump(aot_report(args.names, args.capability), sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
