"""Backend selection: which implementation a model runs, and the fused entry points it binds.

``reference`` (plain PyTorch modules), ``triton`` (the fused Triton kernels behind the custom ops of
:mod:`spin_kernels.ops`), ``cuda`` (the CUDA C++ kernels of the extension where they apply, Triton elsewhere) or
``auto`` (the best that works here). Models ask this module — they do not import the ops, the extension or its
host emulation themselves — so that the model layer stays independent of how kernels are built and tested.
"""
from __future__ import annotations

import importlib

import torch

from . import cuda, cuda_emulation
from ._util import warn_once

BACKENDS = ("reference", "triton", "cuda", "auto")


def resolve_backend(backend: str) -> str:
    """Validate a backend name. ``auto`` resolves to the best backend that works on the current machine."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: unknown backend {backend!r}; valid backends are {', '.join(BACKENDS)}")
    if backend == "auto":
        # The fused backends need a GPU; on the CPU the reference path is the fast one (the Triton interpreter
        # exists for testing, not speed).
        return "triton" if torch.cuda.is_available() and _triton_importable() else "reference"
    return backend


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401 - an optional heavy dependency, imported only to see whether it is there
    except ImportError:
        return False
    return True


def probe_cuda_extension() -> None:
    """Probe (and cache) the CUDA extension's status now: models call this when bound to a cuda / auto backend,
    outside any ``torch.compile`` trace of ``forward`` (the probe imports the extension)."""
    cuda.status()


def emulated_cuda() -> bool:
    """True while the CUDA kernels run through their host emulation (tests without a GPU)."""
    return cuda_emulation.enabled()


def fused_forward(op_module: str, fn_name: str):
    """The fused function ``spin_kernels.ops.<op_module>.<fn_name>``, or None when this build has none.

    Looked up once when a model is built (not in ``forward``) so ``torch.compile(fullgraph=True)`` traces the
    model without meeting an import.
    """
    try:
        module = importlib.import_module(f"spin_kernels.ops.{op_module}")
        return getattr(module, fn_name)
    except (ImportError, AttributeError):
        return None


def warn_reference_fallback(family: str, backend: str) -> None:
    """Say once that a requested fused backend has no implementation here and the reference path runs."""
    warn_once(f"{family}:{backend}", f"backend={backend!r}: no fused {family} path is available in this build; "
              "running the reference PyTorch path")
