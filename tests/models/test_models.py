"""Model zoo: parameter counts, MACs, the timm API, sharing storage, gradients, checkpoints, bad input."""
import warnings

import pytest
import torch

import spin_kernels as sk
from spin_kernels.models import save_model

SMALL_CM = dict(dim=16, depth=6, kernel_size=3, patch_size=4, num_classes=5)
SMALL_VIT = dict(embed_dim=24, depth=6, num_heads=3, patch_size=8, img_size=24, num_classes=5)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, kwargs, expected", [
    ("spin_convmixer_768_32", {}, 20_465_896),
    ("spin_convmixer_768_32", dict(share_rate=2), 11_016_424),
    ("convmixer_768_32", {}, 21_110_248),
    ("deit_small_patch16_224", {}, 22_050_664),
])
def test_parameter_counts(name, kwargs, expected):
    model = sk.create_model(name, **kwargs)
    assert n_params(model) == expected
    assert sum(v.numel() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k) \
        == expected  # each shared tensor is saved once


def test_profile_macs_and_compression():
    p = sk.profile(sk.create_model("spin_convmixer_768_32", share_rate=2))
    assert p["params"] == 11_016_424 and p["params_unshared"] == 20_465_896
    assert p["compression"] == pytest.approx(1.858, abs=1e-3)  # SPIN's "1.9x"
    assert p["macs"] == pytest.approx(5.0e9, rel=0.01)
    assert len(p["per_layer"]) == 32 + 2
    # DeiT-S: 4.6 GMACs with the attention matmuls counted.
    assert sk.profile(sk.create_model("deit_small_patch16_224"))["macs"] == pytest.approx(4.6e9, rel=0.01)
    # convmixer_768_32: pointwise + stem are 19.44 G; the k=7 depthwise convs add 1.23 G (the issue's "about
    # 19.6 G" is that rounded count); check the exact analytic value.
    tokens, c = 32 * 32, 768
    exact = tokens * c * 3 * 49 + 32 * (tokens * c * 49 + tokens * c * c) + c * 1000
    assert sk.profile(sk.create_model("convmixer_768_32"))["macs"] == exact


@pytest.mark.parametrize("name", sk.list_models())
def test_timm_api(name):
    small = SMALL_CM if "convmixer" in name else SMALL_VIT
    model = sk.create_model(name, share_rate=2, **small)
    cfg = model.default_cfg
    assert set(cfg) >= {"input_size", "crop_pct", "interpolation", "mean", "std"}
    x = torch.randn(3, 3, 24, 24)
    feats = model.forward_features(x)
    assert model.forward_head(feats).shape == (3, 5)
    assert model.forward_head(feats, pre_logits=True).shape == (3, model.num_features)
    model.reset_classifier(11)
    assert model(x).shape == (3, 11)
    model.set_grad_checkpointing(True)
    model.train()
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_shared_tensor_is_one_object():
    model = sk.create_model("convmixer_768_32", share_rate=3, mapping="strided", **SMALL_CM)
    assert len(model.pointwise) == 2 and len(model.depthwise) == 6 and len(model.norm1) == 6
    assert model.blocks[0].pointwise is model.blocks[2].pointwise is model.pointwise[0]
    assert model.blocks[1].pointwise is model.pointwise[1]
    both = sk.create_model("convmixer_768_32", share_rate=2, share=("pointwise", "depthwise"), share_norms=True,
                           **SMALL_CM)
    assert len(both.depthwise) == len(both.pointwise) == len(both.norm1) == 3
    vit = sk.create_model("deit_tiny_patch16_224", share_rate=2, share="mlp", **SMALL_VIT)
    assert len(vit.mlp) == 3 and len(vit.attn) == 6 and len(vit.norm1) == 6


def test_drop_path_rates_follow_layer_position():
    vit = sk.create_model("deit_tiny_patch16_224", share_rate=3, drop_path_rate=0.5, **SMALL_VIT)
    rates = [b.drop_path.rate for b in vit.blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.5, 6).tolist())
    vit.eval()
    assert all(not b.drop_path.training for b in vit.blocks)  # train/eval reaches the per-position modules


def test_fix_init_uses_first_layer_of_each_group():
    torch.manual_seed(0)
    plain = sk.create_model("deit_tiny_patch16_224", share_rate=2, **SMALL_VIT)
    torch.manual_seed(0)
    fixed = sk.create_model("deit_tiny_patch16_224", share_rate=2, fix_init=True, **SMALL_VIT)
    for u, group in enumerate(fixed.mlp_plan.groups):
        ratio = plain.mlp[u].fc2.weight / fixed.mlp[u].fc2.weight
        assert torch.allclose(ratio, torch.full_like(ratio, (2.0 * (group[0] + 1)) ** 0.5))


