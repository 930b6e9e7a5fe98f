"""Which Triton kernels a fused op launches at a given shape, with which grid, arguments and compile options — found
without a GPU by running the op's own host code on fake CUDA tensors and recording each launch instead of doing it.

Nothing about tile sizes, grids or specialisations is restated here: the launch helpers
(``spin_kernels.triton.*``) pick them exactly as they would on an H100, because the tensors they see claim to be
on a CUDA device (``torch._subclasses.FakeTensorMode``: shapes, dtypes and strides, no memory) and
``torch.cuda.get_device_properties`` reports the card's multiprocessor count. ``JITFunction.run`` is replaced by a
recorder, so nothing is compiled or launched while the op runs; each :class:`Launch` then yields the compile spec
(:func:`spin_kernels.perf.aot.compile_kernel`) with the specialisation Triton's launcher would apply (16-byte
aligned pointers and integers divisible by 16 marked, integers equal to 1 made constants).

The host's own PyTorch compute ops between the launches (BN vector math, copies, reductions of partials: each a
kernel launch of its own on a GPU) are counted too, per phase (:func:`is_compute_op`).

Must run without ``TRITON_INTERPRET`` (the interpreter replaces the kernels by Python functions).
"""
from __future__ import annotations

import contextlib
import inspect
import os
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any
from unittest import mock

_TRITON_TYPES = {"torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float32": "fp32", "torch.float64": "fp64",
                 "torch.int32": "i32", "torch.int64": "i64", "torch.int16": "i16", "torch.int8": "i8",
                 "torch.uint8": "u8", "torch.bool": "i1"}


@dataclass(frozen=True)
class TensorArg:
    """What a kernel needs to know of a tensor argument: element type, the bytes of the view, its storage."""

    dtype: str          # Triton element type ("bf16", "fp32", ...)
    shape: tuple
    nbytes: int         # bytes spanned by the view
    storage: Any        # identity of the underlying storage (views of one buffer share it)
    aligned: bool       # data pointer 16-byte aligned (torch allocations are; views may not be)


@dataclass
class Launch:
    """One recorded kernel launch."""

    kernel: str                         # the @triton.jit function's name
    fn: Any                             # the JITFunction
    grid: tuple                         # (x, y, z)
    args: dict                          # argument name -> value (TensorArg for tensors)
    constexprs: dict                    # declared constexprs and the launcher's specialised constants
    options: dict                       # num_warps, num_stages (Triton's defaults filled in)
    phase: str = ""                     # "fwd" (training forward), "bwd", "eval"
    tags: dict = field(default_factory=dict)

    @property
    def ctas(self) -> int:
        """Programs (CTAs) in the grid."""
        return self.grid[0] * self.grid[1] * self.grid[2]

    @property
    def num_warps(self) -> int:
        """Warps per program."""
        return int(self.options["num_warps"])

    def spec(self) -> dict:
        """The compile spec of this launch for :func:`spin_kernels.perf.aot.compile_kernel`."""
        signature, div16 = {}, []
        for name, value in self.args.items():
            if name in self.constexprs:
                continue
            if isinstance(value, TensorArg):
                signature[name] = "*" + value.dtype
                if value.aligned:
                    div16.append(name)
            elif isinstance(value, bool):
                signature[name] = "i1"
            elif isinstance(value, int):
                signature[name] = "i32" if -2 ** 31 <= value < 2 ** 31 else "i64"
                if value % 16 == 0:
                    div16.append(name)
            elif isinstance(value, float):
                signature[name] = "fp32"
            else:
                raise TypeError(f"{self.kernel}: argument {name} has an unexpected type {type(value).__name__}")
        return dict(name=self.kernel, fn=self.fn, signature=signature, constexprs=dict(self.constexprs),
                    options=dict(self.options), div16=div16)

    def key(self) -> tuple:
        """Launches with equal keys compile to the same binary."""
        spec = self.spec()
        return (self.kernel, tuple(sorted(spec["signature"].items())), tuple(sorted(spec["constexprs"].items())),
                tuple(sorted(spec["options"].items())), tuple(sorted(spec["div16"])))

    def bytes_touched(self) -> int:
        """Bytes of every distinct buffer among the tensor arguments, each counted once (the largest view of a
        storage): what this launch must move through memory at least once if it touches all of it."""
        by_storage: dict = {}
        for name, value in self.args.items():
            # a kernel's *scratch_ptr is its own staging area, written and read back by the same program while
            # it stays on chip (L1/L2): working storage, not compulsory memory traffic
            if isinstance(value, TensorArg) and not name.endswith("scratch_ptr"):
                by_storage[value.storage] = max(by_storage.get(value.storage, 0), value.nbytes)
        return sum(by_storage.values())


def _tensor_arg(t) -> TensorArg:
    from torch.multiprocessing.reductions import StorageWeakRef

    dtype = _TRITON_TYPES.get(str(t.dtype))
    if dtype is None:
        raise TypeError(f"no Triton type for {t.dtype}")
    extent = 1 + sum((s - 1) * st for s, st in zip(t.shape, t.stride(), strict=True)) if t.numel() else 0
    return TensorArg(dtype=dtype, shape=tuple(t.shape), nbytes=extent * t.element_size(),
                     storage=StorageWeakRef(t.untyped_storage()),
                     aligned=(t.storage_offset() * t.element_size()) % 16 == 0)


