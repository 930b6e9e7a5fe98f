"""The CLI as a careless or hostile user meets it: nothing runs from a checkpoint, no run is lost, every mistake is
one clear line (exit status 2) naming the flag or file and what was expected."""
from __future__ import annotations

import json
import os
import shutil
import stat
import warnings

import pytest
import torch

from spin_kernels.cli import main as spin

from .conftest import TINY_CONVMIXER

# A read-only place, even for root: /proc accepts no new files.
UNWRITABLE = "/proc/spin-kernels-test"


def train_args(data, out, *extra, epochs="1"):
    return ["train", "--data-dir", str(data), "--model", "convmixer_768_32", "--model-kwargs", *TINY_CONVMIXER,
            "--img-size", "16", "-b", "8", "--epochs", epochs, "--recipe", "demo", "--lr", "0.01", "-j", "0",
            "--log-interval", "1", "--threads", "1", "--quiet", "--output", str(out), *extra]


def error_line(capsys, verb: str) -> str:
    """The whole stderr of a failed command: exactly one line, in the one format every verb uses."""
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"spin {verb}: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def run(digits_root, tmp_path_factory):
    """A finished one-epoch tiny ConvMixer run."""
    out = tmp_path_factory.mktemp("robust") / "run"
    assert spin(train_args(digits_root, out)) == 0
    return out


class Payload:
    """Unpickling this calls os.system: what a hostile checkpoint would carry."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def planted(run, tmp_path):
    """A copy of the run's valid checkpoint with a payload hidden in its config, and the file it would create."""
    marker = tmp_path / "PAYLOAD_RAN"
    ckpt = torch.load(run / "last.pth", weights_only=True)
    ckpt["config"]["note"] = Payload(marker)
    path = tmp_path / "planted.pth"
    torch.save(ckpt, path)
    return path, marker


# ----------------------------------------------------------------------------------------- checkpoints run no code
@pytest.mark.parametrize("verb", ["train --resume", "train --init-from", "eval", "compress", "analyze"])
def test_no_verb_runs_a_planted_payload(verb, planted, digits_root, tmp_path, capsys):
    path, marker = planted
    argv = {
        "train --resume": ["train", "--resume", str(path), "--output", str(tmp_path / "r")],
        "train --init-from": train_args(digits_root, tmp_path / "i", "--init-from", str(path)),
        "eval": ["eval", "--checkpoint", str(path), "--data-dir", str(digits_root), "-j", "0"],
        "compress": ["compress", "--checkpoint", str(path), "--output", str(tmp_path / "c.pth")],
        "analyze": ["analyze", "--checkpoint", str(path), "--synthetic", "8", "--output", str(tmp_path / "a")],
    }[verb]
    assert spin(argv) == 2
    line = error_line(capsys, verb.split()[0])
    assert "pickled Python objects" in line and "posix.system" in line and "--trust-checkpoint" in line
    assert str(path) in line
    assert not marker.exists()


def test_python_api_refuses_the_payload_too(planted):
    from spin_kernels import create_model, load_model
    from spin_kernels.checkpoint_io import CheckpointError

    path, marker = planted
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_model(path)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        create_model("convmixer_768_32", checkpoint_path=path)
    assert not marker.exists()


