"""report.md and results.json of ``make gpu-proof``: stages, tests, sanitizer, targets with ratios, kernels with
measured / estimated / floor times, and every skipped or failed piece with its reason."""
from __future__ import annotations

import json
import os

from .report import (
    _fmt,
    _latency_row,
    _md_row,
    _md_table,
    _op_row,
    _target_row,
    _train_row,
    _valid_ms,
    _why_missing,
    add_speedups,
    compute_targets,
)

LATENCY_MODEL = ("spin_convmixer_768_32", 2)
TRAIN_MODELS = (("spin_convmixer_768_32", 2), ("convmixer_768_32", 1), ("deit_small_patch16_224", 2))


def _latency_ms(results: dict, backend: str, key: str, mode=None):
    model, rate = LATENCY_MODEL
    for r in results.get("latency") or []:
        if (r.get("model"), r.get("share_rate"), r.get("backend"), r.get("compile") or None) == (model, rate, backend,
                                                                                                  mode):
            return _valid_ms(r.get(key))
    return None


def _train_ms(results: dict, model: str, rate: int, backend: str, compile_=False):
    for r in results.get("train") or []:
        if (r.get("model"), r.get("share_rate"), r.get("backend"), r.get("compile") or False) == (model, rate, backend,
                                                                                                   compile_):
            return _valid_ms(r.get("ms_per_step"))
    return None


def _op_ms(results: dict, family: str, op: str, impl: str, shape_prefix: str = ""):
    for r in results.get("ops") or []:
        if (r.get("family"), r.get("op"), r.get("impl")) == (family, op, impl) and \
                str(r.get("shape", "")).startswith(shape_prefix):
            return _valid_ms(r.get("ms")), r.get("shape")
    return None, None


def _stage_of(piece: str) -> str:
    """The gpu-proof stage that runs a piece (by its name)."""
    return "compile" if piece.endswith("/compile") or "/compile-" in piece else "targets"


def _missing(results: dict, piece: str) -> str:
    """Why a piece left no time: its failure / skip record, its stage's skip or failure, or that the machine had
    nothing to measure (a CPU has no CUDA graphs)."""
    why = _why_missing(results, [piece])
    if not why.startswith("not run"):
        return why
    stage = (results.get("stages") or {}).get(_stage_of(piece)) or {}
    if stage.get("status") in ("skipped", "failed"):
        return f"{piece}: {_stage_of(piece)} stage {stage['status']} ({stage.get('reason', '')[:120]})"
    if results.get("device") == "cpu":
        return f"{piece}: not measurable without a GPU"
    return why


def _ratio(results, what, ours, ours_ms, ours_piece, base, base_ms, base_piece) -> dict:
    rec = {"what": what, "ours": ours, "ours_ms": ours_ms, "baseline": base, "baseline_ms": base_ms,
           "speedup": None, "note": ""}
    if ours_ms and base_ms:
        rec["speedup"] = base_ms / ours_ms
    else:
        rec["note"] = "; ".join(([_missing(results, ours_piece)] if not ours_ms else [])
                                + ([_missing(results, base_piece)] if not base_ms else []))
    return rec


