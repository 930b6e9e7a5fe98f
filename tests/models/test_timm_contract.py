"""The timm model contract beyond timm's own tests: features_only backbones, intermediates of shared models by layer
position on every backend (fused ones against the float64 reference), pruning that saves and reloads, factory
arguments, scripting that computes what eager does, layer-wise LR decay groups."""
import copy

import pytest
import timm
import torch

import spin_kernels as sk
from spin_kernels.models import save_model
from spin_kernels.testing import TOLERANCES, randomise_batchnorm, rel_err

SMALL_CM = dict(dim=32, depth=6, kernel_size=3, patch_size=3, num_classes=5)
SMALL_VIT = dict(embed_dim=48, depth=6, num_heads=3, patch_size=4, img_size=16, num_classes=5)


def small(name):
    return SMALL_CM if "convmixer" in name else SMALL_VIT


def layer_outputs(model, x):
    """Each block's output, by forward hooks (what position l means: the l-th layer applied)."""
    outs = []
    hooks = [b.register_forward_hook(lambda m, i, o: outs.append(o)) for b in model.blocks]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return outs


@pytest.mark.parametrize("name", ["spin_convmixer_768_32", "spin_deit_tiny_patch16_224"])
@pytest.mark.parametrize("mapping", ["sequential", "strided"])
def test_features_only_backbone(name, mapping):
    """A detection / segmentation neck built from feature_info alone consumes the features of several depths."""
    torch.manual_seed(0)
    kw = small(name)
    backbone = timm.create_model(name, features_only=True, out_indices=(1, 3, 5), share_rate=2, mapping=mapping,
                                 **{k: v for k, v in kw.items() if k != "num_classes"}).eval()
    info = backbone.feature_info
    neck = torch.nn.ModuleList(torch.nn.Conv2d(c, 8, 1) for c in info.channels())
    x = torch.randn(2, 3, 16, 16) if "deit" in name else torch.randn(2, 3, 20, 17)
    feats = backbone(x)
    assert len(feats) == 3 and info.module_name() == ["blocks.1", "blocks.3", "blocks.5"]
    for f, c, r, conv in zip(feats, info.channels(), info.reduction(), neck):
        assert f.shape == (2, c, x.shape[2] // r, x.shape[3] // r)
        assert conv(f).shape[1] == 8
    # the wrapper pruned the layers after the last tap and the head; the features are the layers' own outputs
    full = sk.create_model(name.replace("spin_deit", "deit"), share_rate=2, mapping=mapping, **kw).eval()
    full.load_state_dict(backbone.model.state_dict(), strict=False)
    assert len(backbone.model.blocks) == 6 and isinstance(backbone.model.head, torch.nn.Identity)
    with torch.no_grad():
        hooked = layer_outputs(full, x)
    for f, layer in zip(feats, (1, 3, 5)):
        expected = hooked[layer]
        if expected.dim() == 3:  # ViT tokens -> NCHW patch map
            n = expected.shape[1] - 1
            side = int(n ** 0.5)
            expected = expected[:, 1:].reshape(2, side, side, -1).permute(0, 3, 1, 2)
        torch.testing.assert_close(f, expected, rtol=0, atol=0)


def _tap_loss(final, taps, seed=1):
    g = torch.Generator().manual_seed(seed)
    terms = [(t.double() * torch.randn(t.shape, generator=g, dtype=torch.float64)).sum() for t in [final, *taps]]
    return sum(terms)


@pytest.mark.parametrize("family", ["convmixer", "vit"])
@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("indices", [[0, 3], [1, 2, 4], 2])
def test_fused_intermediates_match_the_reference(family, train, indices):
    """backend="triton" runs only the layers it needs, cutting shared runs at the taps; taps, output and the
    gradients of every parameter and the input match the float64 reference (fp32 kernel tolerance)."""
    torch.manual_seed(0)
    if family == "convmixer":
        kw = dict(dim=32, depth=5, kernel_size=3, patch_size=3, num_classes=5, act="gelu")
        x = torch.randn(2, 3, 13, 11)
    else:
        kw = dict(embed_dim=48, depth=5, num_heads=3, patch_size=4, img_size=16, num_classes=5)
        x = torch.randn(2, 3, 16, 16)
    name = "convmixer_1536_20" if family == "convmixer" else "deit_tiny_patch16_224"
    mapping = [0, 0, 0, 1, 1]  # runs of 3 and 2 layers: every index set above cuts one
    ref = sk.create_model(name, mapping=mapping, **kw)
    if family == "convmixer":
        randomise_batchnorm(ref)
    fused = copy.deepcopy(ref)
    fused.backend = "triton"
    results = []
    for model, dtype in ((ref.double(), torch.float64), (fused, torch.float32)):
        model.train(train)
        inp = x.to(dtype).requires_grad_(True)
        final, taps = model.forward_intermediates(inp, indices=indices, stop_early=True)
        _tap_loss(final, taps).backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        results.append((final, taps, inp.grad, grads))
    (f64, t64, gx64, g64), (f32, t32, gx32, g32) = results
    tol = TOLERANCES[torch.float32]
    assert len(t32) == len(t64) == (len(indices) if isinstance(indices, list) else 2)
    assert rel_err(f32, f64) <= tol
    for a, b in zip(t32, t64):
        assert a.shape == b.shape and rel_err(a, b) <= tol
    assert rel_err(gx32, gx64) <= tol
    for n, g in g64.items():
        if g is None:  # layers after the last tap, and the head, take no part
            assert g32[n] is None, n
            continue
        assert rel_err(g32[n], g) <= tol, n


@pytest.mark.parametrize("name", ["convmixer_768_32", "deit_tiny_patch16_224"])
def test_intermediates_name_layers_by_position(name):
    """With shared weights, index l is the l-th layer applied (not the l-th unique module); negative and int
    indices follow timm; bad indices are a clear error."""
    model = sk.create_model(name, share_rate=3, mapping="strided", **small(name)).eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        hooked = layer_outputs(model, x)
        taps = model.forward_intermediates(x, indices=[0, 4, -1], output_fmt="NCHW" if "conv" in name else "NLC",
                                           intermediates_only=True)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True, output_fmt="NLC"
                                               if "deit" in name else "NCHW")
    for t, layer in zip(taps, (0, 4, 5)):
        torch.testing.assert_close(t, hooked[layer][:, 1:] if t.dim() == 3 else hooked[layer], rtol=0, atol=0)
    assert len(last_two) == 2
    with pytest.raises(ValueError, match="indices"):
        model.forward_intermediates(x, indices=[6])
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NHWC")


