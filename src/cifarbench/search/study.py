"""The Optuna study a search lives in: its storage, what it remembers, and how its trials stand."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cifarbench.errors import UserError
from cifarbench.runs import WHERE_AND_HOW
from cifarbench.search.space import SearchSpace

if TYPE_CHECKING:
    import optuna

STUDY_FILE = "optuna.db"
SEARCH_SPACE_ATTR = "cifarbench_search"  # the study remembers what it searches, to refuse another search
MONITOR_ATTR = "cifarbench_monitor"  # the objective's figure, for `cifarbench search finish`
BEST_TESTED_ATTR = "cifarbench_tested"  # [{trial, test_accuracy, after_trials}]: trials whose test was read


def study_storage(storage: str | None, sweep_dir: Path) -> optuna.storages.BaseStorage:
    """The study's storage, reachable, or one line saying why not (before any trial starts):

    - null: a sqlite file in the sweep directory (workers on one machine may share it);
    - `journal:PATH`: Optuna's journal file (no server; a shared disk for workers on many machines);
    - a SQLAlchemy URL: `postgresql://user:password@host/db`, `mysql+pymysql://...`, `sqlite:///...`.

    sqlite waits up to a minute for a lock, so trials reporting at the same moment queue up instead of
    failing with "database is locked"."""
    import optuna

    if storage and storage.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        path = Path(storage.removeprefix("journal:").removeprefix("//")).expanduser()
        if not path.parent.is_dir():
            raise UserError(f"hydra.sweeper.storage={storage}: the folder {path.parent} does not exist")
        # Optuna's lock by open(O_EXCL), for file systems where its default symlink lock is not available
        return optuna.storages.JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))
    if not storage:
        sweep_dir.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(sweep_dir / STUDY_FILE).resolve()}"
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        return _rdb_storage(url, engine)
    except ImportError as exc:  # the dialect's driver, imported only now (Optuna wraps SQLAlchemy's error)
        missing = getattr(exc.__cause__, "name", None) or exc.name or "its driver"
        extra = "mysql" if url.startswith("mysql") else "postgres"
        raise UserError(
            f"hydra.sweeper.storage={shown_url(url)} needs the database driver {missing}, which is not installed: "
            f"pip install 'cifarbench[{extra}]'"
        ) from None
    except Exception as exc:  # sqlalchemy's OperationalError, ArgumentError ...: unreachable, refused, bad URL
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:200]
        raise UserError(
            f"hydra.sweeper.storage={shown_url(url)}: cannot open the study's database ({type(exc).__name__}: "
            f"{reason}); check the URL, that the server is running and reachable, and the user and password"
        ) from None


def _rdb_storage(url: str, engine: dict) -> optuna.storages.RDBStorage:
    """Optuna creates its tables when a storage is first opened; workers started together on an empty
    database race to create them and all but one fail ("already exists"): those try again."""
    import optuna

    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine)
        except Exception as exc:
            if "already exists" not in str(exc) or attempt == 4:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def shown_url(url: str) -> str:
    """A database URL without its password, for messages."""
    import re

    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def same_search(study: optuna.Study, space: SearchSpace, monitor: str, sweep_dir: Path) -> None:
    """The first run of a search records what it searches; a later run into the same directory must
    search the same (where and how it runs aside), or it would mix two searches in one study."""
    what = [o for o in space.fixed if not o.lstrip("+~").startswith(WHERE_AND_HOW)]
    searched = " ".join(sorted([*space.expressions, *what, f"monitor={monitor}"]))
    saved = study.user_attrs.get(SEARCH_SPACE_ATTR)
    if saved is None:
        study.set_user_attr(SEARCH_SPACE_ATTR, searched)
        study.set_user_attr(MONITOR_ATTR, monitor)
    elif saved != searched:
        raise UserError(
            f"{sweep_dir} holds another search ({saved}); run this one into a new hydra.sweep.dir, "
            "or repeat that search's own command to continue it"
        )


def trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's trials that count: not the surplus ones a worker asked for too many (workers.py)."""
    from cifarbench.search.workers import counted

    return counted(study.get_trials(deepcopy=False))


def unfinished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials still to end: running (here or in another worker) or enqueued and not yet taken."""
    from optuna.trial import TrialState

    return [t for t in trials(study) if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def waiting(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Enqueued trials (a preset's first settings) that no worker has taken yet."""
    from optuna.trial import TrialState

    return [t for t in trials(study) if t.state == TrialState.WAITING]


def count_finished(study: optuna.Study) -> int:
    return sum(1 for t in trials(study) if t.state.is_finished())


def state_counts(study: optuna.Study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in trials(study):
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
