"""``spin info``: versions, the device, and which kernel backends work here — and, when not, why not."""
from __future__ import annotations

import json
import os
import platform
import sys

from .. import cuda
from .._version import __version__


def backend_status() -> dict[str, dict]:
    """``{backend: {"available": bool, "why": str}}`` for reference, triton and cuda on this machine."""
    import torch

    out = {"reference": {"available": True, "why": "plain PyTorch; runs on every device"}}
    gpu = torch.cuda.is_available()
    try:
        import triton

        interp = os.environ.get("TRITON_INTERPRET") == "1"
        if gpu:
            out["triton"] = {"available": True, "why": f"triton {triton.__version__} on {torch.cuda.get_device_name()}"}
        elif interp:
            out["triton"] = {"available": True, "why": f"triton {triton.__version__} in the CPU interpreter "
                             "(TRITON_INTERPRET=1): correct but slow, for testing"}
        else:
            out["triton"] = {"available": False, "why": f"triton {triton.__version__} is importable but there is no "
                             "GPU (set TRITON_INTERPRET=1 to run its kernels in the CPU interpreter)"}
    except Exception as e:  # noqa: BLE001 - ImportError or a broken install: report either
        out["triton"] = {"available": False, "why": f"triton is not importable ({type(e).__name__}: {e})"}
    st = cuda.status()  # built / loadable / usable, and why not
    why = "spin_kernels._C is built and a GPU is present" if st["usable"] else st["reason"]
    if st["loadable"] and not gpu:
        why += " (spin_kernels.cuda_emulation.enable() runs its kernels on CPU tensors, for tests)"
    out["cuda"] = {"available": st["usable"], "why": why}
    return out


def environment() -> dict:
    """Versions and device description."""
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "torch_cuda": torch.version.cuda}
    for mod in ("timm", "torchvision", "triton", "numpy"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            versions[mod] = None
    versions["spin_kernels"] = __version__
    if torch.cuda.is_available():
        devices = [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    else:
        devices = [f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads), no CUDA device"]
    return {"versions": versions, "platform": platform.platform(), "devices": devices}


def run_info(args) -> int:
    """Print the environment and backend report (text, or JSON with ``--json``)."""
    env = environment()
    env["backends"] = backend_status()
    if getattr(args, "json", False):
        print(json.dumps(env, indent=2))
        return 0
    print("versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
    print(f"platform: {env['platform']}")
    for d in env["devices"]:
        print(f"device:   {d}")
    print("backends:")
    for name, st in env["backends"].items():
        print(f"  {name:<10} {'yes' if st['available'] else 'no ':<4} {st['why']}")
    sys.stdout.flush()
    return 0
