"""Ahead-of-time compilation of Triton kernels for sm_90 (no GPU needed) and their resource use.

:func:`compile_kernel` is the one place that AOT-compiles a kernel spec and reads registers, spills, shared memory,
wgmma / HGMMA use and theoretical occupancy from the compiled PTX and cubin. The kernels report
(:func:`spin_kernels.perf.kernel_report`, ``spin kernels-report``) calls it for every entry of a registry such as
``spin_kernels.triton.AOT_KERNELS``. A kernel spec is::

    dict(name, fn, signature, constexprs, is_gemm[, options][, num_warps, num_stages][, div16])

``signature`` maps argument names to Triton types (``"*bf16"``, ``"i32"``, ...; constexpr arguments may be left
out), ``options`` the compile options (``num_warps``, ``num_stages``; top-level ``num_warps`` / ``num_stages`` fill
in missing ones), and ``div16`` names the arguments Triton's launcher would specialise as divisible by 16.

Compilation needs the real JIT: under ``TRITON_INTERPRET=1`` ``@triton.jit`` returns interpreted functions that
cannot be compiled, so code running under the interpreter (the tests) uses :func:`report_in_subprocess`, which runs
this module's command line in a child process without that variable::

    python -m spin_kernels.perf.aot [--kernels MODULE[:ATTR]] [--capability 90] [NAME ...]   # one JSON list
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Mapping, Sequence

from .machine_code import (
    parse_ptxas_verbose,
    parse_resource_usage,
    run_tool,
    theoretical_occupancy,
    triton_nvidia_bin,
)


def analyze_binary(ptx: str | None, cubin: bytes | None, *, num_warps: int, dynamic_smem: int = 0,
                   arch: str | None = None, keep_sass: bool = False) -> dict:
    """Resource usage of one compiled kernel from its PTX and/or cubin.

    Registers and spills come from re-running the bundled ``ptxas -v`` on the PTX for ``arch`` (default: the PTX's
    ``.target``; the cubin alone does not record spills), shared memory from the compiler's dynamic size plus the
    static size in the cubin, and the tensor-core path from ``wgmma`` in PTX / ``HGMMA`` in SASS. ``keep_sass``:
    also return the SASS listing (``"sass"``), for the cost model.
    """
    info: dict = {"num_warps": num_warps, "dynamic_smem": dynamic_smem}
    with tempfile.TemporaryDirectory() as tmp:
        if ptx is not None and triton_nvidia_bin("ptxas"):
            if arch is None:
                m = re.search(r"^\s*\.target\s+(sm_\w+)", ptx, flags=re.M)
                arch = m.group(1) if m else "sm_90a"
            ptx_path = os.path.join(tmp, "k.ptx")
            with open(ptx_path, "w") as f:
                f.write(ptx)
            v = parse_ptxas_verbose(run_tool([triton_nvidia_bin("ptxas"), f"-arch={arch}", "-v", ptx_path, "-o",
                                              os.path.join(tmp, "ptxas.cubin")]))
            if v:
                fn = next(iter(v.values()))
                info.update({k: fn.get(k, 0) for k in ("registers", "spill_stores", "spill_loads", "stack")})
                info["static_smem"] = fn.get("static_smem", 0)
        sass = ""
        if cubin is not None and triton_nvidia_bin("cuobjdump"):
            cubin_path = os.path.join(tmp, "k.cubin")
            with open(cubin_path, "wb") as f:
                f.write(cubin)
            ru = parse_resource_usage(run_tool([triton_nvidia_bin("cuobjdump"), "--dump-resource-usage", cubin_path]))
            if ru:
                fn = next(iter(ru.values()))
                info.setdefault("registers", fn["registers"])
                info.setdefault("stack", fn["stack"])
                info["static_smem"] = fn["static_smem"]
            sass = run_tool([triton_nvidia_bin("cuobjdump"), "-sass", cubin_path])
    info["wgmma_ptx"] = bool(ptx and "wgmma" in ptx)
    info["hgmma_sass"] = "HGMMA" in sass
    info["mma_sass"] = bool(re.search(r"\bHMMA\b", sass))
    info["wgmma"] = info["wgmma_ptx"] or info["hgmma_sass"]
    info["spills"] = info.get("spill_stores", 0) + info.get("spill_loads", 0)
    info["shared_mem"] = dynamic_smem + info.get("static_smem", 0)
    info.update(theoretical_occupancy(info.get("registers", 0), info["shared_mem"], num_warps))
    if keep_sass:
        info["sass"] = sass
    return info


def compile_kernel(entry: Mapping, capability: int = 90, keep_sass: bool = False) -> dict:
    """AOT-compile one kernel spec (see the module docstring) for ``sm_<capability>`` and report its resources.

    Returns :func:`analyze_binary`'s dict plus ``num_stages``, ``arch`` and ``source="triton"``. Raises ValueError
    for a malformed spec or a function defined under ``TRITON_INTERPRET=1``; compiler errors propagate.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    fn, signature = entry.get("fn"), entry.get("signature")
    if not isinstance(fn, JITFunction):
        raise ValueError(f"fn: expected a @triton.jit function, got {type(fn).__name__}"
                         + ("; TRITON_INTERPRET=1 was set when it was defined — AOT compilation needs the real "
                            "JIT, so run without TRITON_INTERPRET" if os.environ.get("TRITON_INTERPRET") else ""))
    if not isinstance(signature, Mapping) or not signature:
        raise ValueError("signature: expected a non-empty mapping of argument name -> Triton type")
    constexprs = dict(entry.get("constexprs") or {})
    sig = {**signature, **{k: "constexpr" for k in constexprs}}
    options = dict(entry.get("options") or {})
    for k in ("num_warps", "num_stages"):
        if entry.get(k) is not None:
            options.setdefault(k, entry[k])
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in entry.get("div16", ())
             if a not in constexprs}
    k = triton.compile(ASTSource(fn, sig, constexprs, attrs), target=GPUTarget("cuda", capability, 32),
                       options=options or None)
    md = k.metadata
    info = analyze_binary(k.asm.get("ptx"), k.asm.get("cubin"), num_warps=md.num_warps,
                          dynamic_smem=int(getattr(md, "shared", 0) or 0), keep_sass=keep_sass)
    info.update({"num_stages": md.num_stages, "arch": f"sm_{capability}", "source": "triton"})
    return info


