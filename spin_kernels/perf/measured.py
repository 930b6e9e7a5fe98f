"""Measured kernel times next to the machine-code estimates: how a GPU run calibrates the cost model.

A GPU run (``make gpu-proof``) profiles whole train steps and eval forwards of the target shapes and records the
device time per kernel name. This module joins those times with a shape of the cost report
(:func:`.cost_report.cost_shape`, or the committed ``bench/results/static/cost_model.json``): per kernel, the
launches and the estimated lower bound and analytic floor summed over the trunk, the measured time, and
measured / estimate (>= 1 when the model is a true lower bound; far above 1: stalls the model does not see) and
measured / floor. Kernels that are not ours (the stem and head, the loss, the optimizer, casts) are summed into one
``other`` line. Pure Python: the join is tested on the CPU with made-up measurements.
"""
from __future__ import annotations

import re

from .cuda_kernels import REPLACED_BY_CUDA

STEPS = ("train", "eval")
_PHASES_OF_STEP = {"train": ("fwd", "bwd"), "eval": ("eval",)}
_TEMPLATE = re.compile(r"<[^<>]*>")


def kernel_key(name: str) -> str:
    """The bare function name of a kernel as a profiler or the cost model spells it: no return type, namespaces,
    template arguments or parameter list (``void (anonymous namespace)::dw_forward_kernel<__nv_bfloat16>(P)`` and
    ``dw_forward_kernel<__nv_bfloat16>`` are both ``dw_forward_kernel``)."""
    s = name.strip().replace("(anonymous namespace)::", "")
    while _TEMPLATE.search(s):            # nested templates: innermost first
        s = _TEMPLATE.sub("", s)
    s = s.split("(")[0].strip()           # the parameter list
    s = s.split()[-1] if s.split() else s  # a return type such as "void"
    return s.split("::")[-1]


def step_rows(shape: dict, backend: str, step: str) -> list[tuple[dict, int]]:
    """``(row, launches in the whole trunk)`` of every kernel a ``step`` (``train``: forward + backward, ``eval``:
    the eval forward) of ``backend`` (``triton`` or ``cuda``) launches at ``shape`` (one entry of a cost report's
    ``shapes``). ``cuda``: the depthwise Triton rows replaced by the CUDA ones, and the eval forward the persistent
    kernel alone where the report has it (its ``count`` is per trunk)."""
    if step not in STEPS:
        raise ValueError(f"step: expected one of {STEPS}, got {step!r}")
    if backend not in ("triton", "cuda"):
        raise ValueError(f"backend: expected 'triton' or 'cuda', got {backend!r}")
    runs = shape["runs"]
    phases = _PHASES_OF_STEP[step]
    triton_rows = [r for r in shape["rows"] if r["phase"] in phases and r.get("backend") != "cuda"]
    if backend == "triton":
        return [(r, r["count"] * runs) for r in triton_rows]
    cuda_rows = [r for r in shape["rows"] if r.get("backend") == "cuda"]   # the report lists them after Triton's
    if not cuda_rows:
        raise ValueError(f"shape {shape.get('shape')!r}: the report has no CUDA rows "
                         f"({shape.get('cuda_note', 'costed without cuda=True')})")
    per_trunk = [(r, r["count"]) for r in cuda_rows if r["phase"] in phases and r.get("scope") == "trunk"]
    if step == "eval" and per_trunk:
        return per_trunk
    kept = [(r, r["count"] * runs) for r in triton_rows if r["kernel"] not in REPLACED_BY_CUDA[r["phase"]]]
    return kept + [(r, r["count"] * runs) for r in cuda_rows if r["phase"] in phases and r.get("scope") != "trunk"]


def estimates_by_kernel(shape: dict, backend: str, step: str) -> dict[str, dict]:
    """``{kernel key: {launches, estimate_s, floor_s}}`` summed over the trunk (see :func:`step_rows`)."""
    out: dict[str, dict] = {}
    for row, n in step_rows(shape, backend, step):
        e = out.setdefault(kernel_key(row["kernel"]), {"launches": 0, "estimate_s": 0.0, "floor_s": 0.0})
        e["launches"] += n
        e["estimate_s"] += row["estimate_s"] * n
        e["floor_s"] += row["floor_s"] * n
    return out


def compare(shape: dict, backend: str, step: str, measured: dict[str, dict]) -> dict:
    """Measured next to estimated, per kernel, for one step of one backend at one shape.

    ``measured``: ``{profiler kernel name: {"s": device seconds per step, "launches": launches per step}}``.
    Returns ``{"rows": [...], "other": {...}, "ours": {...}}``: a row per costed kernel (``measured_s`` None when
    the profile did not see it, e.g. the backend fell back), ``other`` the kernels that are not ours summed, and
    ``ours`` the costed kernels' totals with measured / estimate and measured / floor."""
    est = estimates_by_kernel(shape, backend, step)
    seen: dict[str, dict] = {}
    other = {"s": 0.0, "launches": 0, "kernels": 0}
    for name, m in measured.items():
        key = kernel_key(name)
        if key in est:
            s = seen.setdefault(key, {"s": 0.0, "launches": 0})
            s["s"] += float(m["s"])
            s["launches"] += int(m.get("launches", 0))
        else:
            other["s"] += float(m["s"])
            other["launches"] += int(m.get("launches", 0))
            other["kernels"] += 1
    rows = []
    for key, e in sorted(est.items(), key=lambda kv: -kv[1]["estimate_s"]):
        got = seen.get(key)
        ms = got["s"] if got else None
        rows.append({"kernel": key, "launches_estimated": e["launches"],
                     "launches_measured": got["launches"] if got else 0, "estimate_s": e["estimate_s"],
                     "floor_s": e["floor_s"], "measured_s": ms,
                     "measured_over_estimate": ms / e["estimate_s"] if ms and e["estimate_s"] else None,
                     "measured_over_floor": ms / e["floor_s"] if ms and e["floor_s"] else None})
    m_sum = sum(r["measured_s"] for r in rows if r["measured_s"] is not None)
    e_sum = sum(r["estimate_s"] for r in rows)
    f_sum = sum(r["floor_s"] for r in rows)
    complete = all(r["measured_s"] is not None for r in rows)
    ours = {"estimate_s": e_sum, "floor_s": f_sum, "measured_s": m_sum if complete else None,
            "measured_over_estimate": m_sum / e_sum if complete and e_sum else None,
            "measured_over_floor": m_sum / f_sum if complete and f_sum else None}
    return {"shape": shape.get("shape"), "backend": backend, "step": step, "rows": rows, "other": other,
            "ours": ours}
