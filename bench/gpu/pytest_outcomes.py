"""A pytest plugin for ``make gpu-proof``: one JSON line per test outcome, appended the moment the test ends, so a
run killed at its time limit still says what passed and what failed. Active when ``SPIN_PYTEST_OUTCOMES`` names
the file; load it with ``-p bench.gpu.pytest_outcomes``. Under pytest-xdist only the controller writes."""
from __future__ import annotations

import json
import os

PATH_ENV = "SPIN_PYTEST_OUTCOMES"
_state = {"worker": False}


def pytest_configure(config):
    _state["worker"] = hasattr(config, "workerinput")


def _reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:   # a skip: (file, line, reason)
        return str(longrepr[2])
    return getattr(report, "longreprtext", "") or str(longrepr or "")


def pytest_runtest_logreport(report):
    path = os.environ.get(PATH_ENV)
    if not path or _state["worker"]:
        return
    # one line per test: its call, or the setup / teardown that failed or skipped it
    if not (report.when == "call" or (report.when == "setup" and not report.passed)
            or (report.when == "teardown" and report.failed)):
        return
    rec = {"test": report.nodeid, "when": report.when, "outcome": report.outcome, "s": round(report.duration, 3)}
    if not report.passed:
        rec["detail"] = _reason(report)[-1500:]
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


def read_outcomes(path) -> dict:
    """Counts per outcome and the failures (test id and the end of its message) of an outcomes file."""
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failed, skipped_reasons = [], {}
    try:
        lines = open(path).read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue          # a line cut by a kill
        counts[rec["outcome"]] = counts.get(rec["outcome"], 0) + 1
        if rec["outcome"] == "failed":
            failed.append({"test": rec["test"], "when": rec["when"], "detail": rec.get("detail", "")[-600:]})
        elif rec["outcome"] == "skipped":
            reason = rec.get("detail", "")[:160]
            skipped_reasons[reason] = skipped_reasons.get(reason, 0) + 1
    return {"counts": counts, "failed": failed, "skipped_reasons": skipped_reasons}
