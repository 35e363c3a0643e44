"""Reading run directories back, finished or not, as `Run`s (for report, runs, sweeps and searches)."""

from __future__ import annotations

import csv
import functools
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from cifarbench import owner, record
from cifarbench.loggers import flatten

# Keys that say where or how a job runs, not what it trains: left out of "key overrides", of what
# makes two runs the same recipe, and of what must match when a sweep or search is run again.
WHERE_AND_HOW = (
    "progress",
    "device",
    "resume",
    "overwrite",
    "precision_cache",
    "threads",
    "eval_batch_size",
    "logger",
    "output_root",
    "data.root",
    "data.source",
    "hydra.",
)
# What a preset says of its report (the figures and notes, the data sets they are about), not what
# it trains: a note corrected after a run changes neither its recipe nor whether a sweep resumes it.
ABOUT_THE_REPORT = ("reported", "datasets")


TRIAL_ENV = "CIFARBENCH_OPTUNA_TRIAL"  # set in each search trial's job (search.py): its id in the study
REPORT_PRESET = re.compile(r"r\d{3}_")  # conf/experiment/r000_student.yaml ...: the reports' experiments


@dataclass
class Run:
    path: Path
    status: str  # one of record.STATUSES
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    choices: dict[str, str] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    trial: bool = False  # a trial of a search (hydra/sweeper=optuna)

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
    def dataset(self) -> str:
        """What it trained on: cifar10 (also every run from before other data sets), cifar100, with
        `(coarse)` for its superclasses, or folder:<the source's name>."""
        data = self.metrics.get("data") or {}
        configured = self.config.get("data") or {}
        name = data.get("name") or configured.get("name") or "cifar10"
        if name == "folder":
            return f"folder:{Path(str(data.get('source') or configured.get('source') or '')).name}"
        labels = data.get("labels") or configured.get("labels") or "fine"
        return name if labels == "fine" else f"{name} ({labels})"

    @property
    def pretrained(self) -> bool:
        weights = self.config.get("model", {}).get("weights")
        return weights not in (None, "none")

    @property
    def key_overrides(self) -> list[str]:
        return [o for o in self.overrides if not o.lstrip("+~").startswith(WHERE_AND_HOW)]

    def test(self, key: str) -> float | None:
        return (self.metrics.get("test") or {}).get(key)  # null: a search trial, tested only if it is the best

    @property
    def reports_experiment(self) -> bool:
        """A run of a report's own experiment: its preset is `rNNN_...` (README, presets) and no
        search chose its values."""
        searched = self.choices.get("search") not in (None, "None", "null")
        return bool(self.preset and REPORT_PRESET.match(self.preset)) and not searched

    @property
    def untested_trial(self) -> bool:
        """A search trial whose test was never read (only the search's best trial is tested)."""
        return self.trial and not self.metrics.get("test")

    @property
    def preset(self) -> str | None:
        chosen = self.choices.get("experiment")
        return None if chosen in (None, "None", "null") else chosen

    @property
    def reported(self) -> dict[str, Any] | None:
        """The report's own figure for this run's recipe ({metric, value, source[, note, loss,
        comparable]}; `loss` is the report's test loss where it gives one, `comparable: false` marks a
        figure that is not a measurement of this recipe, its note saying why): the
        preset's `reported`, or the cell of it whose `when` the run's config matches (e.g. one
        cell of 004's Table 2 for a job of the grid sweep), with `reading`: the notes of the preset's
        `readings` the run's model settings match (an ambiguous text read one way, e.g.
        `model.dropout_scope`), shown beside its row whatever its difference. None where the report gives none, and for
        a run on another data set than CIFAR-10, which every reported figure is about.
        It is a fact about the report, so the preset as it is now has the last word (a note or a
        correction added after the run); the run's own saved copy is used when the preset is gone."""
        if self.dataset != "cifar10":
            return None
        reported = preset_reported(self.choices.get("search"), self.choices.get("experiment"))
        if reported is NO_PRESET:
            reported = self.config.get("reported")
        if not isinstance(reported, dict):
            return None
        figure = {k: reported.get(k) for k in ("metric", "value", "source", "note", "loss", "comparable")}
        for cell in reported.get("cells") or []:
            if _matches(self.trained_config, cell.get("when", {})):
                figure.update({k: v for k, v in cell.items() if k != "when"})
        readings = [r for r in reported.get("readings") or [] if _matches(self.trained_config, r["when"])]
        named = [_override_key(o) for o in [*self.named_overrides, *self.since]]

        def place_in_label(reading: dict[str, Any]) -> int:  # the notes in the order of the label
            return min((named.index(key) for key in flatten(reading["when"]) if key in named), default=len(named))

        readings.sort(key=place_in_label)
        figure["reading"] = " ".join(r["note"] for r in readings) or None
        return figure if figure["value"] is not None else None

    def measured(self, metric: str) -> float | None:
        """This run's figure of the kind a report gives: test accuracy, or the validation accuracy
        of the epoch whose weights the run tested."""
        if metric == "test_acc":
            return self.test("accuracy")
        return self.validation(metric) if metric == "val_acc" else None

    def validation(self, metric: str) -> float | None:
        """`val_acc` or `val_loss` of the epoch whose weights the run tests (test_weights)."""
        epoch = self.metrics.get("test_weights_epoch")
        rows = [row for row in self.history if row.get("epoch") == epoch]
        return rows[0].get(metric) if rows else None

    @property
    def minutes(self) -> float | None:
        """Training and validation time summed over the epochs (survives a resume, unlike wall time)."""
        seconds = self.metrics.get("epoch_seconds")
        return sum(seconds) / 60 if seconds else None

    @property
    def hardware(self) -> str | None:
        versions = self.metrics.get("versions", {})
        device = str(self.metrics.get("device", ""))
        if device.startswith("cuda") and versions.get("gpu"):
            return f"{versions['gpu']} ({self.metrics.get('precision')})"
        cpu = versions.get("cpu")
        return f"{cpu} ({self.metrics.get('precision')})" if cpu else None

    @property
    def recipe(self) -> str:
        """What the run trained, seeds aside: runs with the same recipe differ only in their seed.
        The preset is part of it: it names the experiment, and so the report figure a run is held
        against (r004_kerascnn and the grid's cell of r004_table2 train the same config)."""
        config = {k: v for k, v in flatten(self.trained_config).items() if not _not_what_was_trained(k)}
        return json.dumps({"preset": self.preset, "dataset": self.dataset, **config}, sort_keys=True, default=str)

    @property
    def label(self) -> str:
        """A short name of the recipe: the preset (or run name) and its overrides, seeds aside."""
        overrides = [o for o in self.named_overrides if not _not_what_was_trained(_override_key(o))]
        overrides = [_short_override(o) for o in overrides if not o.startswith(("experiment=", "name="))]
        folder = [f"({self.dataset})"] if self.dataset.startswith("folder:") else []  # its source is not an override
        return " ".join([str(self.preset or self.config.get("name", self.model)), *overrides, *self.since, *folder])

    @functools.cached_property
    def trained_config(self) -> dict[str, Any]:
        """The saved config, its model's settings complete (models.model_settings): a run from before
        an option existed trained at the model's default of it."""
        from cifarbench.models import model_settings

        model = self.config.get("model")
        return {**self.config, "model": model_settings(model)} if isinstance(model, dict) else self.config

    @functools.cached_property
    def since(self) -> list[str]:
        """The model settings this run trained with that its preset and overrides no longer give
        (a default changed since, e.g. `model.dropout_scope=rising` for 004's Keras CNN before the
        preset took the reading validation favoured), as overrides: a run's label says what it trained."""
        now = self._preset_now
        if now is None:
            return []
        overridden = {_override_key(o) for o in self.overrides}
        trained = self.trained_config["model"]
        return [
            f"model.{key}={trained[key]}"
            for key, value in now.items()
            if key != "_target_" and f"model.{key}" not in overridden and key in trained and trained[key] != value
        ]

    @functools.cached_property
    def named_overrides(self) -> list[str]:
        """key_overrides less the readings (the keys of its preset's `readings`) that the preset
        now gives anyway: a run that chose `model.convs_per_block=2` before the preset took it as its
        default trained the preset as it is now, and is labelled as its row."""
        now, trained = self._preset_now, self.trained_config.get("model")
        if now is None or not isinstance(trained, dict):
            return self.key_overrides

        def given_anyway(override: str) -> bool:
            key = _override_key(override)
            setting = key.removeprefix("model.")
            return key in self._reading_keys and setting in now and now[setting] == trained.get(setting)

        return [o for o in self.key_overrides if not given_anyway(o)]

    @functools.cached_property
    def _reading_keys(self) -> set[str]:
        """The keys its preset's `readings` are told apart by (e.g. `model.dropout_scope`)."""
        reported = preset_reported(self.choices.get("search"), self.choices.get("experiment"))
        readings = reported.get("readings") if isinstance(reported, dict) else None
        return {key for reading in readings or [] for key in flatten(reading["when"])}

    @functools.cached_property
    def _preset_now(self) -> dict[str, Any] | None:
        """The model settings its preset composes to with conf/ as it is now and the run's overrides
        other than its readings (those the label weighs against this); None without a preset or model,
        or where they no longer compose."""
        if not self.preset or not isinstance(self.config.get("model"), dict):
            return None
        overrides = [o for o in self.key_overrides if _override_key(o) not in self._reading_keys]
        # `+key=` as `++key=` (the key may since have become a default, which `+` refuses to add
        # again), and the preset named where a sweep over presets chose it outside the overrides
        overrides = [f"+{o}" if o.startswith("+") and not o.startswith("++") else o for o in overrides]
        if not any(o.lstrip("+").startswith(("experiment=", "search=")) for o in overrides):
            overrides = [f"experiment={self.preset}", *overrides]
        return _model_now(tuple(overrides))


