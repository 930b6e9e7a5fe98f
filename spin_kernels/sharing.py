"""Sharing plans: which unique weight set each layer of an isotropic network uses.

A plan maps each of ``depth`` layers to a unique index (SPIN, DESIGN.md §1). The first ``unshared_ends[0]`` and
last ``unshared_ends[1]`` layers keep their own weights (sandwich-style distributions); the layers between them —
the *shared span* — are mapped onto ``span / rate`` unique sets by the chosen mapping. Unique indices are numbered
in order of first use, so layer 0 always has index 0 and a plan is canonical for its structure.

``runs`` are the maximal stretches of consecutive layers with the same unique index: the unit the fused kernels
loop over with the shared weight kept on chip (DESIGN.md §2, levers 2 and 3).
"""
from __future__ import annotations

import random as _random
from dataclasses import dataclass, field
from typing import Sequence

MAPPINGS = ("sequential", "strided", "cycle", "cycle_rev", "random")


def _span_mapping(span: int, num_unique: int, mapping: str, seed: int) -> list[int]:
    """Unique index (0-based, within the span) of each of ``span`` layers; every index is used span/U times."""
    rate = span // num_unique
    if mapping == "sequential":
        return [i // rate for i in range(span)]
    if mapping in ("strided", "cycle"):
        return [i % num_unique for i in range(span)]
    if mapping == "cycle_rev":
        # Takase & Kiyono: cycle forward through the unique sets, except the last cycle, which runs backwards.
        # L=12, U=4 -> [0,1,2,3, 0,1,2,3, 3,2,1,0].
        if rate == 1:
            return list(range(span))
        head = [i % num_unique for i in range(span - num_unique)]
        return head + list(reversed(range(num_unique)))
    if mapping == "random":
        uniform = [i // rate for i in range(span)]
        _random.Random(seed).shuffle(uniform)
        return uniform
    raise ValueError(f"mapping: unknown mapping {mapping!r}; valid mappings are {', '.join(MAPPINGS)} "
                     "or an explicit list of unique indices")


def _canonical(indices: Sequence[int]) -> list[int]:
    """Renumber unique indices in order of first use (layer 0 -> 0, the next new index -> 1, ...)."""
    order: dict[int, int] = {}
    return [order.setdefault(i, len(order)) for i in indices]


@dataclass(frozen=True)
class SharingPlan:
    """Layer -> unique weight index for a network of ``depth`` layers.

    Args:
        depth: number of layers L (≥ 1).
        rate: share rate r ≥ 1; the shared span of S layers uses S / r unique weight sets (r must divide S).
        mapping: ``"sequential"`` [0,0,1,1,...], ``"strided"`` (alias ``"cycle"``) [0,1,..,U-1,0,1,..],
            ``"cycle_rev"`` (last cycle reversed), ``"random"`` (seeded shuffle of the sequential map), or an
            explicit list of unique indices (then prefer :meth:`from_list`).
        unshared_ends: (first, last) numbers of layers at each end that keep their own weights.
        seed: seed of the ``"random"`` mapping (same seed, same plan).

    Attributes:
        layer_to_unique: the unique index of each layer (numbered in order of first use).
        num_unique: number of distinct weight sets U.
        runs: maximal runs of consecutive layers sharing a unique index, as ``(start, stop)`` half-open ranges.
    """

    depth: int
    rate: int = 1
    mapping: str | Sequence[int] = "sequential"
    unshared_ends: tuple[int, int] = (0, 0)
    seed: int = 0
    layer_to_unique: list[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if not isinstance(self.depth, int) or self.depth < 1:
            raise ValueError(f"depth: expected a positive int, got {self.depth!r}")
        if not isinstance(self.mapping, str):
            indices = list(self.mapping)
            self._check_list(indices, self.depth)
            object.__setattr__(self, "mapping", tuple(indices))
            object.__setattr__(self, "layer_to_unique", _canonical(indices))
            return
        if not isinstance(self.rate, int) or self.rate < 1:
            raise ValueError(f"rate: expected an int ≥ 1, got {self.rate!r}")
        ends = tuple(self.unshared_ends)
        if len(ends) != 2 or any((not isinstance(e, int)) or e < 0 for e in ends):
            raise ValueError(f"unshared_ends: expected two ints ≥ 0 (first, last), got {self.unshared_ends!r}")
        object.__setattr__(self, "unshared_ends", ends)
        span = self.depth - ends[0] - ends[1]
        if span < 1:
            raise ValueError(f"unshared_ends: {ends} leaves no shared layers in depth {self.depth}")
        if span % self.rate:
            raise ValueError(f"rate: share rate {self.rate} does not divide the shared span of {span} layers "
                             f"(depth {self.depth} minus unshared ends {ends})")
        mid = _span_mapping(span, span // self.rate, self.mapping, self.seed)
        first = list(range(ends[0]))
        base = ends[0]
        last_base = base + span // self.rate
        layers = first + [base + i for i in mid] + [last_base + i for i in range(ends[1])]
        object.__setattr__(self, "layer_to_unique", _canonical(layers))

    @staticmethod
    def _check_list(indices: list[int], depth: int | None):
        if not indices:
            raise ValueError("mapping: the explicit list of unique indices is empty")
        if any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in indices):
            raise ValueError(f"mapping: expected non-negative ints, got {indices}")
        if depth is not None and len(indices) != depth:
            raise ValueError(f"mapping: the list has {len(indices)} entries but depth is {depth}")
        missing = sorted(set(range(max(indices) + 1)) - set(indices))
        if missing:
            raise ValueError(f"mapping: unique indices must be 0..{max(indices)} without gaps; missing {missing}")

    @classmethod
    def from_list(cls, indices: Sequence[int]) -> "SharingPlan":
        """A plan from an explicit layer -> unique index list (indices 0..U-1, each used at least once)."""
        indices = list(indices)
        cls._check_list(indices, None)
        return cls(depth=len(indices), mapping=indices)

    @classmethod
    def unshared(cls, depth: int) -> "SharingPlan":
        """The identity plan: every layer has its own weights."""
        return cls(depth=depth)

    @property
    def num_unique(self) -> int:
        """Number of distinct weight sets."""
        return max(self.layer_to_unique) + 1

    @property
    def runs(self) -> list[tuple[int, int]]:
        """Maximal ``(start, stop)`` ranges of consecutive layers that use the same unique index."""
        out, start = [], 0
        m = self.layer_to_unique
        for i in range(1, len(m) + 1):
            if i == len(m) or m[i] != m[start]:
                out.append((start, i))
                start = i
        return out

    @property
    def groups(self) -> list[list[int]]:
        """For each unique index, the layers that use it (in layer order)."""
        g: list[list[int]] = [[] for _ in range(self.num_unique)]
        for layer, u in enumerate(self.layer_to_unique):
            g[u].append(layer)
        return g

    @property
    def is_shared(self) -> bool:
        """True when at least two layers use the same weights."""
        return self.num_unique < self.depth

    def __len__(self) -> int:
        return self.depth

    def __str__(self) -> str:
        return f"SharingPlan({self.layer_to_unique})"


def make_plan(depth: int, share_rate: int, mapping) -> "SharingPlan":
    """The sharing plan for ``depth`` layers: an explicit list, a plan object, or (rate, mapping name)."""
    if isinstance(mapping, SharingPlan):
        if mapping.depth != depth:
            raise ValueError(f"mapping: the plan covers {mapping.depth} layers but the model has depth {depth}")
        return mapping
    if isinstance(mapping, (list, tuple)):
        plan = SharingPlan.from_list(mapping)
        if plan.depth != depth:
            raise ValueError(f"mapping: the list has {plan.depth} entries but the model has depth {depth}")
        return plan
    return SharingPlan(depth, rate=share_rate, mapping=mapping)


def split_runs(runs: Sequence[tuple[int, int]], ends: Sequence[int] = (), stop: int | None = None
               ) -> list[tuple[int, int]]:
    """``runs`` cut so that every layer in ``ends`` is the last layer of its run, and no run reaches ``stop``.

    The fused kernels hand back gradients only through the last layer of a run, so a layer whose output is read
    (``forward_intermediates``) must end one; a weight stays on chip across the pieces of a cut run only within each.
    """
    cuts = {e + 1 for e in ends}
    out = []
    for start, end in runs:
        if stop is not None:
            end = min(end, stop)
        for cut in sorted(c for c in cuts if start < c < end):
            out.append((start, cut))
            start = cut
        if start < end:
            out.append((start, end))
    return out
