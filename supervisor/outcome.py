"""How a turn ends, and why one could not start: kinds, not HTTP.

Every turn ends with exactly one :class:`TurnEnded` event carrying a
:class:`TurnOutcome`: completed, interrupted, or failed — by codex (its own
error, kept as :class:`CodexError`) or by the supervisor (a
:class:`FailureKind`). A turn that could not start at all raises a
:class:`TurnRefused` of some :class:`RefusalKind`; nothing reached the model
then. The front doors map kinds to their own wire terms.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

from bridge.protocol import TurnStatus


class FailureKind(enum.StrEnum):
    """Why the supervisor (not codex) ended a turn."""

    CHILD_EXITED = "child_exited"
    IDLE_TIMEOUT = "idle_timeout"
    TURN_TIMEOUT = "turn_timeout"
    RETRY_TIMEOUT = "retry_timeout"
    CONSUMER_TOO_SLOW = "consumer_too_slow"
    CANCELLED = "cancelled"
    SHUTDOWN = "shutdown"


@attrs.frozen
class CodexError:
    """An error codex itself reported for a turn.

    ``info`` is codex's ``codexErrorInfo``: a string (``"unauthorized"``,
    ``"contextWindowExceeded"`` …) or a one-key object such as
    ``{"responseStreamDisconnected": {"httpStatusCode": 429}}``.
    """

    message: str
    info: Any = None

    @property
    def kind(self) -> str | None:
        """The info's name: the string, or the object's one key."""
        info = self.info
        if isinstance(info, str):
            return info
        if isinstance(info, dict):
            return next(iter(info), None)
        return None


@attrs.frozen
class TurnOutcome:
    """How a turn ended. ``failure`` is set when the supervisor ended it,
    ``codex_error`` when codex reported an error; ``message`` says why in
    words (None for a turn that completed)."""

    status: TurnStatus
    failure: FailureKind | None = None
    message: str | None = None
    codex_error: CodexError | None = None

    @property
    def completed(self) -> bool:
        return self.status is TurnStatus.COMPLETED

    @property
    def hit_output_limit(self) -> bool:
        """codex stopped the turn at the model's output-token limit."""
        return (
            self.status is TurnStatus.FAILED
            and self.failure is None
            and "max_output_tokens" in (self.message or "")
        )


@attrs.frozen
class TurnEnded:
    """The last event of every turn, whatever happened to it."""

    outcome: TurnOutcome


class RefusalKind(enum.Enum):
    """Why no turn was started."""

    OVERLOADED = enum.auto()  # every slot busy and the queue full (or waited too long)
    NO_CHILD = enum.auto()  # no child can take a turn (starting, paused, crashed)
    NOT_AUTHENTICATED = enum.auto()  # codex has no login for its model
    CODEX_REJECTED = enum.auto()  # codex refused a request of the turn's set-up
    INPUT_TOO_LARGE = enum.auto()  # codex's own limit on a turn's input
    THREAD_UNAVAILABLE = enum.auto()  # a thread that cannot be resumed or rolled back
    SHUTTING_DOWN = enum.auto()


class TurnRefused(Exception):
    """No turn was started; nothing reached codex's model.

    ``retry_after_s``: when trying again may help.
    """

    kind = RefusalKind.NO_CHILD
    retry_after_s: float | None = None
    #: How long the request waited for a child before it was refused.
    queue_wait_s = 0.0

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s


class Overloaded(TurnRefused):
    kind = RefusalKind.OVERLOADED


class NoChildAvailable(TurnRefused):
    kind = RefusalKind.NO_CHILD
    retry_after_s = 5.0


class NotAuthenticated(TurnRefused):
    kind = RefusalKind.NOT_AUTHENTICATED


class CodexRejected(TurnRefused):
    """codex answered a request of the turn's setup with an error."""

    kind = RefusalKind.CODEX_REJECTED


class InputTooLarge(TurnRefused):
    """codex refused the turn's input as too long (the front checks first;
    this is codex's own word on it)."""

    kind = RefusalKind.INPUT_TOO_LARGE


class ThreadUnavailable(TurnRefused):
    """The requested thread could not be resumed (codex does not know it)."""

    kind = RefusalKind.THREAD_UNAVAILABLE


class ShuttingDown(TurnRefused):
    kind = RefusalKind.SHUTTING_DOWN
