"""The machine-code layer: CUDA tools (ptxas, cuobjdump, c++filt), their output parsers, and resource usage.

Registers, spills, shared memory and theoretical occupancy of compiled kernels, for Triton kernels compiled ahead
of time (:mod:`spin_kernels.perf.aot`) and for the CUDA extension (:func:`cuda_extension_report`). No GPU is needed:
the tools read cubins and PTX.
"""
from __future__ import annotations

import glob
import math
import os
import re
import shutil
import subprocess
import tempfile
from typing import Mapping, Sequence

# sm_90 (H100) per-SM limits used for theoretical occupancy (CUDA occupancy calculator rules).
SM90_LIMITS = dict(regs_per_sm=65536, max_regs_per_thread=255, reg_alloc_unit=256, max_warps_per_sm=64,
                   max_blocks_per_sm=32, smem_per_sm=233472, smem_per_block_max=232448, smem_reserved_per_block=1024,
                   smem_alloc_unit=128)


def theoretical_occupancy(regs_per_thread: int, smem_per_block: int, num_warps: int,
                          limits: Mapping = SM90_LIMITS) -> dict:
    """Resident blocks and warps per SM from registers, shared memory and warps (the occupancy-calculator rules).

    Returns ``dict(blocks_per_sm, warps_per_sm, occupancy (fraction of max warps), limiter)``.
    """
    if num_warps < 1:
        raise ValueError(f"num_warps: expected ≥ 1, got {num_warps!r}")
    if regs_per_thread < 0 or smem_per_block < 0:
        raise ValueError("regs_per_thread / smem_per_block: expected non-negative values")
    lim = {"warps": limits["max_warps_per_sm"] // num_warps, "blocks": limits["max_blocks_per_sm"]}
    if regs_per_thread:
        # Registers are allocated per warp in units of reg_alloc_unit.
        per_warp = math.ceil(regs_per_thread * 32 / limits["reg_alloc_unit"]) * limits["reg_alloc_unit"]
        lim["registers"] = (limits["regs_per_sm"] // per_warp) // num_warps
    smem = smem_per_block + limits["smem_reserved_per_block"]
    smem = math.ceil(smem / limits["smem_alloc_unit"]) * limits["smem_alloc_unit"]
    lim["shared_memory"] = 0 if smem_per_block > limits["smem_per_block_max"] else limits["smem_per_sm"] // smem
    limiter = min(lim, key=lim.get)
    blocks = lim[limiter]
    warps = blocks * num_warps
    return {"blocks_per_sm": blocks, "warps_per_sm": warps, "occupancy": warps / limits["max_warps_per_sm"],
            "limiter": limiter}


def triton_nvidia_bin(tool: str) -> str | None:
    """Path of a CUDA tool (``ptxas``, ``cuobjdump``, ``nvdisasm``) bundled with Triton, else from PATH."""
    try:
        import triton
        p = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", tool)
        if os.path.exists(p):
            return p
    except ImportError:
        pass
    return shutil.which(tool)


_PTXAS_RE = {
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
    "stack": re.compile(r"(\d+) bytes stack frame"),
    "registers": re.compile(r"Used (\d+) registers"),
    "static_smem": re.compile(r"(\d+) bytes smem"),
}


def parse_ptxas_verbose(text: str) -> dict:
    """Parse ``ptxas -v`` / ``nvcc -Xptxas -v`` output into ``{function: {registers, spill_*, stack, ...}}``."""
    out: dict = {}
    current = None
    for line in text.splitlines():
        m = re.search(r"(?:Compiling entry function|Function properties for) '?([\w$.]+)'?", line)
        if m:
            current = m.group(1)
            out.setdefault(current, {})
        if current is None:
            continue
        for key, rx in _PTXAS_RE.items():
            mm = rx.search(line)
            if mm:
                out[current][key] = int(mm.group(1))
    return out


def parse_resource_usage(text: str) -> dict:
    """Parse ``cuobjdump --dump-resource-usage`` into ``{function: {registers, stack, shared, local}}``."""
    out = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"\s*Function ([\w$.]+):", line)
        if m:
            current = m.group(1)
            continue
        if current and "REG:" in line:
            fields = dict(re.findall(r"(\w+(?:\[\d+\])?):(\d+)", line))
            out[current] = {"registers": int(fields.get("REG", 0)), "stack": int(fields.get("STACK", 0)),
                            "static_smem": int(fields.get("SHARED", 0)), "local": int(fields.get("LOCAL", 0))}
            current = None
    return out


def run_tool(cmd: Sequence[str]) -> str:
    """Run a CUDA tool, returning stdout+stderr; a failure raises RuntimeError naming the command."""
    p = subprocess.run(list(cmd), capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:2])} failed ({p.returncode}): {p.stderr.strip()[-500:]}")
    return p.stdout + p.stderr


def find_extension_so(package_dir: str | None = None) -> str | None:
    """Path of the built ``spin_kernels._C*.so`` extension, or None."""
    if package_dir is None:  # the spin_kernels package folder, one above this one
        package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    hits = sorted(glob.glob(os.path.join(package_dir, "_C*.so")))
    return hits[0] if hits else None


