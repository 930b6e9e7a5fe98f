"""The multi-tensor running-statistics update of a fused run's BatchNorms equals nn.BatchNorm2d's one-at-a-time
update (spin_kernels.reference.batchnorm.update_running_stats), including modules listed twice and momentum=None."""
import copy

import pytest
import torch

from spin_kernels.reference.batchnorm import update_running_stats, update_running_stats_of_layers


@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
@pytest.mark.parametrize("shared", [False, True])
def test_matches_one_at_a_time(momentum, shared):
    C, n = 24, 37
    mods = [torch.nn.BatchNorm2d(C, momentum=momentum) for _ in range(4)]
    for m in mods:
        m.running_mean.normal_()
        m.running_var.uniform_(0.5, 2.0)
        m.num_batches_tracked.fill_(3)
    bns = [mods[0], mods[1], mods[0], mods[2], mods[3]] if shared else mods
    one, many = copy.deepcopy(bns), copy.deepcopy(bns)  # a deep copy of the list keeps the sharing
    means = [torch.randn(C) for _ in bns]
    variances = [torch.rand(C) for _ in bns]
    for bn, mean, var in zip(one, means, variances):
        update_running_stats(bn, mean, var, n)
    update_running_stats_of_layers(many, means, variances, n)
    for a, b in zip(one, many):
        torch.testing.assert_close(b.running_mean, a.running_mean)
        torch.testing.assert_close(b.running_var, a.running_var)
        assert int(b.num_batches_tracked) == int(a.num_batches_tracked)
    # and it moved: the check can fail
    assert not torch.equal(many[-1].running_mean, mods[-1].running_mean)
