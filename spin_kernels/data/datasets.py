"""Datasets by spec: an ImageNet-style folder, Fashion-MNIST's idx files, or any timm dataset spec.

* ``dataset=""`` (default): ``<data_dir>/<split>/<class>/<image>`` read by timm's folder reader; decoding is strict
  (an unreadable image raises :class:`DataError` naming the file instead of timm's silent skip, so a corrupt
  dataset cannot quietly shrink).
* ``dataset="fashion-mnist"``: the idx files (Debian package ``dataset-fashion-mnist`` unless ``data_dir`` is set).
* anything else (``tfds/...``, ``wds/...``, ``hfds/...``, ``torch/...``): passed unchanged to
  :func:`timm.data.create_dataset` with ``download=False`` — nothing downloads at run time.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image
from timm.data import create_dataset

from .errors import DataError
from .fashion_mnist import FashionMNIST

FASHION_MNIST_NAMES = ("fashion-mnist", "fashion_mnist", "fashionmnist")
# Accepted folder names per split, in order of preference (ImageNet ships "val"; timm also accepts these).
_SPLIT_ALIASES = {"train": ("train", "training"), "val": ("val", "validation", "test", "eval")}


class StrictImageDataset(torch.utils.data.Dataset):
    """Items of a timm folder reader, decoded strictly: a file PIL cannot read raises :class:`DataError`."""

    def __init__(self, reader, transform=None, img_mode: str = "RGB"):
        self.reader = reader
        self.transform = transform
        self.img_mode = img_mode

    @property
    def classes(self) -> list[str]:
        """Class names in index order (sorted folder names)."""
        return [c for c, _ in sorted(self.reader.class_to_idx.items(), key=lambda kv: kv[1])]

    @property
    def num_classes(self) -> int:
        """Number of class folders."""
        return len(self.reader.class_to_idx)

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int):
        img, target = self.reader[index][:2]
        try:
            img = Image.open(img)
            img = img.convert(self.img_mode)  # convert() decodes the pixels, so truncated files fail here
        except Exception as e:
            raise DataError(f"unreadable image {self.reader.filename(index, absolute=True)}: {e}") from e
        if self.transform is not None:
            img = self.transform(img)
        return img, target


def find_split_dir(data_dir: str | os.PathLike, split: str) -> Path:
    """``<data_dir>/<split>`` (or an accepted alias such as ``validation``); raise DataError if absent."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"--data-dir {root} does not exist or is not a folder")
    for name in _SPLIT_ALIASES.get(split, (split,)):
        if (root / name).is_dir():
            return root / name
    present = sorted(p.name for p in root.iterdir() if p.is_dir())
    raise DataError(f"--data-dir {root} has no '{split}' split: expected the folder {root / split}/<class>/<image> "
                    f"(found folders: {present or 'none'})")


def build_dataset(data_dir: str | os.PathLike | None, split: str, *, dataset: str = "", transform=None,
                  in_chans: int = 3, limit: int | None = None, is_training: bool = False, batch_size: int = 1,
                  seed: int = 42):
    """Return the ``split`` ("train" or "val") dataset, checked: present and non-empty.

    Args:
        data_dir: root folder (``--data-dir``); may be None only for Fashion-MNIST (the Debian package).
        split: "train" or "val".
        dataset: "" for a class-folder tree, "fashion-mnist", or a timm dataset spec passed to create_dataset.
        transform: per-image transform.
        in_chans: 1 decodes images as grayscale ("L"), 3 as RGB.
        limit: keep only the first ``limit`` samples (map-style datasets only).
    """
    name = (dataset or "").lower()
    if name in FASHION_MNIST_NAMES:
        ds = FashionMNIST(data_dir, "train" if split == "train" else "test", transform=transform, limit=limit)
        if in_chans != 1:
            # The images are grayscale; models with 3 input channels get the channel repeated.
            ds.transform = _RepeatChannels(transform, in_chans)
    elif not name or name.startswith(("folder", "imagefolder")):
        if data_dir is None:
            raise DataError("--data-dir: required for a class-folder dataset (a folder with train/ and val/ "
                            "<class>/<image> trees); or pick another --dataset (e.g. fashion-mnist)")
        split_dir = find_split_dir(data_dir, split)
        try:
            timm_ds = create_dataset("", root=str(split_dir), split=split, search_split=False)
        except Exception as e:  # timm raises a bare RuntimeError/ValueError when a folder has no images
            what = "is empty" if "Found 0" in str(e) else "cannot be read"
            raise DataError(f"the '{split}' split at {split_dir} {what}: {e}") from e
        ds = StrictImageDataset(timm_ds.reader, transform=transform, img_mode="L" if in_chans == 1 else "RGB")
        if limit is not None:
            ds = _Limited(ds, limit)
    else:
        try:
            ds = create_dataset(dataset, root=str(data_dir) if data_dir else None,
                                split="train" if split == "train" else "validation", is_training=is_training,
                                batch_size=batch_size, seed=seed, download=False,
                                input_img_mode="L" if in_chans == 1 else "RGB")
        except Exception as e:
            raise DataError(f"--dataset {dataset!r}: timm could not open split '{split}' under {data_dir}: {e}") from e
        ds.transform = transform
    try:
        n = len(ds)
    except TypeError:  # some iterable datasets do not know their length
        n = None
    if n == 0:
        raise DataError(f"the '{split}' split of {data_dir or dataset} is empty: no images found")
    return ds


def dataset_num_classes(ds) -> int | None:
    """Number of classes a dataset declares, or None when it cannot tell (some streaming datasets)."""
    for obj in (ds, getattr(ds, "dataset", None)):
        if obj is None:
            continue
        if hasattr(obj, "num_classes"):
            return int(obj.num_classes)
        reader = getattr(obj, "reader", None)
        if reader is not None and getattr(reader, "class_to_idx", None):
            return len(reader.class_to_idx)
    return None


def check_num_classes(ds, model_classes: int, split: str, where: str = "the model") -> None:
    """Raise DataError when the dataset's class count differs from ``model_classes``."""
    n = dataset_num_classes(ds)
    if n is not None and n != model_classes:
        raise DataError(f"the '{split}' split has {n} classes but {where} has {model_classes} outputs; "
                        f"pass --num-classes {n} (a new classifier head is created) or use matching data")


class _Limited(torch.utils.data.Dataset):
    """The first ``limit`` items of a map-style dataset (keeps class metadata visible)."""

    def __init__(self, ds, limit: int):
        self.dataset, self.n = ds, min(limit, len(ds))
        self.num_classes = dataset_num_classes(ds)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.dataset[i]


class _RepeatChannels:
    """Apply ``transform`` and repeat a 1-channel tensor to ``chans`` channels."""

    def __init__(self, transform, chans: int):
        self.transform, self.chans = transform, chans

    def __call__(self, img):
        x = self.transform(img) if self.transform is not None else img
        return x.expand(self.chans, *x.shape[1:]) if torch.is_tensor(x) and x.shape[0] == 1 else x
