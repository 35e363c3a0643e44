"""Writing a file so that a crash or a kill never leaves half of it: the text goes to a temporary
file beside it (named by the process, as parallel sweep jobs rewrite the same summary), which then
replaces it in one step. Kept free of torch and matplotlib, so that checking a command line
(config_check.py, search/space.py) stays quick."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def write_csv(path: Path, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A header and rows; None is an empty cell."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(headers)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    write_text_atomic(path, text.getvalue())
