"""``spin analyze`` (CKA / weight similarity / fusion drift of one checkpoint) and ``spin family`` (the model
family table and Pareto plots)."""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch

from ..argtypes import add_trust_flag, nonneg_int, positive_int
from ..models.registry import load_model
from .cka import layer_similarity
from .family import family_table, format_family, load_results, write_family
from .plans import format_mapping, suggest_sharing_plan, top_similar_spans
from .plots import save_bars, save_heatmap
from .weights import drift_per_layer, fusion_drift, resolve_parts, weight_similarity


class SyntheticImages:
    """``n`` random normal images in batches, regenerated from ``seed`` on every iteration (re-iterable and
    memory-free, so a study can pass over the same inputs several times)."""

    def __init__(self, n: int, img_size: int, in_chans: int = 3, batch_size: int = 32, seed: int = 0):
        if n < 1:
            raise ValueError(f"n: expected a positive number of synthetic images, got {n}")
        if img_size < 1 or batch_size < 1:
            raise ValueError(f"img_size / batch_size: expected positive ints, got {img_size}, {batch_size}")
        self.n, self.img_size, self.in_chans, self.batch_size, self.seed = n, img_size, in_chans, batch_size, seed

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        for start in range(0, self.n, self.batch_size):
            yield torch.randn(min(self.batch_size, self.n - start), self.in_chans, self.img_size, self.img_size,
                              generator=g)

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)


def synthetic_loader(n: int, img_size: int, in_chans: int = 3, batch_size: int = 32, seed: int = 0):
    """``n`` random normal images in batches (a stand-in dataset: the CKA structure of a model on noise still
    shows which layers compute alike); see :class:`SyntheticImages`."""
    return SyntheticImages(n, img_size, in_chans, batch_size, seed)


def image_folder_loader(data_dir: str, model, batch_size: int = 32, img_size: int | None = None,
                        workers: int = 2, limit: int | None = None):
    """A DataLoader over ``data_dir`` (torchvision ImageFolder, or its ``val``/``validation`` subfolder) with the
    model's eval transform from timm's ``resolve_data_config`` / ``create_transform``."""
    from timm.data import create_transform, resolve_data_config
    from torchvision.datasets import ImageFolder

    if not os.path.isdir(data_dir):
        raise ValueError(f"data_dir: {data_dir} is not a directory")
    root = data_dir
    for sub in ("val", "validation"):
        if os.path.isdir(os.path.join(data_dir, sub)):
            root = os.path.join(data_dir, sub)
            break
    cfg_args = {"img_size": img_size} if img_size else {}
    cfg = resolve_data_config(cfg_args, pretrained_cfg=dict(getattr(model, "default_cfg", {}) or {}), model=model)
    ds = ImageFolder(root, transform=create_transform(**cfg, is_training=False))
    if limit is not None:
        # an evenly spaced subset keeps every class represented
        step = max(1, len(ds) // limit)
        ds = torch.utils.data.Subset(ds, list(range(0, len(ds), step))[:limit])
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers)


