"""Ctrl-C and SIGTERM ask the training loop to stop at the next safe point instead of killing it."""

from __future__ import annotations

import signal
import threading
from types import FrameType


class StopRequest:
    """While active, SIGINT/SIGTERM set `signal_number`; the loop checks it after every batch. A
    second Ctrl-C stops at once (KeyboardInterrupt), for a loop that is stuck."""

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.signal_number == signal.SIGINT and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_number = number

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signals only reach the main thread
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
