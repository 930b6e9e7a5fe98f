"""Fixtures for the training tests: a tiny ImageFolder tree of sklearn digits written as PNGs."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Keep the shared 2-core machine usable: one torch thread per test process.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def write_digits_tree(root: Path, n_classes: int = 4, per_class_train: int = 16, per_class_val: int = 6,
                      size: int = 16) -> Path:
    """Write ``root/{train,val}/<digit>/<i>.png`` from sklearn's digits (8x8, upscaled to ``size``)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for split, per in (("train", per_class_train), ("val", per_class_val)):
        for c in range(n_classes):
            idx = np.flatnonzero(digits.target == c)
            idx = idx[:per] if split == "train" else idx[per_class_train:per_class_train + per]
            d = root / split / f"digit{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in idx:
                img = (digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
                Image.fromarray(img, mode="L").resize((size, size), Image.NEAREST).convert("RGB").save(d / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory) -> Path:
    """A 4-class digits ImageFolder tree (64 train / 24 val images, 16x16 RGB)."""
    return write_digits_tree(tmp_path_factory.mktemp("digits"))


# Tiny models so each training step takes milliseconds.
TINY_CONVMIXER = ["dim=16", "depth=2", "kernel_size=3", "patch_size=2", "act=gelu"]
TINY_DEIT = ["embed_dim=16", "depth=2", "num_heads=2", "patch_size=4", "img_size=16", "mlp_ratio=2"]


def spin_cmd() -> list[str]:
    """The ``spin`` CLI run through this interpreter."""
    return [sys.executable, "-m", "spin_kernels.cli"]
