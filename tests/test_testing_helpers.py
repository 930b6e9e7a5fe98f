"""spin_kernels.testing's helpers catch what they are for."""
import pytest
import torch

from spin_kernels.testing import GuardedTensor


def test_guarded_tensor_catches_stores_outside_and_missing_stores():
    g = GuardedTensor((3, 5), torch.float16)
    assert g.unwritten() == 15
    g.tensor.fill_(1.0)
    g.check()
    assert g.unwritten() == 0
    g._buf[g._guard + 15] = 0.0  # one element past the end, as an out-of-bounds kernel store would
    with pytest.raises(AssertionError, match="out-of-bounds"):
        g.check()
