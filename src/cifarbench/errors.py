"""Exceptions the CLI turns into a clear message instead of a traceback."""


class UserError(Exception):
    """A problem the user can fix (bad config, missing data, bad file): one line, exit status 2."""


class TrainingStopped(Exception):
    """Training ended before its last epoch; the run directory says so in metrics.json `status`."""

    status = "stopped"
    exit_code = 1


class Diverged(TrainingStopped):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    status = "diverged"


class Interrupted(TrainingStopped):
    """Ctrl-C or SIGTERM: the run stops after the current batch and can be resumed."""

    status = "interrupted"

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signal_number  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
