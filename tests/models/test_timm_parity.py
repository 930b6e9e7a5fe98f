"""from_timm: our models compute exactly what timm's do, and weight fusion is a faithful reparametrisation."""
import pytest
import torch
from timm.models.convmixer import ConvMixer as TimmConvMixer
from timm.models.vision_transformer import VisionTransformer as TimmViT

import spin_kernels as sk
from spin_kernels.testing import randomise_batchnorm, rel_err




def timm_convmixer(act=torch.nn.GELU, **kw):
    model = TimmConvMixer(dim=20, depth=5, kernel_size=5, patch_size=3, num_classes=7, act_layer=act, **kw)
    randomise_batchnorm(model)
    return model


def timm_vit():
    return TimmViT(img_size=30, patch_size=6, embed_dim=36, depth=4, num_heads=3, num_classes=7, mlp_ratio=3.0)


@pytest.mark.parametrize("name, make", [("convmixer_1536_20", timm_convmixer),
                                        ("convmixer_768_32", lambda: timm_convmixer(torch.nn.ReLU)),
                                        ("deit_small_patch16_224", timm_vit)])
@pytest.mark.parametrize("train", [False, True])
def test_same_logits_as_timm(name, make, train):
    torch.manual_seed(0)
    theirs = make().train(train)
    ours = sk.from_timm(theirs, name).train(train)
    x = torch.randn(3, 3, 30, 30)
    assert rel_err(ours(x), theirs(x)) <= 1e-5
    # From a bare state_dict too (architecture read off the shapes).
    again = sk.from_timm(theirs.state_dict(), name, **({"num_heads": 3} if "deit" in name else {}))
    assert rel_err(again.train(train)(x), theirs(x)) <= 1e-5


def test_timm_checkpoint_file_loads(tmp_path):
    theirs = timm_convmixer().eval()
    torch.save({"state_dict": {"module." + k: v for k, v in theirs.state_dict().items()}}, tmp_path / "t.pth")
    ours = sk.create_model("convmixer_1536_20", dim=20, depth=5, kernel_size=5, patch_size=3, num_classes=7,
                           checkpoint_path=tmp_path / "t.pth").eval()
    x = torch.randn(2, 3, 30, 30)
    assert rel_err(ours(x), theirs(x)) <= 1e-5


@pytest.mark.parametrize("method", ["mean", "choose_first", "scalar_weighted_mean", "channel_weighted_mean"])
@pytest.mark.parametrize("mapping", ["sequential", "strided", [0, 1, 1, 0, 2]])
def test_fusion_form_and_collapse(method, mapping):
    torch.manual_seed(1)
    theirs = timm_convmixer().eval()
    rate = 1 if isinstance(mapping, list) else 5
    fused = sk.from_timm(theirs, "convmixer_1536_20", share_rate=rate, mapping=mapping, method=method).eval()
    assert fused.is_fusion_form
    plain = fused.collapse().eval()
    assert not plain.is_fusion_form
    x = torch.randn(2, 3, 30, 30)
    torch.testing.assert_close(plain(x), fused(x), rtol=1e-6, atol=1e-6)
    # The collapsed model is a plain shared model: unique count only.
    n_unique = plain.pw_plan.num_unique
    assert len(plain.pointwise) == n_unique
    assert sum(p.numel() for p in plain.parameters()) < sum(p.numel() for p in theirs.parameters())
    # Every group's shared weight is the method applied to the group's timm weights.
    blocks = theirs.blocks
    for u, group in enumerate(plain.pw_plan.groups):
        ws = torch.stack([blocks[l][1].weight for l in group])
        expected = ws[0] if method == "choose_first" else ws.mean(0)  # alpha = 1 at initialisation
        torch.testing.assert_close(plain.pointwise[u].weight, expected)


def test_fusion_of_vit_groups_and_grad_to_sources():
    torch.manual_seed(2)
    theirs = timm_vit()
    fused = sk.from_timm(theirs, "deit_small_patch16_224", share_rate=2, mapping="strided", method="mean")
    assert fused.attn_plan.layer_to_unique == [0, 1, 0, 1]
    w0 = torch.stack([theirs.blocks[0].mlp.fc1.weight, theirs.blocks[2].mlp.fc1.weight]).mean(0)
    torch.testing.assert_close(fused.mlp[0].fc1.weight, w0)
    fused(torch.randn(2, 3, 30, 30)).sum().backward()
    sources = fused.mlp[0].fc1.parametrizations.weight
    assert sources.original0.grad is not None and sources.original1.grad is not None


def test_share_rate_without_method_is_an_error():
    with pytest.raises(ValueError, match="method"):
        sk.from_timm(timm_convmixer(), "convmixer_1536_20", share_rate=5)