def triton_report_rows(kernels: Sequence[Mapping], capability: int = 90) -> list[dict]:
    """One resource row per kernel spec (see :func:`spin_kernels.perf.kernel_report`): compiled, checked
    (``ok``: no spills, wgmma where a GEMM), timed; a spec that fails to compile is a row with its error."""
    rows = []
    for i, entry in enumerate(kernels):
        if isinstance(entry, Mapping) and "import_error" in entry:
            rows.append({"name": entry["name"], "error": f"import failed: {entry['import_error']}", "ok": False})
            continue
        if not isinstance(entry, Mapping) or "fn" not in entry or "signature" not in entry:
            raise ValueError(f"kernels[{i}]: expected dict(name, fn, signature, constexprs, is_gemm), got {entry!r}")
        name = entry.get("name") or getattr(entry["fn"], "__name__", f"kernel{i}")
        row = {"name": name, "kernel": getattr(entry["fn"], "__name__", None),
               "is_gemm": bool(entry.get("is_gemm", False))}
        t0 = time.perf_counter()
        try:
            row.update(compile_kernel(entry, capability))
            row["ok"] = row["spills"] == 0 and (row["wgmma"] or not row["is_gemm"])
        except Exception as e:  # noqa: BLE001 - one failing kernel must not hide the others
            row.update({"error": f"{type(e).__name__}: {e}", "ok": False})
        row["compile_s"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
    return rows


def load_kernels(spec: str = "spin_kernels.triton") -> list:
    """The kernel specs named by ``"module[:attr]"`` (``attr`` defaults to ``AOT_KERNELS``)."""
    module, _, attr = spec.partition(":")
    return list(getattr(importlib.import_module(module), attr or "AOT_KERNELS"))


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: print :func:`triton_report_rows` (the Triton rows of the kernels report) as one JSON list."""
    p = argparse.ArgumentParser(description="AOT-compile Triton kernels for sm_90 and print their resources as "
                                "JSON (no GPU needed).")
    p.add_argument("names", nargs="*", help="only these kernels (default: all of the registry)")
    p.add_argument("--kernels", default="spin_kernels.triton",
                   help="the registry: MODULE[:ATTR], a list of kernel specs (default ATTR: AOT_KERNELS)")
    p.add_argument("--capability", type=int, default=90)
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("spin_kernels.perf.aot: unset TRITON_INTERPRET to compile kernels")
    kernels = load_kernels(args.kernels)
    if args.names:
        missing = set(args.names) - {e.get("name") for e in kernels}
        if missing:
            sys.exit(f"spin_kernels.perf.aot: no kernels named {sorted(missing)} in {args.kernels}")
        kernels = [e for e in kernels if e.get("name") in args.names]
    rows = triton_report_rows(kernels, capability=args.capability)
    json.dump(rows, sys.stdout, indent=1, default=str)
    print()


def report_in_subprocess(names: Sequence[str] = (), kernels: str = "spin_kernels.triton", *,
                         pythonpath: Sequence[str] = (), timeout: float = 900) -> dict:
    """Run :func:`main` in a child process without ``TRITON_INTERPRET``; ``{kernel name: report row}``.

    For callers under the Triton interpreter (tests). ``pythonpath``: extra import directories for the child (where
    a ``kernels`` registry outside the package lives). Raises RuntimeError with the child's stderr if it fails.
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([*pythonpath, *filter(None, [env.get("PYTHONPATH")])])
    p = subprocess.run([sys.executable, "-m", __name__, "--kernels", kernels, *names], env=env,
                       capture_output=True, text=True, timeout=timeout, check=False)
    if p.returncode != 0:
        raise RuntimeError(f"AOT report of {kernels} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return {row["name"]: row for row in json.loads(p.stdout)}


if __name__ == "__main__":
    main()