def comparisons(results: dict) -> list[dict]:
    """Every target of the proof as ours vs a baseline: speed-up = baseline time / our time (None, with the
    reason, when either was not measured)."""
    model, rate = LATENCY_MODEL
    lp = f"latency/{model}/r{rate}"
    out = []
    ref_eager = _latency_ms(results, "reference", "eager_ms")
    ref_graph = _latency_ms(results, "reference", "cuda_graph_ms")
    compiled = {m: _latency_ms(results, "reference", "compiled_ms", m) for m in ("default", "reduce-overhead")}
    for backend in ("triton", "cuda"):
        ours = _latency_ms(results, backend, "cuda_graph_ms") or _latency_ms(results, backend, "eager_ms")
        label = f"backend {backend}" + (", CUDA graph" if _latency_ms(results, backend, "cuda_graph_ms") else "")
        what = f"{model} r={rate} batch-1 latency"
        out.append(_ratio(results, what, label, ours, f"{lp}/{backend}", "eager reference", ref_eager,
                          f"{lp}/reference"))
        out.append(_ratio(results, what, label, ours, f"{lp}/{backend}", "reference, CUDA graph", ref_graph,
                          f"{lp}/reference"))
        for mode, ms in compiled.items():
            out.append(_ratio(results, what, label, ours, f"{lp}/{backend}", f"torch.compile {mode}", ms,
                              f"{lp}/compile-{mode}"))
    for m, r in TRAIN_MODELS:
        tp = f"train/{m}/r{r}"
        eager, comp = _train_ms(results, m, r, "reference"), _train_ms(results, m, r, "reference", True)
        for backend in ("triton", "cuda") if "convmixer" in m else ("triton",):
            ours = _train_ms(results, m, r, backend)
            what = f"{m} r={r} train step"
            out.append(_ratio(results, what, f"backend {backend}", ours, f"{tp}/{backend}", "eager reference",
                              eager, f"{tp}/reference"))
            out.append(_ratio(results, what, f"backend {backend}", ours, f"{tp}/{backend}", "torch.compile",
                              comp, f"{tp}/compile"))
    for op in ("dwconv_fwd", "dwconv_fwd_bwd"):
        shapes = sorted({r["shape"] for r in results.get("ops") or [] if r.get("family") == "dwconv"})
        for sid in shapes:
            ours, _ = _op_ms(results, "dwconv", op, "cuda", sid)
            natives = [t for t in (_op_ms(results, "dwconv", op, i, sid)[0] for i in ("eager", "eager-cudnn-benchmark"))
                       if t]
            out.append(_ratio(results, f"{sid} {op}", "spin_kernels.cuda", ours, f"targets/dwconv/{sid}/cuda",
                              "F.conv2d (best of cuDNN default / benchmark)", min(natives) if natives else None,
                              f"targets/dwconv/{sid}/eager"))
    for op in ("attention_fwd", "attention_fwd_bwd"):
        ours, sid = _op_ms(results, "attention", op, "triton")
        base, sid2 = _op_ms(results, "attention", op, "sdpa")
        sid = sid or sid2 or "attention"
        out.append(_ratio(results, f"{sid} {op}", "Triton flash attention", ours, f"targets/{sid}/triton",
                          "F.scaled_dot_product_attention", base, f"targets/{sid}/sdpa"))
    return out


def _ratio_row(r: dict) -> str:
    sp = "not measured" if r["speedup"] is None else f"{r['speedup']:.2f}x"
    note = (r["note"] or "").replace("|", "/").replace("\n", " ")[:300]
    return _md_row([r["what"], r["ours"], _fmt(r["ours_ms"], ".4f"), r["baseline"], _fmt(r["baseline_ms"], ".4f"),
                    sp, note])


def _stage_row(item) -> str:
    name, s = item
    note = (s.get("reason") or "").replace("|", "/").replace("\n", " ")[:300]
    return _md_row([name, s.get("status", "?"), _fmt(s.get("seconds"), ".0f"), note])


def _ms(v):
    return _fmt(None if v is None else v * 1e3, ".3f")


def _kernel_lines(rec: dict) -> list[str]:
    ours = rec["ours"]
    head = (f"### {rec['shape']} — backend {rec['backend']}, {rec['step']}: ours {_ms(ours['measured_s'])} ms "
            f"measured, {_ms(ours['estimate_s'])} ms estimated, {_ms(ours['floor_s'])} ms floor; other kernels "
            f"(stem, head, loss, optimizer, casts) {_ms(rec['other']['s'])} ms")
    rows = [_md_row([r["kernel"], f"{r['launches_measured']}/{r['launches_estimated']}", _ms(r["measured_s"]),
                     _ms(r["estimate_s"]), _ms(r["floor_s"]), _fmt(r["measured_over_estimate"], ".2f"),
                     _fmt(r["measured_over_floor"], ".2f")]) for r in rec["rows"]]
    return [head, "", _md_row(["kernel", "launches (measured/costed)", "measured (ms)", "estimate (ms)", "floor (ms)",
                               "measured/estimate", "measured/floor"]), "|---|---:|---:|---:|---:|---:|---:|", *rows,
            ""]


