"""The model family: every (model, share rate, mapping) with its unique parameters, MACs and — when evaluation
results are given — accuracy, plus the params-vs-accuracy and MACs-vs-accuracy Pareto fronts.

Models are built on the ``meta`` device (shapes only, no memory, no init time), so even DeiT-B / ConvMixer-1536
families profile in seconds; parameter counts and the analytic MACs of ``spin_kernels.profile`` need only shapes.
"""
from __future__ import annotations

import json
import os
from typing import Iterable

import torch

from ..models.registry import create_model, profile
from .pareto import pareto_front
from .plots import save_pareto


def _build(name: str, rate: int, mapping: str, overrides: dict):
    """Build a model on the meta device (fall back to CPU if some module refuses meta tensors)."""
    try:
        with torch.device("meta"):
            return create_model(name, share_rate=rate, mapping=mapping, **overrides)
    except (NotImplementedError, RuntimeError):
        return create_model(name, share_rate=rate, mapping=mapping, **overrides)


def _profile(model, img_size):
    try:
        return profile(model, img_size=img_size)
    except (NotImplementedError, RuntimeError):
        return profile(model.to_empty(device="cpu"), img_size=img_size)


def family_table(models: Iterable[str], rates: Iterable[int] = (1, 2, 4),
                 mappings: Iterable[str] = ("sequential", "strided"), *, img_size: int | None = None,
                 results: list[dict] | None = None, **arch_overrides) -> list[dict]:
    """One row per valid (model, rate, mapping): ``model, share_rate, mapping, params, params_unshared,
    compression, macs, top1 (None without results), label, pareto_params, pareto_macs``.

    Rate 1 is listed once (the mapping does not matter without sharing). A rate that does not divide the depth is
    skipped and reported in the row list as ``skipped`` (so the caller can say why). ``results`` rows (see
    :func:`load_results`) that match no family member are appended as rows of their own.
    """
    models = list(models)
    rates = [int(r) for r in rates]
    mappings = list(mappings)
    if not models:
        raise ValueError("models: expected at least one model name")
    if any(r < 1 for r in rates):
        raise ValueError(f"rates: expected ints ≥ 1, got {rates}")
    rows = []
    for name in models:
        for rate in rates:
            for mapping in (["sequential"] if rate == 1 else mappings):
                try:
                    model = _build(name, rate, mapping, arch_overrides)
                except ValueError as e:
                    rows.append({"model": name, "share_rate": rate, "mapping": mapping, "skipped": str(e)})
                    continue
                prof = _profile(model, img_size)
                rows.append({"model": name, "share_rate": rate, "mapping": mapping if rate > 1 else "none",
                             "params": int(prof["params"]), "params_unshared": int(prof["params_unshared"]),
                             "compression": round(float(prof["compression"]), 4), "macs": int(prof["macs"]),
                             "img_size": prof.get("img_size"), "top1": None,
                             "label": f"r{rate}" + ("" if rate == 1 else f"-{mapping[:3]}")})
    if results:
        attach_results(rows, results)
    valid = [r for r in rows if "skipped" not in r]
    for key in ("params", "macs"):
        for r in valid:
            r[f"pareto_{key}"] = False
        acc_rows = [r for r in valid if r.get("top1") is not None]
        for i in pareto_front([r[key] for r in acc_rows], [r["top1"] for r in acc_rows]):
            acc_rows[i][f"pareto_{key}"] = True
    return rows


def _norm_mapping(m) -> str:
    if m is None:
        return "sequential"
    if isinstance(m, (list, tuple)):
        return ",".join(str(int(x)) for x in m)
    return {"cycle": "strided"}.get(str(m), str(m))


