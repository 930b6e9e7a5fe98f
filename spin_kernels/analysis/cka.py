"""Centered kernel alignment (CKA) between layer representations.

* :func:`linear_cka` — linear CKA of two feature matrices (Kornblith et al., ICML 2019), computed in float64 in
  whichever space is smaller (features or examples); ``debiased=True`` uses the unbiased HSIC estimator.
* :func:`hsic_unbiased` — the unbiased HSIC estimator of Song et al. (2012) on Gram matrices.
* :class:`MinibatchCKA` / :func:`layer_similarity` — the minibatch CKA of Nguyen, Raghu & Kornblith (ICLR 2021,
  "Do wide and deep networks learn the same things?"): the unbiased HSIC of every pair of layers is accumulated
  batch by batch, so memory is ``O(L² + L·n²)`` for batch size n, independent of the dataset size — features are
  never stored beyond the current batch. Because each batch's estimator is unbiased, the sum over batches
  converges to the full-data CKA as batches are added (the biased per-batch estimator would not).
"""
from __future__ import annotations

import warnings
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn


def _as_matrix(x, name: str) -> torch.Tensor:
    """``[n, ...]`` array/tensor -> float64 ``[n, p]`` tensor (features flattened)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"{name}: expected at least 2 dims [examples, features...], got shape {tuple(x.shape)}")
    return x.detach().reshape(x.shape[0], -1).to(torch.float64)


def gram_linear(x: torch.Tensor, center: bool = True) -> torch.Tensor:
    """Linear-kernel Gram matrix ``X Xᵀ`` of ``[n, ...]`` features, in float64.

    ``center`` subtracts the feature mean first. Every HSIC here is invariant to that shift, but deep-layer
    features often have a mean far larger than their spread across examples (‖μ‖² / tr Σ ~ 1e6 on an untrained
    net), and the unbiased estimator would then cancel terms of size ‖μ‖⁴ down to tr(Σ²): centering first avoids
    that loss of precision (it produced CKA values > 1 before).
    """
    x = _as_matrix(x, "x")
    if center:
        x = x - x.mean(0, keepdim=True)
    return x @ x.T


def hsic_unbiased(K: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC estimator (Song et al. 2012, eq. 5) of two ``n×n`` Gram matrices (n ≥ 4).

    ``HSIC_1 = [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1 / ((n-1)(n-2)) − 2/(n-2)·1ᵀK̃L̃1] / (n(n-3))`` with K̃, L̃ the Grams with
    zeroed diagonals. Works on Grams of uncentered features: the estimator is invariant to mean shifts.
    """
    if K.shape != L.shape or K.dim() != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"K, L: expected two square Gram matrices of the same size, got {tuple(K.shape)} and "
                         f"{tuple(L.shape)}")
    n = K.shape[0]
    if n < 4:
        raise ValueError(f"K: the unbiased HSIC needs at least 4 examples, got {n}")
    K = K.to(torch.float64).clone()
    L = L.to(torch.float64).clone()
    K.fill_diagonal_(0)
    L.fill_diagonal_(0)
    k1 = K.sum(0)                     # K̃1 (K̃ is symmetric)
    l1 = L.sum(0)
    trace = (K * L).sum()             # tr(K̃L̃) for symmetric matrices
    return (trace + k1.sum() * l1.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (k1 @ l1)) / (n * (n - 3))


