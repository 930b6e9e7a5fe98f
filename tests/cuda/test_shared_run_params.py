"""The folded, stacked launch parameters fed to the persistent kernel reproduce the eval-mode model (CPU)."""
import pytest
import torch

import spin_kernels as sk
from spin_kernels.testing import randomise_batchnorm, rel_err
from spin_kernels import cuda
from spin_kernels.ops.convmixer_cuda import launch_parameters
from spin_kernels.reference.shared_run import shared_run


@pytest.mark.parametrize("name, mapping", [("spin_convmixer_768_32", "sequential"), ("convmixer_1536_20", "strided"),
                                           ("spin_convmixer_768_32", [0, 0, 0, 1, 1, 2])])
def test_runs_reproduce_the_model(name, mapping):
    torch.manual_seed(0)
    model = randomise_batchnorm(sk.create_model(name, dim=16, depth=6, kernel_size=5, patch_size=4, num_classes=3,
                                      share_rate=2 if isinstance(mapping, str) else 1, mapping=mapping)).eval()
    images = torch.randn(2, 3, 20, 20)
    launches = launch_parameters(model, torch.float32)
    assert len(launches) == 1 and launches[0][-1] == [stop - start for start, stop in model.pw_plan.runs]
    x = model.stem(images).permute(0, 2, 3, 1)
    for *params, run_lengths in launches:
        x = shared_run(x, *params, act=model.arch["act"], spin_residual=model.arch["spin_residual"],
                       run_lengths=run_lengths)
    expected = model.forward_features(images).double().permute(0, 2, 3, 1)
    assert rel_err(x, expected) < 1e-6


def test_cache_follows_parameter_changes():
    model = sk.create_model("spin_convmixer_768_32", dim=16, depth=4, patch_size=4, share_rate=2).eval()
    first = launch_parameters(model, torch.float32)
    assert launch_parameters(model, torch.float32) is first  # cached
    with torch.no_grad():
        model.norm2[1].running_var.mul_(2.0)
    again = launch_parameters(model, torch.float32)
    assert again is not first and not torch.equal(again[0][6], first[0][6])


def test_deep_unshared_trunks_split_into_launches(monkeypatch):
    """More runs than one launch carries (csrc kMaxRuns) split into consecutive launches covering every layer."""
    monkeypatch.setattr(cuda, "MAX_RUNS_PER_LAUNCH", 4)
    model = sk.create_model("spin_convmixer_768_32", dim=16, depth=10, patch_size=4, share_rate=1).eval()
    launches = launch_parameters(model, torch.float32)
    assert [launch[-1] for launch in launches] == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1]]
    assert [len(launch[0]) for launch in launches] == [4, 4, 2] and [launch[2].shape[0] for launch in launches] == [4, 4, 2]


def _grown(model):
    """A watch sees every way a parameter can change: each mutation below must rebuild the cached launches."""
    first = launch_parameters(model, torch.float32)
    assert launch_parameters(model, torch.float32) is first
    return first


def test_cache_sees_every_kind_of_change():
    import copy

    torch.manual_seed(0)
    model = sk.create_model("spin_convmixer_768_32", dim=16, depth=4, patch_size=4, share_rate=2).eval()
    first = _grown(model)
    before = model.pointwise[1].weight.detach().clone()
    model.pointwise[1].weight.data = model.pointwise[1].weight.data * 2        # new data
    second = launch_parameters(model, torch.float32)
    assert second is not first and torch.equal(second[0][0][1], before * 2)
    torch.utils.swap_tensors(model.depthwise[0].bias, torch.nn.Parameter(torch.ones(16)))   # swapped
    third = launch_parameters(model, torch.float32)
    assert third is not second and torch.equal(third[0][3][0], torch.ones(16))
    model.pointwise[0] = torch.nn.Conv2d(16, 16, 1)                            # module replaced
    model._build_blocks()
    fourth = launch_parameters(model, torch.float32)
    assert fourth is not third and torch.equal(fourth[0][0][0], model.pointwise[0].weight)
    clone = copy.deepcopy(model)                                                # copies rebuild their own cache
    assert launch_parameters(clone, torch.float32) is not fourth


def test_training_then_eval_never_uses_stale_weights():
    """A training step (optimizer update, BatchNorm running statistics) between two eval calls: the launches
    follow, equal to a fresh fold of the updated model."""
    from spin_kernels.ops.convmixer_cuda import _fold

    torch.manual_seed(0)
    model = sk.create_model("spin_convmixer_768_32", dim=16, depth=4, patch_size=4, share_rate=2, num_classes=3)
    before = launch_parameters(model.eval(), torch.float32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    opt.step()
    after = launch_parameters(model.eval(), torch.float32)
    assert after is not before
    fresh = _fold(model, torch.float32)
    for got, want in zip(after[0][:8], fresh[0][:8]):
        for g, w in zip(got if isinstance(got, list) else [got], want if isinstance(want, list) else [want]):
            assert torch.equal(g, w)


def test_cache_check_is_cheap():
    """The steady-state check (structure + tensor watch) must not walk the model in Python: it is the batch-1
    host path. Measured, not asserted as a time (speed goes in benchmarks): the watch must be the extension's."""
    from spin_kernels import cuda as cuda_mod

    if cuda_mod.extension() is None:
        pytest.skip("spin_kernels._C is not built here")
    model = sk.create_model("spin_convmixer_768_32", dim=16, depth=4, patch_size=4, share_rate=2).eval()
    launch_parameters(model, torch.float32)
    assert type(model._persistent_run_cache.watch).__name__ == "TensorWatch"
