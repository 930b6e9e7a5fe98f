"""The CUDA C++ extension ``spin_kernels._C``: whether it is built, loadable and usable here, and why not."""
from __future__ import annotations

import importlib
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported lazily: `spin info` reports on this module before anything heavy loads
    import torch


@lru_cache(maxsize=None)
def extension():
    """The loaded ``spin_kernels._C`` module, or None when it is not built or cannot be loaded."""
    try:
        return importlib.import_module("spin_kernels._C")
    except ImportError:
        return None


_status: dict | None = None


def status() -> dict:
    """``{"built": bool, "loadable": bool, "usable": bool, "reason": str}`` for `spin info` and fallbacks.

    Probed once per process (neither the extension nor the GPUs change under a running process) and then read
    from a module global: inside ``torch.compile`` the probe (an import) could not be traced, the cached answer
    can. Models probe it when given a backend that may use the kernels, i.e. before any tracing starts.
    """
    global _status
    if _status is None:
        _status = _probe()
    return _status


def _probe() -> dict:
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
    from .cuda_build import built_arch_list, runs_on

    archs, capability = built_arch_list(), torch.cuda.get_device_capability()
    if archs is not None and not runs_on(archs, capability):
        # launching would fail with "no kernel image is available"; the callers take the Triton / PyTorch paths
        sm = f"sm_{capability[0]}{capability[1]}"
        return dict(built=True, loadable=True, usable=False,
                    reason=f"spin_kernels._C was built for TORCH_CUDA_ARCH_LIST={archs}, which has no code for this "
                           f"{sm} GPU; reinstall with TORCH_CUDA_ARCH_LIST={capability[0]}.{capability[1]} (sm_80 "
                           "or newer)")
    return dict(built=True, loadable=True, usable=True, reason=f"ok (built for {archs or 'an unrecorded arch list'})")


ACT_CODES = {"none": 0, "relu": 1, "gelu": 2}


def runs_here(t: torch.Tensor) -> bool:
    """Whether the CUDA kernels can take tensor ``t``: a CUDA tensor with the extension usable, or a CPU tensor
    while the host emulation is enabled (:mod:`spin_kernels.cuda_emulation`, for tests without a GPU)."""
    from . import cuda_emulation

    if t.device.type == "cpu":
        return cuda_emulation.enabled()
    return t.device.type == "cuda" and status()["usable"]


def _require(h: torch.Tensor, name: str = "h"):
    """The extension module that runs on tensor ``h``'s device; a clear error when there is none."""
    import torch

    from . import cuda_emulation

    if not isinstance(h, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(h).__name__}")
    if h.device.type == "cpu" and cuda_emulation.enabled():
        return cuda_emulation.module()
    if h.device.type != "cuda":
        raise ValueError(f"{name}: the CUDA kernels need CUDA tensors, got one on {h.device} "
                         "(use backend='reference' or 'triton' on the CPU)")
    ext = extension()
    if ext is None:
        raise RuntimeError(f"spin_kernels._C is unavailable: {status()['reason']}")
    return ext


def _act_code(act: str, name: str) -> int:
    if act not in ACT_CODES:
        raise ValueError(f"{name}: expected one of {list(ACT_CODES)}, got {act!r}")
    return ACT_CODES[act]


def dwconv_forward(h, weight, bias=None, a=None, b=None, *, act: str = "gelu", post_scale=None,
                   flip: bool = False, with_stats: bool = True, res=None, act_in: str = "none",
                   stats_act: str = "none", out=None):
    """Fused depthwise conv on channels-last ``h`` [B, H, W, C] (CUDA).

    ``x = [res] + a * act_in(h) + b`` (rebuilt on load; zero padding applies to x), ``y = post_scale *
    act(dw(x) + bias)``. ``weight`` is [C, 1, k, k] (odd k from 3 to 9) in h's dtype; ``a``, ``b``, ``bias``,
    ``post_scale`` are optional per-channel vectors; ``res`` an optional tensor like h; ``out`` an optional
    output tensor like h. Returns ``(y, stats)`` where ``stats`` is [3, tiles, C] fp32 (count, mean, M2 of
    ``stats_act(y)`` per spatial tile) or None.
    """
    ext = _require(h)
    y, stats = ext.dwconv_forward(h, res, a, b, _act_code(act_in, "act_in"), weight, bias, post_scale,
                                  _act_code(act, "act"), _act_code(stats_act, "stats_act"), flip, with_stats, out)
    return y, (stats if with_stats else None)


