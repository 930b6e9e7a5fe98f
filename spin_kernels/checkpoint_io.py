"""Checkpoint files that cannot run code: the one place where spin_kernels reads and writes them.

Reading: ``torch.load(..., weights_only=True)`` (tensors and plain containers only; pickled callables are refused
before anything runs), or a ``.safetensors`` file (weights, plus our model config as JSON metadata). A file that
needs arbitrary pickled objects — a legacy checkpoint, or a planted payload — raises :class:`CheckpointError`
naming the objects it asks for; only an explicit ``trusted=True`` (CLI: ``--trust-checkpoint``) loads it the
old way, for files whose origin the user vouches for. ``argparse.Namespace`` is allowed as data: timm's own
training checkpoints store their arguments in one, and building a Namespace runs no code.

Writing: :func:`save` refuses anything that ``weights_only`` loading would refuse (so every file we write can be
read back safely), writes to a temp file in the target folder, fsyncs, then renames atomically — a crash or kill
mid-write leaves the previous file intact. Files get the usual ``0o666 & ~umask`` mode.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path

import torch

SAFETENSORS_SUFFIX = ".safetensors"
# Plain values a checkpoint may hold besides tensors; dtypes / sizes / devices are torch's own safe types.
_PLAIN = (str, bytes, int, float, bool, complex, type(None), torch.dtype, torch.Size, torch.device)
_SAFE_GLOBALS = [argparse.Namespace]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, truncated, unsafe to unpickle, or not what was expected."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_plain(obj, where: str = "checkpoint") -> None:
    """Raise TypeError naming the first value (by its path in ``obj``) that is not a tensor or plain data."""
    if isinstance(obj, torch.Tensor) or isinstance(obj, _PLAIN):
        return
    if isinstance(obj, (dict, OrderedDict)):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} is a {type(k).__name__}; checkpoints take str / int keys")
            check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, (list, tuple, set, frozenset)):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__name__}; checkpoints hold only tensors and "
                    "plain data (str, numbers, None, lists, tuples, dicts), so they load with weights_only=True")


def save(obj: dict, path: str | os.PathLike) -> Path:
    """Write ``obj`` (tensors + plain containers) to ``path`` atomically; ``.safetensors`` paths get that format.

    A ``.safetensors`` file takes a model checkpoint ``{"model": state_dict, ...}``: the state dict becomes the
    tensors, every other key is stored as JSON metadata (so it must be JSON-serialisable).
    """
    path = Path(path)
    check_plain(obj)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if path.suffix == SAFETENSORS_SUFFIX:
                f.write(_safetensors_bytes(obj))
            else:
                torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def writable_problem(path: str | os.PathLike) -> str | None:
    """Why files cannot be created at ``path`` (a folder that exists or will be created), or None.

    Creates and removes a probe file in the nearest existing folder: os.access is wrong for root, ACLs and
    read-only mounts.
    """
    path = Path(path)
    parent = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    if not parent.is_dir():
        return f"{parent} is a file, not a folder"
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return f"{parent}: {e.strerror or e}"
    return None


def check_writable_file(path: str | os.PathLike, flag: str) -> None:
    """Raise ValueError naming ``flag`` unless a file can be written at ``path`` (checked before long work, so a
    read-only or mistyped destination fails at once, not after the work is done)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder; expected a file path")
    problem = writable_problem(path.parent)
    if problem:
        raise ValueError(f"{flag} {path} cannot be written ({problem})")


def _safetensors_bytes(obj: dict) -> bytes:
    from safetensors.torch import save as st_save

    if not isinstance(obj.get("model"), dict):
        raise TypeError("a .safetensors checkpoint holds a model: expected {'model': state_dict, ...}")
    meta = {k: json.dumps(v) for k, v in obj.items() if k != "model"}
    # safetensors stores each tensor once: shared or non-contiguous views are written as contiguous copies.
    tensors = {k: v.detach().contiguous().clone() for k, v in obj["model"].items()}
    return st_save(tensors, metadata=meta)


