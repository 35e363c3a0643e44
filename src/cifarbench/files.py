"""Writing a file so that a crash, a kill or a full disk never leaves half of it.

Every file cifarbench writes goes through `write_atomic`: the content goes to a temporary file
beside it (named by the process, as parallel sweep jobs rewrite the same summary), which then
replaces it in one step. When the disk fills up, the temporary file is removed, the file it was
to replace stays as it was, and `DiskFull` names the file and the space left. Kept free of torch
and matplotlib, so that checking a command line (config_check.py, search/space.py) stays quick.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(Exception):
    """A write failed because the disk (or the user's quota) is full; nothing was half-written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(f"disk full: could not write {path} ({free_space(path)} free on its filesystem)")


def free_space(path: Path) -> str:
    folder = next((p for p in [path, *path.parents] if p.is_dir()), Path("."))
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "unknown space"
    if free < 1000:
        return f"{free} bytes"
    for unit in ("kB", "MB", "GB"):
        free /= 1000
        if free < 1000 or unit == "GB":
            break
    return f"{free:.1f} {unit}"


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` or what caused it is a full disk: torch.save, for one, raises a RuntimeError
    whose context is the OSError (or only says so in its message)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in NO_SPACE:
            return True
        if "No space left on device" in str(seen) or "Disk quota exceeded" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` writes the content to a temporary path, which then replaces `path` at once."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise DiskFull(path) from None
        raise


def write_stream_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """As write_atomic, with `write` given the open file: torch.save is handed a file object, so that
    a full disk surfaces as Python's OSError (ENOSPC) rather than a bare error from torch's C++."""

    def to_file(tmp: Path) -> None:
        with tmp.open("wb") as fh:
            write(fh)

    write_atomic(path, to_file)


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def write_csv(path: Path, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A header and rows; None is an empty cell."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(headers)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    write_text_atomic(path, text.getvalue())


def save_figure(figure: Any, path: Path, **options: Any) -> None:
    """A matplotlib figure as PNG, atomically (the temporary name has no .png, so the format is named)."""
    write_atomic(path, lambda tmp: figure.savefig(tmp, format="png", **options))
