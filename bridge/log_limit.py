"""Rate limits for log lines a misbehaving peer can cause at will.

A child that writes garbage to stdout, thousands of lines a second, must not
turn into thousands of WARNING lines: the first few of each window are
logged, the rest are counted and reported in one line when the window ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class LogLimiter:
    """Let ``burst`` records through per ``window_s``; summarise the rest.

    ``clock`` is any monotonic clock (``trio.current_time`` in a Trio task,
    so tests run it on virtual time).
    """

    __slots__ = ("_clock", "_logger", "_suppressed", "_used", "_window_start", "burst", "window_s")

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = 5,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self.burst = burst
        self.window_s = window_s
        self._clock = clock
        self._window_start: float | None = None
        self._used = 0
        self._suppressed = 0

    def log(self, level: int, message: str, *args: object) -> None:
        now = self._clock()
        if self._window_start is None or now - self._window_start >= self.window_s:
            self.flush()
            self._window_start = now
            self._used = 0
        if self._used < self.burst:
            self._used += 1
            self._logger.log(level, message, *args)
        else:
            self._suppressed += 1

    def flush(self) -> None:
        """Report what was suppressed so far (if anything)."""
        if self._suppressed:
            self._logger.warning(
                "%d more line(s) like the above were not logged in the last %gs",
                self._suppressed,
                self.window_s,
            )
            self._suppressed = 0
