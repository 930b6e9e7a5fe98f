"""``spin compress``: an unshared checkpoint (timm's or ours) -> a shared model by a sharing plan and fusion,
handed back usable: BatchNorm statistics re-estimated for the fused weights (``--data-dir``), or the fused model
fine-tuned (``--finetune-epochs``), with its accuracy measured before and after (``--eval``)."""
from __future__ import annotations

import json
import sys
from collections import OrderedDict
from pathlib import Path

import torch

from ..argtypes import parse_kv, parse_mapping, parse_share
from ..checkpoint_io import check_writable_file
from ..interop import from_timm
from ..models.registry import config_conflicts, create_model, profile
from .checkpoint import atomic_save, load_checkpoint, model_state_dict
from .evaluate import evaluate
from .loop import train
from .recalibrate import has_batchnorm, recalibrate_batchnorm
from .recipes import resolve
from .run_eval import eval_loader


def param_table(model: torch.nn.Module) -> OrderedDict[str, int]:
    """Unique parameter count per top-level family (stem, depthwise, pointwise, norm1, ..., head), plus total.

    Counts each tensor once even when several layers use it (model.parameters() deduplicates), and for the
    fusion-training form counts the per-layer source tensors that are actually trained.
    """
    rows: OrderedDict[str, int] = OrderedDict()
    seen = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        fam = name.split(".")[0]
        rows[fam] = rows.get(fam, 0) + p.numel()
    rows["total"] = sum(v for k, v in rows.items())
    return rows


def format_tables(before: dict, after: dict, label_before: str = "unshared", label_after: str = "shared") -> str:
    """A text table of two :func:`param_table` results side by side, with the ratio per row."""
    keys = list(dict.fromkeys([*before, *after]))
    keys.remove("total")
    keys.append("total")
    w = max(len(k) for k in keys) + 2
    lines = [f"{'family':<{w}}{label_before:>14}{label_after:>14}{'ratio':>9}"]
    for k in keys:
        b, a = before.get(k, 0), after.get(k, 0)
        lines.append(f"{k:<{w}}{b:>14,}{a:>14,}{(b / a if a else float('inf')):>8.2f}x")
    return "\n".join(lines)


def compress_model(checkpoint: str, *, model_name: str | None = None, model_kwargs: dict | None = None,
                   share_rate: int = 2, mapping="sequential", share=None, fusion: str = "mean",
                   collapse: bool = True, trusted: bool = False):
    """Return ``(unshared_model, shared_model, data_cfg)`` built from ``checkpoint`` (``data_cfg``: the training
    run's eval transform saved in our checkpoints, else {}).

    ``shared_model`` is the collapsed plain shared model, or the fusion-training form when ``collapse`` is False.
    Our checkpoints carry their architecture: ``model_name`` / ``model_kwargs`` may only repeat it.
    """
    ckpt = load_checkpoint(checkpoint, trusted=trusted, what="--checkpoint")
    if isinstance(ckpt.get("spin_config"), dict):
        sc = dict(ckpt["spin_config"])
        if sc.get("share_rate", 1) != 1 or sc.get("fusion"):
            raise ValueError(f"--checkpoint {checkpoint} is already shared (share_rate={sc.get('share_rate')}); "
                             "compress starts from an unshared model")
        conflicts = config_conflicts(sc, model_name, model_kwargs)
        if conflicts:
            raise ValueError(f"--model / --model-kwargs: {'; '.join(conflicts)}; --checkpoint {checkpoint} carries "
                             "its own architecture, leave these flags out")
        for k in ("share_rate", "mapping", "share", "fusion"):
            sc.pop(k, None)
        name = sc.pop("name")
        unshared = create_model(name, checkpoint_path=checkpoint, trust_checkpoint=trusted, **sc)
        fused = create_model(name, share_rate=share_rate, mapping=mapping, share=share, fusion=fusion,
                             checkpoint_path=checkpoint, trust_checkpoint=trusted, **sc)
    else:
        if not model_name:
            raise ValueError(f"--checkpoint {checkpoint} has no spin_config (timm weights?): pass --model NAME")
        state = model_state_dict(ckpt, checkpoint, what="--checkpoint")
        unshared = from_timm(state, model_name, **(model_kwargs or {}))
        fused = from_timm(state, model_name, share_rate=share_rate, mapping=mapping, share=share, method=fusion,
                          **(model_kwargs or {}))
    return unshared, (fused.collapse() if collapse else fused), dict(ckpt.get("data_cfg") or {})


