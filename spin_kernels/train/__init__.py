"""Training, evaluation, compression and the CPU demo behind ``spin train | eval | compress | info | demo``.

Modules, one job each: ``loop`` (the training loop), ``evaluate`` (top-1/top-5 over ranks), ``checkpoint`` (atomic,
resumable checkpoints), ``schedule`` (LR as a function of the update count), ``recipes`` (spin / deit / demo
presets), ``distributed`` (torchrun setup), ``logs`` (summary.csv, JSONL, plots), ``compress``, ``run_eval``,
``info``, ``demo`` and ``cli`` (argument parsing).
"""
from .recipes import RECIPES, resolve

__all__ = ["RECIPES", "resolve", "train"]


def train(cfg: dict) -> dict:
    """Run training with a resolved config (see :func:`spin_kernels.train.loop.train`)."""
    from .loop import train as _train  # lazy: the loop imports timm and the data pipeline

    return _train(cfg)
