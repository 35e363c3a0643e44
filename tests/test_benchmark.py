"""scripts/benchmark.py keeps working and reports consistent figures (no timing is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, python

# `baseline` by hand, multiply-adds of one forward pass per image: conv 3->32 at 32x32, conv 32->64
# at 16x16, Linear 4096->256, Linear 256->10.
FIRST_CONV_MACS = 32 * 32 * 3 * 32 * 9
BASELINE_FORWARD_MACS = FIRST_CONV_MACS + 16 * 16 * 32 * 64 * 9 + 4096 * 256 + 256 * 10


@pytest.mark.slow
def test_benchmark_script_writes_a_consistent_table(run_env: dict, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["--models", "baseline", "--batch-size", "32", "--data-batch-size", "64", "--steps", "2", "--warmup", "1",
            "--repeats", "1", "--images", "256", "--workers", "0", "--out", str(out), "--profile"]  # fmt: skip
    result = subprocess.run([python(), str(REPO / "scripts" / "benchmark.py"), *args],
                            env={**os.environ, **run_env}, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    table = json.loads(out.read_text())

    row = table["models"]["baseline"]
    assert row["cifarbench"] > 0 and row["reference"] > 0
    assert row["ratio"] == pytest.approx(row["cifarbench"] / row["reference"], abs=0.01)
    # backward costs twice the forward, except the first conv's input gradient, which nothing needs
    expected_gflop = (3 * 2 * BASELINE_FORWARD_MACS - 2 * FIRST_CONV_MACS) / 1e9
    assert row["train_gflop_per_image"] == pytest.approx(expected_gflop, abs=1e-4)
    # GFLOP/s are written to 0.1, and img/s to 0.1 too: on a loaded machine (a few img/s) that rounding
    # alone is more than 1% of the product
    for side in ("cifarbench", "reference"):
        rounding = 0.05 + 0.05 * row["train_gflop_per_image"]
        assert row[f"{side}_gflops"] == pytest.approx(row[side] * row["train_gflop_per_image"], rel=0.01, abs=rounding)
    assert table["matmul_peak_gflops"]["fp32"] > 0 and table["matmul_peak_gflops"]["bf16"] > 0
    peak = table["matmul_peak_gflops"][row["precision"]]
    assert row["ratio_bound"] == pytest.approx(peak / row["reference_gflops"], rel=0.01)
    assert table["data_path"]["cifarbench"] > 0 and table["data_path"]["reference"] > 0
    # auto's column is the precision precision.choose picked here, beside both forced ones
    assert table["machine"]["cpu"] and row["precision"] == row["precision_choice"]["name"] in ("fp32", "bf16")
    assert row["fp32"] > 0 and row["bf16"] > 0
    assert row["auto_vs_faster_forced"] == pytest.approx(row["cifarbench"] / max(row["fp32"], row["bf16"]), abs=0.002)
    assert "baseline" in result.stdout and "peak" in result.stdout and "precision=auto chose" in result.stdout
    shares = row["profile"]["kinds"]  # --profile: the step's time by kind of op adds up to all of it
    assert sum(shares.values()) == pytest.approx(1.0, abs=0.01) and "convolution and matmul" in shares


def test_benchmark_refuses_fewer_images_than_a_batch(tmp_path: Path) -> None:
    """Only whole batches are timed: too few images would otherwise never finish."""
    out = tmp_path / "bench.json"
    result = subprocess.run([python(), str(REPO / "scripts" / "benchmark.py"), "--images", "100", "--out", str(out)],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2
    assert "--images 100 is smaller than a batch" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()
