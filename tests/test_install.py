"""A non-editable install (the wheel) must find its configs: conf/ ships inside the package."""

from __future__ import annotations

import site
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def installed_packages() -> list[str]:
    """Where the running interpreter finds its packages, whether it runs in a venv, a conda-style
    prefix or the system Python."""
    folders = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
    return [folder for folder in folders if Path(folder).is_dir()]


def test_installed_wheel_finds_its_configs(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(REPO)],
        check=True,
    )
    (wheel,) = wheels.glob("cifarbench-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # The venv sees the heavy dependencies that the running interpreter has (torch, hydra, ...) but gets
    # its own cifarbench from the wheel. --system-site-packages would not do: from inside a venv it
    # exposes the *base* interpreter's packages, not the venv's. A .pth line adds a folder as a plain
    # path, so the .pth files in it (such as this checkout's editable install) are not run.
    venv_packages = subprocess.run(
        [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(venv_packages) / "outer-environment.pth").write_text("\n".join(installed_packages()) + "\n")
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