@pytest.mark.parametrize("name, small", [("spin_convmixer_768_32", SMALL_CM), ("deit_small_patch16_224", SMALL_VIT)])
@pytest.mark.parametrize("kwargs", [dict(share_rate=2), dict(share_rate=3, mapping="cycle_rev", share_norms=True),
                                    dict(share_rate=2, fusion="channel_weighted_mean")])
def test_gradient_reaches_every_unique_parameter(name, small, kwargs):
    model = sk.create_model(name, **kwargs, **small).train()
    with torch.no_grad():  # ViT biases start at zero, which would zero the gradient of their fusion weights
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model(torch.randn(2, 3, 24, 24)).square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("kwargs", [dict(share_rate=2), dict(share_rate=2, fusion="scalar_weighted_mean"),
                                    dict(mapping=[0, 1, 0, 1, 2, 2])])
def test_checkpoint_round_trip(tmp_path, kwargs):
    model = sk.create_model("convmixer_768_32", **kwargs, **SMALL_CM).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    save_model(model, tmp_path / "m.pth")
    again = sk.load_model(tmp_path / "m.pth").eval()
    x = torch.randn(2, 3, 24, 24)
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
    assert again.spin_config == model.spin_config
    also = sk.create_model("convmixer_768_32", **kwargs, **SMALL_CM, checkpoint_path=tmp_path / "m.pth").eval()
    torch.testing.assert_close(also(x), model(x), rtol=0, atol=0)


def test_backends_share_parameter_names():
    ref = sk.create_model("spin_convmixer_768_32", share_rate=2, **SMALL_CM)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fused = sk.create_model("spin_convmixer_768_32", share_rate=2, backend="triton", **SMALL_CM)
    assert list(ref.state_dict()) == list(fused.state_dict())
    fused.load_state_dict(ref.state_dict())


def test_classifier_of_another_size_is_dropped_with_a_warning(tmp_path):
    save_model(sk.create_model("convmixer_768_32", **SMALL_CM), tmp_path / "m.pth")
    with pytest.warns(UserWarning, match="classes"):
        model = sk.create_model("convmixer_768_32", **{**SMALL_CM, "num_classes": 3},
                                checkpoint_path=tmp_path / "m.pth")
    assert model.head.out_features == 3


def test_unshared_checkpoint_into_shared_model_says_how(tmp_path):
    save_model(sk.create_model("convmixer_768_32", **SMALL_CM), tmp_path / "m.pth")
    with pytest.raises(ValueError, match="fusion="):
        sk.create_model("convmixer_768_32", share_rate=2, **SMALL_CM, checkpoint_path=tmp_path / "m.pth")
    fused = sk.create_model("convmixer_768_32", share_rate=2, fusion="mean", **SMALL_CM,
                            checkpoint_path=tmp_path / "m.pth")
    assert fused.is_fusion_form


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="resnet50"), "unknown model"),
    (dict(name="convmixer_768_32", share=("mlp",)), "share"),
    (dict(name="convmixer_768_32", backend="tpu"), "backend"),
    (dict(name="convmixer_768_32", share_rate=5), "does not divide"),
    (dict(name="convmixer_768_32", kernel_size=4), "kernel_size"),
    (dict(name="convmixer_768_32", num_heads=4), "arch_overrides"),
    (dict(name="deit_tiny_patch16_224", num_heads=5), "num_heads"),
    (dict(name="convmixer_768_32", fusion="mean"), "fusion"),
    (dict(name="convmixer_768_32", share_rate=2, fusion="median"), "fusion method"),
    (dict(name="convmixer_768_32", checkpoint_path="/nonexistent.pth"), "checkpoint_path"),
])
def test_bad_input(kwargs, message):
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        sk.create_model(**kwargs)
    assert message in str(err.value)


def test_registered_in_timm():
    import timm

    model = timm.create_model("spin_convmixer_768_32", share_rate=2, **SMALL_CM)
    assert n_params(model) == n_params(sk.create_model("spin_convmixer_768_32", share_rate=2, **SMALL_CM))
    assert "spin_deit_small_patch16_224" in timm.list_models("spin_*")
    assert "spin_timm_convmixer_768_32" in timm.list_models("spin_*")


def test_pretrained_without_network_fails_clearly(monkeypatch):
    import timm

    def no_network(*args, **kwargs):  # what the hub loader raises when the network is unreachable
        raise OSError("Network is unreachable")

    monkeypatch.setattr(timm, "create_model", no_network)
    with pytest.raises(RuntimeError, match="checkpoint_path="):
        sk.create_model("deit_tiny_patch16_224", pretrained=True)
    with pytest.raises(ValueError, match="no pretrained weights"):
        sk.create_model("spin_convmixer_768_32", pretrained=True)


def test_backend_assignment_rebinds_the_fused_path():
    model = sk.create_model("convmixer_768_32", **SMALL_CM)
    assert model._fused is None
    model.backend = "triton"
    from spin_kernels.ops.convmixer import convmixer_features

    assert model.backend == "triton" and model._fused is convmixer_features
    with pytest.raises(ValueError, match="backend"):
        model.backend = "tpu"
