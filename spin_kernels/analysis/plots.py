"""Matplotlib figures of the analysis: layer-similarity heatmaps, per-layer drift, accuracy-vs-cost fronts.

Uses the non-interactive Agg backend so it works on headless machines and inside tests.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from .pareto import pareto_front


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def save_heatmap(matrix, path: str, *, title: str = "", labels: Sequence | None = None, vmin: float | None = 0.0,
                 vmax: float | None = 1.0, cmap: str = "magma", xlabel: str = "layer", ylabel: str = "layer",
                 spans: Sequence[int] | None = None) -> str:
    """Write an L×L heatmap PNG (e.g. CKA or cosine similarity); ``spans`` (a mapping list) outlines the
    suggested sharing groups. Returns ``path``."""
    M = np.asarray(matrix, dtype=float)
    if M.ndim != 2:
        raise ValueError(f"matrix: expected a 2-D matrix, got shape {M.shape}")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.8), dpi=110)
    im = ax.imshow(M, vmin=vmin, vmax=vmax, cmap=cmap, origin="lower", interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if labels is not None:
        names = [str(lab) for lab in labels]
        ax.set_xticks(range(len(names)), names, fontsize=6, rotation=90)
        ax.set_yticks(range(len(names)), names, fontsize=6)
    if spans is not None:
        from matplotlib.patches import Rectangle
        start = 0
        for i in range(1, len(spans) + 1):
            if i == len(spans) or spans[i] != spans[start]:
                ax.add_patch(Rectangle((start - 0.5, start - 0.5), i - start, i - start, fill=False,
                                       edgecolor="cyan", linewidth=1.2))
                start = i
    return _finish(fig, ax, path, title=title, xlabel=xlabel, ylabel=ylabel)


def save_bars(values, path: str, *, title: str = "", xlabel: str = "layer", ylabel: str = "") -> str:
    """Bar chart of one value per layer (e.g. relative drift from the group mean). Returns ``path``."""
    v = np.asarray(values, dtype=float)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3), dpi=110)
    ax.bar(np.arange(len(v)), np.nan_to_num(v))
    return _finish(fig, ax, path, title=title, xlabel=xlabel, ylabel=ylabel)


def save_pareto(rows: Sequence[dict], cost_key: str, path: str, *, acc_key: str = "top1", front_key: str | None = None,
                xlabel: str | None = None, title: str = "", log_x: bool = True) -> str:
    """Scatter of accuracy vs ``cost_key`` for rows that have both, the Pareto front drawn as a step line and
    its points ringed. ``front_key`` names a boolean row field marking the front (computed if absent)."""

    pts = [r for r in rows if r.get(acc_key) is not None and r.get(cost_key) is not None]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=110)
    if not pts:
        ax.text(0.5, 0.5, f"no rows with both {cost_key} and {acc_key}", ha="center", va="center",
                transform=ax.transAxes)
    else:
        front = set(pareto_front([r[cost_key] for r in pts], [r[acc_key] for r in pts])) if front_key is None \
            else {i for i, r in enumerate(pts) if r.get(front_key)}
        groups: dict = {}
        for i, r in enumerate(pts):
            groups.setdefault(r.get("model", "?"), []).append(i)
        for model, idx in groups.items():
            ax.scatter([pts[i][cost_key] for i in idx], [pts[i][acc_key] for i in idx], label=model, s=28, zorder=3)
        for r in pts:
            ax.annotate(r.get("label", ""), (r[cost_key], r[acc_key]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
        f = sorted(front, key=lambda i: pts[i][cost_key])
        if f:
            xs = [pts[i][cost_key] for i in f]
            ys = [pts[i][acc_key] for i in f]
            ax.step(xs, ys, where="post", color="k", linewidth=1, zorder=2, label="Pareto front")
            ax.scatter(xs, ys, s=90, facecolors="none", edgecolors="k", zorder=4)
        if log_x and min(pts[i][cost_key] for i in range(len(pts))) > 0:
            ax.set_xscale("log")
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _finish(fig, ax, path, title=title, xlabel=xlabel or cost_key, ylabel=f"{acc_key} (%)")


def _finish(fig, ax, path: str, *, title: str, xlabel: str, ylabel: str) -> str:
    """Label ``ax``, write ``fig`` to ``path`` (creating its folder) and close it. Returns ``path``."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _ensure_dir(path)
    fig.savefig(path)
    _plt().close(fig)
    return path


def _ensure_dir(path: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
