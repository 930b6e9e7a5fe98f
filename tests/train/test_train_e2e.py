"""End to end through the real loaders and the CLI: train, eval, resume, SIGTERM, DDP, compress, fusion, demo."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from spin_kernels.cli import main

from .conftest import TINY_CONVMIXER, TINY_DEIT, spin_cmd

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def train_args(data, out, *extra, model_kwargs=TINY_CONVMIXER, model="convmixer_768_32"):
    return ["train", "--data-dir", str(data), "--model", model, "--model-kwargs", *model_kwargs,
            "--img-size", "16", "-b", "8", "--epochs", "2", "--recipe", "demo", "--lr", "0.01", "-j", "0",
            "--log-interval", "1", "--threads", "1", "--quiet", "--output", str(out), *extra]


def step_losses(out) -> dict:
    recs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return {(r["epoch"], r["step"]): r["loss"] for r in recs if r["type"] == "step"}


@pytest.fixture(scope="module")
def trained(digits_root, tmp_path_factory):
    """A 2-epoch tiny ConvMixer run on the digits tree (dropout on, to exercise RNG restore on resume)."""
    out = tmp_path_factory.mktemp("run") / "full"
    assert main(train_args(digits_root, out, "--drop", "0.2")) == 0
    return out


def test_train_outputs(trained):
    for name in ("summary.csv", "log.jsonl", "args.json", "last.pth", "best.pth", "plots/loss.png",
                 "plots/accuracy.png"):
        assert (trained / name).exists(), name
    rows = (trained / "summary.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss,eval_loss,eval_top1,eval_top5") and len(rows) == 3
    ck = torch.load(trained / "last.pth", weights_only=True)
    assert {"model", "spin_config", "optimizer", "rng", "epoch", "step_in_epoch", "update"} <= set(ck)
    assert ck["epoch"] == 2 and ck["update"] == 16
    from spin_kernels import load_model

    assert load_model(trained / "last.pth").num_classes == 4


def test_resume_mid_epoch_matches_uninterrupted(digits_root, trained, tmp_path):
    out = tmp_path / "resumed"
    assert main(train_args(digits_root, out, "--drop", "0.2", "--stop-after-updates", "5")) == 0
    ck = torch.load(out / "last.pth", weights_only=True)
    assert (ck["epoch"], ck["step_in_epoch"]) == (0, 5)  # a mid-epoch checkpoint
    # Only --resume: everything else continues as the interrupted run was configured (saved in the checkpoint).
    assert main(["train", "--resume", str(out / "last.pth")]) == 0
    assert step_losses(out) == step_losses(trained)  # bit-identical loss sequence
    assert (out / "summary.csv").read_text().splitlines()[1:] != []


def test_eval_cli(digits_root, trained, capsys):
    assert main(["eval", "--data-dir", str(digits_root), "--checkpoint", str(trained / "last.pth"), "-j", "0",
                 "--img-size", "16"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["count"] == 24 and metrics["params"] > 0 and metrics["macs"] > 0
    last_row = (trained / "summary.csv").read_text().splitlines()[-1].split(",")
    assert metrics["top1"] == pytest.approx(float(last_row[3]), abs=1e-3)  # the training run's eval transform


def test_class_mismatch_and_missing_split_errors(digits_root, tmp_path, capsys):
    assert main(train_args(digits_root, tmp_path / "x", "--num-classes", "10")) == 2
    assert "--num-classes 4" in capsys.readouterr().err
    assert main(train_args(tmp_path / "nowhere", tmp_path / "y")) == 2
    assert "does not exist" in capsys.readouterr().err


def test_compress_and_fusion_training(digits_root, trained, tmp_path, capsys):
    from spin_kernels import load_model

    out = tmp_path / "shared.pth"
    assert main(["compress", "--checkpoint", str(trained / "last.pth"), "--share-rate", "2", "--fusion", "mean",
                 "--output", str(out), "--img-size", "16"]) == 0
    text = capsys.readouterr().out
    assert "pointwise" in text and "total" in text
    shared = load_model(out)
    assert shared.spin_config["share_rate"] == 2
    unshared = load_model(trained / "last.pth")
    assert sum(p.numel() for p in shared.parameters()) < sum(p.numel() for p in unshared.parameters())
    run = tmp_path / "fuse"
    args = train_args(digits_root, run, "--init-from", str(trained / "last.pth"), "--share-rate", "2",
                      "--fusion", "mean")
    args[args.index("--epochs") + 1] = "1"
    assert main(args) == 0
    collapsed = load_model(run / "model_shared.pth")
    assert collapsed.spin_config["share_rate"] == 2 and not collapsed.spin_config.get("fusion")


def test_sigterm_writes_checkpoint_and_exits_143(digits_root, tmp_path):
    out = tmp_path / "killed"
    args = train_args(digits_root, out)
    args[args.index("--epochs") + 1] = "200"
    proc = subprocess.Popen(spin_cmd() + args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        log = out / "log.jsonl"
        if log.exists() and '"type": "step"' in log.read_text():
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err  # 143: stopped at a checkpoint, not finished
    assert "SIGTERM" in err and "--resume" in err
    ck = torch.load(out / "last.pth", weights_only=True)
    assert ck["update"] >= 1 and ck["epoch"] < 200


def test_ddp_two_processes_match_single_process(digits_root, tmp_path):
    """2 gloo ranks x batch 4 == 1 process x batch 8: same global batches, same losses; exact eval count."""
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    base = train_args(digits_root, single, "--val-limit", "23", model="deit_tiny_patch16_224", model_kwargs=TINY_DEIT)
    assert main(base) == 0
    dargs = train_args(digits_root, ddp, "--val-limit", "23", model="deit_tiny_patch16_224", model_kwargs=TINY_DEIT)
    dargs[dargs.index("-b") + 1] = "4"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_port", str(29500 + os.getpid() % 1000), "-m", "spin_kernels.cli", *dargs],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = step_losses(single), step_losses(ddp)
    assert a.keys() == b.keys()
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-5), k
    rows = [json.loads(line) for line in (ddp / "log.jsonl").read_text().splitlines()]
    ep = [r for r in rows if r["type"] == "epoch"]
    assert all(r["eval_count"] == 23 for r in ep)  # every val image once, no padded duplicates
    single_ep = [json.loads(line) for line in (single / "log.jsonl").read_text().splitlines()]
    single_ep = [r for r in single_ep if r["type"] == "epoch"]
    assert ep[-1]["eval_top1"] == pytest.approx(single_ep[-1]["eval_top1"])


def test_info_and_demo_quick(tmp_path, capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "reference" in out and "triton" in out and "cuda" in out
    try:
        from spin_kernels.data.fashion_mnist import FashionMNIST

        FashionMNIST(split="test", limit=1)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"Fashion-MNIST not installed: {e}")
    assert main(["demo", "--quick", "--output", str(tmp_path / "demo"), "--threads", "1", "--quiet"]) == 0
    res = json.loads((tmp_path / "demo" / "demo_results.json").read_text())
    # The demo tells the compression story (issue 20): train both, compress the unshared one, recalibrate, fine-tune.
    assert [r["model"] for r in res["results"]] == [
        "unshared", "shared", "compressed", "compressed + BN recal", "fused + fine-tuned"]
    assert res["checks"]["param_ratio"] <= 0.6
    shared_params = res["results"][1]["params"]
    assert all(r["params"] == shared_params for r in res["results"][2:])  # compression lands on the shared size
    assert (tmp_path / "demo" / "demo_results.md").exists() and (tmp_path / "demo" / "demo_loss.png").exists()


def test_accumulation_and_ema_resume_exactly(digits_root, tmp_path):
    extra = ["--accum-steps", "2", "--model-ema", "--model-ema-decay", "0.9"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(train_args(digits_root, full, *extra)) == 0
    assert main(train_args(digits_root, part, *extra, "--stop-after-updates", "3")) == 0
    assert torch.load(part / "last.pth", weights_only=True)["step_in_epoch"] == 6  # 3 updates x 2 micro-batches
    assert main(train_args(digits_root, part, *extra, "--resume", str(part / "last.pth"))) == 0
    assert step_losses(part) == step_losses(full)
    rows = (full / "summary.csv").read_text().splitlines()
    assert rows[-1].split(",")[5] != ""  # eval_ema_top1 recorded


@pytest.mark.parametrize("recipe,model,kwargs", [("spin", "convmixer_768_32", TINY_CONVMIXER),
                                                 ("deit", "deit_tiny_patch16_224", TINY_DEIT)])
def test_imagenet_recipes_run(digits_root, tmp_path, recipe, model, kwargs):
    """The ImageNet recipes' timm pipeline (RandAugment, mixup/cutmix, erasing, repeated aug, EMA) runs end to end."""
    args = train_args(digits_root, tmp_path / recipe, model=model, model_kwargs=kwargs)
    i = args.index("--recipe")
    args[i + 1] = recipe
    args[args.index("--epochs") + 1] = "1"
    assert main(args) == 0
    cfg = json.loads((tmp_path / recipe / "args.json").read_text())
    assert cfg["mixup"] > 0 and cfg["auto_augment"] == "rand-m9-mstd0.5-inc1"


def test_compress_timm_checkpoint(tmp_path, capsys):
    """A timm ConvMixer state_dict -> our shared model (r=2, channel-weighted fusion collapsed)."""
    from timm.models.convmixer import ConvMixer

    from spin_kernels import load_model

    torch.save(ConvMixer(dim=16, depth=4, kernel_size=3, patch_size=2, num_classes=4).state_dict(),
               tmp_path / "timm.pth")
    out = tmp_path / "shared.pth"
    assert main(["compress", "--checkpoint", str(tmp_path / "timm.pth"), "--model", "convmixer_768_32",
                 "--share-rate", "2", "--fusion", "channel_weighted_mean", "--output", str(out), "--img-size", "16"]) == 0
    assert "pointwise" in capsys.readouterr().out
    model = load_model(out)
    assert model.spin_config["share_rate"] == 2 and model(torch.randn(2, 3, 16, 16)).shape == (2, 4)
    assert main(["compress", "--checkpoint", str(tmp_path / "timm.pth"), "--output", str(out)]) == 2
    assert "--model" in capsys.readouterr().err
