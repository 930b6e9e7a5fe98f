"""Pareto fronts of (cost, accuracy) points: which models no other beats on both."""
from __future__ import annotations

from typing import Sequence


def pareto_front(costs: Sequence[float], accs: Sequence[float]) -> list[int]:
    """Indices of the points no other point dominates (cost ≤ and accuracy ≥, one strictly), by rising cost."""
    if len(costs) != len(accs):
        raise ValueError(f"accs: expected {len(costs)} values (one per cost), got {len(accs)}")
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -accs[i]))
    front, best = [], float("-inf")
    for i in order:
        if accs[i] > best:
            front.append(i)
            best = accs[i]
    return front
