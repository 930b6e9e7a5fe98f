"""torchrun with BatchNorm models: the metrics logged while training are the metrics of the saved checkpoint.

Each rank sees its own batches, so without --sync-bn each rank's BatchNorm running statistics drift apart; they are
averaged over ranks before every evaluation and every checkpoint. With --sync-bn they never differ. Either way
``spin eval`` of best.pth (one process) reproduces the logged top-1 and loss.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from spin_kernels.cli import main as spin

from .conftest import TINY_CONVMIXER

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("sync_bn", [False, True], ids=["averaged-running-stats", "sync-bn"])
def test_logged_metrics_equal_eval_of_best_checkpoint(digits_root, tmp_path, capsys, sync_bn):
    out = tmp_path / "ddp"
    args = ["train", "--data-dir", str(digits_root), "--model", "convmixer_768_32", "--model-kwargs",
            *TINY_CONVMIXER, "--img-size", "16", "-b", "4", "--epochs", "2", "--recipe", "demo", "--lr", "0.01",
            "-j", "0", "--threads", "1", "--quiet", "--val-limit", "23", "--output", str(out),
            *(["--sync-bn"] if sync_bn else [])]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(29600 + os.getpid() % 1000 + sync_bn), "-m", "spin_kernels.cli", *args],
                       cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    epochs = [e for e in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if e["type"] == "epoch"]
    best = max(epochs, key=lambda e: e["eval_top1"])  # the first epoch with the best top-1 is the one saved
    best = next(e for e in epochs if e["eval_top1"] == best["eval_top1"])
    ckpt = torch.load(out / "best.pth", weights_only=True)
    assert ckpt["epoch"] == best["epoch"]
    assert spin(["eval", "--checkpoint", str(out / "best.pth"), "--data-dir", str(digits_root), "-j", "0",
                 "--limit", "23"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["count"] == best["eval_count"] == 23
    assert metrics["top1"] == pytest.approx(best["eval_top1"], abs=1e-3)
    assert metrics["loss"] == pytest.approx(best["eval_loss"], rel=1e-5)
