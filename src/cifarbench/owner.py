"""Which live process owns a run directory: an advisory lock (flock) on `<run>/.cifarbench.lock`.

The process that trains into a run directory holds the lock until it ends, however it ends: the
kernel releases a flock when its process dies, even by SIGKILL, so a lock left by a killed run is
free (stale) and never blocks its resume, and a reused pid cannot pass for the owner. A second
process into a directory in use is refused, naming the owner (pid, host, start, command) that the
lock file records. A lock file that is free tells a killed run from a run that never started.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
from datetime import datetime
from pathlib import Path

from cifarbench.errors import UserError

LOCK_FILE = ".cifarbench.lock"
_held: dict[Path, int] = {}  # run directory -> the open descriptor that holds its lock in this process


class RunDirInUse(UserError):
    """Another live process trains into this run directory."""


def claim(run_dir: Path) -> None:
    """Makes this process the owner of `run_dir` (created if needed) until it ends, or refuses."""
    run_dir = run_dir.resolve()
    if run_dir in _held:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirInUse(
            f"{run_dir} is in use by another cifarbench run ({describe(run_dir)}); wait for it to end, "
            "or give this run another directory (hydra.run.dir=...)"
        ) from None
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv)[:300],
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    _held[run_dir] = fd


def describe(run_dir: Path) -> str:
    """The owner the lock file names, e.g. 'pid 4242 on node7, started 2026-12-05T09:30:00'."""
    try:
        owner = json.loads((run_dir / LOCK_FILE).read_text())
        return f"pid {owner['pid']} on {owner['host']}, started {owner['started']}: {owner['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "owner unknown"


def state(run_dir: Path) -> str:
    """'held' (a live process owns it), 'free' (it had an owner that ended) or 'none' (never claimed)."""
    path = run_dir / LOCK_FILE
    if run_dir.resolve() in _held:
        return "held"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return "none"
    except OSError:
        return "free"
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return "held"
    finally:
        os.close(fd)  # closing drops the shared lock taken to look
    return "free"