def short_number(value: Any) -> Any:
    """A float to 4 significant digits (a searched dropout of 0.21698877882324275 reads 0.217)."""
    return float(f"{value:.4g}") if isinstance(value, float) else value


def _short_override(override: str) -> str:
    key, sep, value = override.partition("=")
    try:
        number = float(value)
    except ValueError:
        return override  # not a number
    return override if value.lstrip("+-").isdigit() else f"{key}{sep}{short_number(number)}"


NO_PRESET = object()


@functools.cache
def _model_now(overrides: tuple[str, ...]) -> dict[str, Any] | None:
    """The model settings these overrides compose to with conf/ as it is now; None where they no
    longer compose (a preset or option since removed)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from cifarbench.config import config_dir, register_resolvers
    from cifarbench.models import model_settings

    register_resolvers()
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            model = compose("config", overrides=list(overrides)).model
        return model_settings(OmegaConf.to_container(model, resolve=True))
    except Exception:  # any reason it no longer composes means: nothing to compare with
        return None


@functools.cache
def preset_reported(search: str | None, experiment: str | None) -> Any:
    """The `reported` entry (a dict, or None) of the run's search preset (conf/search/), or else of
    its experiment preset (conf/experiment/); NO_PRESET when neither file exists any more. A preset
    built on another (r004_table2 on r004_kerascnn, in its defaults list) shares that one's `readings`."""
    from cifarbench.config import config_dir

    for group, name in (("search", search), ("experiment", experiment)):
        if name in (None, "None", "null"):
            continue
        text = _read_yaml(config_dir() / group / f"{name}.yaml")
        if isinstance(text, dict):
            figure = text.get("reported")
            if not isinstance(figure, dict):
                return None
            bases = [b for b in text.get("defaults") or [] if isinstance(b, str) and b != "_self_"]
            for base in bases if "readings" not in figure else []:
                inherited = _read_yaml(config_dir() / group / f"{base}.yaml") or {}
                readings = (inherited.get("reported") or {}).get("readings")
                figure = {**figure, "readings": readings} if readings else figure
            return figure
    return NO_PRESET


