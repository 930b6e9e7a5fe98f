"""checkpoint_io: files load without running code, every file we write loads that way, .safetensors round trips."""
from __future__ import annotations

import argparse
import random

import numpy as np
import pytest
import torch

from spin_kernels import checkpoint_io, create_model, load_model
from spin_kernels.models.registry import save_model
from spin_kernels.train.checkpoint import load_checkpoint, rng_state, set_rng_state

TINY = dict(dim=16, depth=2, kernel_size=3, patch_size=2, num_classes=3)


def test_save_refuses_what_safe_loading_would_refuse(tmp_path):
    with pytest.raises(TypeError, match=r"checkpoint\['config'\]\['when'\] is a numpy.ndarray"):
        checkpoint_io.save({"config": {"when": np.zeros(2)}}, tmp_path / "x.pth")
    assert not list(tmp_path.iterdir())  # nothing written, not even a temp file


def test_rng_state_round_trips_through_a_safe_file(tmp_path):
    checkpoint_io.save({"rng": rng_state()}, tmp_path / "rng.pth")
    state = load_checkpoint(tmp_path / "rng.pth")["rng"]  # weights_only
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_timm_training_checkpoints_with_argparse_namespace_load(tmp_path):
    model = create_model("convmixer_768_32", **TINY)
    torch.save({"state_dict": model.state_dict(), "args": argparse.Namespace(lr=0.1), "epoch": 3}, tmp_path / "t.pth")
    ckpt = checkpoint_io.load(tmp_path / "t.pth")
    assert ckpt["args"].lr == 0.1 and checkpoint_io.state_dict_of(ckpt).keys() == model.state_dict().keys()


@pytest.mark.parametrize("fusion", [None, "channel_weighted_mean"])
def test_safetensors_round_trip(tmp_path, fusion):
    kw = dict(TINY, share_rate=2, fusion=fusion) if fusion else TINY
    model = create_model("convmixer_768_32", **kw).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    back = load_model(path).eval()
    assert back.spin_config == model.spin_config
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(back(x), model(x))
    from safetensors.torch import load_file  # what timm and other tools read

    assert load_file(str(path)).keys() == model.state_dict().keys()


def test_unreadable_files_name_the_flag(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(checkpoint_io.CheckpointError, match="--checkpoint .*junk.safetensors is not a readable"):
        checkpoint_io.load(tmp_path / "junk.safetensors", what="--checkpoint")
    ok = tmp_path / "ok.pth"
    torch.save({"model": {}}, ok)
    ok.write_bytes(ok.read_bytes()[:40])
    with pytest.raises(checkpoint_io.CheckpointError, match="cannot be read .* truncated"):
        checkpoint_io.load(ok)
