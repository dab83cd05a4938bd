"""Processes, pool, turn multiplexer and the turn: what the layers above use.

The front doors and the program use the supervisor through
:class:`Supervisor` and the types exported here; the modules behind them are
its own business.
"""

from .facade import ChildRef, Health, Readiness, Supervisor
from .keyed_locks import KeyedLocks
from .outcome import (
    CodexError,
    FailureKind,
    RefusalKind,
    ThreadUnavailable,
    TurnEnded,
    TurnOutcome,
    TurnRefused,
)
from .pool import UnknownChild
from .turn import Turn, TurnRequest

__all__ = [
    "ChildRef",
    "CodexError",
    "FailureKind",
    "Health",
    "KeyedLocks",
    "Readiness",
    "RefusalKind",
    "Supervisor",
    "ThreadUnavailable",
    "Turn",
    "TurnEnded",
    "TurnOutcome",
    "TurnRefused",
    "TurnRequest",
    "UnknownChild",
]