@pytest.mark.parametrize("name", ["convmixer_768_32", "deit_tiny_patch16_224"])
def test_pruned_model_saves_and_reloads(tmp_path, name):
    """prune_intermediate_layers drops the layers after the tap and the unique weights only they used; the pruned
    model's spin_config rebuilds it from a checkpoint."""
    torch.manual_seed(0)
    model = sk.create_model(name, share_rate=2, **small(name)).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        tap = model.forward_intermediates(x, indices=[2], intermediates_only=True)[0]
    kept = model.prune_intermediate_layers([2], prune_norm=True)
    assert kept == [2] and len(model.blocks) == 3
    families = ("pointwise",) if "convmixer" in name else ("attn", "mlp")
    for family in families:
        assert len(getattr(model, family)) == 2  # layers 0-1 share unique 0, layer 2 uses unique 1
    with torch.no_grad():
        torch.testing.assert_close(model.forward_intermediates(x, indices=kept, intermediates_only=True)[0], tap,
                                   rtol=0, atol=0)
    save_model(model, tmp_path / "pruned.pth")
    again = sk.load_model(tmp_path / "pruned.pth").eval()
    assert again.spin_config["depth"] == 3 and again.num_classes == 0
    with torch.no_grad():
        torch.testing.assert_close(again.forward_features(x), model.forward_features(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["convmixer_768_32", "deit_tiny_patch16_224"])
def test_factory_arguments(name):
    """device / dtype build in place; unknown arguments are a TypeError naming them; in_chans is recorded."""
    model = sk.create_model(name, device="meta", dtype=torch.float16, in_chans=2, **small(name))
    assert all(p.device.type == "meta" and p.dtype == torch.float16 for p in model.parameters())
    assert model.in_chans == 2 and model.default_cfg["input_size"][0] == 2
    with pytest.raises(TypeError, match="not_a_model_arg"):
        sk.create_model(name, not_a_model_arg=1)
    with pytest.raises(TypeError, match="not_a_model_arg"):
        timm.create_model("spin_" + name, not_a_model_arg=1)
    with pytest.raises(ValueError, match="dtype"):
        sk.create_model(name, dtype=torch.int32, **small(name))


@pytest.mark.parametrize("name", ["convmixer_768_32", "deit_tiny_patch16_224"])
def test_reset_classifier_keeps_mode_device_dtype(name):
    model = sk.create_model(name, **small(name)).double().eval()
    model.reset_classifier(3)
    assert not model.head.training and model.head.weight.dtype == torch.float64 and model.num_classes == 3
    assert model.spin_config["num_classes"] == 3
    model.train().reset_classifier(4, "")
    assert model.head.training and model.global_pool == ""
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(2, "max")


@pytest.mark.parametrize("name", ["convmixer_768_32", "deit_tiny_patch16_224"])
def test_scripted_and_traced_models_compute_what_eager_does(name):
    """torch.jit.script of a shared model, and of its FX trace, give eager's logits (the fused backends' host code
    is left out of scripting; a scripted model runs the reference layers)."""
    torch.manual_seed(0)
    model = sk.create_model(name, share_rate=2, mapping="strided", backend="triton", **small(name)).eval()
    model.backend = "reference"
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
        scripted = torch.jit.script(model)
        torch.testing.assert_close(scripted(x), expected, rtol=1e-5, atol=1e-6)
        traced = torch.jit.script(torch.fx.symbolic_trace(model))
        torch.testing.assert_close(traced(x), expected, rtol=1e-5, atol=1e-6)
    assert model.backend == "reference" and len(model.blocks) == SMALL_CM["depth"]  # the original is untouched


@pytest.mark.parametrize("name", ["convmixer_768_32", "deit_tiny_patch16_224"])
def test_layer_decay_groups_follow_first_use(name):
    """timm's layer-wise LR decay: a shared module gets the group of the first layer that uses it; the stem is
    group 0 and the head the last."""
    from timm.optim import param_groups_layer_decay

    model = sk.create_model(name, share_rate=2, mapping="strided", **small(name))  # layer l uses unique l % 3
    groups = param_groups_layer_decay(model, weight_decay=0.0, layer_decay=0.5)
    scale_of = {}
    for g in groups:
        for p in g["params"]:
            scale_of[id(p)] = g["lr_scale"]
    family = "pointwise" if "convmixer" in name else "attn"
    scales = [scale_of[id(next(getattr(model, family)[u].parameters()))] for u in range(3)]
    assert scales[0] < scales[1] < scales[2]  # uniques first used by layers 0, 1, 2
    stem = next(model.stem.parameters()) if "convmixer" in name else model.patch_embed.proj.weight
    assert scale_of[id(stem)] < scales[0] and scale_of[id(model.head.weight)] == 1.0
    assert len(model.group_matcher()["blocks"]) >= 3


def test_timm_scripts_run_with_spin_models_registered(tmp_path):
    """python -m spin_kernels.timm_run SCRIPT ARGS: the script sees the spin_ models and its own arguments."""
    import subprocess
    import sys

    script = tmp_path / "train.py"
    script.write_text("import sys, timm\n"
                      "m = timm.create_model(sys.argv[1], share_rate=2, dim=16, depth=2, kernel_size=3, patch_size=4)\n"
                      "print(type(m).__name__, m.spin_config['share_rate'], sys.argv[2:])\n")
    run = subprocess.run([sys.executable, "-m", "spin_kernels.timm_run", str(script), "spin_convmixer_768_32", "--x"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ConvMixer 2 ['--x']"
    missing = subprocess.run([sys.executable, "-m", "spin_kernels.timm_run", str(tmp_path / "nope.py")],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "script:" in missing.stderr
