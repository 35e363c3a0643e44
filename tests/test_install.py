"""A non-editable install (the wheel) must find its configs: conf/ ships inside the package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_installed_wheel_finds_its_configs(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(REPO)],
        check=True,
    )
    (wheel,) = wheels.glob("cifarbench-*.whl")
    venv = tmp_path / "venv"
    # the venv sees the heavy dependencies already installed, but gets its own cifarbench from the wheel
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    subprocess.run([venv / "bin" / "pip", "install", "-q", "--no-deps", str(wheel)], check=True)

    where = subprocess.run(
        [venv / "bin" / "python", "-c", "from cifarbench.config import config_dir; print(config_dir())"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert where.startswith(str(venv)) and where.endswith("cifarbench/conf"), where

    composed = subprocess.run(
        [venv / "bin" / "cifarbench", "train", "--cfg", "job", "model=baseline", "augmentation=none"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "_target_: cifarbench.models.baseline.BaselineCNN" in composed
    assert "_target_: cifarbench.augmentation.NoAugmentation" in composed