def test_trusted_opt_in_loads_a_legacy_checkpoint(run, digits_root, tmp_path, capsys):
    """A file from before weights_only (numpy RNG state pickled as an ndarray) needs the explicit opt-in."""
    import numpy as np

    ckpt = torch.load(run / "last.pth", weights_only=True)
    ckpt["rng"][0]["numpy"] = np.random.get_state()  # what older versions saved
    legacy = tmp_path / "legacy.pth"
    torch.save(ckpt, legacy)
    base = ["eval", "--checkpoint", str(legacy), "--data-dir", str(digits_root), "-j", "0", "--img-size", "16"]
    assert spin(base) == 2
    assert "--trust-checkpoint" in error_line(capsys, "eval")
    assert spin([*base, "--trust-checkpoint"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["count"] == 24


def test_every_file_a_run_writes_loads_with_weights_only(run):
    for name in ("last.pth", "best.pth"):
        ckpt = torch.load(run / name, weights_only=True)
        assert {"model", "spin_config", "optimizer", "rng", "config"} <= set(ckpt)
    mode = 0o666 & ~_umask()
    assert stat.S_IMODE((run / "last.pth").stat().st_mode) == mode
    assert stat.S_IMODE((run / "best.pth").stat().st_mode) == mode


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------------------------- no run is lost
def test_existing_run_is_never_overwritten(run, digits_root, capsys):
    before = {name: (run / name).read_bytes() for name in ("last.pth", "best.pth", "summary.csv", "log.jsonl")}
    assert spin(train_args(digits_root, run)) == 2
    line = error_line(capsys, "train")
    assert "already holds a run" in line and "--resume" in line and "--overwrite" in line
    assert {name: (run / name).read_bytes() for name in before} == before


def test_overwrite_replaces_the_run(run, digits_root, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / ".last.pth.dead.tmp").write_bytes(b"left by a SIGKILL")
    assert spin(train_args(digits_root, copy, "--overwrite")) == 0
    rows = (copy / "summary.csv").read_text().splitlines()
    assert len(rows) == 2  # header + this run's one epoch: the old run's row is gone
    starts = [r for r in map(json.loads, (copy / "log.jsonl").read_text().splitlines()) if r["type"] == "start"]
    assert len(starts) == 1
    assert not list(copy.glob(".*.tmp"))


def test_resume_appends_to_the_logs_and_cleans_temp_files(digits_root, tmp_path):
    out = tmp_path / "run"
    # Epoch 1 finishes, the run stops mid-epoch 2 (the test hook simulates a kill after a checkpoint).
    assert spin(train_args(digits_root, out, "--stop-after-updates", "12", epochs="2")) == 0
    log_before = (out / "log.jsonl").read_text()
    assert [r.split(",")[0] for r in (out / "summary.csv").read_text().splitlines()[1:]] == ["1"]
    (out / ".last.pth.killed.tmp").write_bytes(b"partial")
    assert spin(["train", "--resume", str(out / "last.pth")]) == 0
    assert (out / "log.jsonl").read_text().startswith(log_before)  # append-only
    assert [r.split(",")[0] for r in (out / "summary.csv").read_text().splitlines()[1:]] == ["1", "2"]
    assert not (out / ".last.pth.killed.tmp").exists()


def test_a_row_lost_between_checkpoint_and_log_is_restored_on_resume(digits_root, tmp_path):
    out = tmp_path / "run"
    assert spin(train_args(digits_root, out, "--stop-after-updates", "12", epochs="2")) == 0
    lines = (out / "summary.csv").read_text().splitlines()
    (out / "summary.csv").write_text(lines[0] + "\n")  # killed after the epoch-1 checkpoint, before its row
    assert spin(["train", "--resume", str(out / "last.pth")]) == 0
    assert [r.split(",")[0] for r in (out / "summary.csv").read_text().splitlines()[1:]] == ["1", "2"]


def test_resume_says_what_it_overrides(run, digits_root, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    assert spin(["train", "--resume", str(copy / "last.pth"), "--epochs", "2"]) == 0
    err = capsys.readouterr().err
    assert "--epochs 1 -> 2" in err and "not the run the checkpoint started" in err
    starts = [r for r in map(json.loads, (copy / "log.jsonl").read_text().splitlines()) if r["type"] == "start"]
    assert starts[-1]["resume_overrides"] == {"epochs": [1, 2]}


# ------------------------------------------------------------------------------------ one line for every mistake
def _plain_dict(tmp_path):
    p = tmp_path / "plain.pth"
    torch.save({"hello": 1}, p)
    return p


def _a_list(tmp_path):
    p = tmp_path / "list.pth"
    torch.save([1, 2, 3], p)
    return p


def _unrelated_weights(tmp_path):
    p = tmp_path / "unrelated.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, p)
    return p


def _other_shapes(run, tmp_path):
    """Our checkpoint whose weights are of a dim-24 model while its config says dim 16."""
    from spin_kernels import create_model

    ckpt = torch.load(run / "last.pth", weights_only=True)
    kw = dict(ckpt["spin_config"], dim=24)
    name = kw.pop("name")
    ckpt["model"] = create_model(name, **kw).state_dict()
    p = tmp_path / "shapes.pth"
    torch.save(ckpt, p)
    return p


def _model_only(run, tmp_path):
    ckpt = torch.load(run / "last.pth", weights_only=True)
    p = tmp_path / "model_only.pth"
    torch.save({"model": ckpt["model"], "spin_config": ckpt["spin_config"]}, p)
    return p


def _dim48(tmp_path):
    from spin_kernels import create_model
    from spin_kernels.models.registry import save_model

    p = tmp_path / "dim48.pth"
    save_model(create_model("convmixer_768_32", dim=48, depth=2, kernel_size=3, patch_size=2, num_classes=2), p)
    return p


def _a_file(tmp_path):
    p = tmp_path / "a_file"
    p.write_text("not a folder")
    return p


CASES = {
    # id: (argv builder, verb, what the line must say)
    "no --data-dir": (lambda d, r, t: train_args(d, t / "o")[:1] + train_args(d, t / "o")[3:], "train",
                      "--data-dir: required"),
    "--amp fp8": (lambda d, r, t: train_args(d, t / "o", "--amp", "fp8"), "train", "argument --amp"),
    "plain dict": (lambda d, r, t: ["eval", "--checkpoint", str(_plain_dict(t)), "--model", "convmixer_768_32",
                                    "--data-dir", str(d)], "eval", "holds no model weights"),
    "plain dict, no --model": (lambda d, r, t: ["eval", "--checkpoint", str(_plain_dict(t)), "--data-dir", str(d)],
                               "eval", "pass --model NAME"),
    "list": (lambda d, r, t: ["eval", "--checkpoint", str(_a_list(t)), "--data-dir", str(d)], "eval",
             "holds a list"),
    "unrelated weights": (lambda d, r, t: ["compress", "--checkpoint", str(_unrelated_weights(t)), "--model",
                                           "convmixer_768_32", "--output", str(t / "c.pth")], "compress",
                          "no stem.0.weight"),
    "other shapes": (lambda d, r, t: ["eval", "--checkpoint", str(_other_shapes(r, t)), "--data-dir", str(d)],
                     "eval", "shapes differ: stem.0.weight (24, 3, 2, 2) in the checkpoint, (16, 3, 2, 2)"),
    "model-only --resume": (lambda d, r, t: ["train", "--resume", str(_model_only(r, t))], "train",
                            "use --init-from"),
    "--output a file": (lambda d, r, t: train_args(d, _a_file(t)), "train", "is a file; expected a folder"),
    "read-only --output": (lambda d, r, t: train_args(d, UNWRITABLE), "train", "cannot be written"),
    "read-only eval --json": (lambda d, r, t: ["eval", "--checkpoint", str(r / "last.pth"), "--data-dir", str(d),
                                               "--json", UNWRITABLE + "/m.json"], "eval", "--json"),
    "read-only compress --output": (lambda d, r, t: ["compress", "--checkpoint", str(r / "last.pth"), "--output",
                                                     UNWRITABLE + "/c.pth"], "compress", "cannot be written"),
    "compress dim=32 of dim 48": (lambda d, r, t: ["compress", "--checkpoint", str(_dim48(t)), "--model-kwargs",
                                                   "dim=32", "--output", str(t / "c.pth")], "compress",
                                  "dim=32 (the checkpoint's model has dim=48)"),
    "--share-rate 0": (lambda d, r, t: train_args(d, t / "o", "--share-rate", "0"), "train", "--share-rate"),
    "--accum-steps 0": (lambda d, r, t: train_args(d, t / "o", "--accum-steps", "0"), "train", "--accum-steps"),
    "--img-size 0": (lambda d, r, t: train_args(d, t / "o", "--img-size", "0"), "train", "--img-size"),
    "--num-classes 0": (lambda d, r, t: train_args(d, t / "o", "--num-classes", "0"), "train", "--num-classes"),
    "--model-ema-decay 5": (lambda d, r, t: train_args(d, t / "o", "--model-ema-decay", "5"), "train",
                            "argument --model-ema-decay: expected a number in (0, 1), got 5"),
    "--resume with --init-from": (lambda d, r, t: ["train", "--resume", str(r / "last.pth"), "--init-from",
                                                   str(r / "last.pth")], "train", "pass one of --resume or"),
    "--model on resume": (lambda d, r, t: ["train", "--resume", str(r / "last.pth"), "--model",
                                           "deit_tiny_patch16_224"], "train", "resuming cannot change the model"),
    "--model-kwargs on resume": (lambda d, r, t: ["train", "--resume", str(r / "last.pth"), "--model-kwargs",
                                                  "dim=32"], "train", "resuming cannot change the model"),
    "--model-kwargs on eval": (lambda d, r, t: ["eval", "--checkpoint", str(r / "last.pth"), "--data-dir", str(d),
                                                "--model-kwargs", "depth=5"], "eval",
                               "depth=5 (the checkpoint's model has depth=2)"),
    "--model on eval": (lambda d, r, t: ["eval", "--checkpoint", str(r / "last.pth"), "--data-dir", str(d),
                                         "--model", "deit_small_patch16_224"], "eval",
                        "--model deit_small_patch16_224 (the checkpoint holds a convmixer_768_32)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_error_is_one_line(case, run, digits_root, tmp_path, capsys):
    build, verb, expected = CASES[case]
    argv = build(digits_root, run, tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert spin(argv) == 2
    line = error_line(capsys, verb)
    assert expected in line
    # e.g. compress used to warn "checkpoint classifier has 2 classes, the model 2" before failing
    assert not [w for w in caught if "classes" in str(w.message)], [str(w.message) for w in caught]


def test_corrupt_image_under_workers_is_one_line(digits_root, run, tmp_path, capfd):
    root = tmp_path / "corrupt"
    shutil.copytree(digits_root, root)
    bad = min((root / "val" / "digit0").iterdir())
    bad.write_bytes(b"this is not a png")
    assert spin(["eval", "--checkpoint", str(run / "last.pth"), "--data-dir", str(root), "-j", "2",
                 "--img-size", "16"]) == 2
    err = capfd.readouterr().err.strip()  # the workers' stderr too
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("spin eval: error: unreadable image") and bad.name in err
