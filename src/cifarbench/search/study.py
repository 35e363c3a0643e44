"""The Optuna study a search lives in: its storage, what it remembers, and how its trials stand."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from cifarbench.errors import UserError
from cifarbench.runs import WHERE_AND_HOW
from cifarbench.search.space import SearchSpace

if TYPE_CHECKING:
    import optuna

STUDY_FILE = "optuna.db"
SEARCH_SPACE_ATTR = "cifarbench_search"  # the study remembers what it searches, to refuse another search
BEST_TESTED_ATTR = "cifarbench_tested"  # [{trial, test_accuracy, after_trials}]: trials whose test was read


def study_storage(storage: str | None, sweep_dir: Path) -> optuna.storages.RDBStorage:
    """The study's storage: `storage` (a database URL) as given, or a sqlite file in the sweep
    directory. sqlite waits up to a minute for a lock, so parallel trials reporting at the same
    moment queue up instead of failing with "database is locked"."""
    import optuna

    url = storage or f"sqlite:///{(sweep_dir / STUDY_FILE).resolve()}"
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine)


def same_search(study: optuna.Study, space: SearchSpace, monitor: str, sweep_dir: Path) -> None:
    """The first run of a search records what it searches; a later run into the same directory must
    search the same (where and how it runs aside), or it would mix two searches in one study."""
    what = [o for o in space.fixed if not o.lstrip("+~").startswith(WHERE_AND_HOW)]
    searched = " ".join(sorted([*space.expressions, *what, f"monitor={monitor}"]))
    saved = study.user_attrs.get(SEARCH_SPACE_ATTR)
    if saved is None:
        study.set_user_attr(SEARCH_SPACE_ATTR, searched)
    elif saved != searched:
        raise UserError(
            f"{sweep_dir} holds another search ({saved}); run this one into a new hydra.sweep.dir, "
            "or repeat that search's own command to continue it"
        )


def running(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def count_finished(study: optuna.Study) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished())


def state_counts(study: optuna.Study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def best(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best completed trial by the objective (validation), or None while none has completed."""
    try:
        return study.best_trial
    except ValueError:  # no trial completed
        return None


def tested_trials(study: optuna.Study) -> list[dict[str, Any]]:
    """Every trial whose test set was read: [{trial, test_accuracy, after_trials}], oldest first."""
    return list(study.user_attrs.get(BEST_TESTED_ATTR) or [])


def remember_tested(study: optuna.Study, number: int, test_accuracy: float) -> None:
    record = {"trial": number, "test_accuracy": test_accuracy, "after_trials": count_finished(study)}
    study.set_user_attr(BEST_TESTED_ATTR, [*tested_trials(study), record])


def best_test_accuracy(study: optuna.Study, number: int) -> float | None:
    return next((t["test_accuracy"] for t in tested_trials(study) if t["trial"] == number), None)
