"""Writing a file so that a crash or a kill never leaves half of it: the text goes to a temporary
file beside it, which then replaces it in one step. Kept free of torch and matplotlib, so that
checking a command line (validate.py, search.py) stays quick."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
