"""The target shapes of the machine-code cost model, and how launch rows add up into a run and a whole trunk."""
from __future__ import annotations

IMG_SIZE = 224
TARGET_SHAPES = {
    # name: (model, batch, share rate); bf16 throughout
    "spin_convmixer_768_32-r2-b1": ("spin_convmixer_768_32", 1, 2),
    "spin_convmixer_768_32-r2-b16": ("spin_convmixer_768_32", 16, 2),
    "spin_convmixer_768_32-r2-b64": ("spin_convmixer_768_32", 64, 2),
    "convmixer_768_32-b64": ("convmixer_768_32", 64, 1),
    "convmixer_1536_20-b64": ("convmixer_1536_20", 64, 1),
    "deit_small_patch16_224-b64": ("deit_small_patch16_224", 64, 1),
    "deit_base_patch16_224-b64": ("deit_base_patch16_224", 64, 1),
}
PHASES = ("fwd", "bwd", "eval")


def assign_ids(rows: list, prefix: str = "") -> None:
    """A stable ``id`` per row: [prefix] its phase, the order of its first launch in that phase, its label."""
    for phase in PHASES:
        for i, r in enumerate(r for r in rows if r["phase"] == phase):
            r["id"] = f"{prefix}{phase}#{i:02d} {r['label']}"


def phase_total(rows: list, runs: int) -> dict:
    """One phase's rows (``count`` launches per run each) summed over a run and over the ``runs`` of a trunk."""
    est = sum(r["estimate_s"] * r["count"] for r in rows)
    flo = sum(r["floor_s"] * r["count"] for r in rows)
    return {"run_estimate_s": est, "run_floor_s": flo, "model_estimate_s": est * runs, "model_floor_s": flo * runs,
            "ratio": est / flo if flo else None, "launches_per_run": sum(r["count"] for r in rows)}


def train_step(totals: dict) -> dict:
    """A train step of the whole trunk: the forward and backward phase totals added."""
    out = {k: totals["fwd"][k] + totals["bwd"][k] for k in ("model_estimate_s", "model_floor_s")}
    out["ratio"] = out["model_estimate_s"] / out["model_floor_s"]
    return out
