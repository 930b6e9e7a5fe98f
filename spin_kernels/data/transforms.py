"""Train and eval transforms: timm's ``create_transform`` for ImageNet-style data, a pad-crop for tiny images.

The eval transform always follows the model's pretrained cfg (resize to img_size / crop_pct with its
interpolation, center crop, normalize with its mean / std), as timm's validate.py does.
"""
from __future__ import annotations

from timm.data import create_transform
from torchvision import transforms as T


def _norm(in_chans: int, mean, std):
    """mean / std trimmed or repeated to ``in_chans`` entries (a 1-channel model gets the channel average)."""
    mean, std = tuple(mean), tuple(std)
    if len(mean) != in_chans:
        mean = (sum(mean) / len(mean),) * in_chans
        std = (sum(std) / len(std),) * in_chans
    return mean, std


def build_train_transform(img_size: int, *, in_chans: int = 3, aug: str = "timm", auto_augment: str | None = None,
                          re_prob: float = 0.0, hflip: float = 0.5, interpolation: str = "bicubic",
                          mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), pad: int = 2, color_jitter=0.4):
    """Training transform.

    Args:
        aug: ``"timm"`` — random-resized-crop, flip, RandAugment (``auto_augment``, e.g. "rand-m9-mstd0.5-inc1"),
            random erasing (``re_prob``), exactly timm's ImageNet recipe; ``"simple"`` — random crop with ``pad``
            pixels of zero padding plus flip, the standard (Fashion-)MNIST/CIFAR augmentation for images too small
            for random-resized-crop (timm has no such mode); ``"none"`` — resize + normalize only.
    """
    mean, std = _norm(in_chans, mean, std)
    if aug == "timm":
        return create_transform((in_chans, img_size, img_size), is_training=True, auto_augment=auto_augment,
                                re_prob=re_prob, hflip=hflip, interpolation=interpolation, mean=mean, std=std,
                                color_jitter=color_jitter)
    if aug == "simple":
        ops = [T.Resize(img_size), T.RandomCrop(img_size, padding=pad)]
        if hflip > 0:
            ops.append(T.RandomHorizontalFlip(hflip))
        ops += [T.ToTensor(), T.Normalize(mean, std)]
        if re_prob > 0:
            ops.append(T.RandomErasing(re_prob))
        return T.Compose(ops)
    if aug == "none":
        return T.Compose([T.Resize(img_size), T.CenterCrop(img_size), T.ToTensor(), T.Normalize(mean, std)])
    raise ValueError(f"aug: expected 'timm', 'simple' or 'none', got {aug!r}")


def build_eval_transform(img_size: int, *, in_chans: int = 3, crop_pct: float = 0.875,
                         interpolation: str = "bicubic", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
    """The model cfg's eval transform: resize to img_size / crop_pct, center crop img_size, normalize."""
    mean, std = _norm(in_chans, mean, std)
    return create_transform((in_chans, img_size, img_size), is_training=False, interpolation=interpolation,
                            crop_pct=crop_pct, mean=mean, std=std)


def model_data_cfg(model, img_size: int | None = None) -> dict:
    """Eval-transform settings of ``model`` (its ``default_cfg`` / ``pretrained_cfg``), with img_size overridden."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {})
    size = img_size or cfg.get("input_size", (3, 224, 224))[-1]
    in_chans = getattr(model, "spin_config", {}).get("in_chans") or cfg.get("input_size", (3,))[0]
    return {"img_size": int(size), "in_chans": int(in_chans), "crop_pct": float(cfg.get("crop_pct", 0.875)),
            "interpolation": cfg.get("interpolation", "bicubic"),
            "mean": tuple(cfg.get("mean", (0.485, 0.456, 0.406))), "std": tuple(cfg.get("std", (0.229, 0.224, 0.225)))}
