"""Build plumbing: the CUDA toolkit is found by itself (even behind a wrapper nvcc), the arch list default."""
import shutil
from pathlib import Path

import pytest

from spin_kernels import cuda
from spin_kernels.cuda_build import default_arch_list, find_cuda_home


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on the PATH")
def test_cuda_home_holds_the_toolkit(monkeypatch):
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    root = Path(find_cuda_home())
    assert (root / "bin" / "nvcc").exists() and (root / "include" / "cuda_runtime.h").exists()
    assert any((root / lib).is_dir() for lib in ("lib64", "lib"))


def test_cuda_home_env_wins(monkeypatch, tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "nvcc").write_text("")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    assert find_cuda_home() == str(tmp_path)


def test_default_arch_without_gpu():
    import torch

    if not torch.cuda.is_available():
        assert default_arch_list() == "9.0a"


def test_extension_status_says_why():
    status = cuda.status()
    assert set(status) == {"built", "loadable", "usable", "reason"}
    assert status["usable"] or status["reason"]
