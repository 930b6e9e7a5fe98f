"""The run folder of ``spin train``: never silently overwritten, checked before any work starts.

A folder that already holds a run (checkpoints or logs) is continued only with ``--resume`` and replaced only with
``--overwrite``; anything else is an error that names both. The folder must be a writable directory — found out
before training, not after the first epoch. Temp files that a killed process left behind (``.last.pth.*.tmp``,
...) are removed at start; the checkpoints themselves are never partial (atomic renames).

Under torchrun, rank 0 decides and every rank raises the same error (so no rank waits forever in a collective),
and only rank 0 changes the folder.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..checkpoint_io import writable_problem
from .distributed import DistInfo, barrier, broadcast_object

# What a run writes into its folder (logs.RunLog and the loop); --overwrite deletes exactly these.
RUN_FILES = ("last.pth", "best.pth", "model_shared.pth", "summary.csv", "log.jsonl", "args.json")
RUN_DIRS = ("plots",)
STALE_TEMP_PATTERNS = (".*.pth.*.tmp", ".best.pth.tmp", ".summary.csv.tmp")


class RunFolderError(ValueError):
    """The --output folder cannot be used as asked (a file, not writable, or holding another run)."""


def _verdict(out: Path, resume: str | None, overwrite: bool) -> str | None:
    """Why ``out`` cannot be used (one line), or None."""
    if out.exists() and not out.is_dir():
        return f"--output {out} is a file; expected a folder for the run"
    existing = [name for name in RUN_FILES if (out / name).exists()]
    resuming_here = resume is not None and Path(resume).resolve().parent == out.resolve()
    if existing and not overwrite and not resuming_here:
        what = "another run than the one resumed" if resume else "a run"
        return (f"--output {out} already holds {what} ({', '.join(existing)}); continue it with --resume "
                f"{out / 'last.pth'}, or pass --overwrite to replace it")
    if overwrite and resuming_here:
        return "--overwrite: cannot replace the run that --resume continues"
    problem = writable_problem(out)
    return f"--output {out} cannot be written ({problem})" if problem else None


def prepare_run_dir(output: str | os.PathLike, *, resume: str | None, overwrite: bool, di: DistInfo) -> Path:
    """Check ``output`` for a new or resumed run, create it, clean stale temp files; return its path.

    Raises RunFolderError (a ValueError: one line, exit status 2) on every rank when the folder cannot be used.
    """
    out = Path(output)
    verdict = _verdict(out, resume, overwrite) if di.is_main else None
    verdict = broadcast_object(verdict)
    if verdict:
        raise RunFolderError(verdict)
    if di.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if overwrite:
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
            for name in RUN_DIRS:
                shutil.rmtree(out / name, ignore_errors=True)
        for pattern in STALE_TEMP_PATTERNS:
            for stale in out.glob(pattern):
                stale.unlink(missing_ok=True)
    barrier()
    return out
