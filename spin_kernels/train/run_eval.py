"""``spin eval``: top-1 / top-5 of a checkpoint with the model's eval transform, on one process or torchrun."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..argtypes import parse_kv
from ..checkpoint_io import check_writable_file
from ..data import (
    build_dataset,
    build_eval_loader,
    build_eval_transform,
    check_num_classes,
    default_workers,
    model_data_cfg,
)
from ..interop import from_timm
from ..models.registry import config_conflicts, load_weights, model_from_config, profile
from .checkpoint import load_checkpoint, model_state_dict
from .cpu_tuning import keep_freed_memory
from .distributed import cleanup, init_distributed
from .evaluate import evaluate
from .loop import _amp_dtype, _set_transform


def load_any_model(checkpoint: str, model_name: str | None = None, model_kwargs: dict | None = None,
                   backend: str | None = None, use_ema: bool = False, trusted: bool = False):
    """``(model, data_cfg)`` from our checkpoint (``spin_config`` inside; ``data_cfg``: the training run's eval
    transform, or {}) or from timm-format weights plus ``model_name`` (``data_cfg`` {}).

    Our checkpoints carry their architecture: ``model_name`` / ``model_kwargs`` that contradict it are an error
    (they used to be ignored without a word)."""

    ckpt = load_checkpoint(checkpoint, trusted=trusted, what="--checkpoint")
    if isinstance(ckpt.get("spin_config"), dict):
        sc = ckpt["spin_config"]
        conflicts = config_conflicts(sc, model_name, model_kwargs)
        if conflicts:
            raise ValueError(f"--model / --model-kwargs: {'; '.join(conflicts)}; --checkpoint {checkpoint} carries "
                             "its own architecture, leave these flags out")
        model = model_from_config(sc, **({"backend": backend} if backend else {}))
        if use_ema and not ckpt.get("ema"):
            raise ValueError(f"--use-ema: {checkpoint} holds no EMA weights (train with --model-ema)")
        # EMA state dicts of timm's ModelEmaV3 are the wrapped module's, prefixed with "module."
        state = model_state_dict({"model": ckpt["ema"]} if use_ema else ckpt, checkpoint, what="--checkpoint")
        load_weights(model, state, sc["name"])
        return model, dict(ckpt.get("data_cfg") or {})
    if not model_name:
        raise ValueError(f"--checkpoint {checkpoint} is not a spin_kernels checkpoint (no spin_config): "
                         "pass --model NAME to read it as timm weights")
    return from_timm(model_state_dict(ckpt, checkpoint, what="--checkpoint"), model_name, **(model_kwargs or {}),
                     **({"backend": backend} if backend else {})), {}


def eval_loader(model, saved_dcfg: dict, data_dir, split: str, *, dataset: str = "", batch_size: int = 256,
                workers: int | None = None, limit: int | None = None, img_size: int | None = None,
                crop_pct: float | None = None, mean=None, std=None, world_size: int = 1, rank: int = 0,
                pin_memory: bool = False):
    """``(loader, data_cfg)``: ``split`` of ``data_dir`` through ``model``'s eval transform — the training run's
    (``saved_dcfg``, from our checkpoints) over the model cfg's, with explicit arguments overriding both — in
    order, each sample once across ``world_size`` ranks. The split's class count must match the model's head."""
    dcfg = {**model_data_cfg(model, img_size), **saved_dcfg}
    if img_size:
        dcfg["img_size"] = img_size
    ds = build_dataset(data_dir, split, dataset=dataset, in_chans=dcfg["in_chans"], limit=limit)
    check_num_classes(ds, model.num_classes, split, where="the checkpoint's model")
    tf = build_eval_transform(dcfg["img_size"], in_chans=dcfg["in_chans"], crop_pct=crop_pct or dcfg["crop_pct"],
                              interpolation=dcfg["interpolation"], mean=tuple(mean or dcfg["mean"]),
                              std=tuple(std or dcfg["std"]))
    _set_transform(ds, tf)
    loader = build_eval_loader(ds, batch_size, world_size=world_size, rank=rank,
                               workers=workers if workers is not None else default_workers(), pin_memory=pin_memory)
    return loader, dcfg


def run_eval(args) -> int:
    """Evaluate ``args.checkpoint`` on ``args.data_dir``'s ``args.split``; print a report and a JSON line."""

    if args.json:
        check_writable_file(args.json, "--json")  # before the evaluation, not after it
    di = init_distributed(args.device)
    if di.device.type == "cpu":
        keep_freed_memory()
    try:
        model, saved_dcfg = load_any_model(args.checkpoint, args.model, parse_kv(args.model_kwargs), args.backend,
                                           args.use_ema, trusted=args.trust_checkpoint)
        loader, dcfg = eval_loader(model, saved_dcfg, args.data_dir, args.split, dataset=args.dataset,
                                   batch_size=args.batch_size, workers=args.workers, limit=args.limit,
                                   img_size=args.img_size, crop_pct=args.crop_pct, mean=args.mean, std=args.std,
                                   world_size=di.world_size, rank=di.rank, pin_memory=di.device.type == "cuda")
        model.to(di.device)
        if args.channels_last:
            model.to(memory_format=torch.channels_last)
        m = evaluate(model, loader, di.device, amp_dtype=_amp_dtype({"amp": args.amp}, di.device),
                     channels_last=args.channels_last)
        prof = profile(model, img_size=dcfg["img_size"])
        metrics = {"checkpoint": str(args.checkpoint), "split": args.split, "count": m["count"],
                   "top1": round(m["top1"], 4), "top5": round(m["top5"], 4), "loss": round(m["loss"], 6),
                   "params": prof["params"], "params_unshared": prof["params_unshared"], "macs": prof["macs"],
                   "img_size": dcfg["img_size"], "img_per_s": round(m["img_per_s"], 1),
                   "world_size": di.world_size, "device": str(di.device)}
        if di.is_main:
            print(f"{args.checkpoint}: top-1 {m['top1']:.2f}%  top-5 {m['top5']:.2f}%  on {m['count']} images "
                  f"| params {prof['params']:,} (unshared {prof['params_unshared']:,}) | MACs {prof['macs']:,} "
                  f"@ {dcfg['img_size']}px | {m['img_per_s']:.1f} img/s")
            print(json.dumps(metrics))
            if args.json:
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps(metrics, indent=2))
        return 0
    finally:
        cleanup()
