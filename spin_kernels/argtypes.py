"""Command-line value types and parsers shared by every ``spin`` verb.

Each ``type=`` function raises ``argparse.ArgumentTypeError`` with what was expected, which argparse turns into
``spin VERB: error: argument --flag: expected ...`` (one line, exit status 2), so a bad value never reaches the
code as a silent substitute (``--share-rate 0`` used to train unshared, ``--img-size 0`` fell back to 224).
"""
from __future__ import annotations

import argparse
import ast


def _number(kind, text: str, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def positive_int(text: str) -> int:
    """An int ≥ 1."""
    v = _number(int, text, "an integer ≥ 1")
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 1, got {text}")
    return v


def nonneg_int(text: str) -> int:
    """An int ≥ 0."""
    v = _number(int, text, "an integer ≥ 0")
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 0, got {text}")
    return v


def positive_float(text: str) -> float:
    """A finite float > 0."""
    v = _number(float, text, "a number > 0")
    if not 0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return v


def nonneg_float(text: str) -> float:
    """A finite float ≥ 0."""
    v = _number(float, text, "a number ≥ 0")
    if not 0 <= v < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number ≥ 0, got {text}")
    return v


def probability(text: str) -> float:
    """A float in [0, 1]."""
    v = _number(float, text, "a number in [0, 1]")
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text}")
    return v


def fraction(text: str) -> float:
    """A float in [0, 1): rates such as dropout, label smoothing, momentum."""
    v = _number(float, text, "a number in [0, 1)")
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text}")
    return v


def open_fraction(text: str) -> float:
    """A float in (0, 1): an EMA decay."""
    v = _number(float, text, "a number in (0, 1)")
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text}")
    return v


def device(text: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")


def add_trust_flag(parser: argparse.ArgumentParser) -> None:
    """``--trust-checkpoint``: the explicit opt-in to load pickled checkpoints (spin_kernels.checkpoint_io)."""
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="also load checkpoints that hold pickled Python objects (legacy files). Unpickling can "
                             "run code: only for files whose origin you trust")


def parse_kv(items: list[str] | None, flag: str = "--model-kwargs") -> dict:
    """``["dim=128", "act=gelu"]`` -> ``{"dim": 128, "act": "gelu"}`` (values parsed as Python literals if they are)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"{flag}: expected key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip().replace("-", "_")] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k.strip().replace("-", "_")] = v
    return out


def parse_mapping(text: str | None):
    """A mapping name, or an explicit comma-separated list of unique indices ("0,0,1,1")."""
    if text is None:
        return None
    if "," in text or text.isdigit():
        try:
            return [int(t) for t in text.split(",") if t.strip()]
        except ValueError:
            raise ValueError(f"--mapping: {text!r} is neither a mapping name nor a list of integers") from None
    return text


def parse_share(text: str | None):
    """``"pointwise,depthwise"`` -> ``("pointwise", "depthwise")``."""
    return None if text is None else tuple(t.strip() for t in text.split(",") if t.strip())