def analyze(model, loader, output: str, *, rate: int = 2, num_unique: int | None = None, part=None,
            max_batches: int | None = None, debiased: bool = True, other=None, log=print) -> dict:
    """Run the whole qualitative study of one model and write PNGs + ``analysis.json`` into ``output``.

    ``other``: a second model (e.g. the unshared parent of a shared one) whose layers are compared with this
    model's on the same inputs (cross-model CKA, ``cka_cross.png``); ``loader`` must then be re-iterable.
    Returns the summary dict (CKA matrix, weight similarity, drift when fused, suggested plan).
    """
    os.makedirs(output, exist_ok=True)
    depth = len(model.blocks)
    summary: dict = {"depth": depth, "spin_config": getattr(model, "spin_config", None), "files": {}}

    cka = layer_similarity(model, loader, debiased=debiased, max_batches=max_batches)
    summary["cka"] = cka.tolist()
    summary["files"]["cka"] = save_heatmap(cka, os.path.join(output, "cka.png"),
                                           title="minibatch linear CKA between layer outputs",
                                           vmin=None if debiased else 0.0)

    if other is not None:
        cross = layer_similarity(model, loader, debiased=debiased, max_batches=max_batches, other=other)
        summary["cka_cross"] = cross.tolist()
        summary["files"]["cka_cross"] = save_heatmap(cross, os.path.join(output, "cka_cross.png"),
                                                     title="CKA: this model (rows) vs the other (columns)",
                                                     vmin=None if debiased else 0.0, ylabel="layer (this model)",
                                                     xlabel="layer (other model)")

    parts = resolve_parts(model, part)
    wsim = weight_similarity(model, parts)
    summary["weight_similarity"] = {"parts": list(parts), "matrix": wsim.tolist()}
    summary["files"]["weights"] = save_heatmap(wsim, os.path.join(output, "weight_similarity.png"),
                                               title=f"cosine similarity of {'+'.join(parts)} weights",
                                               vmin=-1.0 if wsim.min() < 0 else 0.0)
    if part is None:
        # Also one heatmap per weight family (pointwise and depthwise; attn and mlp), since they can disagree.
        fams = [name for name, _, _ in model.unique_modules() if not name.startswith("norm")]
        if len(fams) > 1:
            summary["weight_similarity"]["per_family"] = {}
            for fam in fams:
                m = weight_similarity(model, fam)
                summary["weight_similarity"]["per_family"][fam] = m.tolist()
                summary["files"][f"weights_{fam}"] = save_heatmap(
                    m, os.path.join(output, f"weight_similarity_{fam}.png"), title=f"cosine similarity of {fam} "
                    "weights", vmin=-1.0 if m.min() < 0 else 0.0)
    try:
        drift = fusion_drift(model, parts)
    except ValueError:
        drift = None   # not a fusion-training model: nothing to measure
    if drift is not None:
        per_layer = drift_per_layer(drift, depth)
        summary["fusion_drift"] = {"rows": drift, "per_layer": [None if np.isnan(v) else float(v)
                                                                for v in per_layer]}
        summary["files"]["drift"] = save_bars(per_layer, os.path.join(output, "fusion_drift.png"),
                                              title="‖W_l − group mean‖ / ‖group mean‖", ylabel="relative drift")

    if depth >= 2:
        U = num_unique if num_unique is not None else max(1, depth // rate)
        plan = suggest_sharing_plan(cka, num_unique=U)
        spans = top_similar_spans(cka, length=min(max(2, rate), depth), top=5)
        summary["suggestion"] = {"num_unique": U, "mapping": plan, "top_spans": spans}
        summary["files"]["cka_plan"] = save_heatmap(cka, os.path.join(output, "cka_suggested_plan.png"),
                                                    title=f"CKA with the suggested {U}-group plan",
                                                    vmin=None if debiased else 0.0, spans=plan)
        log("most similar consecutive spans (CKA): " + "; ".join(
            f"layers {s['start']}-{s['stop'] - 1}: {s['mean_similarity']:.3f}" for s in spans))
        log(f"suggested sharing plan ({U} unique weight sets for {depth} layers):")
        log(format_mapping(plan))
    with open(os.path.join(output, "analysis.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
    summary["files"]["json"] = os.path.join(output, "analysis.json")
    return summary


def _cmd_analyze(args: argparse.Namespace) -> int:
    """``spin analyze``: load the checkpoint, build the loader, run :func:`analyze`."""
    if (args.data_dir is None) == (args.synthetic is None):
        raise ValueError("--data-dir / --synthetic: pass exactly one of --data-dir DIR or --synthetic N")
    # Errors (files, data, checkpoints) end as one line through spin's error path (spin_kernels.cli).
    model = load_model(args.checkpoint, trusted=args.trust_checkpoint)
    model.to(args.device)
    other = load_model(args.compare, trusted=args.trust_checkpoint).to(args.device) if args.compare else None
    cfg = getattr(model, "default_cfg", {}) or {}
    img = args.img_size or int(cfg.get("input_size", (3, 224, 224))[-1])
    in_chans = int(cfg.get("input_size", (3,))[0])
    if args.synthetic is not None:
        loader = synthetic_loader(args.synthetic, img, in_chans, args.batch_size)
    else:
        loader = image_folder_loader(args.data_dir, model, args.batch_size, args.img_size, args.workers,
                                     args.limit)
    analyze(model, loader, args.output, rate=args.rate, num_unique=args.num_unique, part=args.part,
            max_batches=args.max_batches, debiased=not args.biased, other=other)
    print(f"wrote {args.output}/ (cka.png, weight_similarity.png, analysis.json, ...)")
    return 0


def _csv(kind):
    def parse(v: str):
        try:
            return [kind(x) for x in v.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {v!r}") from None
    return parse


def _cmd_family(args: argparse.Namespace) -> int:
    """``spin family``: build the table, attach results, write the table and the Pareto plots."""
    results = load_results(args.results) if args.results else None
    rows = family_table(args.models, args.rates, args.mappings, img_size=args.img_size, results=results)
    print(format_family(rows))
    paths = write_family(rows, args.output)
    print("wrote " + ", ".join(paths.values()))
    return 0


def register(subparsers) -> None:
    """Add ``analyze`` and ``family`` to the ``spin`` command."""
    p = subparsers.add_parser("analyze", help="CKA / weight similarity between layers; suggests a sharing plan",
                              description="Layer-by-layer minibatch CKA (Nguyen et al. 2021), cosine similarity of "
                              "the shared weights, drift of fusion-trained layers from their group mean; heatmaps, "
                              "JSON and a suggested `--mapping` list.")
    p.add_argument("--checkpoint", required=True, help="a spin_kernels checkpoint (spin_kernels.load_model)")
    add_trust_flag(p)
    p.add_argument("--data-dir", default=None, help="image folder (ImageFolder layout; a val/ subfolder is used "
                   "when present)")
    p.add_argument("--synthetic", type=positive_int, default=None, metavar="N", help="use N random images")
    p.add_argument("--output", required=True, help="directory for the PNGs and analysis.json")
    p.add_argument("--batch-size", type=positive_int, default=32, help="CKA minibatch (≥ 4)")
    p.add_argument("--max-batches", type=positive_int, default=None)
    p.add_argument("--limit", type=positive_int, default=None, help="use at most this many images")
    p.add_argument("--img-size", type=positive_int, default=None)
    p.add_argument("--rate", type=positive_int, default=2, help="target share rate for the suggestion")
    p.add_argument("--num-unique", type=positive_int, default=None, help="target unique weight sets (overrides "
                   "--rate)")
    p.add_argument("--part", default=None, help="weights to compare: pointwise, depthwise, attn, mlp, block")
    p.add_argument("--compare", default=None, metavar="CKPT", help="a second checkpoint: also write the "
                   "cross-model CKA (e.g. shared vs its unshared parent)")
    p.add_argument("--biased", action="store_true", help="biased per-batch HSIC instead of the unbiased one")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=nonneg_int, default=2)
    p.set_defaults(func=_cmd_analyze)

    f = subparsers.add_parser("family", help="unique params / MACs / accuracy table of a model family with Pareto "
                              "plots")
    f.add_argument("--models", type=_csv(str), required=True, help="comma-separated model names")
    f.add_argument("--rates", type=_csv(int), default=[1, 2, 4])
    f.add_argument("--mappings", type=_csv(str), default=["sequential", "strided"])
    f.add_argument("--results", default=None, help="evaluation results JSON (list of records, or spin eval --json)")
    f.add_argument("--img-size", type=positive_int, default=None)
    f.add_argument("--output", required=True)
    f.set_defaults(func=_cmd_family)