def _load_safetensors(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    out: dict = {"model": tensors}
    for k, v in meta.items():
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:  # metadata written by another tool: keep the string
            out[k] = v
    return out


def load(path: str | os.PathLike, *, trusted: bool = False, what: str = "checkpoint"):
    """Read a checkpoint file on the CPU without running code from it.

    Args:
        path: a ``torch.save`` file (``.pth`` / ``.pt`` / ``.bin``) or a ``.safetensors`` file.
        trusted: load pickled Python objects too (``weights_only=False``). Only for files whose origin you trust:
            unpickling can run arbitrary code.
        what: how error messages name the file's role (e.g. ``"--resume"``).

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: unreadable or truncated, or it needs pickled objects and ``trusted`` is False.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"{what} {path} is not a file")
    if path.suffix == SAFETENSORS_SUFFIX:
        try:
            return _load_safetensors(path)
        except Exception as e:  # noqa: BLE001 - any decoding failure becomes one clear message
            raise CheckpointError(f"{what} {path} is not a readable safetensors file ({e})") from None
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols are not the user's concern
            return torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as e:
        unsafe = [] if trusted else _unsafe_globals(path)
        if unsafe:
            shown = ", ".join(unsafe[:4]) + (", ..." if len(unsafe) > 4 else "")
            raise CheckpointError(
                f"{what} {path} holds pickled Python objects ({shown}) that could run code when loaded, so it was "
                "not loaded; if you trust where this file comes from, pass --trust-checkpoint "
                "(Python: trusted=True)") from None
        raise CheckpointError(f"{what} {path} cannot be read ({_first_line(e)}); it may be truncated, not a torch "
                              "file, or a legacy pickle that safe loading refuses (if you trust where it comes "
                              "from, pass --trust-checkpoint)") from None
    except Exception as e:  # noqa: BLE001 - a malformed file fails in many ways (struct.error, EOFError, ...)
        raise CheckpointError(f"{what} {path} cannot be read ({_first_line(e)}); it may be truncated or not a "
                              "torch file") from None


def _first_line(e: BaseException) -> str:
    """The exception's first sentence: enough to recognise, short enough for one line."""
    text = str(e).strip().splitlines()
    first = re.split(r"(?<=[.!?])\s", text[0], maxsplit=1)[0][:160] if text else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _unsafe_globals(path: Path) -> list[str]:
    """The pickled globals a file asks for beyond what safe loading allows, read without executing anything."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - not a zip checkpoint, or unreadable: the caller reports it as such
        return []
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in _SAFE_GLOBALS}
    return [n for n in names if n not in allowed]


def state_dict_of(ckpt, path: str | os.PathLike = "", what: str = "checkpoint") -> dict:
    """The model weights inside a loaded checkpoint, wrapper prefixes removed.

    Accepts ours (``model``), timm's (``state_dict``, or ``state_dict_ema`` / ``model_ema`` when alone), other
    trainers' (``model_state``, ``module``) and a bare state dict. DDP (``module.``) and ``torch.compile``
    (``_orig_mod.``) prefixes are stripped. Raises CheckpointError when there is no dict of tensors to use.
    """
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{what} {path} holds a {type(ckpt).__name__}; expected a dict with model weights")
    for key in ("model", "state_dict", "model_state", "module", "state_dict_ema", "model_ema"):
        if isinstance(ckpt.get(key), dict):
            state = ckpt[key]
            break
    else:
        state = ckpt
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not state or bad:
        raise CheckpointError(f"{what} {path} holds no model weights: expected a state dict of tensors (or one under "
                              f"'model' / 'state_dict'), found keys {sorted(map(str, state))[:6]}")
    return {re.sub(r"^(module\.|_orig_mod\.)+", "", k): v for k, v in state.items()}
