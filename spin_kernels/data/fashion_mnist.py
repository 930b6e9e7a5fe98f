"""Fashion-MNIST read from its idx files (the Debian package ``dataset-fashion-mnist`` by default).

Nothing here downloads: the files come from the package (``apt-get install dataset-fashion-mnist``) or from a
folder passed with ``--data-dir`` that holds the four ``*-idx?-ubyte[.gz]`` files.
"""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import DataError

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
# idx type codes -> numpy dtypes (big-endian on disk); Fashion-MNIST only uses 0x08 (uint8).
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one idx file (optionally gzip-compressed) into a numpy array of its stored shape.

    Raises:
        DataError: the file is missing, truncated or not an idx file (the message names the file).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"cannot read idx file {path}: {e}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an idx file (bad magic number)")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    count = int(np.prod(shape))
    body = data[4 + 4 * ndim:]
    if len(body) < count * dtype.itemsize:
        raise DataError(f"{path} is truncated: expected {count * dtype.itemsize} bytes of data, found {len(body)}")
    return np.frombuffer(body, dtype=dtype, count=count).reshape(shape)


def _find(root: Path, stem: str) -> Path:
    """The idx file ``stem`` in ``root``, plain or ``.gz``."""
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise DataError(f"Fashion-MNIST file {stem}[.gz] not found in {root}. Install the Debian package "
                    "(apt-get install dataset-fashion-mnist) or pass --data-dir pointing at a folder with the "
                    "four idx files.")


class FashionMNIST(torch.utils.data.Dataset):
    """Fashion-MNIST split held in memory as uint8; items are ``(PIL 'L' image, label)`` passed through ``transform``.

    Args:
        root: folder with the idx files (default: the Debian package's folder).
        split: ``"train"`` (60,000 images) or ``"test"`` / ``"val"`` (10,000 images).
        transform: callable applied to the PIL image.
        limit: keep only the first ``limit`` images (used by ``spin demo --quick`` and the tests).
    """

    classes = CLASSES

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train", transform=None,
                 limit: int | None = None):
        split = {"val": "test", "validation": "test", "t10k": "test"}.get(split, split)
        if split not in _FILES:
            raise DataError(f"split: Fashion-MNIST has splits 'train' and 'test' (alias 'val'), got {split!r}")
        root = Path(root or DEFAULT_ROOT)
        if not root.is_dir():
            raise DataError(f"Fashion-MNIST folder {root} does not exist. Install it with "
                            "`apt-get install dataset-fashion-mnist` or pass --data-dir.")
        images = read_idx(_find(root, _FILES[split][0]))
        labels = read_idx(_find(root, _FILES[split][1]))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"Fashion-MNIST {split} files in {root} disagree: images {images.shape}, "
                            f"labels {labels.shape}")
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        self.images = images
        self.targets = labels.astype(np.int64)
        self.transform = transform
        self.split = split

    @property
    def num_classes(self) -> int:
        """Number of classes (10)."""
        return len(CLASSES)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.images[index], mode="L")
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])
