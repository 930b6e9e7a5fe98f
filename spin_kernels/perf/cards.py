"""One table of card constants: every ceiling and rate the roofline and the machine-code cost model divide by.

:class:`Ceilings` are the roofline's denominators (achievable bandwidth, dense FLOP/s); measured ones from a GPU run
(``bench/results/*/results.json``) replace them through :meth:`Ceilings.from_json`. The per-SM machine constants of
the cost model (:class:`SMRates`, latencies) live in :mod:`spin_kernels.perf.cost_model` beside the code that uses
them, each with its source.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "tf32": 4}
"""Storage bytes per element. ``tf32`` means fp32 storage with TF32 tensor-core GEMMs."""

_DTYPE_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32",
                  "torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float32": "fp32"}

# Rows of the activation matrix covered by one producer tile; each tile emits (count, mean, M2) per channel
# (DESIGN.md §2). Only sets the (small) statistics traffic, so a representative value is enough.
STATS_ROWS_PER_TILE = 128


def normalize_dtype(dtype: Any) -> str:
    """Return the short dtype name (``bf16``/``fp16``/``fp32``/``tf32``) for a string or ``torch.dtype``."""
    key = str(dtype).lower()
    key = _DTYPE_ALIASES.get(key, key)
    if key not in DTYPE_BYTES:
        raise ValueError(f"dtype: expected one of {sorted(DTYPE_BYTES)} (or a torch float dtype), got {dtype!r}")
    return key



@dataclass
class Ceilings:
    """Throughput ceilings of one card: the denominators of every floor time.

    Args:
        name: the card these numbers describe (printed with every table, so timings are never compared across
            cards by accident).
        hbm_bytes_per_s: achievable device-memory bandwidth (a device-to-device copy moves 2 bytes per byte copied;
            count both).
        tensor_flops: dense tensor-core FLOP/s per compute dtype (GEMMs, attention). ``fp32`` is the no-TF32 path.
        vector_flops: CUDA-core FLOP/s per dtype (depthwise conv, elementwise, normalisation).
        launch_s: per-kernel launch overhead, reported separately (it dominates at batch 1).
    """

    name: str = "H100 SXM (nominal)"
    hbm_bytes_per_s: float = 3.0e12
    tensor_flops: dict = field(default_factory=lambda: {"bf16": 800e12, "fp16": 800e12, "tf32": 400e12,
                                                         "fp32": 60e12})
    vector_flops: dict = field(default_factory=lambda: {"bf16": 120e12, "fp16": 120e12, "tf32": 60e12,
                                                         "fp32": 60e12})
    launch_s: float = 4e-6

    def peak_flops(self, unit: str, dtype: str) -> float:
        """FLOP/s ceiling for ``unit`` (``"tensor"`` or ``"vector"``) in ``dtype``."""
        dtype = normalize_dtype(dtype)
        if unit == "tensor":
            table = self.tensor_flops
        elif unit == "vector":
            table = self.vector_flops
        else:
            raise ValueError(f"unit: expected 'tensor' or 'vector', got {unit!r}")
        if dtype not in table:
            raise ValueError(f"dtype: no {unit} ceiling for {dtype!r} on {self.name}; known: {sorted(table)}")
        return float(table[dtype])

    def to_dict(self) -> dict:
        """Plain-JSON form (what :meth:`from_dict` reads back)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> "Ceilings":
        """Build from a dict; missing entries keep the defaults, so partial measurements are fine.

        Accepts either the ceilings themselves or a GPU-suite ``results.json`` that holds them under
        ``"ceilings"``.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"data: expected a mapping of ceilings, got {type(data).__name__}")
        if "ceilings" in data and isinstance(data["ceilings"], Mapping):
            data = data["ceilings"]
        base = cls()
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"data: unknown ceiling keys {sorted(unknown)}; known: {sorted(known)}")
        kwargs = {}
        for key, value in data.items():
            if key in ("tensor_flops", "vector_flops"):
                merged = dict(getattr(base, key))
                merged.update({normalize_dtype(k): float(v) for k, v in value.items() if v is not None})
                kwargs[key] = merged
            elif value is not None:
                kwargs[key] = value if key == "name" else float(value)
        return dataclasses.replace(base, **kwargs)

    @classmethod
    def from_json(cls, path: str) -> "Ceilings":
        """Load ceilings from a JSON file (ceilings dict, or a GPU-suite ``results.json``)."""
        with open(path) as f:
            return cls.from_dict(json.load(f))


H100 = Ceilings()
H200 = Ceilings(name="H200 SXM (nominal)", hbm_bytes_per_s=4.0e12)
CARDS = {"h100": H100, "h200": H200}
"""Named nominal ceilings; measured ones (bench/results/*/results.json) override them via ``Ceilings.from_json``."""


def get_ceilings(card: str | None = None, path: str | None = None) -> Ceilings:
    """Ceilings of a named card (``h100``, ``h200``) or, with ``path``, the measured ones in that JSON."""
    if path:
        return Ceilings.from_json(path)
    key = (card or "h100").lower()
    if key not in CARDS:
        raise ValueError(f"card: unknown card {card!r}; known: {', '.join(CARDS)} (or pass measured ceilings JSON)")
    return CARDS[key]

