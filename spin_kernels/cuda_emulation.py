"""The CUDA kernels of ``csrc/`` built for the host CPU (``-DSPIN_EMULATE``), to test them without a GPU.

``csrc/emulation/emulation.h`` maps CUDA threads to host threads (real ``__syncthreads`` barriers, per-CTA shared
memory poisoned with NaN, cooperative launches with every CTA running at once (a real grid barrier, spinning
ready flags), ``mma.sync`` emulated from the PTX ISA
fragment layouts). The same ``csrc/*.cu`` sources and ``csrc/bindings.cpp`` compile with the host compiler into a
separate module that takes CPU tensors; :func:`enable` routes the wrappers of :mod:`spin_kernels.cuda` to it for
CPU tensors, so every CUDA test also runs here. It checks indexing, tiling, barriers, fragment layouts and the
numerics of each kernel, not speed or the GPU memory model. Built once per source hash (about a minute).

Inter-CTA bugs: :func:`set_schedule` runs the CTAs of every launch in a seeded random order (plain launches several
at a time) and, with ``jitter_us``, delays each CTA by a seeded amount at its start and after every grid barrier
or flag wait, so a missing barrier / flag / fence changes the result under some seed. ``enable(mutations=...)``
routes to a separate build with mutation macros defined (e.g. ``SPIN_MUTATE_DROP_U_WAIT``): the tests plant a
missing flag wait that way and check that the seeded schedules catch it.
"""
from __future__ import annotations

import hashlib
import os
import sys
from functools import lru_cache
from pathlib import Path

CSRC = Path(__file__).resolve().parent.parent / "csrc"
_enabled = False
_mutations: tuple = ()   # preprocessor macros of the build in use (mutation tests only)


def _cuda_include_dir() -> str | None:
    """A directory holding cuda_fp16.h / cuda_runtime_api.h: the toolkit's, else the pip ``nvidia`` wheel's."""
    from .cuda_build import find_cuda_home

    home = find_cuda_home()
    candidates = [Path(home) / "include"] if home else []
    for site in sys.path:
        candidates += sorted(Path(site).glob("nvidia/cu*/include")) + [Path(site) / "nvidia/cuda_runtime/include"]
    for cand in candidates:
        if (cand / "cuda_fp16.h").exists() and (cand / "cuda_runtime_api.h").exists():
            return str(cand)
    return None


def _sources() -> list[Path]:
    return sorted(p for p in CSRC.rglob("*") if p.suffix in (".cu", ".cuh", ".h", ".cpp"))


def source_hash() -> str:
    """Hash of every file under csrc/: the emulated module is rebuilt when any of them changes."""
    h = hashlib.sha256()
    for p in _sources():
        h.update(str(p.relative_to(CSRC)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


@lru_cache(maxsize=None)
def load(verbose: bool = False, mutations: tuple = ()):
    """Build (first call per source hash and mutation set) and import the emulated extension; raises RuntimeError
    if it cannot. ``mutations``: macro names defined for a deliberately broken build (mutation tests)."""
    include = _cuda_include_dir()
    from .cuda_build import find_cuda_home

    # torch's extension module guesses a toolkit at import and warns when it guesses wrong; give it the real one
    if find_cuda_home() and "CUDA_HOME" not in os.environ:
        os.environ["CUDA_HOME"] = find_cuda_home()
    from torch.utils import cpp_extension

    if include is None:
        raise RuntimeError("the CUDA emulation needs the CUDA headers (cuda_fp16.h): install the CUDA toolkit or "
                           "the nvidia-cuda-runtime wheel")
    digest = source_hash() + "".join(f"_{m.lower()}" for m in mutations)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    root = Path(os.environ.get("SPIN_EMULATION_CACHE") or cache / "spin_kernels" / "emulation")
    build_dir = root / digest
    build_dir.mkdir(parents=True, exist_ok=True)
    # The .cu files compile as C++: a one-line wrapper per file keeps the kernels' single source of truth.
    sources = [str(CSRC / "bindings.cpp"), str(CSRC / "emulation" / "runtime.cpp")]
    for cu in sorted(CSRC.glob("*.cu")):
        wrapper = build_dir / f"{cu.stem}_emulated.cpp"
        text = f'#include "{cu}"\n'
        if not wrapper.exists() or wrapper.read_text() != text:
            wrapper.write_text(text)
        sources.append(str(wrapper))
    # -fno-strict-aliasing: CUDA code type-puns through vector types (16-byte loads as uint4), which nvcc
    # compiles as intended but GCC's strict-aliasing optimisations would silently break
    flags = ["-DSPIN_EMULATE", *(f"-D{m}" for m in mutations), "-std=c++20", "-O2", "-fno-strict-aliasing",
             "-pthread", "-Wno-unknown-pragmas", f"-I{CSRC}", f"-I{include}"]
    try:
        return cpp_extension.load(name=f"spin_kernels_emulated_{digest}", sources=sources, extra_cflags=flags,
                                  extra_ldflags=["-pthread"], build_directory=str(build_dir), with_cuda=False,
                                  verbose=verbose)
    except Exception as e:  # compiler missing or a compile error: say which
        raise RuntimeError(f"building the CUDA emulation failed: {e}") from e


def enable(on: bool = True, sm_count: int | None = None, mutations: tuple = ()) -> None:
    """Route :mod:`spin_kernels.cuda`'s kernels to the emulation for CPU tensors (builds it on first use).

    ``sm_count`` sets the emulated GPU's SM count (each with an H100's per-SM limits), which bounds the grid of
    cooperative launches. ``mutations``: use the build with these mutation macros defined (tests only).
    """
    global _enabled, _mutations
    if on:
        ext = load(mutations=tuple(mutations))
        if sm_count is not None:
            ext.emulation_set_sm_count(int(sm_count))
        _mutations = tuple(mutations)
    else:
        _mutations = ()
    _enabled = on


def module():
    """The emulated extension in use (the mutated build while one is enabled)."""
    return load(mutations=_mutations)


def set_schedule(seed: int, jitter_us: int = 0) -> None:
    """CTA schedule of the emulated GPU: ``seed`` 0 runs a plain launch's CTAs one at a time in blockIdx order;
    any other seed runs them in a seeded random order, several at once, and delays every CTA by a seeded
    0..``jitter_us`` microseconds at its start and after each grid barrier or flag wait (all launches, until
    changed)."""
    module().emulation_set_schedule(int(seed), int(jitter_us))


def enabled() -> bool:
    """Whether CPU tensors are routed to the emulated kernels."""
    return _enabled
