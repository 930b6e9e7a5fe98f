"""Build plumbing: the CUDA toolkit is found by itself (even behind a wrapper nvcc), the arch list default."""
import shutil
from pathlib import Path

import pytest

from spin_kernels import cuda
from spin_kernels.cuda_build import (
    PORTABLE_ARCH_LIST,
    built_arch_list,
    default_arch_list,
    find_cuda_home,
    runs_on,
    usable_arch_list,
)


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
        assert default_arch_list() == PORTABLE_ARCH_LIST == "8.0+PTX;9.0a"


def test_arch_list_drops_what_the_kernels_cannot_compile_for():
    """mma.sync m16n8k16 on bf16 needs sm_80: older entries (and unreadable ones) are dropped, not a failed build."""
    assert usable_arch_list("7.5;8.0;9.0a") == ("8.0;9.0a", ["7.5"])
    assert usable_arch_list("7.0 7.5+PTX 8.6+PTX") == ("8.6+PTX", ["7.0", "7.5+PTX"])
    assert usable_arch_list("sm_90")[1] == ["sm_90"]
    assert usable_arch_list(None) == (default_arch_list(), [])
    assert usable_arch_list("6.1")[0] == default_arch_list()


@pytest.mark.parametrize("archs, capability, expected", [
    ("8.0+PTX;9.0a", (9, 0), True), ("8.0+PTX;9.0a", (8, 6), True), ("8.0+PTX;9.0a", (10, 0), True),
    ("8.0+PTX;9.0a", (7, 5), False), ("9.0a", (9, 0), True), ("9.0a", (8, 0), False), ("9.0a", (10, 0), False),
    ("8.0", (12, 0), False), ("8.6", (8, 0), False), ("9.0", (9, 0), True),
])
def test_extension_runs_only_where_it_has_code(archs, capability, expected):
    assert runs_on(archs, capability) is expected


def test_status_refuses_a_gpu_the_build_has_no_code_for(monkeypatch):
    """An A100 / Turing / Blackwell card with a Hopper-only build: not usable, and the reason says how to fix it
    (launching would fail with "no kernel image is available")."""
    import torch

    if cuda.extension() is None:
        pytest.skip("spin_kernels._C is not built here")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    monkeypatch.setattr("spin_kernels.cuda_build.built_arch_list", lambda: "9.0a")
    status = cuda._probe()
    assert not status["usable"] and "sm_75" in status["reason"] and "TORCH_CUDA_ARCH_LIST" in status["reason"]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    assert cuda._probe()["usable"]


def test_build_records_its_arch_list():
    if cuda.extension() is None:
        pytest.skip("spin_kernels._C is not built here")
    archs = built_arch_list()
    assert archs and usable_arch_list(archs) == (archs, [])


def test_extension_status_says_why():
    status = cuda.status()
    assert set(status) == {"built", "loadable", "usable", "reason"}
    assert status["usable"] or status["reason"]
