"""Exceptions the CLI turns into a clear message instead of a traceback."""

import importlib
from types import ModuleType

from cifarbench import record


class UserError(Exception):
    """A problem the user can fix (bad config, missing data, bad file): one line, exit status 2."""


def import_extra(module: str, extra: str, chosen: str) -> ModuleType:
    """`module`, which the optional `extra` installs; `chosen` (e.g. logger=wandb) needs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"{chosen} needs the optional '{extra}' extra, which is not installed: pip install 'cifarbench[{extra}]'"
        ) from None


def one_line(exc: BaseException) -> str:
    """`Type: message` on one line, at most 200 characters; what a Hydra-built target raised, not
    Hydra's wrapper around it."""
    cause = exc.__cause__ or exc
    text = " ".join(str(cause).split())[:200]
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


def show(value: object) -> str:
    """A value as the user writes it in YAML or on the command line (true, not True)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def check_choice(key: str, value: object, allowed: tuple) -> None:
    """The one message for a value outside its list: `key=value is not known; choose one of ...`."""
    if value not in allowed:
        raise UserError(f"{key}={value!r} is not known; choose one of {', '.join(show(v) for v in allowed)}")


class TrainingStopped(Exception):
    """Training ended before its last epoch; its `status` is what the run record says (record.py)."""

    status = record.FAILED
    exit_code = 1
    reason: str | None = None  # said in the record beside the status (e.g. "disk full")


class Diverged(TrainingStopped):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    status = record.DIVERGED


class Pruned(TrainingStopped):
    """A search's pruner judged the trial hopeless after an epoch; its run directory stays as it is."""

    status = record.PRUNED


class OutOfSpace(TrainingStopped):
    """The disk filled up while the run wrote its files: interrupted, resumable once there is space
    (the last checkpoint on disk is intact: files.write_atomic)."""

    status = record.INTERRUPTED
    reason = "disk full"


class Interrupted(TrainingStopped):
    """Ctrl-C or SIGTERM: the run stops after the current batch and can be resumed."""

    status = record.INTERRUPTED

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signal_number  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