def run_compress(args) -> int:
    """CLI body: compress, print the parameter table (and MACs); recalibrate or fine-tune with data; evaluate
    with ``--eval``; save our checkpoint."""
    check_writable_file(args.output, "--output")
    if (args.eval or args.finetune_epochs) and not args.data_dir:
        raise ValueError(f"{'--eval' if args.eval else '--finetune-epochs'}: needs --data-dir (a dataset with train / "
                         "val splits, or --dataset fashion-mnist)")
    unshared, shared, dcfg = compress_model(
        args.checkpoint, model_name=args.model, model_kwargs=parse_kv(args.model_kwargs), share_rate=args.share_rate,
        mapping=parse_mapping(args.mapping), share=parse_share(args.share), fusion=args.fusion,
        collapse=not args.keep_fusion_form, trusted=args.trust_checkpoint)
    print(format_tables(param_table(unshared), param_table(shared)))
    try:
        pu, ps = profile(unshared, img_size=args.img_size), profile(shared, img_size=args.img_size)
        print(f"unique params {pu['params']:,} -> {ps['params']:,} ({pu['params'] / ps['params']:.2f}x smaller); "
              f"MACs {pu['macs']:,} -> {ps['macs']:,} (sharing does not change compute)")
    except Exception as e:  # noqa: BLE001 - the table above is the essential output
        print(f"(profile unavailable: {e})")
    report = Stages(args, dcfg)
    if args.eval:
        report.evaluate("unshared", unshared)
        report.evaluate("compressed, as is", shared)
    what = "fusion-training form" if args.keep_fusion_form else "shared model"
    if args.finetune_epochs:
        shared, dcfg = finetune(args, dcfg)
        what = f"shared model fine-tuned {args.finetune_epochs} epoch(s)"
        if args.eval:
            report.evaluate(f"compressed + {args.finetune_epochs} fine-tune epoch(s)", shared)
    elif has_batchnorm(shared):
        if args.data_dir and args.calib_batches:
            n = recalibrate_batchnorm(shared, report.loader(shared, "train"), args.calib_batches, report.device)
            print(f"BatchNorm statistics re-estimated on {n} training images ({args.calib_batches} batches)")
            what += ", BatchNorm recalibrated"
            if args.eval:
                report.evaluate("compressed + BN recalibration", shared)
        else:
            print("spin compress: warning: the BatchNorm running statistics were collected under the unshared "
                  "weights; recalibrate (--data-dir DIR) or fine-tune (--finetune-epochs N) before using this model "
                  "(as is it can score near chance)", file=sys.stderr)
    atomic_save({"model": shared.state_dict(), "spin_config": shared.spin_config, "data_cfg": dcfg}, args.output)
    print(f"saved {args.output} ({what}, plan {shared.spin_config.get('mapping')} "
          f"r={shared.spin_config.get('share_rate')}, fusion {args.fusion})")
    if report.rows:
        print(json.dumps({"stages": report.rows}))
    return 0


class Stages:
    """Evaluation of the stages of a compression on the ``--data-dir`` val split (one line and a record each)."""

    def __init__(self, args, dcfg: dict):
        self.args, self.dcfg, self.rows = args, dcfg, []
        self.device = torch.device(args.device if args.device != "auto" else
                                   ("cuda" if torch.cuda.is_available() else "cpu"))

    def loader(self, model, split: str):
        """The ``split`` through the model's eval transform (calibration takes the train split that way)."""
        a = self.args
        loader, _ = eval_loader(model, self.dcfg, a.data_dir, split, dataset=a.dataset, batch_size=a.batch_size,
                                workers=a.workers, img_size=a.img_size, limit=a.eval_limit if split == "val" else None)
        return loader

    def evaluate(self, stage: str, model) -> dict:
        """Top-1 / top-5 / loss of ``model`` on the val split, printed and recorded under ``stage``."""
        model.to(self.device)
        m = evaluate(model, self.loader(model, "val"), self.device)
        row = {"stage": stage, "top1": round(m["top1"], 4), "top5": round(m["top5"], 4), "loss": round(m["loss"], 6),
               "count": m["count"]}
        self.rows.append(row)
        print(f"{stage}: top-1 {m['top1']:.2f}%  top-5 {m['top5']:.2f}%  loss {m['loss']:.4f}  ({m['count']} images)")
        return row


def finetune(args, dcfg: dict):
    """Fuse-then-fine-tune: train the weight-fusion form built from the unshared checkpoint (per-layer weights and
    fusion coefficients trainable, each shared weight computed from its group) for ``--finetune-epochs`` with the
    ``--recipe`` (default ``finetune``), then collapse it. Returns ``(shared model, data_cfg)``; the run folder is
    ``--finetune-output`` (default: the output path without suffix + ``-finetune``)."""
    run = Path(args.finetune_output or Path(args.output).with_suffix("").as_posix() + "-finetune")
    cfg = resolve(args.recipe, {"epochs": args.finetune_epochs, "batch_size": args.batch_size, "lr": args.lr,
                                "workers": args.workers})
    cfg.update(init_from=args.checkpoint, trust_checkpoint=args.trust_checkpoint, fusion=args.fusion,
               share_rate=args.share_rate, mapping=parse_mapping(args.mapping), share=parse_share(args.share),
               model=args.model, model_kwargs=parse_kv(args.model_kwargs), data_dir=args.data_dir,
               dataset=args.dataset, output=str(run), overwrite=args.overwrite, device=args.device, seed=0,
               img_size=args.img_size or dcfg.get("img_size"), mean=dcfg.get("mean"), std=dcfg.get("std"),
               crop_pct=dcfg.get("crop_pct"), quiet=args.quiet, log_interval=50, eval_every=args.finetune_epochs,
               recipe=args.recipe)
    if cfg["model"] is None:
        cfg["model"] = "convmixer_768_32"   # only read for timm-format checkpoints, which then name it (--model)
    result = train(cfg)
    if result.get("interrupted"):
        raise ValueError(f"--finetune-epochs: the fine-tuning run was stopped; continue it with spin train --resume "
                         f"{run / 'last.pth'}")
    return result["collapsed_model"], result.get("data_cfg", dcfg)
