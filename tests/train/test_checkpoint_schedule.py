"""Atomic checkpoints, RNG capture, LR schedules and recipe resolution."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from spin_kernels.train.checkpoint import (
    atomic_save,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from spin_kernels.train.recipes import resolve
from spin_kernels.train.schedule import StepSchedule


def test_atomic_save_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "ck.pth"
    atomic_save({"a": 1}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save({"a": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path) == {"a": 1}
    assert os.listdir(tmp_path) == ["ck.pth"]  # no temp file left behind


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.pth"):
        load_checkpoint(tmp_path / "junk.pth")


def test_rng_roundtrip():
    state = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert a == (random.random(), np.random.rand(), torch.rand(1).item())


def test_onecycle_and_cosine():
    s = StepSchedule("onecycle", 0.01, total=100)
    assert s(0) == 0 and s(40) == pytest.approx(0.01) and s(80) == pytest.approx(0.0005) and s(100) == 0
    c = StepSchedule("cosine", 1.0, total=100, warmup=10, min_lr=0.1)
    assert c(0) == pytest.approx(0.1) and c(9) == pytest.approx(1.0) and c(100) == pytest.approx(0.1)


def test_recipes_flags_override():
    spin = resolve("spin", {"lr": None, "epochs": 3})
    assert spin["lr"] == 0.01 and spin["epochs"] == 3 and spin["sched"] == "onecycle" and spin["mixup"] == 0.5
    deit = resolve("deit", {"batch_size": 256}, world_size=4)
    assert deit["lr"] == pytest.approx(5e-4 * 1024 / 512) and deit["model_ema"] and deit["repeats"] == 3
    assert resolve("deit", {"batch_size": 256, "lr": 1e-3}, world_size=4)["lr"] == 1e-3
    with pytest.raises(ValueError, match="--recipe"):
        resolve("nope", {})