def _hsic_biased(K: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """Biased HSIC ``tr(KHLH) / (n-1)²`` (the plain CKA numerator)."""
    n = K.shape[0]
    H = torch.eye(n, dtype=torch.float64) - 1.0 / n
    return ((H @ K @ H) * L).sum() / (n - 1) ** 2


def linear_cka(X, Y, *, debiased: bool = False) -> float:
    """Linear CKA of two representations of the same ``n`` examples, ``X: [n, ...]``, ``Y: [n, ...]``.

    ``CKA = ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F)`` on column-centred features (float64). Invariant to orthogonal
    transforms and isotropic scaling of either side; 1 for identical inputs. ``debiased=True`` replaces each HSIC
    by the unbiased estimator (n ≥ 4), the per-batch form that :class:`MinibatchCKA` sums.
    """
    X = _as_matrix(X, "X")
    Y = _as_matrix(Y, "Y")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"Y: expected the same number of examples as X ({X.shape[0]}), got {Y.shape[0]}")
    if debiased:
        K, L = gram_linear(X), gram_linear(Y)
        xy, xx, yy = hsic_unbiased(K, L), hsic_unbiased(K, K), hsic_unbiased(L, L)
    else:
        X = X - X.mean(0, keepdim=True)
        Y = Y - Y.mean(0, keepdim=True)
        n, p, q = X.shape[0], X.shape[1], Y.shape[1]
        if n < max(p, q):
            # Few examples, many features: work with n×n Grams (cost n²·p instead of p·q·n).
            K, L = X @ X.T, Y @ Y.T
            xy, xx, yy = (K * L).sum(), (K * K).sum(), (L * L).sum()
        else:
            xy = (Y.T @ X).square().sum()
            xx = (X.T @ X).square().sum()
            yy = (Y.T @ Y).square().sum()
    denom = torch.sqrt(xx * yy)
    if denom <= 0:
        raise ValueError("X, Y: CKA is undefined for a representation with zero variance")
    return float(xy / denom)


class MinibatchCKA:
    """Streaming CKA between ``num_layers`` representations (optionally against a second set of ``num_layers_y``).

    Call :meth:`update` with one batch's list of per-layer features; :meth:`compute` returns the CKA matrix.
    Memory is the ``L×L`` accumulator plus one batch of Grams.
    """

    def __init__(self, num_layers: int, num_layers_y: int | None = None, *, debiased: bool = True):
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers: expected a positive int, got {num_layers!r}")
        self.num_layers = num_layers
        self.num_layers_y = num_layers_y
        self.debiased = debiased
        ny = num_layers if num_layers_y is None else num_layers_y
        self.xy = torch.zeros(num_layers, ny, dtype=torch.float64)
        self.xx = torch.zeros(num_layers, dtype=torch.float64)
        self.yy = torch.zeros(ny, dtype=torch.float64)
        self.batches = 0
        self.skipped = 0

    def update(self, feats_x: Sequence[torch.Tensor], feats_y: Sequence[torch.Tensor] | None = None) -> None:
        """Accumulate the HSIC terms of one batch (``feats_*[l]`` is layer l's ``[n, ...]`` output)."""
        if len(feats_x) != self.num_layers:
            raise ValueError(f"feats_x: expected {self.num_layers} layers, got {len(feats_x)}")
        n = feats_x[0].shape[0]
        if self.debiased and n < 4:
            # The unbiased estimator is undefined below 4 examples (e.g. a ragged last batch): skip, not crash.
            self.skipped += 1
            return
        hsic = hsic_unbiased if self.debiased else _hsic_biased
        Kx = [gram_linear(f) for f in feats_x]
        if feats_y is None:
            if self.num_layers_y is not None:
                raise ValueError("feats_y: this accumulator compares two sets of layers; pass feats_y")
            Ky = Kx
        else:
            if len(feats_y) != self.xy.shape[1]:
                raise ValueError(f"feats_y: expected {self.xy.shape[1]} layers, got {len(feats_y)}")
            Ky = [gram_linear(f) for f in feats_y]
        symmetric = feats_y is None
        for i, K in enumerate(Kx):
            self.xx[i] += hsic(K, K)
            for j, L in enumerate(Ky):
                if symmetric and j < i:
                    continue
                v = hsic(K, L)
                self.xy[i, j] += v
                if symmetric and j != i:
                    self.xy[j, i] += v
        if symmetric:
            self.yy = self.xx
        else:
            for j, L in enumerate(Ky):
                self.yy[j] += hsic(L, L)
        self.batches += 1

    def compute(self) -> np.ndarray:
        """The ``L×L`` (or ``L×L_y``) CKA matrix accumulated so far, as a float64 numpy array."""
        if self.batches == 0:
            raise ValueError("MinibatchCKA: no batch accumulated (batches need ≥ 4 examples when debiased)")
        denom = torch.sqrt(torch.clamp(self.xx[:, None] * self.yy[None, :], min=1e-300))
        return (self.xy / denom).numpy()


