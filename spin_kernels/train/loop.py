"""The training loop behind ``spin train`` (and ``spin demo``): one process or torchrun DDP, resumable to the step.

Exact resume rests on three things: the LR is a pure function of the update count (schedule.py), augmentation is a
pure function of (seed, epoch, sample index) (data/samplers.py), and a checkpoint carries every rank's RNG state
and the sampler position. A run interrupted at any update boundary and resumed then produces the same losses as an
uninterrupted one.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import resource
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data import (
    DataError,
    build_dataset,
    build_eval_loader,
    build_eval_transform,
    build_train_loader,
    build_train_transform,
    check_num_classes,
    dataset_num_classes,
    default_workers,
    model_data_cfg,
    set_loader_epoch,
)
from ..interop import from_timm
from ..models.registry import create_model, model_from_config, profile
from ..reference.batchnorm import convert_sync_batchnorm
from .checkpoint import (
    atomic_save,
    load_checkpoint,
    load_training_checkpoint,
    model_state_dict,
    rng_state,
    set_rng_state,
    unwrap,
)
from .cpu_tuning import keep_freed_memory
from .distributed import (
    DistInfo,
    all_gather_object,
    all_reduce_sum,
    barrier,
    cleanup,
    init_distributed,
)
from .evaluate import evaluate
from .logs import RunLog
from .run_dir import prepare_run_dir
from .schedule import StepSchedule

# Bumped when the checkpoint layout changes.
CHECKPOINT_VERSION = 1


class StopRequested:
    """SIGTERM / SIGINT turn into a flag the loop checks after every update (then it checkpoints and exits)."""

    def __init__(self):
        self.flag = False
        self.signum = None
        self._old = {}

    def install(self):
        """Install handlers for SIGTERM and SIGINT (main thread only); return self."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. called from a notebook worker): leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        self.flag, self.signum = True, signum

    def restore(self):
        """Put the previous handlers back."""
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _peak_mem_mib(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, max RSS on CPU (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is KiB on Linux


def build_model(cfg: dict, num_classes: int, resume_ckpt: dict | None = None) -> nn.Module:
    """Create the model of ``cfg`` (or of the resumed checkpoint's ``spin_config``).

    ``--init-from`` starts from a pretrained checkpoint: ours (has ``spin_config``) or timm's; with a share rate > 1
    and ``--fusion`` the weight-fusion training form is built from its per-layer weights.
    """
    if resume_ckpt is not None:
        return model_from_config(resume_ckpt["spin_config"], **({"backend": cfg["backend"]} if cfg.get("backend")
                                                                  else {}))
    kwargs = dict(cfg.get("model_kwargs") or {})
    if cfg.get("drop_path") and cfg["model"].startswith("deit"):
        kwargs.setdefault("drop_path_rate", cfg["drop_path"])
    if cfg.get("drop") is not None:
        kwargs.setdefault("drop_rate", cfg["drop"])
    if cfg.get("img_size") and cfg["model"].startswith("deit"):
        kwargs.setdefault("img_size", cfg["img_size"])
    share = {"share_rate": cfg.get("share_rate") or 1, "mapping": cfg.get("mapping") or "sequential",
             "share": cfg.get("share"), "backend": cfg.get("backend") or "reference"}
    if cfg.get("init_from"):
        trusted = bool(cfg.get("trust_checkpoint"))
        init = load_checkpoint(cfg["init_from"], trusted=trusted, what="--init-from")
        if isinstance(init.get("spin_config"), dict):
            sc = dict(init["spin_config"])
            for k in ("share_rate", "mapping", "share", "fusion", "backend"):
                sc.pop(k, None)
            name = sc.pop("name")
            sc.update(kwargs)
            sc["num_classes"] = num_classes
            model = create_model(name, fusion=cfg.get("fusion"), checkpoint_path=cfg["init_from"],
                                 trust_checkpoint=trusted, **share, **sc)
        else:
            model = from_timm(model_state_dict(init, cfg["init_from"], what="--init-from"), cfg["model"],
                              method=cfg.get("fusion"), **share, **kwargs)
            if model.num_classes != num_classes:
                model.reset_classifier(num_classes)
                model.spin_config["num_classes"] = num_classes
        return model
    return create_model(cfg["model"], num_classes=num_classes, fusion=None, **share, **kwargs)


def _in_chans(cfg: dict, resume_ckpt: dict | None) -> int:
    if resume_ckpt is not None:
        return int(resume_ckpt["spin_config"].get("in_chans", 3))
    return int((cfg.get("model_kwargs") or {}).get("in_chans", 3))


def _criterion(cfg: dict, mixup_active: bool) -> nn.Module:
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if mixup_active:
        return SoftTargetCrossEntropy()  # mixup already builds smoothed soft targets
    if cfg.get("smoothing"):
        return LabelSmoothingCrossEntropy(smoothing=cfg["smoothing"])
    return nn.CrossEntropyLoss()


def _amp_dtype(cfg: dict, device: torch.device) -> torch.dtype | None:
    amp = cfg.get("amp") or "auto"
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if amp in ("none", "off", "fp32", "float32"):
        return None
    return {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
            "float16": torch.float16}[amp]


def train(cfg: dict) -> dict:
    """Run training as configured by the resolved ``cfg`` (see ``spin train --help``); return the final metrics.

    Returns a dict with ``history`` (epoch rows), ``best_top1``, ``interrupted`` (True when a signal or
    ``stop_after_updates`` ended it early) and paths of the written checkpoints.
    """
    dist_info = init_distributed(cfg.get("device") or "auto")
    stopper = StopRequested().install()
    try:
        return _train(cfg, dist_info, stopper)
    finally:
        stopper.restore()
        cleanup()


def _train(cfg: dict, di: DistInfo, stopper: StopRequested) -> dict:
    device = di.device
    out = prepare_run_dir(cfg["output"], resume=cfg.get("resume"), overwrite=bool(cfg.get("overwrite")), di=di)
    if device.type == "cpu":
        keep_freed_memory()
    threads = cfg.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    resume = (load_training_checkpoint(cfg["resume"], trusted=bool(cfg.get("trust_checkpoint")))
              if cfg.get("resume") else None)
    seed = int(cfg.get("seed", 0))
    torch.manual_seed(seed)  # the same initial weights on every rank (DDP would broadcast rank 0's anyway)

    # ---- data (transforms attached once the model's cfg is known)
    in_chans = _in_chans(cfg, resume)
    train_ds = build_dataset(cfg.get("data_dir"), "train", dataset=cfg.get("dataset", ""), in_chans=in_chans,
                             limit=cfg.get("train_limit"), is_training=True, seed=seed)
    val_ds = None
    if not cfg.get("no_eval"):
        val_ds = build_dataset(cfg.get("data_dir"), "val", dataset=cfg.get("dataset", ""), in_chans=in_chans,
                               limit=cfg.get("val_limit"))
    data_classes = dataset_num_classes(train_ds)
    if resume is not None:
        num_classes = int(resume["spin_config"]["num_classes"])
    else:
        num_classes = cfg.get("num_classes") or data_classes
        if num_classes is None:
            raise DataError("the dataset does not declare its classes; pass --num-classes")
    for ds, split in ((train_ds, "train"), (val_ds, "val")):
        if ds is not None:
            check_num_classes(ds, num_classes, split, where=f"--num-classes / the model ({cfg['model']})")

    model = build_model(cfg, num_classes, resume)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if cfg.get("sync_bn") and has_bn:
        convert_sync_batchnorm(model)  # before EMA copies the model: the copy must be the same kind
    workers = default_workers() if cfg.get("workers") is None else int(cfg["workers"])
    dcfg = model_data_cfg(model, cfg.get("img_size"))
    dcfg["in_chans"] = in_chans
    img_size = dcfg["img_size"]
    # --mean / --std override the model cfg's normalisation (e.g. a grayscale dataset's own statistics).
    norm = {"mean": tuple(cfg.get("mean") or dcfg["mean"]), "std": tuple(cfg.get("std") or dcfg["std"])}
    train_tf = build_train_transform(img_size, in_chans=in_chans, aug=cfg["aug"], auto_augment=cfg.get("auto_augment"),
                                     re_prob=cfg.get("reprob", 0.0), hflip=cfg.get("hflip", 0.5),
                                     interpolation=dcfg["interpolation"], color_jitter=cfg.get("color_jitter", 0.4),
                                     **norm)
    crop_pct = cfg.get("crop_pct") or dcfg["crop_pct"]
    eval_tf = build_eval_transform(img_size, in_chans=in_chans, crop_pct=crop_pct,
                                   interpolation=dcfg["interpolation"], **norm)
    # Saved in checkpoints so `spin eval` reproduces this run's eval transform by default.
    data_cfg = {"img_size": img_size, "in_chans": in_chans, "crop_pct": crop_pct,
                "interpolation": dcfg["interpolation"], **norm}
    _set_transform(train_ds, train_tf)
    if val_ds is not None:
        _set_transform(val_ds, eval_tf)
    batch = int(cfg["batch_size"])
    train_loader = build_train_loader(train_ds, batch, world_size=di.world_size, rank=di.rank, seed=seed,
                                      workers=workers, repeats=int(cfg.get("repeats") or 0),
                                      pin_memory=device.type == "cuda")
    val_loader = None
    if val_ds is not None:
        val_loader = build_eval_loader(val_ds, int(cfg.get("eval_batch_size") or batch), world_size=di.world_size,
                                       rank=di.rank, workers=workers,
                                       pin_memory=device.type == "cuda")

    # ---- model, optimizer, EMA, AMP
    model.to(device)
    channels_last = bool(cfg.get("channels_last"))
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.get("grad_checkpointing"):
        model.set_grad_checkpointing(True)
    from timm.optim import create_optimizer_v2

    optimizer = create_optimizer_v2(model, opt=cfg["opt"], lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                                    momentum=cfg.get("momentum", 0.9))
    ema = None
    if cfg.get("model_ema"):
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg["model_ema_decay"], device=device)
    amp_dtype = _amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    mixup_fn = None
    if cfg.get("mixup", 0) > 0 or cfg.get("cutmix", 0) > 0:
        from timm.data import Mixup

        if batch % 2:
            raise ValueError(f"--batch-size {batch}: mixup/cutmix need an even per-process batch")
        mixup_fn = Mixup(mixup_alpha=cfg.get("mixup", 0), cutmix_alpha=cfg.get("cutmix", 0),
                         prob=cfg.get("mixup_prob", 1.0), switch_prob=cfg.get("mixup_switch_prob", 0.5),
                         label_smoothing=cfg.get("smoothing", 0.0), num_classes=num_classes)
    criterion = _criterion(cfg, mixup_fn is not None)

    steps_per_epoch = (len(train_loader.sampler.base) // batch if hasattr(train_loader.sampler, "base")
                       else len(train_loader))
    accum = max(1, int(cfg.get("accum_steps") or 1))
    updates_per_epoch = math.ceil(steps_per_epoch / accum)
    epochs = int(cfg["epochs"])
    sched = StepSchedule(cfg["sched"], cfg["lr"], epochs * updates_per_epoch,
                         warmup=int(cfg.get("warmup_epochs", 0) * updates_per_epoch), min_lr=cfg.get("min_lr", 0.0))

    # ---- resume
    start_epoch, start_step, update = 0, 0, 0
    best, history, partial = None, [], {"loss_sum": 0.0, "samples": 0}
    if resume is not None:
        unwrap(model).load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        if ema is not None and resume.get("ema") is not None:
            ema.load_state_dict(resume["ema"])
        if scaler is not None and resume.get("scaler") is not None:
            scaler.load_state_dict(resume["scaler"])
        start_epoch, start_step, update = resume["epoch"], resume["step_in_epoch"], resume["update"]
        best, history = resume.get("best_top1"), resume.get("history", [])
        partial = resume.get("epoch_partial", partial)
        if resume.get("steps_per_epoch") not in (None, steps_per_epoch):
            raise ValueError(f"--resume: the checkpoint was written with {resume['steps_per_epoch']} steps per "
                             f"epoch, this run has {steps_per_epoch}; keep the batch size, data and number of "
                             "processes of the interrupted run")
        rngs = resume.get("rng", [])
        if rngs:
            set_rng_state(rngs[di.rank] if di.rank < len(rngs) else rngs[0])
    else:
        # Different dropout / drop-path draws per rank, reproducible per seed.
        torch.manual_seed(seed + di.rank)
        random.seed(seed + di.rank)
        np.random.seed(seed + di.rank)

    train_model = model
    if di.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.get("compile"):
        train_model = torch.compile(train_model)

    log = RunLog(out, enabled=di.is_main, history=history)
    if di.is_main:
        args_record = {k: v for k, v in cfg.items() if k != "func"}
        (out / "args.json").write_text(json.dumps(args_record, indent=2, default=str))
        try:
            prof = profile(unwrap(model), img_size=img_size)
            params, macs = prof["params"], prof["macs"]
        except Exception:  # noqa: BLE001 - profiling is informational; never block training on it
            params, macs = sum(p.numel() for p in model.parameters()), None
        overrides = cfg.get("resume_overrides") or {}
        log.event(type="start", resumed_from=cfg.get("resume"), epoch=start_epoch, step=start_step, update=update,
                  world_size=di.world_size, device=str(device), params=params, macs=macs,
                  steps_per_epoch=steps_per_epoch, spin_config=unwrap(model).spin_config,
                  resume_overrides=overrides, sync_bn=bool(cfg.get("sync_bn")))
        if overrides:
            said = ", ".join(f"--{k.replace('_', '-')} {old} -> {new}" for k, (old, new) in overrides.items())
            print(f"spin train: resuming {cfg['resume']} with changed settings: {said}; from update {update} on, "
                  "this is not the run the checkpoint started", file=sys.stderr, flush=True)
        if cfg.get("sync_bn") and not has_bn:
            print("spin train: --sync-bn: this model has no BatchNorm; nothing to synchronise", file=sys.stderr)

    def reconcile_bn():
        # Without --sync-bn each rank's BatchNorm running statistics follow its own batches; average them over
        # ranks (timm's distribute_bn) so that evaluation on every rank and the saved model are the same model.
        if di.distributed and has_bn and not cfg.get("sync_bn"):
            from timm.utils import distribute_bn

            distribute_bn(model, di.world_size, reduce=True)
            if ema is not None:
                distribute_bn(ema.module, di.world_size, reduce=True)

    def save(path: Path, epoch: int, step_in_epoch: int, partial_state: dict):
        reconcile_bn()  # collective, like the line below: every rank calls save
        rngs = all_gather_object(rng_state())
        if di.is_main:
            atomic_save({
                "model": unwrap(model).state_dict(), "spin_config": unwrap(model).spin_config,
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "ema": ema.state_dict() if ema is not None else None,
                "epoch": epoch, "step_in_epoch": step_in_epoch, "update": update,
                "steps_per_epoch": steps_per_epoch, "epoch_partial": partial_state, "rng": rngs,
                "best_top1": best, "history": log.history, "config": {k: v for k, v in cfg.items() if k != "func"},
                "data_cfg": data_cfg, "version": CHECKPOINT_VERSION}, path)
        barrier()

    from tqdm import tqdm

    amp_ctx = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
    log_every = int(cfg.get("log_interval") or 50)
    ckpt_every = int(cfg.get("checkpoint_every") or 0)
    stop_after = cfg.get("stop_after_updates")
    interrupted = False
    lr = sched(update)
    train_model.train()
    epoch = start_epoch
    for epoch in range(start_epoch, epochs):
        skip = start_step if epoch == start_epoch else 0
        if epoch != start_epoch:
            partial = {"loss_sum": 0.0, "samples": 0}
        set_loader_epoch(train_loader, epoch, skip)
        bar = tqdm(total=steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                   disable=not di.is_main or cfg.get("quiet"), dynamic_ncols=True)
        # CPU seconds of this process (all its threads) next to wall time: on a shared machine the wall time
        # measures the neighbours too, the CPU time only this run.
        t0, c0, seen = time.perf_counter(), time.process_time(), 0
        step = skip
        loss_acc = torch.tensor(float(partial["loss_sum"]), dtype=torch.float64, device=device)
        for images, targets in train_loader:
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            if mixup_fn is not None:
                images, targets = mixup_fn(images, targets)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            do_update = (step + 1) % accum == 0 or step + 1 == steps_per_epoch
            if do_update:
                lr = sched.apply(optimizer, update)
            sync = train_model.no_sync() if (di.distributed and not do_update and not cfg.get("compile")) \
                else contextlib.nullcontext()
            with sync:
                with amp_ctx():
                    loss = criterion(train_model(images), targets)
                scaled = loss / accum
                if scaler is not None:
                    scaler.scale(scaled).backward()
                else:
                    scaled.backward()
            if do_update:
                if scaler is not None:
                    scaler.unscale_(optimizer)
                if cfg.get("clip_grad"):
                    nn.utils.clip_grad_norm_(model.parameters(), cfg["clip_grad"])
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                update += 1
                if ema is not None:
                    ema.update(model, step=update)
            step += 1
            seen += images.shape[0]
            # Accumulated on the device: no host sync per step (the value is read at checkpoints / epoch end).
            loss_acc += loss.detach().double() * images.shape[0]
            partial["samples"] += images.shape[0]
            if step % log_every == 0 or step == steps_per_epoch:
                lt = loss.detach().float().reshape(1).clone()
                all_reduce_sum(lt)
                step_loss = lt.item() / di.world_size
                log.event(type="step", epoch=epoch, step=step, update=update, loss=step_loss, lr=lr,
                          epoch_time_s=round(time.perf_counter() - t0, 3),
                          epoch_cpu_s=round(time.process_time() - c0, 3))
                bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
            bar.update(1)
            if do_update:
                stop = stopper.flag or (stop_after is not None and update >= int(stop_after))
                if di.distributed:  # every rank must agree, or the next collective would hang
                    flag = torch.tensor([1.0 if stop else 0.0], device=device)
                    all_reduce_sum(flag)
                    stop = flag.item() > 0
                if stop or (ckpt_every and update % ckpt_every == 0 and step < steps_per_epoch):
                    save(out / "last.pth", epoch, step, dict(partial, loss_sum=loss_acc.item()))
                if stop:
                    interrupted = True
                    break
        bar.close()
        if interrupted:
            break
        train_time, train_cpu = time.perf_counter() - t0, time.process_time() - c0
        # ---- end of epoch: metrics, summary, checkpoints
        sums = torch.tensor([loss_acc.item(), partial["samples"], seen], dtype=torch.float64, device=device)
        all_reduce_sum(sums)
        row = {"epoch": epoch + 1, "train_loss": sums[0].item() / max(sums[1].item(), 1), "lr": lr,
               "img_per_s": sums[2].item() / train_time if train_time > 0 else None, "epoch_time_s": train_time,
               "epoch_cpu_s": train_cpu,
               "peak_mem_mib": _peak_mem_mib(device)}
        if val_loader is not None and ((epoch + 1) % int(cfg.get("eval_every") or 1) == 0 or epoch + 1 == epochs):
            reconcile_bn()
            m = evaluate(model, val_loader, device, amp_dtype=amp_dtype, channels_last=channels_last)
            row.update(eval_loss=m["loss"], eval_top1=m["top1"], eval_top5=m["top5"], eval_count=m["count"],
                       eval_img_per_s=m["img_per_s"], eval_time_s=m["time_s"])
            if ema is not None:
                row["eval_ema_top1"] = evaluate(ema.module, val_loader, device, amp_dtype=amp_dtype,
                                                channels_last=channels_last)["top1"]
        improved = row.get("eval_top1") is not None and (best is None or row["eval_top1"] > best)
        if improved:
            best = row["eval_top1"]
        log.add_epoch(row)
        save(out / "last.pth", epoch + 1, 0, {"loss_sum": 0.0, "samples": 0})
        if improved and di.is_main:
            import shutil

            shutil.copy2(out / "last.pth", out / ".best.pth.tmp")  # copy2: same mode as last.pth
            os.replace(out / ".best.pth.tmp", out / "best.pth")
        log.write_epoch(row)  # after the checkpoint: the files never list an epoch the checkpoint lacks
        if di.is_main and not cfg.get("quiet"):
            print(_row_text(row), flush=True)

    result = {"history": log.history, "best_top1": best, "interrupted": interrupted, "last": str(out / "last.pth"),
              "epoch": epoch, "update": update, "model": unwrap(model),
              "signal": stopper.signum if interrupted else None}
    if interrupted:
        if di.is_main:
            why = f"signal {signal.Signals(stopper.signum).name}" if stopper.signum else "stop_after_updates"
            print(f"stopped by {why} at epoch {epoch + 1}, update {update}: checkpoint {out / 'last.pth'}; "
                  f"continue with --resume {out / 'last.pth'}", file=sys.stderr, flush=True)
        return result
    if cfg.get("fusion") and unwrap(model).spin_config.get("fusion"):
        # Weight-fusion training ends by exporting the plain shared model.
        collapsed = unwrap(model).collapse()
        if di.is_main:
            atomic_save({"model": collapsed.state_dict(), "spin_config": collapsed.spin_config, "data_cfg": data_cfg},
                        out / "model_shared.pth")
            result["collapsed"] = str(out / "model_shared.pth")
        result["collapsed_model"] = collapsed
    result["data_cfg"] = data_cfg
    if di.is_main:
        log.event(type="end", best_top1=best, update=update)
    return result


def _set_transform(ds, transform) -> None:
    """Attach ``transform`` to a dataset built without one (reaching through limit / channel wrappers)."""
    target = ds.dataset if hasattr(ds, "n") and hasattr(ds, "dataset") else ds
    if hasattr(target, "transform") and type(target.transform).__name__ == "_RepeatChannels":
        target.transform.transform = transform
    else:
        target.transform = transform


def _row_text(row: dict) -> str:
    parts = [f"epoch {row['epoch']}", f"train_loss {row['train_loss']:.4f}"]
    if row.get("eval_top1") is not None:
        parts += [f"eval_loss {row['eval_loss']:.4f}", f"top1 {row['eval_top1']:.2f}", f"top5 {row['eval_top5']:.2f}"]
    if row.get("img_per_s"):
        parts.append(f"{row['img_per_s']:.0f} img/s")
    return " | ".join(parts)