def write_proof_report(results: dict, out_dir: str) -> dict:
    """Write results.json and report.md into ``out_dir`` (atomically: a kill mid-write keeps the previous pair)."""
    os.makedirs(out_dir, exist_ok=True)
    add_speedups(results.get("ops", []))
    results["targets"] = compute_targets(results)
    results["comparisons"] = comparisons(results)
    paths = {"json": os.path.join(out_dir, "results.json"), "report": os.path.join(out_dir, "report.md")}
    _atomic_write(paths["json"], json.dumps(results, indent=1, default=str))
    stages = results.get("stages") or {}
    lines = [f"# gpu-proof — {results.get('device', '?')} — {results.get('date', '')}", "",
             (f"torch {results.get('torch')}, triton {results.get('triton')}, CUDA {results.get('cuda')}; "
              f"`{results.get('command', 'make gpu-proof')}`, budget {results.get('budget_s')} s, "
              f"{results.get('elapsed_s', 0):.0f} s used" + (" — CPU smoke run (tiny sizes, interpreter / "
                                                             "emulation)" if results.get("smoke") else "")), ""]
    lines += _md_table("Stages", ["stage", "status", "seconds", "note"], "llrl", list(stages.items()), _stage_row)
    tests = results.get("tests") or {}
    if tests.get("counts"):
        c = tests["counts"]
        lines += ["## Tests (compiled on this machine)", "",
                  f"{c.get('passed', 0)} passed, {c.get('failed', 0)} failed, {c.get('skipped', 0)} skipped"
                  + (f" — {tests['reason']}" if tests.get("reason") else ""), ""]
        lines += [f"- FAILED `{f['test']}` ({f['when']}): {f['detail'][-300:]!r}" for f in tests.get("failed", [])]
        lines += [f"- skipped ×{n}: {why}" for why, n in list(tests.get("skipped_reasons", {}).items())[:12]] + [""]
    san = results.get("sanitizer") or {}
    if san.get("tools"):
        lines += ["## compute-sanitizer", ""] + [f"- {t}: {r['status']} ({r['seconds']} s)" for t, r in
                                                 san["tools"].items()] + [""]
    lines += _md_table("Targets (ours vs baseline)", ["what", "ours", "ours (ms)", "baseline", "baseline (ms)",
                                                      "speed-up", "note"], "lllllrl", results["comparisons"],
                       _ratio_row, intro="speed-up = baseline time / our time, outputs checked before timing.")
    lines += _md_table("Targets (issue 4)", ["target", "goal", "measured", "met", "ours (ms)", "baseline (ms)",
                                             "note"], "lrrlrrl", results["targets"], _target_row)
    if results.get("kernels"):
        lines += ["## Kernels: measured vs the machine-code estimate", "",
                  f"Estimates: {results.get('cost_model', '?')} — lower bounds; measured / estimate < 1 means the "
                  "model is wrong there, >> 1 means stalls it does not see.", ""]
        for rec in results["kernels"]:
            lines += _kernel_lines(rec)
    if results.get("ops"):
        lines += _md_table("Ops", ["family", "shape", "op", "impl", "time (ms)", "GB/s", "TFLOP/s", "% of floor",
                                   "vs eager", "vs compile"], "llllrrrrrr", results["ops"], _op_row)
    if results.get("train"):
        lines += _md_table("Training steps", ["model", "r", "backend", "compile", "ms/step", "img/s",
                                              "peak mem (GiB)", "params"], "lrllrrrr", results["train"], _train_row)
    if results.get("latency"):
        lines += _md_table("Batch-1 latency (eval)", ["model", "r", "backend", "compile", "eager (ms)",
                                                      "CUDA graph (ms)", "compiled (ms)", "compile time (s)"],
                           "lrllrrrr", results["latency"], _latency_row)
    if results.get("skipped"):
        lines += ["## Skipped", ""] + [f"- {s['piece']}: {s['reason'][:300]}" for s in results["skipped"]] + [""]
    if results.get("failed"):
        lines += ["## Failed pieces", ""] + [f"- `{f['piece']}`: {f['error'][:300]}" for f in results["failed"]]
        lines.append("")
    _atomic_write(paths["report"], "\n".join(lines) + "\n")
    return paths


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
