"""Killing what is left of an interrupted turn's commands.

codex answers ``turn/interrupt`` but leaves a running command going, and
nobody will read its output any more. The item's ``processId`` is a pid
inside the sandbox's pid namespace, so a command is found by its argv among
the child's descendants; what is killed is the whole subtree that codex
started for it (the sandbox wrapper, a direct child of codex).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
from pathlib import Path

import trio

from .reaper import descendants, process_table

log = logging.getLogger(__name__)


async def stop_commands(child_pid: int, commands: list[str]) -> None:
    """Kill the process subtrees that codex (``child_pid``) started for
    ``commands`` (command lines, as codex reports them)."""
    wanted = []
    for command in commands:
        with contextlib.suppress(ValueError):
            wanted.append(shlex.split(command))
    doomed = await trio.to_thread.run_sync(_command_subtrees, child_pid, wanted)
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if doomed:
        log.info("killed %d leftover process(es) of an interrupted turn", len(doomed))


def _command_subtrees(child_pid: int, argvs: list[list[str]]) -> list[int]:
    table = process_table()
    found: set[int] = set()
    for pid in descendants(child_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if argv.rstrip("\0").split("\0") not in argvs:
            continue
        top = pid  # climb to the process codex itself started
        while top in table and table[top].ppid != child_pid:
            top = table[top].ppid
        if top in table:
            found.add(top)
            found.update(descendants(top))
    return sorted(found)