def _record(fn, args, kwargs, grid, phase: str) -> Launch:
    import torch

    names = list(fn.arg_names)
    bound = dict(zip(names, args, strict=False))
    bound.update({k: v for k, v in kwargs.items() if k in names})
    # JITFunction.params, or (under the interpreter) the Python signature's tl.constexpr annotations
    params = inspect.signature(fn.fn).parameters
    constexpr_names = {n for n, p in params.items() if "constexpr" in str(p.annotation)}
    for n, p in params.items():  # defaults of arguments the caller left out
        if n not in bound and p.default is not inspect.Parameter.empty:
            bound[n] = p.default
    out_args, constexprs = {}, {}
    for name in names:
        value = bound.get(name)
        if name in constexpr_names:
            constexprs[name] = value.value if hasattr(value, "value") else value
            out_args[name] = constexprs[name]
        elif isinstance(value, torch.Tensor):
            out_args[name] = _tensor_arg(value)
        elif value is None or (isinstance(value, int) and not isinstance(value, bool) and value == 1
                               and name not in _no_specialize(fn)):
            constexprs[name] = value          # Triton specialises None and integers equal to 1 into constants
            out_args[name] = value
        else:
            out_args[name] = value
    options = {"num_warps": int(kwargs.get("num_warps", 4)), "num_stages": int(kwargs.get("num_stages", 3))}
    if callable(grid):
        grid = grid({**bound, **kwargs})
    grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
    return Launch(kernel=fn.__name__, fn=fn, grid=grid, args=out_args, constexprs=constexprs, options=options,
                  phase=phase)


def _no_specialize(fn) -> set:
    names = list(fn.arg_names)
    out = set()
    for i in getattr(fn, "do_not_specialize", []) or []:
        out.add(names[i] if isinstance(i, int) else i)
    return out


class Recorder:
    """The launches recorded so far and the host's PyTorch compute ops per phase (``host_ops``: {phase: {op name:
    count}}); ``phase`` labels those that follow."""

    def __init__(self):
        self.launches: list[Launch] = []
        self.host_ops: dict = {}
        self.phase = ""

    def __call__(self, fn, args, kwargs, grid):
        self.launches.append(_record(fn, args, kwargs, grid, self.phase))

    def restart_phase(self, phase: str) -> None:
        """Forget what ``phase`` recorded so far (the setup a backward phase runs first)."""
        self.launches = [lp for lp in self.launches if lp.phase != phase]
        self.host_ops.pop(phase, None)


def is_compute_op(func, args, kwargs, out) -> bool:
    """Whether a dispatched aten op is a kernel launch of its own on a GPU: not an allocation (empty*), not a view or
    alias of an input (views, detach, ``.to`` the same dtype, ``.contiguous()`` of a contiguous tensor); in-place
    and out= ops always are."""
    import torch
    from torch.multiprocessing.reductions import StorageWeakRef
    from torch.utils._pytree import tree_leaves

    if func.overloadpacket.__name__.startswith(("empty", "new_empty")):
        return False
    if any(a.alias_info is not None and a.alias_info.is_write for a in func._schema.arguments):
        return True

    def storages(tree):
        return {StorageWeakRef(t.untyped_storage()) for t in tree_leaves(tree)
                if isinstance(t, torch.Tensor) and t.numel()}

    outs = storages(out)
    return not (outs and outs <= storages((args, kwargs)))


