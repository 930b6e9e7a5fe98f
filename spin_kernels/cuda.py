"""The CUDA C++ extension ``spin_kernels._C``: whether it is built, loadable and usable here, and why not."""
from __future__ import annotations

import importlib
from functools import lru_cache


@lru_cache(maxsize=None)
def extension():
    """The loaded ``spin_kernels._C`` module, or None when it is not built or cannot be loaded."""
    try:
        return importlib.import_module("spin_kernels._C")
    except ImportError:
        return None


def status() -> dict:
    """``{"built": bool, "loadable": bool, "usable": bool, "reason": str}`` for `spin info` and fallbacks."""
    import torch

    try:
        importlib.import_module("spin_kernels._C")
    except ModuleNotFoundError:
        return dict(built=False, loadable=False, usable=False,
                    reason="spin_kernels._C is not built (csrc/ had no kernels, torch is a CPU build, or no CUDA "
                           "toolkit was found at install time; reinstall with `pip install -e . "
                           "--no-build-isolation` to see the reason)")
    except ImportError as e:
        return dict(built=True, loadable=False, usable=False, reason=f"spin_kernels._C fails to load: {e}")
    if not torch.cuda.is_available():
        return dict(built=True, loadable=True, usable=False, reason="no CUDA GPU is visible")
    return dict(built=True, loadable=True, usable=True, reason="ok")