def load_results(path: str) -> list[dict]:
    """Read evaluation results: a JSON list (or ``{"results": [...]}``), a single ``spin eval --json`` record, or
    JSON lines (``spin demo``'s demo_results.json included). Each record gives accuracy as ``top1`` /
    ``test_top1`` / ``acc`` / ``accuracy`` and identifies its model by
    ``model``/``name`` + ``share_rate``/``rate`` + ``mapping``, by a nested ``spin_config``, or by ``params`` and
    ``macs`` (what ``spin eval --json`` writes)."""
    with open(path) as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(data, dict):
        data = data.get("results", [data])
    if not isinstance(data, list):
        raise ValueError(f"results: {path} holds {type(data).__name__}; expected a list of result records")
    out = []
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise ValueError(f"results: record {i} of {path} is not an object")
        acc = next((rec[k] for k in ("top1", "test_top1", "acc", "accuracy", "acc1") if rec.get(k) is not None),
                   None)
        if acc is None:
            raise ValueError(f"results: record {i} of {path} has no top1 / acc / accuracy")
        cfg = rec.get("spin_config") or {}
        out.append({"model": rec.get("model") or rec.get("name") or cfg.get("name"),
                    "share_rate": rec.get("share_rate", rec.get("rate", cfg.get("share_rate"))),
                    "mapping": rec.get("mapping", cfg.get("mapping")), "top1": float(acc),
                    "params": rec.get("params"), "macs": rec.get("macs"),
                    "label": rec.get("label") or (os.path.basename(str(rec["checkpoint"]))
                                                  if rec.get("checkpoint") else None)})
    return out


def attach_results(rows: list[dict], results: list[dict]) -> None:
    """Fill ``top1`` of matching rows in place; unmatched results become rows of their own."""
    for res in results:
        match = None
        for r in rows:
            if "skipped" in r:
                continue
            if res.get("model") is not None and res.get("share_rate") is not None:
                rate = int(res["share_rate"])
                if r["model"] == res["model"] and r["share_rate"] == rate and (
                        rate == 1 or _norm_mapping(res.get("mapping")) == _norm_mapping(r["mapping"])):
                    match = r
                    break
            elif res.get("params") is not None and r["params"] == res["params"] and (
                    res.get("macs") is None or r["macs"] == res["macs"]):
                match = r
                break
        if match is not None:
            match["top1"] = res["top1"]
        elif res.get("params") is not None:
            rows.append({"model": res.get("model") or "results", "share_rate": res.get("share_rate"),
                         "mapping": _norm_mapping(res.get("mapping")), "params": int(res["params"]),
                         "macs": int(res["macs"]) if res.get("macs") is not None else None, "top1": res["top1"],
                         "label": res.get("label") or "result"})


def format_family(rows: list[dict]) -> str:
    """Text table of :func:`family_table` rows (front members starred)."""
    lines = [f"{'model':28s} {'r':>2s} {'mapping':10s} {'params':>12s} {'compr':>6s} {'GMACs':>8s} "
             f"{'top1':>7s} front(params/macs)"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['model']:28s} {r['share_rate']!s:>2s} {r['mapping']:10s} skipped: {r['skipped']}")
            continue
        macs = "-" if r.get("macs") is None else f"{r['macs'] / 1e9:8.3f}"
        top1 = "-" if r.get("top1") is None else f"{r['top1']:7.2f}"
        front = ("*" if r.get("pareto_params") else "-") + "/" + ("*" if r.get("pareto_macs") else "-")
        comp = "-" if r.get("compression") is None else f"{r['compression']:6.2f}"
        lines.append(f"{str(r['model'])[:28]:28s} {r['share_rate']!s:>2s} {str(r['mapping'])[:10]:10s} "
                     f"{r['params']:12,d} {comp:>6s} {macs:>8s} {top1:>7s} {front}")
    return "\n".join(lines)


def write_family(rows: list[dict], output: str) -> dict:
    """Write ``family.json``, ``family.md`` and the two Pareto plots into ``output``; returns their paths."""
    os.makedirs(output, exist_ok=True)
    paths = {"json": os.path.join(output, "family.json"), "table": os.path.join(output, "family.md"),
             "params_plot": os.path.join(output, "params_vs_accuracy.png"),
             "macs_plot": os.path.join(output, "macs_vs_accuracy.png")}
    with open(paths["json"], "w") as f:
        json.dump(rows, f, indent=1)
    with open(paths["table"], "w") as f:
        f.write("```\n" + format_family(rows) + "\n```\n")
    valid = [r for r in rows if "skipped" not in r]
    save_pareto(valid, "params", paths["params_plot"], front_key="pareto_params", xlabel="unique parameters",
                title="accuracy vs unique parameters (front ringed)")
    save_pareto(valid, "macs", paths["macs_plot"], front_key="pareto_macs", xlabel="MACs per image",
                title="accuracy vs MACs (front ringed)")
    return paths