def demangle(symbols: Sequence[str]) -> dict:
    """``{mangled: short readable name}`` via ``c++filt`` (e.g. ``dw_forward_kernel<__nv_bfloat16>``); symbols
    stay as they are when c++filt is missing."""
    tool = shutil.which("c++filt")
    if not tool or not symbols:
        return {}
    p = subprocess.run([tool], input="\n".join(symbols), capture_output=True, text=True, check=False)
    out = {}
    for sym, full in zip(symbols, p.stdout.splitlines(), strict=False):
        short = full.replace("(anonymous namespace)::", "")
        if short.startswith("void "):
            short = short[5:]
        # drop the parameter list, then the namespaces in front of the kernel name
        depth = 0
        for i, ch in enumerate(short):
            depth += ch == "<"
            depth -= ch == ">"
            if ch == "(" and depth == 0:
                short = short[:i]
                break
        short = re.sub(r"^(?:\w+::)+", "", short)
        out[sym] = short or sym
    return out


def _system_ptxas() -> str | None:
    """The CUDA toolkit's ptxas (newer than Triton's bundled one, so it reads PTX from the toolkit's nvcc)."""
    for cand in (shutil.which("ptxas"), "/usr/local/cuda/bin/ptxas"):
        if cand and os.path.exists(cand):
            return cand
    return triton_nvidia_bin("ptxas")


def ptxas_spills_of_binary(so_path: str) -> dict:
    """Exact per-function registers / spills of every PTX embedded in ``so_path``: extract it
    (``cuobjdump -xptx all``) and re-run ``ptxas -v`` for its own target. ``{}`` when tools are missing."""
    cuobjdump, ptxas = triton_nvidia_bin("cuobjdump"), _system_ptxas()
    if not cuobjdump or not ptxas:
        return {}
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([cuobjdump, "-xptx", "all", os.path.abspath(so_path)], cwd=tmp, capture_output=True,
                       text=True)
        for ptx_file in sorted(glob.glob(os.path.join(tmp, "*.ptx"))):
            with open(ptx_file) as f:
                m = re.search(r"^\s*\.target\s+(sm_\w+)", f.read(), flags=re.M)
            if not m:
                continue
            try:
                text = run_tool([ptxas, f"-arch={m.group(1)}", "-v", ptx_file, "-o", os.devnull])
            except RuntimeError:
                continue   # e.g. a PTX ISA newer than this ptxas: the cuobjdump numbers still stand
            for fn, info in parse_ptxas_verbose(text).items():
                # several embedded targets may hold the same kernel: keep the worst case
                prev = out.setdefault(fn, {})
                for k, v in info.items():
                    prev[k] = max(prev.get(k, 0), v)
    return out


def cuda_extension_report(so_path: str | None = None, ptxas_log: str | None = None) -> list[dict]:
    """Resource usage of every CUDA kernel inside the built extension.

    Registers / static shared memory / local memory from ``cuobjdump --dump-resource-usage``, spills from
    ``ptxas -v`` re-run on the embedded PTX (or from ``ptxas_log``, a saved ``nvcc -Xptxas -v`` build log), and
    the tensor-core path from ``HGMMA`` in each function's SASS.
    """
    so_path = so_path or find_extension_so()
    if not so_path:
        return []
    tool = triton_nvidia_bin("cuobjdump")
    if not tool:
        return [{"name": os.path.basename(so_path), "error": "cuobjdump not found"}]
    try:
        usage = parse_resource_usage(run_tool([tool, "--dump-resource-usage", so_path]))
        sass = run_tool([tool, "-sass", so_path])
    except RuntimeError as e:
        return [{"name": os.path.basename(so_path), "error": str(e)}]
    spills = ptxas_spills_of_binary(so_path)
    if ptxas_log:
        with open(ptxas_log) as f:
            spills.update(parse_ptxas_verbose(f.read()))
    # Split SASS per function so wgmma is attributed to the right kernel.
    per_fn = dict(re.findall(r"Function : ([\w$.]+)\n(.*?)(?=\n\s*Function : |\Z)", sass, flags=re.S))
    names = demangle(list(usage))
    rows = []
    for fn, u in usage.items():
        body = per_fn.get(fn, "")
        sp = spills.get(fn, {})
        spill_bytes = sp.get("spill_stores", 0) + sp.get("spill_loads", 0) if sp else u["local"]
        rows.append({"name": names.get(fn, fn), "symbol": fn, "source": "cuda", "registers": u["registers"],
                     "stack": u["stack"],
                     "shared_mem": u["static_smem"], "local": u["local"], "spills": spill_bytes,
                     "spills_from": "ptxas" if sp else "cuobjdump LOCAL", "wgmma": "HGMMA" in body,
                     "hgmma_sass": "HGMMA" in body, "mma_sass": bool(re.search(r"\bHMMA\b", body)),
                     "ok": spill_bytes == 0})
    return rows