def _matches(config: dict[str, Any], when: dict[str, Any]) -> bool:
    for key, wanted in when.items():
        value = config.get(key) if isinstance(config, dict) else None
        if isinstance(wanted, dict):
            if not isinstance(value, dict) or not _matches(value, wanted):
                return False
        elif value != wanted:
            return False
    return True


def _override_key(override: str) -> str:
    """`model.dropout` of `+model.dropout=0.4`."""
    return override.lstrip("+~").split("=", 1)[0]


def beside_the_training(key: str) -> bool:
    """A config key that says where or how a job runs, or what its preset says of the report: two
    configs that differ only there train the same (a sweep resumes its job across them)."""
    return key.startswith((*WHERE_AND_HOW, *ABOUT_THE_REPORT))


def _not_what_was_trained(key: str) -> bool:
    """For a recipe, also the seed and the run's name (`augmentation.flip_seed` follows `seed`;
    `data.name` is in the recipe as its data set, which runs from before it read as cifar10)."""
    return key.endswith("seed") or beside_the_training(key) or key.startswith(("name", "data.name"))


def is_run_dir(path: Path) -> bool:
    return (path / ".hydra" / "config.yaml").is_file() or (path / record.FILE).is_file()


def holds_a_run(path: Path) -> bool:
    """Whether `path` holds anything of a run (a record, a config, a checkpoint, a history, a lock)."""
    marks = (record.FILE, "config.yaml", "history.csv", "checkpoints", ".hydra", owner.LOCK_FILE)
    return path.is_dir() and any((path / mark).exists() for mark in marks)


def find_runs(paths: list[Path]) -> list[Run]:
    """Every run directory at or below `paths` (a run, a sweep, a whole outputs/ tree)."""
    found: dict[Path, Run] = {}
    for root in paths:
        candidates = [root] if is_run_dir(root) else []
        candidates += [p.parent.parent for p in root.rglob(".hydra/config.yaml")]
        candidates += [p.parent for p in root.rglob(record.FILE)]
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
    metrics = record.read(path)
    status = metrics["status"]
    if status == record.UNFINISHED:  # no record: its owner still trains, or was killed (the lock it left is free)
        status = {"held": record.RUNNING, "free": record.INTERRUPTED}.get(owner.state(path), status)
    history = []
    if (path / "history.csv").is_file():
        with (path / "history.csv").open() as fh:
            history = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]
    config = _read_yaml(path / "config.yaml") or _read_yaml(path / ".hydra" / "config.yaml") or {}
    hydra = _read_yaml(path / ".hydra" / "hydra.yaml") or {}
    choices = hydra.get("hydra", {}).get("runtime", {}).get("choices", {}) or {}
    overrides = _read_yaml(path / ".hydra" / "overrides.yaml") or []
    env_set = hydra.get("hydra", {}).get("job", {}).get("env_set") or {}
    return Run(
        path=path,
        status=status,
        config=config,
        metrics=metrics,
        history=history,
        choices={k: str(v) for k, v in choices.items() if not k.startswith("hydra/")},
        overrides=[str(o) for o in overrides],
        trial=TRIAL_ENV in env_set,
    )
