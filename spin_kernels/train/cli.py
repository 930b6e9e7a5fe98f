"""``spin train | eval | compress | info | demo``: argument parsing only; the work lives in the sibling modules.

Flags follow timm's train.py / validate.py names. Training flags default to None so that a ``--recipe`` preset
fills what the command line leaves out (recipes.py), and anything given explicitly wins. Values are checked when
parsed (spin_kernels.argtypes); errors reach the user through ``spin``'s one error path (spin_kernels.cli).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from ..argtypes import (
    add_trust_flag,
    device,
    fraction,
    nonneg_float,
    nonneg_int,
    open_fraction,
    parse_kv,
    parse_mapping,
    parse_share,
    positive_float,
    positive_int,
    probability,
)
from .recipes import RECIPES

AMP_CHOICES = ["auto", "bf16", "bfloat16", "fp16", "float16", "none", "off", "fp32", "float32"]
FUSION_CHOICES = ["mean", "choose_first", "scalar_weighted_mean", "channel_weighted_mean"]
# Exit status of a run stopped by a signal at a checkpoint (resumable): 128 + the signal number, as shells report.
STOPPED_BY_SIGNAL_BASE = 128


def _add_model_flags(p: argparse.ArgumentParser, model_default: str | None = "convmixer_768_32"):
    p.add_argument("--model", default=model_default, help="model name (spin_kernels.list_models())")
    p.add_argument("--model-kwargs", nargs="*", default=None, metavar="K=V",
                   help="architecture overrides, e.g. dim=256 depth=8 kernel_size=5 patch_size=2 in_chans=1")
    p.add_argument("--num-classes", type=positive_int, default=None,
                   help="classifier outputs (default: the dataset's)")
    p.add_argument("--share-rate", type=positive_int, default=None, help="layers per unique weight set r (default 1)")
    p.add_argument("--mapping", default=None, help="sequential | strided | cycle_rev | random | 0,0,1,1,...")
    p.add_argument("--share", default=None, help="shared families, comma-separated (pointwise,depthwise / attn,mlp)")
    p.add_argument("--backend", default=None, choices=["auto", "reference", "triton", "cuda"],
                   help="kernel backend (default reference)")


def _add_data_flags(p: argparse.ArgumentParser):
    p.add_argument("--data-dir", default=None, help="dataset root with train/ and val/ class folders")
    p.add_argument("--dataset", default="", help="'' (class folders), fashion-mnist, or a timm spec (wds/..., "
                   "tfds/..., hfds/...) passed to timm.data.create_dataset")
    p.add_argument("--img-size", type=positive_int, default=None, help="input resolution (default: the model cfg's)")
    p.add_argument("-j", "--workers", type=nonneg_int, default=None,
                   help="data loader worker processes (default: min(4, CPU cores))")
    p.add_argument("--crop-pct", type=positive_float, default=None,
                   help="eval resize = img_size / crop_pct (model cfg's)")
    p.add_argument("--mean", type=float, nargs="+", default=None, help="normalisation mean (model cfg's)")
    p.add_argument("--std", type=positive_float, nargs="+", default=None, help="normalisation std (model cfg's)")


def register(subparsers) -> None:
    """Add ``train``, ``eval``, ``compress``, ``info`` and ``demo`` to the ``spin`` command."""
    # ---------------------------------------------------------------- train
    p = subparsers.add_parser(
        "train", help="train a (shared) ConvMixer / DeiT; torchrun for several processes",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Exit status: 0 finished; 2 a usage error (one line on stderr); 143 (SIGTERM) or 130 (SIGINT) "
               "stopped at a checkpoint — continue with --resume OUTPUT/last.pth.")
    _add_data_flags(p)
    _add_model_flags(p)
    p.add_argument("--recipe", default=None, choices=sorted(RECIPES), help="hyper-parameter preset; flags override")
    p.add_argument("-b", "--batch-size", type=positive_int, default=None, help="batch size per process")
    p.add_argument("--epochs", type=positive_int, default=None)
    p.add_argument("--output", default=None, help="run folder (default runs/<model>-<time>); never overwritten "
                   "unless --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --output (its checkpoints, logs and plots are deleted)")
    p.add_argument("--resume", default=None, metavar="CKPT", help="continue exactly from a training checkpoint")
    p.add_argument("--init-from", default=None, metavar="CKPT",
                   help="start from pretrained weights (ours or timm's); with --share-rate > 1 use --fusion")
    add_trust_flag(p)
    p.add_argument("--fusion", default=None, choices=FUSION_CHOICES,
                   help="weight-fusion method for --init-from with sharing; the collapsed shared model is "
                        "exported as model_shared.pth at the end")
    p.add_argument("--sync-bn", action="store_true",
                   help="BatchNorm statistics over the global batch of all processes (torchrun); without it each "
                        "process normalises its own batch and running statistics are averaged over processes "
                        "before every evaluation and checkpoint")
    g = p.add_argument_group("optimisation (defaults come from --recipe)")
    g.add_argument("--opt", default=None)
    g.add_argument("--lr", type=nonneg_float, default=None)
    g.add_argument("--weight-decay", type=nonneg_float, default=None)
    g.add_argument("--momentum", type=fraction, default=None)
    g.add_argument("--sched", default=None, choices=["onecycle", "cosine", "constant"])
    g.add_argument("--warmup-epochs", type=nonneg_float, default=None)
    g.add_argument("--min-lr", type=nonneg_float, default=None)
    g.add_argument("--clip-grad", type=positive_float, default=None, help="max global grad norm")
    g.add_argument("--accum-steps", type=positive_int, default=None, help="gradient accumulation steps")
    g.add_argument("--model-ema", action=argparse.BooleanOptionalAction, default=None, help="timm ModelEmaV3")
    g.add_argument("--model-ema-decay", type=open_fraction, default=None)
    g = p.add_argument_group("augmentation / regularisation (defaults come from --recipe)")
    g.add_argument("--aug", default=None, choices=["timm", "simple", "none"],
                   help="timm: RRC+flip+RandAugment+erasing; simple: pad-crop+flip for tiny images")
    g.add_argument("--aa", dest="auto_augment", default=None, help="timm auto-augment spec, e.g. rand-m9-mstd0.5-inc1")
    g.add_argument("--reprob", type=probability, default=None, help="random erasing probability")
    g.add_argument("--hflip", type=probability, default=None)
    g.add_argument("--mixup", type=nonneg_float, default=None, help="mixup alpha")
    g.add_argument("--cutmix", type=nonneg_float, default=None, help="cutmix alpha")
    g.add_argument("--smoothing", type=fraction, default=None, help="label smoothing")
    g.add_argument("--drop-path", type=fraction, default=None)
    g.add_argument("--drop", type=fraction, default=None, help="dropout before the head")
    g.add_argument("--repeats", type=nonneg_int, default=None, help="repeated augmentation count (DeiT: 3)")
    g = p.add_argument_group("runtime")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", type=device, default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--amp", default="auto", choices=AMP_CHOICES, help="mixed precision (auto: bf16 on GPU, off on CPU)")
    g.add_argument("--channels-last", action="store_true")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--grad-checkpointing", action="store_true")
    g.add_argument("--threads", type=positive_int, default=None, help="torch intra-op threads")
    g.add_argument("--log-interval", type=positive_int, default=50, help="steps between JSONL step records")
    g.add_argument("--checkpoint-every", type=nonneg_int, default=0, help="also checkpoint every N updates mid-epoch")
    g.add_argument("--eval-every", type=positive_int, default=1, help="evaluate every N epochs")
    g.add_argument("--eval-batch-size", type=positive_int, default=None)
    g.add_argument("--no-eval", action="store_true", help="skip evaluation (no val split needed)")
    g.add_argument("--train-limit", type=positive_int, default=None, help="use only the first N training images")
    g.add_argument("--val-limit", type=positive_int, default=None, help="use only the first N validation images")
    g.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    g.add_argument("--stop-after-updates", type=positive_int, default=None, help=argparse.SUPPRESS)  # tests
    # Remember the defaults, so that --resume can tell which flags were given explicitly (those override the
    # checkpoint's saved config; everything else continues as the interrupted run was configured).
    p.set_defaults(func=cmd_train, _defaults={a.dest: a.default for a in p._actions if a.dest != "help"})

    # ---------------------------------------------------------------- eval
    p = subparsers.add_parser("eval", help="top-1 / top-5 of a checkpoint on a folder dataset's val split")
    _add_data_flags(p)
    p.add_argument("--checkpoint", required=True, help="our checkpoint (.pth / .safetensors), or timm weights "
                   "together with --model")
    add_trust_flag(p)
    p.add_argument("--model", default=None, help="model name, needed only for timm-format weights")
    p.add_argument("--model-kwargs", nargs="*", default=None, metavar="K=V",
                   help="architecture of timm-format weights (our checkpoints carry their own)")
    p.add_argument("--backend", default=None, choices=["auto", "reference", "triton", "cuda"])
    p.add_argument("--split", default="val")
    p.add_argument("-b", "--batch-size", type=positive_int, default=256)
    p.add_argument("--device", type=device, default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--amp", default="auto", choices=AMP_CHOICES)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N images")
    p.add_argument("--use-ema", action="store_true", help="evaluate the EMA weights of a training checkpoint")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the metrics JSON here")
    p.set_defaults(func=cmd_eval)

    # ---------------------------------------------------------------- compress
    p = subparsers.add_parser("compress", help="unshared checkpoint (timm's or ours) -> shared model by a "
                              "sharing plan and a fusion method")
    p.add_argument("--checkpoint", required=True, help="unshared weights: our checkpoint or a timm state_dict")
    add_trust_flag(p)
    p.add_argument("--model", default=None, help="model name (needed for timm weights)")
    p.add_argument("--model-kwargs", nargs="*", default=None, metavar="K=V",
                   help="architecture of timm-format weights (our checkpoints carry their own)")
    p.add_argument("--share-rate", type=positive_int, default=2)
    p.add_argument("--mapping", default="sequential")
    p.add_argument("--share", default=None)
    p.add_argument("--fusion", default="mean", choices=FUSION_CHOICES)
    p.add_argument("--keep-fusion-form", action="store_true",
                   help="save the fusion-training form (per-layer weights) instead of the collapsed shared model")
    p.add_argument("--output", required=True, help="path of the shared checkpoint to write (.pth, or .safetensors "
                   "for that format)")
    g = p.add_argument_group("making the compressed model usable (needs data)")
    g.add_argument("--data-dir", "--calib-data", dest="data_dir", default=None,
                   help="dataset root (train/ and val/ class folders, or --dataset's): the BatchNorm statistics are "
                        "re-estimated on its train split (on by default when given), fine-tuning trains on it, "
                        "--eval measures on its val split")
    g.add_argument("--dataset", default="", help="'' (class folders), fashion-mnist, or a timm dataset spec")
    g.add_argument("--calib-batches", type=nonneg_int, default=64,
                   help="training batches for the BatchNorm recalibration (0: none)")
    g.add_argument("--eval", action="store_true", help="top-1 on the val split: unshared, compressed as is, after "
                   "recalibration / fine-tuning")
    g.add_argument("--eval-limit", type=positive_int, default=None, help="evaluate only the first N val images")
    g.add_argument("--finetune-epochs", type=nonneg_int, default=0,
                   help="fuse-then-fine-tune: train the fusion form from the unshared weights for N epochs with "
                        "--recipe, then collapse it (instead of recalibrating)")
    g.add_argument("--recipe", default="finetune", choices=sorted(RECIPES), help="fine-tuning hyper-parameters")
    g.add_argument("--lr", type=nonneg_float, default=None, help="fine-tuning peak LR (default: the recipe's)")
    g.add_argument("--finetune-output", default=None, help="fine-tuning run folder (default: OUTPUT-finetune/)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing fine-tuning run folder")
    g.add_argument("-b", "--batch-size", type=positive_int, default=128)
    g.add_argument("-j", "--workers", type=nonneg_int, default=None)
    g.add_argument("--img-size", type=positive_int, default=None,
                   help="input resolution (default: the checkpoint's); also the MACs column's")
    g.add_argument("--device", type=device, default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--quiet", action="store_true", help="no progress bars while fine-tuning")
    p.set_defaults(func=cmd_compress)

    # ---------------------------------------------------------------- info
    p = subparsers.add_parser("info", help="versions, device and which kernel backends work here (and why not)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_info)

    # ---------------------------------------------------------------- demo
    p = subparsers.add_parser("demo", help="CPU demo: unshared vs shared (r=2) ConvMixer on Fashion-MNIST")
    p.add_argument("--output", default="demo_out")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST idx folder (default: the Debian package), "
                   "or a class-folder dataset with --dataset ''")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--epochs", type=positive_int, default=None)
    p.add_argument("--quick", action="store_true", help="tiny subset, one short epoch (for tests)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--model-kwargs", nargs="*", default=None, metavar="K=V", help="override the demo ConvMixer")
    p.add_argument("--lr", type=nonneg_float, default=None)
    p.add_argument("-b", "--batch-size", type=positive_int, default=None)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--only", choices=["unshared", "shared"], default=None, help="train just one of the two")
    p.add_argument("--no-compress", action="store_true", help="skip the compression story (compress the unshared "
                   "model to r=2: as is, BatchNorm recalibrated, fine-tuned)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)


_TRAIN_RECIPE_KEYS = ("epochs", "batch_size", "opt", "lr", "weight_decay", "momentum", "sched", "warmup_epochs",
                      "min_lr", "clip_grad", "accum_steps", "aug", "auto_augment", "reprob", "hflip", "mixup",
                      "cutmix", "smoothing", "drop_path", "drop", "repeats", "model_ema", "model_ema_decay",
                      "workers")
# On --resume, flags that would make a different model than the checkpoint's: given with another value, an error.
_RESUME_FIXED = ("model", "model_kwargs", "num_classes", "share_rate", "mapping", "share", "fusion", "init_from",
                 "recipe", "drop", "drop_path", "dataset")
_NOT_INHERITED = ("stop_after_updates", "trust_checkpoint", "overwrite")
# Flags that change the optimisation the run follows: applied, and said out loud (and logged).
_RESUME_ANNOUNCED = ("epochs", "batch_size", "opt", "lr", "weight_decay", "momentum", "sched", "warmup_epochs",
                     "min_lr", "clip_grad", "accum_steps", "aug", "auto_augment", "reprob", "hflip", "mixup",
                     "cutmix", "smoothing", "repeats", "model_ema", "model_ema_decay", "seed", "sync_bn", "amp")


def train_config(args: argparse.Namespace) -> dict:
    """The resolved training config of parsed ``spin train`` args (recipe preset <- explicit flags)."""
    from .recipes import resolve  # lazy, like the subcommands below

    if args.resume and args.init_from:
        raise ValueError("--init-from: a resumed run continues from its own weights (--resume); pass one of "
                         "--resume or --init-from")
    if args.fusion and not args.init_from and not args.resume:
        raise ValueError("--fusion: weight fusion starts from pretrained per-layer weights; pass --init-from CKPT")
    if args.init_from and (args.share_rate or 1) > 1 and not args.fusion:
        raise ValueError("--init-from with --share-rate > 1: choose how layers are fused with --fusion "
                         "(mean, choose_first, scalar_weighted_mean, channel_weighted_mean)")
    overrides = {k: getattr(args, k) for k in _TRAIN_RECIPE_KEYS}
    cfg = resolve(args.recipe, overrides, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    for k, v in vars(args).items():
        if k not in _TRAIN_RECIPE_KEYS and k not in ("func", "_defaults"):
            cfg[k] = v
    cfg["model_kwargs"] = parse_kv(args.model_kwargs)
    cfg["mapping"] = parse_mapping(args.mapping)
    cfg["share"] = parse_share(args.share)
    if args.resume:
        cfg = _resume_config(args, cfg)
    if cfg.get("output") is None:
        cfg["output"] = f"runs/{args.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg.pop("_defaults", None)
    return cfg


def _plain(v):
    """Comparable form of a config value (tuples and lists alike)."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _resume_config(args: argparse.Namespace, cfg: dict) -> dict:
    """The checkpoint's saved config, overridden by the flags given explicitly on this command line.

    A flag that would change the model is an error; one that changes the optimisation is applied and recorded in
    ``resume_overrides`` (the run announces it), so a resumed run never silently becomes a different run.
    """
    from .checkpoint import load_training_checkpoint  # lazy: imports torch

    saved = load_training_checkpoint(args.resume, trusted=args.trust_checkpoint)["config"]
    defaults = getattr(args, "_defaults", {})
    # Permissions and test hooks are decided by this command line, never inherited from a saved config.
    merged = {k: v for k, v in saved.items() if k not in _NOT_INHERITED}
    merged.update({k: getattr(args, k) for k in _NOT_INHERITED})
    announced = {}
    for k, v in vars(args).items():
        if k not in defaults or k == "_defaults" or v == defaults[k]:
            continue  # not given on this command line: the interrupted run's value stands
        new, old = cfg[k], saved.get(k)
        if k in _RESUME_FIXED and _plain(new) != _plain(old):
            raise ValueError(f"{_flag(k)} {_show(new)}: the run being resumed has {_show(old)}; resuming cannot "
                             f"change the model (leave {_flag(k)} out, or start a new run with --init-from)")
        if k in _RESUME_ANNOUNCED and _plain(new) != _plain(old):
            announced[k] = [old, new]
        merged[k] = new
    merged["resume"] = args.resume
    merged["resume_overrides"] = announced
    if args.output is None:  # the run continues in the folder its checkpoint is in (it may have been moved)
        merged["output"] = str(Path(args.resume).parent)
    return merged


