"""spin compress hands back a usable model: BatchNorm recalibration restores a fused model's accuracy; fuse-then-
fine-tune saves a collapsed shared model of the shared architecture's size."""
from __future__ import annotations

import json

import pytest
import torch

from spin_kernels.cli import main as spin
from spin_kernels.models import create_model, load_model

from .conftest import write_digits_tree

ARCH = ["dim=24", "depth=4", "kernel_size=3", "patch_size=2", "act=gelu"]


@pytest.fixture(scope="module")
def digits10(tmp_path_factory):
    """10 classes of sklearn's digits, 80 train / 20 val images each, 16x16."""
    return write_digits_tree(tmp_path_factory.mktemp("digits10"), n_classes=10, per_class_train=80,
                             per_class_val=20)


@pytest.fixture(scope="module")
def unshared(digits10, tmp_path_factory):
    """An unshared tiny ConvMixer trained to well above chance on the 10 digits."""
    out = tmp_path_factory.mktemp("unshared") / "run"
    assert spin(["train", "--data-dir", str(digits10), "--model", "convmixer_768_32", "--model-kwargs", *ARCH,
                 "--img-size", "16", "-b", "32", "--epochs", "6", "--recipe", "demo", "--lr", "0.01", "-j", "0",
                 "--threads", "1", "--quiet", "--output", str(out)]) == 0
    return out / "last.pth"


def _stages(capsys) -> dict:
    out = capsys.readouterr().out
    return {r["stage"]: r["top1"] for r in json.loads(out.strip().splitlines()[-1])["stages"]}


def test_recalibration_restores_the_fused_model(digits10, unshared, tmp_path, capsys):
    assert spin(["compress", "--checkpoint", str(unshared), "--share-rate", "2", "--fusion", "mean",
                 "--data-dir", str(digits10), "--eval", "--calib-batches", "16", "-b", "32", "-j", "0",
                 "--output", str(tmp_path / "shared.pth")]) == 0
    top1 = _stages(capsys)
    assert top1["unshared"] >= 70.0, top1                            # the task is learnt (chance: 10%)
    assert top1["compressed + BN recalibration"] >= 30.0, top1       # well above chance (3x) after recalibration ...
    assert top1["compressed + BN recalibration"] >= top1["compressed, as is"] + 15.0, top1   # ... and far better
    # the saved model is the recalibrated one: spin eval reproduces its accuracy
    assert spin(["eval", "--checkpoint", str(tmp_path / "shared.pth"), "--data-dir", str(digits10), "-j", "0"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["top1"] == pytest.approx(top1["compressed + BN recalibration"], abs=1e-3)


def test_without_data_the_user_is_warned(unshared, tmp_path, capsys):
    assert spin(["compress", "--checkpoint", str(unshared), "--output", str(tmp_path / "s.pth")]) == 0
    assert "recalibrate (--data-dir DIR) or fine-tune" in capsys.readouterr().err


def test_fuse_then_finetune_saves_the_collapsed_shared_model(digits10, unshared, tmp_path, capsys):
    out = tmp_path / "shared.pth"
    assert spin(["compress", "--checkpoint", str(unshared), "--share-rate", "2", "--fusion", "channel_weighted_mean",
                 "--data-dir", str(digits10), "--eval", "--finetune-epochs", "1", "--recipe", "demo", "--lr", "0.002",
                 "-b", "32", "-j", "0", "--quiet", "--output", str(out)]) == 0
    top1 = _stages(capsys)
    assert top1["compressed + 1 fine-tune epoch(s)"] >= 50.0, top1
    model = load_model(out)
    assert model.spin_config["share_rate"] == 2 and not model.spin_config.get("fusion")
    params = sum(p.numel() for p in model.parameters())
    kw = dict(dim=24, depth=4, kernel_size=3, patch_size=2, act="gelu", num_classes=10)
    assert params == sum(p.numel() for p in create_model("convmixer_768_32", share_rate=2, **kw).parameters())
    assert params < sum(p.numel() for p in create_model("convmixer_768_32", **kw).parameters())
    assert (tmp_path / "shared-finetune" / "model_shared.pth").exists()      # the run folder keeps its files
    assert torch.load(out, weights_only=True)["data_cfg"]["img_size"] == 16
