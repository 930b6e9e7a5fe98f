"""Data pipeline: idx reader, folder datasets and their errors, samplers that make resume and eval exact."""
from __future__ import annotations

import gzip
import random
import shutil
import struct

import numpy as np
import pytest
import torch

from spin_kernels.data import (
    DataError,
    FashionMNIST,
    build_dataset,
    check_num_classes,
    read_idx,
)
from spin_kernels.data.fashion_mnist import DEFAULT_ROOT
from spin_kernels.data.samplers import (
    EpochSeededDataset,
    EvalShardSampler,
    train_sampler,
)


def _write_idx(path, arr: np.ndarray, gz: bool):
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def test_read_idx_roundtrip_and_errors(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for gz in (False, True):
        p = tmp_path / ("a.gz" if gz else "a")
        _write_idx(p, arr, gz)
        np.testing.assert_array_equal(read_idx(p), arr)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="not an idx file"):
        read_idx(tmp_path / "bad")
    _write_idx(tmp_path / "short", arr, False)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-5])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short")


def test_fashion_mnist_from_folder(tmp_path):
    imgs = np.random.randint(0, 255, (5, 28, 28)).astype(np.uint8)
    labels = np.array([0, 1, 2, 3, 9], dtype=np.uint8)
    for split, stem in (("train", "train"), ("test", "t10k")):
        _write_idx(tmp_path / f"{stem}-images-idx3-ubyte.gz", imgs, True)
        _write_idx(tmp_path / f"{stem}-labels-idx1-ubyte.gz", labels, True)
    ds = FashionMNIST(tmp_path, "val")
    assert len(ds) == 5 and ds.num_classes == 10
    img, y = ds[4]
    assert img.size == (28, 28) and y == 9
    with pytest.raises(DataError, match="not found"):
        FashionMNIST(tmp_path.parent, "train")  # a folder without the idx files


@pytest.mark.skipif(not (DEFAULT_ROOT and __import__("os").path.isdir(DEFAULT_ROOT)),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_debian_package():
    ds = FashionMNIST(split="test")
    assert len(ds) == 10_000 and set(np.unique(ds.targets)) == set(range(10))


def test_folder_dataset_and_class_count(digits_root):
    ds = build_dataset(digits_root, "train")
    assert len(ds) == 64 and ds.num_classes == 4
    img, y = ds[0]
    assert img.mode == "RGB" and 0 <= y < 4
    assert build_dataset(digits_root, "val", in_chans=1)[0][0].mode == "L"
    with pytest.raises(DataError, match="--num-classes 4"):
        check_num_classes(ds, 10, "train")


def test_missing_and_empty_split(tmp_path, digits_root):
    with pytest.raises(DataError, match="does not exist"):
        build_dataset(tmp_path / "nothing", "train")
    root = tmp_path / "noval"
    shutil.copytree(digits_root / "train", root / "train")
    with pytest.raises(DataError, match="no 'val' split"):
        build_dataset(root, "val")
    (root / "val" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="empty"):
        build_dataset(root, "val")


def test_unreadable_image_is_named(tmp_path, digits_root):
    root = tmp_path / "corrupt"
    shutil.copytree(digits_root, root)
    bad = min((root / "train" / "digit0").iterdir())
    bad.write_bytes(b"this is not a png")
    ds = build_dataset(root, "train")
    idx = [ds.reader.filename(i, absolute=True) for i in range(len(ds))].index(str(bad))
    with pytest.raises(DataError, match=bad.name):
        ds[idx]


def test_epoch_seeded_dataset_is_pure_and_isolated():
    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return torch.rand(1).item() + random.random() + np.random.rand()

    ds = EpochSeededDataset(Noisy(), seed=3)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = [ds[i] for i in range(10)]
    assert torch.equal(before, torch.get_rng_state())  # the caller's stream is untouched
    assert a == [ds[i] for i in reversed(range(10))][::-1]  # same item, same draw, any order
    ds.epoch = 1
    assert a != [ds[i] for i in range(10)]  # a new epoch, new augmentation


def test_samplers_resume_and_exact_eval_shards():
    data = list(range(23))
    s = train_sampler(data, seed=1)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, skip=5)
    assert list(s) == full[5:] and len(s) == len(full) - 5
    # Two ranks' train shards interleave into the single-process order (same global batches).
    r0, r1 = (train_sampler(data, world_size=2, rank=r, seed=1) for r in (0, 1))
    r0.set_epoch(2), r1.set_epoch(2)
    inter = [x for pair in zip(r0, r1) for x in pair]
    assert inter[:22] == full[:22]
    # Eval shards: every sample exactly once, no padding.
    shards = [list(EvalShardSampler(data, 3, r)) for r in range(3)]
    assert sorted(i for sh in shards for i in sh) == data