def dwconv_backward_input(dz, weight, a=None):
    """Input gradient of ``z = dw(a*h + b)`` (CUDA): ``dh = a * dw_flipped(dz)``, in dz's dtype."""
    ext = _require(dz, "dz")
    return ext.dwconv_forward(dz, None, None, None, 0, weight, None, a, 0, 0, True, False)[0]


def dwconv_backward_data(du, weight, hz, xvec, *, q=None, vec6=None, act: str = "none", act_in: str = "none",
                         write_dx: bool = True, write_dhz: bool = False, with_sums: bool = True, dx_out=None):
    """Input side of a ConvMixer layer's backward through the depthwise conv (CUDA), channels-last [B, H, W, C].

    ``dq`` is rebuilt on load from ``du`` (with ``q`` and ``vec6`` = [alpha, beta, c1, c2, mean, invstd]: the
    BatchNorm + ``act`` backward, see csrc/depthwise_conv.h), then ``dx = du + dw_flipped(dq)`` and
    ``dhz = act_in'(hz) * ax * dx`` with ``xvec`` = [ax, bx, mean_in, invstd_in]. Returns (dx, dhz, sums) where
    ``sums`` [2, tiles, C] fp32 holds per-tile sum(dx) and sum(dx * xhat_in); each is None when not requested.
    """
    ext = _require(du, "du")
    dx, dhz, sums = ext.dwconv_backward_data(du, q, vec6, _act_code(act, "act"), weight, hz, xvec,
                                             _act_code(act_in, "act_in"), write_dx, write_dhz, with_sums, dx_out)
    return (dx if write_dx else None), (dhz if write_dhz else None), (sums if with_sums else None)


def dwconv_backward_weight(dz, h, kernel_size: int, a=None, b=None, partial_ctas: int = 264, *, q=None,
                           vec6=None, act: str = "none", res=None, act_in: str = "none"):
    """Weight [C, 1, k, k] and bias [C] gradients (fp32, deterministic) of ``z = dw(x) + bias`` (CUDA).

    ``x = [res] + a * act_in(h) + b``; the output gradient is ``dz``, or — given ``q`` and ``vec6`` — rebuilt
    from ``dz`` as in :func:`dwconv_backward_data`.
    """
    ext = _require(dz, "dz")
    dweight, dbias = ext.dwconv_backward_weight(dz, q, vec6, _act_code(act, "act"), h, res, a, b,
                                                _act_code(act_in, "act_in"), kernel_size, partial_ctas)
    return dweight, dbias


def merge_stats(stats):
    """Merge per-tile (count, mean, M2) [3, tiles, C] into per-channel (count, mean, biased variance)."""
    count, mean, m2 = stats.double().unbind(0)
    n = count.sum(0)
    total_mean = (count * mean).sum(0) / n
    # Chan's parallel formula: M2 = sum M2_i + sum n_i (mean_i - mean)^2.
    total_m2 = m2.sum(0) + (count * (mean - total_mean) ** 2).sum(0)
    return n, total_mean, total_m2 / n


def cuobjdump_path() -> str | None:
    """A cuobjdump binary: the CUDA toolkit's, else the one triton ships (backends/nvidia/bin)."""
    import os
    import shutil

    from .cuda_build import find_cuda_home

    candidates = [shutil.which("cuobjdump")]
    home = find_cuda_home()
    if home:
        candidates.append(os.path.join(home, "bin", "cuobjdump"))
    try:
        import triton

        candidates.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    except ImportError:
        pass
    return next((c for c in candidates if c and os.path.exists(c)), None)


def _kernel_name(symbol: str) -> str:
    """The ``..._kernel`` identifier inside an Itanium-mangled symbol (length-prefixed names), else the symbol."""
    import re

    for m in re.finditer(r"\d+", symbol):
        digits, start = m.group(), m.end()
        for i in range(len(digits)):  # a hash may run into the length prefix: try each suffix of the digits
            n = int(digits[i:])
            name = symbol[start:start + n]
            if name.endswith("_kernel") and len(name) == n:
                return name
    return symbol


def resource_usage(library: str | None = None, arch: str = "sm_90a") -> list[dict]:
    """Per-kernel resource use of the built extension's ``arch`` machine code from ``cuobjdump
    --dump-resource-usage``.

    Returns dicts with ``kernel`` (the short name), ``symbol``, ``registers``, ``stack``, ``shared``, ``local``
    (bytes; spills show up as stack / local memory). Empty when the extension or cuobjdump is missing, or the
    build has no code for ``arch``.
    """
    import subprocess

    if library is None:
        ext = extension()
        library = getattr(ext, "__file__", None)
    tool = cuobjdump_path()
    if not library or not tool:
        return []
    from .perf.machine_code import parse_resource_usage

    out = subprocess.run([tool, "--dump-resource-usage", "-arch", arch, library], capture_output=True,
                         text=True).stdout
    rows = []
    for symbol, use in parse_resource_usage(out).items():
        dtype = next((t for t in ("bfloat16", "half", "If") if t in symbol), "")
        rows.append(dict(kernel=_kernel_name(symbol) + {"bfloat16": "<bf16>", "half": "<fp16>",
                                                        "If": "<fp32>"}.get(dtype, ""),
                         symbol=symbol, registers=use["registers"], stack=use["stack"], shared=use["static_smem"],
                         local=use["local"]))
    return rows


