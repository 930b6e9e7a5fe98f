"""Build script for spin_kernels.

The pure-Python package always installs. The CUDA extension ``spin_kernels._C`` is built from ``csrc/``
when all of these hold, and otherwise skipped with a one-line reason:

* ``csrc/`` contains ``.cu`` / ``.cpp`` sources,
* the installed torch is a CUDA build,
* the CUDA toolkit is found (``CUDA_HOME`` / ``CUDA_PATH``, else located through ``nvcc`` on the PATH; a
  wrapper script named ``nvcc`` is resolved by asking nvcc itself where it lives).

Knobs: ``TORCH_CUDA_ARCH_LIST`` (default: the visible GPU's capability, else ``8.0+PTX;9.0a``: Ampere code and
PTX for any newer GPU, Hopper code; entries older than sm_80 are dropped with a message), ``MAX_JOBS`` (ninja
parallelism), ``SPIN_NO_CUDA=1`` (skip the extension).

Build with ``pip install -e . --no-build-isolation`` so the already-installed torch is used.
"""
import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"


def _say(msg):
    print(f"spin_kernels setup: {msg}", file=sys.stderr)


def _load_build_helpers():
    """spin_kernels/cuda_build.py, loaded by path: importing the package itself would need its dependencies."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("spin_cuda_build", ROOT / "spin_kernels" / "cuda_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_build = _load_build_helpers()
find_cuda_home = _build.find_cuda_home


def cuda_extension():
    """Return ([ext_modules], cmdclass) for spin_kernels._C, or ([], {}) with the reason printed."""
    sources = sorted(str(p.relative_to(ROOT)) for p in CSRC.glob("*") if p.suffix in (".cu", ".cpp"))
    if os.environ.get("SPIN_NO_CUDA") == "1":
        _say("SPIN_NO_CUDA=1: installing the pure-Python package without spin_kernels._C")
        return [], {}
    if not sources:
        _say("csrc/ has no sources yet: installing the pure-Python package without spin_kernels._C")
        return [], {}
    try:
        import torch
    except ImportError:
        _say("torch is not importable at build time (use --no-build-isolation): skipping spin_kernels._C")
        return [], {}
    if torch.version.cuda is None:
        _say(f"torch {torch.__version__} is a CPU build: skipping spin_kernels._C")
        return [], {}
    cuda_home = find_cuda_home()
    if cuda_home is None:
        _say("no CUDA toolkit found (set CUDA_HOME or put nvcc on the PATH): skipping spin_kernels._C")
        return [], {}
    # torch.utils.cpp_extension reads CUDA_HOME at import time, so set it before importing.
    os.environ["CUDA_HOME"] = cuda_home
    archs, dropped = _build.usable_arch_list(os.environ.get("TORCH_CUDA_ARCH_LIST"))
    if dropped:
        _say(f"TORCH_CUDA_ARCH_LIST: dropped {', '.join(dropped)}: the kernels need sm_80 or newer (mma.sync)")
    os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    _build.BUILD_ARCH_FILE.write_text(archs + "\n")  # what cuda.status() checks the GPU against
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    _say(f"building spin_kernels._C with CUDA_HOME={cuda_home}, "
         f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}, MAX_JOBS={os.environ.get('MAX_JOBS', 'auto')}")
    ext = CUDAExtension(
        name="spin_kernels._C",
        sources=sources,
        include_dirs=[str(CSRC)],
        # No -std flag: torch's BuildExtension picks the C++ standard its headers need (C++17 up to torch 2.9,
        # C++20 after). No --use_fast_math: GELU's erff and the statistics must stay IEEE-accurate.
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-lineinfo", "-Xptxas=-v"]},
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = cuda_extension()

setup(
    name="spin_kernels",
    version="0.1.0",
    description="Fused GPU kernels and tools for weight-shared isotropic vision networks (SPIN)",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["spin_kernels", "spin_kernels.*"]),
    package_data={"spin_kernels": ["_build_arch.txt"]},
    install_requires=[
        "torch>=2.6",
        "torchvision",
        "triton",
        "timm>=1.0",
        "numpy",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "hypothesis", "scikit-learn"],
        "build": ["ninja", "pybind11"],
    },
    entry_points={"console_scripts": ["spin=spin_kernels.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