def _host_op_counter(rec: Recorder):
    from torch.utils._python_dispatch import TorchDispatchMode

    class HostOps(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            if rec.phase and func.namespace == "aten" and is_compute_op(func, args, kwargs, out):
                ops = rec.host_ops.setdefault(rec.phase, {})
                name = func.overloadpacket.__name__
                ops[name] = ops.get(name, 0) + 1
            return out

    return HostOps()


@contextlib.contextmanager
def recording(sm_count: int = 132):
    """Run host code as on an H100 with ``sm_count`` SMs: fake CUDA tensors, Triton launches recorded not run.

    Yields a :class:`Recorder`. Tensors to pass in must be created inside the block (``torch.empty(...,
    device="cuda")``).
    """
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("launch recording needs the real Triton JIT: unset TRITON_INTERPRET")
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from triton.runtime.jit import JITFunction

    rec = Recorder()

    def run(self, *args, grid, warmup, **kwargs):
        rec(self, args, kwargs, grid)

    props = SimpleNamespace(multi_processor_count=sm_count, name="H100 (recorded launches)", major=9, minor=0,
                            total_memory=80 * 2 ** 30)
    # the production host path: no NaN-poisoned outputs (SPIN_KERNELS_POISON, set by the ViT tests' conftest,
    # would add a fill per output to the host ops)
    env = {k: v for k, v in os.environ.items() if k != "SPIN_KERNELS_POISON"}
    with mock.patch.object(JITFunction, "run", run), \
            mock.patch.object(torch.cuda, "get_device_properties", lambda *a, **k: props), \
            mock.patch.dict(os.environ, env, clear=True), \
            FakeTensorMode(allow_non_fake_inputs=True), _host_op_counter(rec):
        yield rec


# ------------------------------------------------------------------------------------------------ the fused ops
def convmixer_run_launches(batch: int, dim: int, hw: int, kernel_size: int, *, act: str, spin: bool,
                           run_length: int, dtype: str = "bf16", phases=("fwd", "bwd", "eval"),
                           sm_count: int = 132, host_ops: dict | None = None) -> list[Launch]:
    """The launches of one shared run (``run_length`` layers) of the fused ConvMixer trunk
    (``spin_kernels::convmixer_run``) at ``[batch, dim, hw, hw]``: training forward, backward, eval forward.
    ``host_ops`` (a dict) receives the host's PyTorch compute ops per phase ({phase: {op: count}})."""
    import torch

    from ..ops import convmixer as op

    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    R, C, M = run_length, dim, batch * hw * hw
    with recording(sm_count) as rec:
        def act_t(*shape, dtype=dt):
            return torch.empty(*shape, device="cuda", dtype=dtype)

        f32 = torch.float32
        vec = [act_t(C, dtype=f32) for _ in range(4)]
        per_layer = {k: [act_t(C, dtype=f32) for _ in range(R)] for k in ("n1_w", "n1_b", "n1_rm", "n1_rv", "n2_w",
                                                                             "n2_b", "n2_rm", "n2_rv")}
        dw_w = [act_t(C, 1, kernel_size, kernel_size) for _ in range(R)]
        dw_b = [act_t(C) for _ in range(R)]
        pw_w, pw_b = act_t(C, C, 1, 1), act_t(C)
        z_in = act_t(M, C)
        u_in = act_t(M, C) if spin else None
        common = (z_in, u_in, *vec, dw_w, dw_b, pw_w, pw_b, *per_layer.values())
        for phase in phases:
            rec.phase = phase
            training = phase != "eval"
            z, u, _, Z, Q, U, stats = op.run_forward(*common, batch, hw, hw, 1e-5, 1e-5, training, act, spin,
                                                     "triton", False)
            if phase == "bwd":
                rec.restart_phase("bwd")  # the forward above was a setup
                op.run_backward(act_t(M, C), act_t(M, C) if spin else None, act_t(2, C, dtype=f32),
                                z_in, u_in, *vec, pw_w, z, Z, Q, u, U, stats, dw_w,
                                per_layer["n1_w"], per_layer["n1_b"], per_layer["n2_w"], per_layer["n2_b"],
                                batch, hw, hw, True, act, spin, "triton")
    if host_ops is not None:
        host_ops.update(rec.host_ops)
    return rec.launches


def vit_run_launches(batch: int, tokens: int, dim: int, num_heads: int, *, mlp_ratio: float = 4.0,
                     run_length: int = 1, dtype: str = "bf16", phases=("fwd", "bwd", "eval"),
                     sm_count: int = 132, host_ops: dict | None = None, recompute: str = "all") -> list[Launch]:
    """The launches of one shared run of fused ViT blocks (``spin_kernels::vit_run``) at ``[batch, tokens, dim]``:
    training forward and backward in mode ``recompute`` (spin_kernels.ops.vit), eval forward (the training
    forward's kernels, nothing saved: no dropout here). ``host_ops`` as in :func:`convmixer_run_launches`."""
    import torch

    from ..ops import vit as op

    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    R, C = run_length, dim
    H = int(round(dim * mlp_ratio))
    with recording(sm_count) as rec:
        def t(*shape, dtype=dt):
            return torch.empty(*shape, device="cuda", dtype=dtype)

        x = t(batch, tokens, C)
        w = (t(3 * C, C), t(3 * C), t(C, C), t(C), t(H, C), t(H), t(C, H), t(C))
        norms = [[t(C) for _ in range(R)] for _ in range(4)]
        for phase in phases:
            rec.phase = phase
            mode = "all" if phase == "eval" else recompute
            _, *state = op.run_forward(x, *w, *norms, None, num_heads, 1e-6, 0.0, 0, mode)
            if phase == "bwd":
                rec.restart_phase("bwd")
                op.run_backward(t(batch, tokens, C), *state, *w, *norms, None, num_heads, 1e-6, 0.0, 0)
    if host_ops is not None:
        host_ops.update(rec.host_ops)
    return rec.launches


def calibration_launches(copy_bytes: int = 2 ** 30, gemm_size: int = 4096, dtype: str = "bf16",
                         sm_count: int = 132) -> list[Launch]:
    """The calibration kernels' launches (spin_kernels.triton.calibration): a ``copy_bytes`` copy and a
    ``gemm_size``³ GEMM."""
    import torch

    from ..triton import calibration

    dt = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    with recording(sm_count) as rec:
        rec.phase = "calibration"
        calibration.copy(torch.empty(copy_bytes // 2, device="cuda", dtype=dt))
        a = torch.empty(gemm_size, gemm_size, device="cuda", dtype=dt)
        calibration.matmul(a, torch.empty_like(a))
    return rec.launches
