"""Reading finished, failed and unfinished run directories back (for report, runs, sweeps)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

# Overrides that say where things are, not what ran: left out of "key overrides".
LOCATION_KEYS = ("data.root", "data.source", "output_root", "progress", "hydra.", "device")


@dataclass
class Run:
    path: Path
    status: str  # completed | failed | diverged | interrupted | unfinished
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    choices: dict[str, str] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)

    @property
    def model(self) -> str:
        return self.choices.get("model") or str(self.config.get("model", {}).get("_target_", "?")).rsplit(".", 1)[-1]

    @property
    def started(self) -> datetime:
        when = self.metrics.get("started_at")
        if when:
            return datetime.fromisoformat(when)
        return datetime.fromtimestamp(
            (self.path / ".hydra").stat().st_mtime if (self.path / ".hydra").exists() else self.path.stat().st_mtime
        )

    @property
    def pretrained(self) -> bool:
        weights = self.config.get("model", {}).get("weights")
        return weights not in (None, "none")

    @property
    def key_overrides(self) -> list[str]:
        return [o for o in self.overrides if not o.lstrip("+~").startswith(LOCATION_KEYS)]

    def test(self, key: str) -> float | None:
        return self.metrics.get("test", {}).get(key)


def is_run_dir(path: Path) -> bool:
    return (path / ".hydra" / "config.yaml").is_file() or (path / "metrics.json").is_file()


def find_runs(paths: list[Path]) -> list[Run]:
    """Every run directory at or below `paths` (a run, a sweep, a whole outputs/ tree)."""
    found: dict[Path, Run] = {}
    for root in paths:
        candidates = [root] if is_run_dir(root) else []
        candidates += [p.parent.parent for p in root.rglob(".hydra/config.yaml")]
        candidates += [p.parent for p in root.rglob("metrics.json")]
        for candidate in candidates:
            resolved = candidate.resolve()
            if resolved not in found and is_run_dir(candidate):
                found[resolved] = load_run(candidate)
    return list(found.values())


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError:
        return None


def load_run(path: Path) -> Run:
    metrics: dict[str, Any] = {}
    if (path / "metrics.json").is_file():
        try:
            metrics = json.loads((path / "metrics.json").read_text())
        except json.JSONDecodeError:
            metrics = {"status": "failed", "error": "metrics.json is unreadable"}
    history = []
    if (path / "history.csv").is_file():
        with (path / "history.csv").open() as fh:
            history = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]
    config = _read_yaml(path / "config.yaml") or _read_yaml(path / ".hydra" / "config.yaml") or {}
    hydra = _read_yaml(path / ".hydra" / "hydra.yaml") or {}
    choices = hydra.get("hydra", {}).get("runtime", {}).get("choices", {}) or {}
    overrides = _read_yaml(path / ".hydra" / "overrides.yaml") or []
    return Run(
        path=path,
        status=metrics.get("status", "unfinished"),
        config=config,
        metrics=metrics,
        history=history,
        choices={k: str(v) for k, v in choices.items() if not k.startswith("hydra/")},
        overrides=[str(o) for o in overrides],
    )
