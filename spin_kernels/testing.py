"""Helpers for tests of spin_kernels and of code built on it (like ``torch.testing``)."""
from __future__ import annotations

import torch


# DESIGN.md §5: relative Frobenius error against a float64 reference, per dtype of the computation
TOLERANCES = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}
# fp32 through Triton's tl.dot on a GPU runs as TF32 (truncated inputs): what that precision earns
TF32_TOLERANCE = 5e-4


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Relative Frobenius error ‖actual − expected‖ / ‖expected‖, computed in float64."""
    expected = expected.double()
    return ((actual.double() - expected).norm() / expected.norm().clamp_min(1e-300)).item()


@torch.no_grad()
def randomise_batchnorm(model: torch.nn.Module, shift: float = 0.3) -> torch.nn.Module:
    """Give every BatchNorm non-trivial affine parameters and running statistics (so eval mode means something)."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, shift)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0, shift)
    return model


class GuardedTensor:
    """An output buffer for a kernel under test, poisoned with NaN and fenced by sentinel guard zones.

    ``tensor`` is a contiguous ``shape`` view into a larger allocation whose ``guard`` elements before and after
    hold a sentinel; :meth:`check` raises AssertionError if the kernel wrote outside the view (an out-of-bounds
    store) and :meth:`unwritten` counts elements still NaN (a store that never happened). The view starts
    ``guard`` elements in: keep ``guard * element_size`` a multiple of 16 for kernels that need aligned rows.
    """

    SENTINEL = 12345.0

    def __init__(self, shape, dtype=torch.float32, device="cpu", guard: int = 64):
        n = 1
        for s in shape:
            n *= s
        self._buf = torch.full((n + 2 * guard,), self.SENTINEL, dtype=dtype, device=device)
        self._guard, self._n = guard, n
        self.tensor = self._buf[guard:guard + n].view(shape)
        self.tensor.fill_(float("nan"))

    def check(self) -> None:
        """Assert that both guard zones still hold the sentinel."""
        before, after = self._buf[:self._guard], self._buf[self._guard + self._n:]
        bad = int((before != self.SENTINEL).sum()) + int((after != self.SENTINEL).sum())
        assert bad == 0, f"{bad} element(s) written outside the output tensor (out-of-bounds store)"

    def unwritten(self) -> int:
        """Elements of the view still NaN."""
        return int(torch.isnan(self.tensor).sum())


def nan_fenced(t: torch.Tensor, guard: int = 64) -> torch.Tensor:
    """A contiguous copy of ``t`` inside a larger buffer whose ``guard`` elements before and after are NaN: a
    kernel that reads outside its input turns its output NaN, which the test's comparison then catches. Keep
    ``guard * element_size`` a multiple of 16 for kernels that need aligned rows."""
    buf = torch.full((t.numel() + 2 * guard,), float("nan"), dtype=t.dtype, device=t.device)
    view = buf[guard:guard + t.numel()].view(t.shape)
    view.copy_(t)
    return view


def _forward_backward(model: torch.nn.Module, x: torch.Tensor, train: bool, grad_out: torch.Tensor | None):
    """Logits and, with ``train``, the gradients of the input (``"input"``) and of every parameter."""
    model.train(train)
    x = x.detach().clone().requires_grad_(train)
    with torch.enable_grad() if train else torch.no_grad():
        out = model(x)
    if not train:
        return out.detach(), {}
    out.backward(grad_out.to(out.dtype))
    grads = {"input": x.grad}
    grads.update({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    return out.detach(), grads


def compare_models(reference: torch.nn.Module, candidate: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype,
                   train: bool, grad_out: torch.Tensor | None = None, tolerance: float | None = None) -> dict:
    """Errors of ``candidate`` (same weights as ``reference``, e.g. a fused backend) run in ``dtype`` against
    ``reference`` in float64: ``{name: (relative error, bound)}`` for the logits and, with ``train``, the gradient
    of the input and of every parameter for the output gradient ``grad_out``.

    A bound is ``tolerance`` (default: :data:`TOLERANCES`, fp32 as :data:`TF32_TOLERANCE` on CUDA) or twice
    PyTorch's own error (``reference`` run in ``dtype``), whichever is larger: deep models compound rounding that
    a single kernel's tolerance does not cover, and a kernel may not be worse than PyTorch by more than 2x.
    ``candidate`` is converted to ``dtype`` in place; ``reference`` is left as it is (copies run).
    """
    import copy

    if tolerance is None:
        tolerance = TF32_TOLERANCE if dtype == torch.float32 and x.is_cuda else TOLERANCES[dtype]
    out64, grads64 = _forward_backward(copy.deepcopy(reference).double(), x.double(), train,
                                       None if grad_out is None else grad_out.double())
    low, grads_low = _forward_backward(copy.deepcopy(reference).to(dtype), x.to(dtype), train, grad_out)
    got, grads = _forward_backward(candidate.to(dtype), x.to(dtype), train, grad_out)
    if train and set(grads) != set(grads64):
        raise AssertionError(f"gradients of different parameters: {sorted(set(grads) ^ set(grads64))}")
    result = {"logits": (rel_err(got, out64), max(tolerance, 2 * rel_err(low, out64)))}
    for name, g64 in grads64.items():
        result[name] = (rel_err(grads[name], g64), max(tolerance, 2 * rel_err(grads_low[name], g64)))
    return result


def failures(errors: dict) -> dict:
    """The entries of a :func:`compare_models` result whose error is over its bound (NaN counts as over)."""
    return {name: eb for name, eb in errors.items() if not eb[0] <= eb[1]}