def _first_tensor(batch):
    """The input tensor of a loader batch: a tensor, or the first element of a tuple/list, or ``batch['image']``."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, dict):
        for key in ("image", "images", "input", "x"):
            if key in batch:
                return batch[key]
    raise TypeError(f"loader: expected batches of tensors or (input, target) pairs, got {type(batch).__name__}")


def collect_layers(model: nn.Module, layers: Sequence[int] | None = None) -> list[int]:
    """Validated list of block indices to analyse (default: every ``model.blocks[l]``)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError("model: expected a spin_kernels model with a `blocks` sequence of per-layer modules")
    depth = len(blocks)
    if layers is None:
        return list(range(depth))
    layers = list(layers)
    bad = [i for i in layers if not isinstance(i, int) or not -depth <= i < depth]
    if bad:
        raise ValueError(f"layers: indices {bad} are out of range for a model with {depth} blocks")
    return [i % depth for i in layers]


@torch.no_grad()
def layer_similarity(model: nn.Module, loader: Iterable, layers: Sequence[int] | None = None, *,
                     debiased: bool = True, max_batches: int | None = None, other: nn.Module | None = None,
                     other_layers: Sequence[int] | None = None) -> np.ndarray:
    """L×L minibatch CKA between the outputs of ``model.blocks[l]`` over the batches of ``loader``.

    Args:
        model: a model with ``model.blocks``; put in eval mode for the pass (restored afterwards).
        loader: iterable of input tensors or ``(input, target)`` batches (≥ 4 examples each when debiased).
        layers: block indices (default all).
        debiased: unbiased HSIC per batch (Nguyen et al. 2021); False sums biased per-batch HSICs.
        max_batches: stop after this many batches.
        other / other_layers: compare against a second model's blocks on the same inputs (L×L_other result).

    Features are flattened per example and used batch by batch through forward hooks; nothing is kept across
    batches except the HSIC accumulators.
    """
    layers = collect_layers(model, layers)
    models = [(model, layers)]
    if other is not None:
        models.append((other, collect_layers(other, other_layers)))
    acc = MinibatchCKA(len(layers), None if other is None else len(models[1][1]), debiased=debiased)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    states = [m.training for m, _ in models]
    captured: list[dict] = [{} for _ in models]
    handles = []
    try:
        for k, (m, ls) in enumerate(models):
            m.eval()
            for layer in ls:
                def hook(_mod, _inp, out, k=k, layer=layer):
                    out = out[0] if isinstance(out, (tuple, list)) else out
                    captured[k][layer] = out.detach().flatten(1)
                handles.append(m.blocks[layer].register_forward_hook(hook))
        for b, batch in enumerate(loader):
            if max_batches is not None and b >= max_batches:
                break
            x = _first_tensor(batch).to(device)
            for k, (m, _) in enumerate(models):
                captured[k].clear()
                m(x)
            feats = [[captured[k][layer] for layer in ls] for k, (_, ls) in enumerate(models)]
            acc.update(feats[0], feats[1] if other is not None else None)
            for c in captured:
                c.clear()   # drop this batch's features before the next forward
    finally:
        for h in handles:
            h.remove()
        for (m, _), s in zip(models, states, strict=True):
            m.train(s)
    if acc.skipped:
        warnings.warn(f"layer_similarity: skipped {acc.skipped} batch(es) with fewer than 4 examples",
                      stacklevel=2)
    return acc.compute()
