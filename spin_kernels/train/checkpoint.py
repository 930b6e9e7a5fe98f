"""Training checkpoints that never lose work: atomic writes, and every piece of state needed to resume exactly.

A training checkpoint is a dict in the format :func:`spin_kernels.load_model` reads (``model`` state dict +
``spin_config``) plus the optimizer, grad scaler, EMA, the position (epoch, step in epoch, optimizer updates), the
RNG states of every rank and the run's resolved config. Everything in it is tensors and plain data, so it loads
with ``weights_only=True`` (:mod:`spin_kernels.checkpoint_io` reads and writes every file).
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

from ..checkpoint_io import CheckpointError, load, state_dict_of
from ..checkpoint_io import save as atomic_save  # noqa: F401 - the training loop's name for it

__all__ = ["CheckpointError", "atomic_save", "load_checkpoint", "load_training_checkpoint", "model_state_dict",
           "rng_state", "set_rng_state", "unwrap"]


def load_checkpoint(path: str | os.PathLike, *, trusted: bool = False, what: str = "checkpoint") -> dict:
    """Load a checkpoint dict on the CPU without running code from it.

    Raises FileNotFoundError / CheckpointError naming ``what`` (the flag, e.g. ``--resume``) and the path.
    """
    ckpt = load(path, trusted=trusted, what=what)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{what} {path} holds a {type(ckpt).__name__}; expected a checkpoint dict")
    return ckpt


# What makes a checkpoint a training checkpoint (model-only checkpoints go to --init-from).
TRAINING_STATE = ("model", "spin_config", "optimizer", "epoch", "step_in_epoch", "update", "config")


def load_training_checkpoint(path: str | os.PathLike, *, trusted: bool = False) -> dict:
    """A checkpoint ``spin train --resume`` can continue; a model-only checkpoint gets an error pointing to
    ``--init-from``."""
    ckpt = load_checkpoint(path, trusted=trusted, what="--resume")
    missing = [k for k in TRAINING_STATE if k not in ckpt]
    if missing:
        raise CheckpointError(f"--resume {path} is not a training checkpoint of spin train (it has no "
                              f"{', '.join(missing)}); to start a new run from its weights use --init-from {path}")
    return ckpt


def model_state_dict(ckpt: dict, path: str | os.PathLike = "", what: str = "checkpoint") -> dict:
    """The model weights of a loaded checkpoint (ours, timm's, or a bare state dict), wrapper prefixes removed."""
    return state_dict_of(ckpt, path, what=what)


def rng_state() -> dict:
    """RNG states of python, numpy, torch CPU and every CUDA device of this process, as tensors and plain data."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore states captured by :func:`rng_state`."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state((kind, keys.astype(np.uint32), pos, has_gauss, gauss))
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
