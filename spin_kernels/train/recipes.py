"""Training recipes: named presets of hyper-parameters; any flag given on the command line overrides them.

* ``spin``: the SPIN / ConvMixer ImageNet recipe (AdamW, one-cycle, RandAugment, mixup + cutmix, erasing).
* ``deit``: DeiT's recipe (AdamW lr 5e-4 x batch/512, cosine + warmup, repeated augmentation, EMA).
* ``demo``: a short CPU recipe for small grayscale images (pad-crop + flip, label smoothing, one-cycle).
"""
from __future__ import annotations

# Values used when neither the recipe nor a flag sets a key.
BASE = {
    "epochs": 10, "batch_size": 128, "opt": "adamw", "lr": 1e-3, "lr_base_batch": None, "weight_decay": 0.05,
    "momentum": 0.9, "sched": "cosine", "warmup_epochs": 0, "min_lr": 0.0, "clip_grad": None, "accum_steps": 1,
    "aug": "timm", "auto_augment": None, "reprob": 0.0, "hflip": 0.5, "color_jitter": 0.4, "mixup": 0.0,
    "cutmix": 0.0, "mixup_prob": 1.0, "mixup_switch_prob": 0.5, "smoothing": 0.1, "drop_path": 0.0, "drop": None,
    "repeats": 0, "model_ema": False, "model_ema_decay": 0.9998,
    "workers": None,  # None: data.default_workers() (min(4, CPU cores))
}

RECIPES: dict[str, dict] = {
    "spin": {
        "opt": "adamw", "lr": 0.01, "sched": "onecycle", "warmup_epochs": 0, "weight_decay": 2e-5, "clip_grad": 1.0,
        "aug": "timm", "auto_augment": "rand-m9-mstd0.5-inc1", "mixup": 0.5, "cutmix": 0.5, "reprob": 0.25,
        "smoothing": 0.1, "epochs": 300,
    },
    "deit": {
        "opt": "adamw", "lr": 5e-4, "lr_base_batch": 512, "sched": "cosine", "warmup_epochs": 5, "min_lr": 1e-5,
        "weight_decay": 0.05, "aug": "timm", "auto_augment": "rand-m9-mstd0.5-inc1", "mixup": 0.8, "cutmix": 1.0,
        "reprob": 0.25, "smoothing": 0.1, "drop_path": 0.1, "repeats": 3, "model_ema": True,
        "model_ema_decay": 0.99996, "epochs": 300,
    },
    "demo": {
        "opt": "adamw", "lr": 0.005, "sched": "onecycle", "warmup_epochs": 0, "weight_decay": 5e-5, "clip_grad": 1.0,
        "aug": "simple", "auto_augment": None, "mixup": 0.0, "cutmix": 0.0, "reprob": 0.0, "smoothing": 0.1,
        "epochs": 2, "batch_size": 128, "workers": 0,
    },
}


def resolve(recipe: str | None, overrides: dict, world_size: int = 1) -> dict:
    """Merge BASE <- RECIPES[recipe] <- overrides (keys whose value is None in ``overrides`` are ignored).

    DeiT's linear scaling rule: when the recipe sets ``lr_base_batch`` and ``lr`` was not given explicitly,
    lr = recipe lr x global batch / lr_base_batch (global batch = batch_size x accum_steps x world_size;
    ``batch_size`` is per process, as in timm).
    """
    if recipe is not None and recipe not in RECIPES:
        raise ValueError(f"--recipe: unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    cfg = dict(BASE)
    cfg.update(RECIPES.get(recipe or "", {}))
    explicit = {k: v for k, v in overrides.items() if v is not None}
    cfg.update(explicit)
    if cfg.get("lr_base_batch") and "lr" not in explicit:
        global_batch = cfg["batch_size"] * cfg.get("accum_steps", 1) * world_size
        cfg["lr"] = cfg["lr"] * global_batch / cfg["lr_base_batch"]
    return cfg
