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
