"""Turn a layer-similarity matrix into sharing-plan candidates.

SPIN found sharing *consecutive* layers (sequential mapping) works best; CKA / weight similarity says which
consecutive spans are most alike. :func:`suggest_sharing_plan` splits the L layers into U contiguous spans that
minimise the total within-span dissimilarity (dynamic programming, exact), so the spans may differ in length where
the network's representations say they should. The result is an explicit mapping list that
``spin train --mapping 0,0,1,1,...`` / ``SharingPlan.from_list`` accepts.
"""
from __future__ import annotations

import numpy as np


def _check_square(sim, name: str = "similarity") -> np.ndarray:
    S = np.asarray(sim, dtype=np.float64)
    if S.ndim != 2 or S.shape[0] != S.shape[1] or S.shape[0] < 1:
        raise ValueError(f"{name}: expected a square L×L matrix, got shape {S.shape}")
    if not np.all(np.isfinite(S)):
        raise ValueError(f"{name}: contains NaN or inf")
    return (S + S.T) / 2   # CKA / cosine are symmetric; averaging removes estimator noise


def span_costs(sim) -> np.ndarray:
    """``cost[i, j]`` = Σ over pairs a < b in layers [i, j) of (1 − S[a, b]): the dissimilarity of a span."""
    S = _check_square(sim)
    L = S.shape[0]
    D = 1.0 - S
    cost = np.zeros((L + 1, L + 1))
    for i in range(L):
        acc = 0.0
        for j in range(i + 1, L + 1):
            # adding layer j-1 to span [i, j-1) adds its dissimilarity to every layer already there
            acc += D[i:j - 1, j - 1].sum()
            cost[i, j] = acc
    return cost


def suggest_sharing_plan(sim, *, num_unique: int | None = None, rate: int = 2,
                         max_span: int | None = None) -> list[int]:
    """Best contiguous split of L layers into U spans (U = ``num_unique`` or L // ``rate``) as a mapping list.

    Minimises Σ_spans Σ_{a<b in span} (1 − S[a,b]); ``max_span`` caps a span's length (default 2·L/U, so no span
    takes far more than its share of layers). Returns ``[0, 0, 1, 1, 1, 2, ...]``.
    """
    S = _check_square(sim)
    L = S.shape[0]
    if num_unique is None:
        if not isinstance(rate, int) or rate < 1:
            raise ValueError(f"rate: expected an int ≥ 1, got {rate!r}")
        num_unique = max(1, L // rate)
    if not isinstance(num_unique, int) or not 1 <= num_unique <= L:
        raise ValueError(f"num_unique: expected an int in [1, {L}], got {num_unique!r}")
    if max_span is None:
        max_span = max(1, -(-2 * L // num_unique))
    if max_span * num_unique < L:
        raise ValueError(f"max_span: {max_span} × {num_unique} spans cannot cover {L} layers")
    cost = span_costs(S)
    INF = float("inf")
    best = np.full((num_unique + 1, L + 1), INF)
    arg = np.zeros((num_unique + 1, L + 1), dtype=int)
    best[0, 0] = 0.0
    for k in range(1, num_unique + 1):
        for j in range(k, L + 1):
            for i in range(max(k - 1, j - max_span), j):
                v = best[k - 1, i] + cost[i, j]
                if v == INF:
                    continue
                # ties go to the later split point -> more balanced spans from the left
                if v < best[k, j] - 1e-12 or (abs(v - best[k, j]) <= 1e-12 and i > arg[k, j]):
                    best[k, j] = v
                    arg[k, j] = i
    bounds = []
    j = L
    for k in range(num_unique, 0, -1):
        i = int(arg[k, j])
        bounds.append((i, j))
        j = i
    mapping = [0] * L
    for u, (i, j) in enumerate(reversed(bounds)):
        for layer in range(i, j):
            mapping[layer] = u
    return mapping


def top_similar_spans(sim, length: int = 2, top: int = 5) -> list[dict]:
    """Consecutive spans of ``length`` layers ranked by mean pairwise similarity (most similar first)."""
    S = _check_square(sim)
    L = S.shape[0]
    if not isinstance(length, int) or not 2 <= length <= L:
        raise ValueError(f"length: expected an int in [2, {L}], got {length!r}")
    rows = []
    iu = np.triu_indices(length, 1)
    for i in range(L - length + 1):
        block = S[i:i + length, i:i + length]
        rows.append({"start": i, "stop": i + length, "mean_similarity": float(block[iu].mean())})
    rows.sort(key=lambda r: -r["mean_similarity"])
    return rows[:top]


def format_mapping(mapping) -> str:
    """``[0, 0, 1]`` -> ``"0,0,1"`` (the form ``spin train --mapping`` takes)."""
    return ",".join(str(int(m)) for m in mapping)