MAX_RUNS_PER_LAUNCH = 64  # csrc/shared_run.h kMaxRuns


# The emulated GPU's opt-in shared memory per CTA: an H100 / H200's 227 KiB.
EMULATED_SMEM_PER_BLOCK = 227 * 1024


def shared_run_fits(t: torch.Tensor, channels: int) -> tuple[bool, int, int]:
    """(fits, bytes needed, bytes available): whether one CTA of :func:`shared_run_forward` for ``channels``
    channels gets the dynamic shared memory it needs on ``t``'s device (the resident W slice grows with C)."""
    import torch

    need = _require(t, "x").shared_run_smem_bytes(channels)
    have = (EMULATED_SMEM_PER_BLOCK if t.device.type == "cpu"
            else torch.cuda.get_device_properties(t.device).shared_memory_per_block_optin)
    return need <= have, need, have


def prepare_shared_run(x, w, w_bias, dw_weight, dw_bias, s1, t1, s2, t2, *, act: str, spin_residual: bool,
                       run_lengths=None):
    """A prepared :func:`shared_run_forward`: every check and conversion of the parameters done once; call it with
    an input like ``x`` (same C, dtype and device; any B, H, W) for the output. What the eval model caches."""
    ext = _require(x, "x")
    if act == "none":
        raise ValueError("act: the shared run takes 'relu' or 'gelu', got 'none'")
    code = _act_code(act, "act")
    if run_lengths is None:
        if isinstance(w, (list, tuple)):
            raise ValueError("run_lengths: required when w is a list of per-run weights")
        w, w_bias, run_lengths = [w], [w_bias], [dw_weight.shape[0]]
    return ext.SharedRunLaunch(x, list(w), list(w_bias), [int(n) for n in run_lengths], dw_weight, dw_bias,
                               s1, t1, s2, t2, code, bool(spin_residual))


def launch_shared_run(prepared, x):
    """Run a :func:`prepare_shared_run` launch on ``x`` (one cooperative launch)."""
    return prepared(x)


def shared_run_forward(x, w, w_bias, dw_weight, dw_bias, s1, t1, s2, t2, *, act: str, spin_residual: bool,
                       run_lengths=None):
    """Eval-mode ConvMixer layers in one cooperative launch (CUDA, fp16/bf16), each run of layers keeping its
    shared pointwise weight resident in shared memory.

    ``x`` [B, H, W, C] channels-last; ``w`` [C, C(, 1, 1)] and ``w_bias`` [C] for one run of all L layers, or
    lists of R of them with ``run_lengths`` (R ints summing to L, R ≤ 64) for consecutive runs — a whole trunk in
    one launch; per-layer ``dw_weight`` [L, C, k, k] (used without a copy when fp32 in channels-last memory),
    ``dw_bias`` and folded BatchNorms ``s1, t1, s2, t2`` [L, C] (BN(v) = s * v + t). Returns the output of the
    L layers.
    """
    prepared = prepare_shared_run(x, w, w_bias, dw_weight, dw_bias, s1, t1, s2, t2, act=act,
                                  spin_residual=spin_residual, run_lengths=run_lengths)
    return launch_shared_run(prepared, x)


class _PythonTensorWatch:
    """TensorWatch without the extension: the same answer, walking the tensors in Python."""

    def __init__(self, tensors):
        self._tensors = list(tensors)
        self._key = self._now()

    def _now(self):
        return [(t.data_ptr(), t._version) for t in self._tensors]

    def unchanged(self) -> bool:
        return self._now() == self._key


def tensor_watch(tensors):
    """An object whose ``unchanged()`` says whether any of ``tensors`` was modified in place, given new data or
    swapped since: the extension's (a few ns per tensor) when one is loaded, else a Python walk."""
    from . import cuda_emulation

    ext = extension() or (cuda_emulation.module() if cuda_emulation.enabled() else None)
    return ext.TensorWatch(list(tensors)) if ext is not None else _PythonTensorWatch(tensors)
