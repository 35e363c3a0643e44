"""The end of a search: its best trial (chosen on validation) gets its final test, read once.

Trials are trained without their test (train.fit(read_test_set=False)); this reads the test set
for the best one only, with the weights and test-time augmentation its config names, and gives its
run directory the test files and record every tested run has.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from cifarbench import artifacts, record
from cifarbench.evaluation import evaluate_test_set
from cifarbench.inference import final_test_setting, load_trained
from cifarbench.search.study import best, remember_tested, tested_trials
from cifarbench.search.workers import claim

if TYPE_CHECKING:
    import optuna


def finish_best_trial(sweep_dir: Path, study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """Tests the best completed trial, once, and the study remembers it (study.tested_trials). A
    search continued after its end (a larger n_trials) whose best trial changed tests the new best
    too; the study keeps every trial whose test was read, and summary.md lists them."""
    chosen = best(study)
    if chosen is None:
        return None
    # several workers may end together: the exclusive claim lets one of them read the test set
    if chosen.number not in {t["trial"] for t in tested_trials(study)} and claim(sweep_dir, f"test.{chosen.number}"):
        test = read_test_set_of(sweep_dir / str(chosen.number))
        remember_tested(study, chosen.number, test["accuracy"])
    return chosen


def read_test_set_of(run_dir: Path) -> dict[str, Any]:
    """The final test of a run trained without one, as train.final_test would have run it; writes
    the run's test files and adds the test to its record. Returns the record's test entry."""
    loaded = load_trained(run_dir, "auto")
    cfg, test, normalize, precision = final_test_setting(loaded)
    tested_epoch = record.read(run_dir)["test_weights_epoch"]
    result = evaluate_test_set(loaded.model, cfg, test, normalize, precision, tested_epoch)
    classes = loaded.data.classes
    artifacts.write_run_files(run_dir, result, test.images.cpu(), classes, loaded.history)
    updated = record.update(
        run_dir,
        {"test": artifacts.classification_metrics(result, classes), "test_without_tta": result.without_tta},
    )
    return updated["test"]
