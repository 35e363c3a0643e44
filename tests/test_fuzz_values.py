"""Property-based: adversarial values for the numeric and choice keys of every group either run or
are refused in one line (exit 2) - never a traceback, never an exit 1 from an error.

Each draw picks a model, optimizer, schedule and augmentation, then overrides one or two of
their keys and of the top-level hyperparameters with values such as 0, negatives, huge numbers,
NaN, infinities, strings, empty values and wrong types, and runs `cifarbench train` in this
process on a tiny subset: the config check, the optimizer/schedule preflight, and the first two
steps of each epoch (train_one_epoch is cut short), then validation and the final test. Keys that
size memory or time (widths, batch sizes, data sizes, padding, threads, Newton-Schulz steps) and
logger keys (they need a network) are left out; `epochs` draws only cheap values.

CI tries EXAMPLES draws, derandomized (the same ones every run). A run that diverges is an outcome
of training, recorded as such in one line (exit 1, status diverged): it counts as running.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig, ListConfig

from cifarbench import train
from cifarbench.cli import main
from cifarbench.config import config_dir, register_resolvers
from cifarbench.distributed import SINGLE_PROCESS

EXAMPLES = 40  # draws tried in CI: a refusal takes about 0.3 s, a tiny in-process training 1-15 s

OPTIONS = {
    "model": ["baseline", "cnn3", "fc2", "kerascnn", "fast", "mfm24"],  # small enough for a draw a second
    "optimizer": ["adam", "adamax", "adamw", "muon", "rmsprop", "sgd"],
    "scheduler": ["cosine", "none", "onecycle", "plateau", "step", "warmup_cosine", "warmup_linear"],
    "augmentation": ["flipcrop", "none", "shiftrotate", "translate", "autoaugment", "cutout"],
}
TOP_LEVEL = [
    "epochs", "label_smoothing", "grad_clip", "ema_decay", "lookahead_every", "lookahead_decay", "mixup_alpha",
    "cutmix_alpha", "validate_every", "tta", "test_weights", "monitor", "precision", "precision_cache", "seed",
    "device",
    "early_stopping.enabled", "early_stopping.patience", "early_stopping.min_delta", "channels_last",
    "deterministic", "data.normalization",
]  # fmt: skip
SIZES = {"widths", "dense", "hidden", "channels", "num_classes", "whitening_kernel", "padding", "ns_steps"}
ADVERSARIAL = ["0", "-1", "-0.5", "1e9", "-1e9", "1e-12", "nan", "inf", "-inf", "abc", "''", "[]", "{}",
               "true", "false", "null", "0.5", "1", "2", "[1.5,0.9]", "step", "epoch"]  # fmt: skip
# each plausible value three times as likely as an adversarial one, so that a good share of draws trains
PLAUSIBLE = ["0.01", "0.1", "0.3", "0.9", "0.99", "3", "10", "1e-4"]
WEIGHTED = [*ADVERSARIAL, *PLAUSIBLE * 3]
CHEAP_EPOCHS = ["0", "-1", "nan", "inf", "abc", "''", "[]", "true", "null", "0.5", "1", "1.5", "2"]
TINY = ["device=cpu", "progress=false", "data.train_subset=100", "data.val_size=100", "data.test_subset=100",
        "batch_size=50", "eval_batch_size=100", "epochs=2"]  # fmt: skip


def group_keys() -> dict[str, list[str]]:
    """option -> its numeric and choice keys (dotted, nested dicts included; lists and sizes left out)."""
    register_resolvers()
    keys: dict[str, list[str]] = {}
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        for group, options in OPTIONS.items():
            for option in options:
                node = compose("config", overrides=[f"{group}={option}"])[group]
                keys[f"{group}={option}"] = [f"{group}.{k}" for k in leaves(node)]
    return keys


def leaves(node: DictConfig, prefix: str = "") -> list[str]:
    found = []
    for key in node:
        value = node._get_node(key)
        if str(key).startswith("_") or str(key) in SIZES or isinstance(value, ListConfig):
            continue
        if isinstance(value, DictConfig):
            found += leaves(value, f"{prefix}{key}.")
        else:
            found.append(f"{prefix}{key}")
    return found


KEYS = group_keys()


@st.composite
def draws(draw: st.DrawFn) -> list[str]:
    chosen = [f"{group}={draw(st.sampled_from(options))}" for group, options in OPTIONS.items()]
    candidates = sorted({*TOP_LEVEL, *(key for option in chosen for key in KEYS[option])})
    picked = draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=2, unique=True))
    values = [draw(st.sampled_from(CHEAP_EPOCHS if key == "epochs" else WEIGHTED)) for key in picked]
    return chosen + [f"{key}={value}" for key, value in zip(picked, values, strict=True)]


def train_in_process(overrides: list[str], run_dir: Path, data_root: Path) -> int:
    GlobalHydra.instance().clear()
    try:
        return main(["train", *TINY, f"data.root={data_root}", *overrides, f"hydra.run.dir={run_dir}"])
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.fixture(scope="module")
def first_steps_only():
    """Each epoch trains its first two batches: the draws test values, not training."""
    real = train.train_one_epoch

    def first_two(step, batches, progress=False, stop=None, world=SINGLE_PROCESS, steps=None):
        return real(step, batches, progress, stop, world, min(2, len(batches) if steps is None else steps))

    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(train, "train_one_epoch", first_two)
    yield
    monkeypatch.undo()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(overrides=draws())
def test_any_value_runs_or_is_refused_in_one_line(
    overrides: list[str], data_root: Path, tmp_path_factory: pytest.TempPathFactory, capfd, first_steps_only
) -> None:
    run_dir = tmp_path_factory.mktemp("fuzz") / "run"
    capfd.readouterr()
    code = train_in_process(overrides, run_dir, data_root)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    shown = f"cifarbench train {' '.join(overrides)} -> exit {code}:\n{err[-3000:]}"
    event(f"exit {code}")  # pytest --hypothesis-show-statistics: how the draws ended
    assert "Traceback" not in err, shown
    if code == 0:
        return
    assert len(lines) == 1, shown
    if code == 1:  # the loss diverged: an outcome of training, recorded and said in one line
        assert "training diverged" in lines[0], shown
        assert json.loads((run_dir / "metrics.json").read_text())["status"] == "diverged", shown
        return
    assert code == 2 and lines[0].startswith("cifarbench: error: "), shown
