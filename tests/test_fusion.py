"""Weight-fusion math by hand on small tensors."""
import pytest
import torch

from spin_kernels.fusion import FuseGroup


def sources():
    return [torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[5.0, 6.0], [7.0, 8.0]]),
            torch.tensor([[0.0, -3.0], [9.0, 1.0]])]


def run(method, alpha=None):
    fuse = FuseGroup(sources(), method)
    if alpha is not None:
        fuse.alpha.data.copy_(torch.tensor(alpha))
    return fuse(*fuse.right_inverse(None))


def test_mean():
    torch.testing.assert_close(run("mean"), torch.tensor([[2.0, 5.0 / 3], [19.0 / 3, 13.0 / 3]]))


def test_choose_first():
    torch.testing.assert_close(run("choose_first"), torch.tensor([[1.0, 2.0], [3.0, 4.0]]))


def test_scalar_weighted_mean():
    # (2*A + 0*B + 1*C) / 3
    torch.testing.assert_close(run("scalar_weighted_mean", [2.0, 0.0, 1.0]),
                               torch.tensor([[2.0 / 3, 1.0 / 3], [15.0 / 3, 9.0 / 3]]))
    torch.testing.assert_close(run("scalar_weighted_mean"), run("mean"))  # alpha = 1 at init


def test_channel_weighted_mean():
    # output channel 0 weights (1, 1, 1); channel 1 weights (0, 3, 0)
    out = run("channel_weighted_mean", [[1.0, 0.0], [1.0, 3.0], [1.0, 0.0]])
    torch.testing.assert_close(out, torch.tensor([[2.0, 5.0 / 3], [7.0, 8.0]]))


def test_alpha_gets_gradient():
    fuse = FuseGroup(sources(), "channel_weighted_mean")
    fuse(*fuse.right_inverse(None)).sum().backward()
    # d/d alpha[l, c] of sum(W) = sum_k W_l[c, k] / n
    torch.testing.assert_close(fuse.alpha.grad, torch.tensor([[3.0, 7.0], [11.0, 15.0], [-3.0, 10.0]]) / 3)


def test_unknown_method():
    with pytest.raises(ValueError, match="choose_first"):
        FuseGroup(sources(), "median")
