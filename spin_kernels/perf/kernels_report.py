"""The kernel resource report (``spin kernels-report``): every shipped Triton kernel AOT-compiled for sm_90 and the
CUDA extension's kernels: registers, spills, shared memory, tensor-core path, occupancy."""
from __future__ import annotations

from typing import Mapping, Sequence

from .aot import triton_report_rows
from .machine_code import cuda_extension_report


def collect_aot_kernels() -> list[dict]:
    """The AOT kernel registry: ``spin_kernels.triton.AOT_KERNELS`` when the package defines it, else the
    ``AOT_KERNELS`` lists of its submodules (deduplicated by name). Import failures leave a kernel family out
    (and are reported as a row with the error) instead of crashing the report."""
    import importlib
    import pkgutil
    try:
        pkg = importlib.import_module("spin_kernels.triton")
    except Exception as e:  # noqa: BLE001 - no triton, or a module that fails to import
        return [{"name": "spin_kernels.triton", "import_error": f"{type(e).__name__}: {e}"}]
    found = getattr(pkg, "AOT_KERNELS", None)
    if found:
        return list(found)
    out, seen = [], set()
    for info in pkgutil.iter_modules(getattr(pkg, "__path__", [])):
        try:
            mod = importlib.import_module(f"spin_kernels.triton.{info.name}")
        except Exception as e:  # noqa: BLE001
            out.append({"name": f"spin_kernels.triton.{info.name}", "import_error": f"{type(e).__name__}: {e}"})
            continue
        for entry in getattr(mod, "AOT_KERNELS", None) or []:
            name = entry.get("name")
            if name not in seen:
                seen.add(name)
                out.append(entry)
    return out


def kernel_report(kernels: Sequence[Mapping] | None = None, *, include_cuda: bool = True,
                  so_path: str | None = None, ptxas_log: str | None = None, capability: int = 90) -> list[dict]:
    """Compile every kernel of ``kernels`` (default ``spin_kernels.triton.AOT_KERNELS``) for ``sm_<capability>``
    (default sm_90) and report their resources, followed by the CUDA extension's kernels with ``include_cuda``.

    Each entry is a kernel spec, ``dict(name, fn, signature, constexprs, is_gemm[, options, num_warps, num_stages,
    div16])``, compiled by :func:`spin_kernels.perf.aot.compile_kernel`. A kernel that fails to compile is
    reported with its error; the rest still run. GEMM kernels without wgmma are flagged ``ok=False``, as are kernels
    that spill. ``so_path`` / ``ptxas_log`` point at the CUDA extension (default: the built
    ``spin_kernels/_C*.so``) and an optional ``nvcc -Xptxas -v`` build log.
    """
    if kernels is None:
        kernels = collect_aot_kernels()
    rows = triton_report_rows(kernels, capability)
    if include_cuda:
        for r in cuda_extension_report(so_path, ptxas_log):
            r.setdefault("ok", False)   # only error rows lack it
            rows.append(r)
    return rows


def format_kernel_report(rows: Sequence[Mapping]) -> str:
    """Table of :func:`kernel_report` rows."""
    if not rows:
        return "no kernels to report (spin_kernels.triton.AOT_KERNELS is absent or empty and no _C extension)"
    lines = [f"{'kernel':36s} {'src':6s} {'regs':>5s} {'spill B':>7s} {'smem B':>8s} {'warps':>5s} {'wgmma':>5s} "
             f"{'occ':>5s} {'limiter':>13s} ok"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['name'][:36]:36s} FAILED: {r['error'][:200]}")
            continue
        occ = r.get("occupancy")
        lines.append(f"{r['name'][:36]:36s} {r.get('source', ''):6s} {r.get('registers', 0):5d} "
                     f"{r.get('spills', 0):7d} {r.get('shared_mem', 0):8d} {r.get('num_warps', '-')!s:>5s} "
                     f"{'yes' if r.get('wgmma') else ('mma' if r.get('mma_sass') else 'no'):>5s} "
                     f"{'-' if occ is None else f'{occ:.0%}':>5s} "
                     f"{r.get('limiter', '-'):>13s} {'ok' if r.get('ok') else 'CHECK'}")
    if any(r.get("source") == "cuda" for r in rows):
        lines.append("cuda rows: shared memory is the static size only (dynamic shared memory and the block size "
                     "are launch parameters, so no occupancy); wgmma column: yes = HGMMA, mma = HMMA (mma.sync)")
    return "\n".join(lines)
