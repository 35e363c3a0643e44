"""The run record: metrics.json, which says how a run ended; this module is its only writer and reader.

A run directory's record is written at the end of the run (completed, with every figure), when it
stops early (diverged, interrupted, pruned: why, how far it got, how to go on) or when it fails. A
directory without one is `unfinished`: still training, or killed before it could say anything.

Every record carries `format` (FORMAT). Records written before the field existed read as format 0;
their fields are the same, so docs/runs and older outputs/ still read, report and resume.
Torch-free, like files.py: the commands that only read runs stay quick.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cifarbench.files import write_json

FILE = "metrics.json"
FORMAT = 1  # 0: the records before this field existed (same fields)

# How a run ended. TrainingStopped subclasses (errors.py) carry the three early endings.
COMPLETED = "completed"  # trained, tested (or, a search trial, waiting for the search's test), every file written
DIVERGED = "diverged"  # the loss became NaN/inf; the last good checkpoint is kept
INTERRUPTED = "interrupted"  # Ctrl-C, SIGTERM: resume from the last checkpoint
PRUNED = "pruned"  # a search trial stopped by the study's pruner: a normal outcome of a search
FAILED = "failed"  # an error (a bad config in a sweep job, a crash); the error is recorded
UNFINISHED = "unfinished"  # no record: still running, or killed before it wrote one
RUNNING = "running"  # no record yet, and a live process owns the directory (owner.py): read, never written
STATUSES = (COMPLETED, DIVERGED, INTERRUPTED, PRUNED, FAILED, UNFINISHED, RUNNING)
ENDED = (COMPLETED, PRUNED, FAILED, DIVERGED)  # final: running the job again would not change them
UNREADABLE = "metrics.json is unreadable"


def write(run_dir: Path, status: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Writes the record (atomically: a kill leaves the previous one) and returns it."""
    if status not in STATUSES or status in (UNFINISHED, RUNNING):
        raise ValueError(f"not a status a run can be recorded with: {status!r}")
    record = {"status": status, "format": FORMAT, **{k: v for k, v in fields.items() if k not in ("status", "format")}}
    write_json(run_dir / FILE, record)
    return record


def write_failed(run_dir: Path, error: str) -> dict[str, Any]:
    return write(run_dir, FAILED, {"error": error})


def write_stopped(
    run_dir: Path, status: str, error: str, epochs_run: int, resumable: bool, reason: str | None = None
) -> dict[str, Any]:
    """A run that did not finish: why, how far its last checkpoint got, and how to go on
    (`resumable`: with resume=); `reason` names a cause beside the status, e.g. "disk full"."""
    checkpoint = run_dir / "checkpoints" / "last.pt"
    fields: dict[str, Any] = {
        **({"reason": reason} if reason else {}),
        "error": error,
        "epochs_run": epochs_run,
        "last_good_checkpoint": str(checkpoint) if epochs_run else None,
    }
    if resumable and epochs_run:
        fields["resume"] = f"cifarbench train resume={run_dir}"
    return write(run_dir, status, fields)


def update(run_dir: Path, fields: dict[str, Any]) -> dict[str, Any]:
    """Adds `fields` to a run's record, keeping its status (a search's best trial gets its test)."""
    record = read(run_dir)
    return write(run_dir, record["status"], {**record, **fields})


def read(run_dir: Path) -> dict[str, Any]:
    """The record, always with a `status` and a `format`: `unfinished` without a file, `failed`
    when it cannot be parsed."""
    path = run_dir / FILE
    if not path.is_file():
        return {"status": UNFINISHED, "format": FORMAT}
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"status": FAILED, "format": FORMAT, "error": UNREADABLE}
    if not isinstance(record, dict):
        return {"status": FAILED, "format": FORMAT, "error": UNREADABLE}
    record.setdefault("format", 0)
    record.setdefault("status", UNFINISHED)
    return record


def is_completed(run_dir: Path) -> bool:
    return read(run_dir)["status"] == COMPLETED