def _show(v) -> str:
    if isinstance(v, dict):
        return " ".join(f"{k}={x}" for k, x in v.items()) or "{}"
    return str(v)


def cmd_train(args) -> int:
    """``spin train``: resolve the recipe and run the training loop.

    Returns 0 when the run finished, 128 + N when signal N stopped it at a checkpoint (143 for SIGTERM)."""
    from .loop import train  # lazy: `spin --help` does not import torch / timm

    result = train(train_config(args))
    if result.get("signal"):
        return STOPPED_BY_SIGNAL_BASE + int(result["signal"])
    return 0


def cmd_eval(args) -> int:
    """``spin eval``: metrics of a checkpoint on the val split; prints params, MACs, img/s and a JSON line."""
    from .run_eval import run_eval  # lazy: `spin --help` does not import torch / timm

    return run_eval(args)


def cmd_compress(args) -> int:
    """``spin compress``: fuse an unshared checkpoint into a shared model and save it."""
    from .compress import run_compress  # lazy: `spin --help` does not import torch / timm

    return run_compress(args)


def cmd_info(args) -> int:
    """``spin info``: environment report."""
    from .info import run_info  # lazy: `spin --help` does not import torch / timm

    return run_info(args)


def cmd_demo(args) -> int:
    """``spin demo``: the CPU demo on Fashion-MNIST."""
    from .demo import run_demo  # lazy: `spin --help` does not import torch / timm

    return run_demo(args)
