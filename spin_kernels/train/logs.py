"""Run outputs on rank 0: summary.csv (one row per epoch), a JSONL event log, and loss / accuracy plots."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

SUMMARY_FIELDS = ["epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "eval_ema_top1", "lr", "img_per_s",
                  "epoch_time_s", "epoch_cpu_s", "peak_mem_mib"]


class RunLog:
    """Writes ``summary.csv``, ``log.jsonl`` and ``plots/`` in ``output``; does nothing when ``enabled`` is False.

    Both files only ever grow: one CSV row per finished epoch, one JSON line per event, across resumes. An epoch is
    first added to ``history`` (which the checkpoint saves) and written to the files after the checkpoint; on
    resume, rows the checkpoint has but the CSV lacks (a kill between the two) are appended first, so the files
    read as one run with no duplicates.
    """

    def __init__(self, output: str | os.PathLike, enabled: bool = True, history: list[dict] | None = None):
        self.output = Path(output)
        self.enabled = enabled
        self.history: list[dict] = list(history or [])
        if enabled:
            self.output.mkdir(parents=True, exist_ok=True)
            written = _csv_epochs(self.output / "summary.csv")
            for row in self.history:
                if row["epoch"] not in written:
                    self._append_row(row)

    def event(self, **record) -> None:
        """Append one JSON record to log.jsonl (flushed at once, so a killed run keeps its log)."""
        if not self.enabled:
            return
        with open(self.output / "log.jsonl", "a") as f:
            f.write(json.dumps(record, default=_json_default) + "\n")

    def add_epoch(self, row: dict) -> None:
        """Record an epoch's summary row in ``history`` (saved with the next checkpoint)."""
        self.history = [r for r in self.history if r["epoch"] != row["epoch"]] + [row]

    def write_epoch(self, row: dict) -> None:
        """Append the epoch's row to summary.csv and log.jsonl; redraw the plots."""
        if not self.enabled:
            return
        self._append_row(row)
        self.event(type="epoch", **row)
        plot_history(self.history, self.output / "plots")

    def _append_row(self, row: dict) -> None:
        path = self.output / "summary.csv"
        new = not path.exists() or path.stat().st_size == 0
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: _fmt(row.get(k)) for k in SUMMARY_FIELDS})
            f.flush()
            os.fsync(f.fileno())


def _csv_epochs(path: Path) -> set[int]:
    """Epoch numbers already in a summary.csv (empty when there is none)."""
    if not path.exists():
        return set()
    with open(path, newline="") as f:
        return {int(r["epoch"]) for r in csv.DictReader(f) if (r.get("epoch") or "").isdigit()}


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else ("" if v is None else v)


def _json_default(o):
    try:
        return float(o)
    except (TypeError, ValueError):
        return str(o)


def plot_history(history: list[dict], folder: str | os.PathLike, title: str = "") -> list[Path]:
    """Write loss.png (train / eval loss per epoch) and accuracy.png (eval top-1 / top-5) into ``folder``."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    epochs = [r["epoch"] for r in history]
    out = []
    for fname, keys, ylabel in (("loss.png", ("train_loss", "eval_loss"), "loss"),
                                ("accuracy.png", ("eval_top1", "eval_top5", "eval_ema_top1"), "accuracy (%)")):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for k in keys:
            pts = [(e, r[k]) for e, r in zip(epochs, history) if r.get(k) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=k)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # accuracy has no points until the first evaluation
            ax.legend()
        fig.tight_layout()
        fig.savefig(folder / fname, dpi=100)
        plt.close(fig)
        out.append(folder / fname)
    return out
