"""Checkpoints that never lose work: atomic writes, and every piece of state needed to resume exactly.

A training checkpoint is a dict in the format :func:`spin_kernels.load_model` reads (``model`` state dict +
``spin_config``) plus the optimizer, grad scaler, EMA, the position (epoch, step in epoch, optimizer updates), the
RNG states of every rank and the run's resolved config.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch


def atomic_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to a temp file in the target folder, fsync, then ``os.replace`` onto ``path``.

    A crash or kill mid-write leaves the previous file intact (os.replace is atomic on POSIX within a file system,
    which is why the temp file lives in the same folder).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def rng_state() -> dict:
    """RNG states of python, numpy, torch CPU and every CUDA device of this process."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore states captured by :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP and torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):  # DistributedDataParallel
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        else:
            return model


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint dict on the CPU; raise FileNotFoundError / ValueError with the path when unusable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(f"checkpoint {path} cannot be read ({e}); it may be truncated or not a torch file") from e
    if not isinstance(ckpt, dict):
        raise TypeError(f"checkpoint {path} holds a {type(ckpt).__name__}, expected a dict")
    return ckpt


def model_state_dict(ckpt: dict) -> dict:
    """The model weights of a checkpoint: ours ("model"), timm's ("state_dict" / "state_dict_ema"), or a bare dict."""
    for key in ("model", "state_dict", "model_state", "module"):
        if key in ckpt and isinstance(ckpt[key], dict):
            sd = ckpt[key]
            break
    else:
        sd = ckpt
    # DDP-saved weights carry a "module." prefix.
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd
