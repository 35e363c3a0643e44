"""The run record (metrics.json): one writer, a format version, and the records written before the
version existed still read, report and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cifarbench import record
from cifarbench.runs import find_runs
from conftest import REPO, cli

DOCS_RUNS = REPO / "docs" / "runs"


def test_every_record_says_its_format_and_a_known_status(tmp_path: Path) -> None:
    written = record.write_stopped(tmp_path, record.INTERRUPTED, "SIGTERM received", 2, resumable=True)
    assert json.loads((tmp_path / record.FILE).read_text()) == written
    assert written["format"] == record.FORMAT and written["status"] == "interrupted"
    assert written["resume"] == f"cifarbench train resume={tmp_path}"
    updated = record.update(tmp_path, {"test": {"accuracy": 50.0}})
    assert updated["status"] == "interrupted" and updated["error"] == "SIGTERM received"
    with pytest.raises(ValueError):
        record.write(tmp_path, "fail", {})  # not a status
    assert record.read(tmp_path / "nothing")["status"] == record.UNFINISHED
    (tmp_path / record.FILE).write_text("{half a reco")
    assert record.read(tmp_path)["status"] == record.FAILED


def test_the_records_in_docs_runs_old_and_new_read() -> None:
    runs = find_runs([DOCS_RUNS])
    assert len(runs) >= 10
    formats = [run.metrics["format"] for run in runs]
    assert formats.count(0) >= 10 and set(formats) <= {0, record.FORMAT}  # most written before the field existed
    assert {run.status for run in runs} <= set(record.STATUSES)
    assert all(run.test("accuracy") is not None for run in runs if run.status == record.COMPLETED)


def test_docs_results_regenerates_from_the_old_records(tmp_path: Path) -> None:
    """`cifarbench report docs/runs --md` reads every old record into the very tables of docs/results.md."""
    out = tmp_path / "results.md"
    cli("report", "docs/runs", "--md", str(out), cwd=REPO)
    committed = (REPO / "docs" / "results.md").read_text().splitlines()
    regenerated = out.read_text().splitlines()
    assert regenerated[1:] == committed[1:]  # the first line names the command that made it
