"""Data pipeline: datasets by spec (class folders, Fashion-MNIST idx files, timm specs), transforms, loaders."""
from .datasets import (
           build_dataset,
           check_num_classes,
           dataset_num_classes,
           find_split_dir,
)
from .errors import DataError
from .fashion_mnist import FashionMNIST, read_idx
from .loaders import (
           build_eval_loader,
           build_train_loader,
           default_workers,
           set_loader_epoch,
)
from .transforms import build_eval_transform, build_train_transform, model_data_cfg

__all__ = [
           "DataError",
           "FashionMNIST",
           "build_dataset",
           "build_eval_loader",
           "build_eval_transform",
           "build_train_loader",
           "build_train_transform",
           "check_num_classes",
           "dataset_num_classes",
           "default_workers",
           "find_split_dir",
           "model_data_cfg",
           "read_idx",
           "set_loader_epoch",
]
