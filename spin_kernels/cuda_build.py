"""Locating the CUDA toolkit and choosing the arch list — shared by setup.py and `spin info`.

Kept free of package imports so setup.py can load it by path before anything is installed.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path


def find_cuda_home() -> str | None:
    """Return the CUDA toolkit root (the folder holding bin/nvcc, include/, lib64/), or None.

    Order: ``CUDA_HOME`` / ``CUDA_PATH`` when they hold bin/nvcc; else ask the ``nvcc`` on the PATH where it
    really lives — ``nvcc -dryrun`` prints its own directory (``_HERE_=``), which stays right when the nvcc on
    the PATH is a wrapper script (torch's own guess, dirname(dirname(which nvcc)), is then wrong and the link
    fails on -lcudart); else the parent of nvcc's resolved path.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(var)
        if root and (Path(root) / "bin" / "nvcc").exists():
            return root
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        out = subprocess.run([nvcc, "-dryrun", "-x", "cu", os.devnull], capture_output=True, text=True, timeout=60)
        match = re.search(r"_HERE_=(\S+)", out.stdout + out.stderr)
        if match:
            root = Path(match.group(1)).resolve().parent
            if (root / "include").is_dir():
                return str(root)
    except (OSError, subprocess.SubprocessError):
        pass
    root = Path(os.path.realpath(nvcc)).parent.parent
    return str(root) if (root / "include").is_dir() else None


# The kernels use mma.sync.m16n8k16 with bf16 operands: sm_80 or newer.
MIN_CAPABILITY = (8, 0)
# Without a visible GPU: Ampere machine code + its PTX (JIT-compiled by the driver on any newer GPU, Blackwell
# included) and Hopper machine code (sm_90a: what the cost model reads).
PORTABLE_ARCH_LIST = "8.0+PTX;9.0a"
# Where setup.py records the arch list the extension was built for (cuda.status() reads it)
BUILD_ARCH_FILE = Path(__file__).resolve().parent / "_build_arch.txt"


def default_arch_list() -> str:
    """TORCH_CUDA_ARCH_LIST default: the visible GPU's compute capability (sm_80 or newer), else
    :data:`PORTABLE_ARCH_LIST`."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            if (major, minor) >= MIN_CAPABILITY:
                return f"{major}.{minor}" + ("a" if major == 9 else "")
    except Exception:  # noqa: BLE001 - any failure just means "no visible GPU"
        pass
    return PORTABLE_ARCH_LIST


def _parse(entry: str) -> tuple[int, int, bool, bool]:
    """``"9.0a+PTX"`` -> (9, 0, arch-specific, with PTX)."""
    ptx = entry.upper().endswith("+PTX")
    core = entry[:-4] if ptx else entry
    specific = core.endswith(("a", "f"))
    major, minor = core.rstrip("af").split(".")
    return int(major), int(minor), specific, ptx


def usable_arch_list(requested: str | None) -> tuple[str, list[str]]:
    """(the arch list to build, the entries dropped): entries older than sm_80 are dropped (the kernels cannot
    compile for them), as are unreadable ones; an empty or missing list becomes :func:`default_arch_list`."""
    entries = [e for e in re.split(r"[;\s]+", requested or "") if e]
    kept, dropped = [], []
    for entry in entries:
        try:
            major, minor, _, _ = _parse(entry)
        except ValueError:
            dropped.append(entry)
            continue
        (kept if (major, minor) >= MIN_CAPABILITY else dropped).append(entry)
    return (";".join(kept) if kept else default_arch_list()), dropped


def runs_on(arch_list: str, capability: tuple[int, int]) -> bool:
    """Whether an extension built for ``arch_list`` has code for a GPU of ``capability``: machine code of the
    same major version and an equal or lower minor (an arch-specific ``a`` entry only on its own GPU), or PTX of
    an equal or older arch (the driver compiles it)."""
    for entry in re.split(r"[;\s]+", arch_list):
        if not entry:
            continue
        major, minor, specific, ptx = _parse(entry)
        if specific and (major, minor) == capability:
            return True
        if not specific and major == capability[0] and minor <= capability[1]:
            return True
        if ptx and not specific and (major, minor) <= capability:
            return True
    return False


def built_arch_list() -> str | None:
    """The arch list the installed extension was built for, or None when not recorded."""
    try:
        return BUILD_ARCH_FILE.read_text().strip() or None
    except OSError:
        return None
