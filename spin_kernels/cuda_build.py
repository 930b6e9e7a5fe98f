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


def default_arch_list() -> str:
    """TORCH_CUDA_ARCH_LIST default: the visible GPU's compute capability, else Hopper ``9.0a`` (wgmma)."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return f"{major}.{minor}" + ("a" if major == 9 else "")
    except Exception:  # noqa: BLE001 - any failure just means "no visible GPU"
        pass
    return "9.0a"
