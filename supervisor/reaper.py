"""Leave no process behind: descendant kills and orphan reaping.

codex starts processes of its own (shell snapshots, sandboxed commands), some
in sessions or process groups of their own, so killing the child's process
group is not enough. Two measures close the gap:

* The service makes itself a *child subreaper* (Linux
  ``PR_SET_CHILD_SUBREAPER``): every orphaned descendant of a codex child is
  re-parented to the service instead of PID 1 — which in a container may be a
  minimal init that never reaps — and :class:`OrphanReaper` reaps it.
* When a child stops, :func:`kill_descendants` kills what is left of the
  descendants seen just before it stopped.

Direct children of the service are spawned by the pool and reaped by Trio;
they are registered in :data:`MANAGED_PIDS` so the orphan reaper never takes
an exit status Trio is waiting for. The service process must not spawn other
children of its own outside the pool.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
from pathlib import Path
from typing import NamedTuple

import trio

log = logging.getLogger(__name__)

_PR_SET_CHILD_SUBREAPER = 36
_HAS_PROC = Path("/proc/self/stat").exists()

#: Direct children whose exit status belongs to Trio (see the module doc).
MANAGED_PIDS: set[int] = set()


def enable_subreaper() -> bool:
    """Become the reaper of our descendants' orphans (Linux); True on success."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_CHILD_SUBREAPER) failed: errno %d", ctypes.get_errno())
            return False
    except (OSError, AttributeError) as exc:
        log.warning("cannot become a child subreaper: %s", exc)
        return False
    return True


class _Proc(NamedTuple):
    state: str
    ppid: int
    pgid: int
    sid: int


def process_table() -> dict[int, _Proc]:
    """pid -> (state, ppid, pgid, sid) for every process we can see."""
    table: dict[int, _Proc] = {}
    if not _HAS_PROC:
        return table
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        table[int(entry)] = _Proc(fields[0], int(fields[1]), int(fields[2]), int(fields[3]))
    return table


def descendants(root: int) -> list[int]:
    """Every live descendant of ``root`` (children, grandchildren, …)."""
    children: dict[int, list[int]] = {}
    for pid, proc in process_table().items():
        children.setdefault(proc.ppid, []).append(pid)
    found: list[int] = []
    stack = list(children.get(root, ()))
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, ()))
    return found


def _reap(pid: int) -> bool:
    """Collect the exit status of our zombie ``pid`` (never blocks)."""
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return reaped == pid


def _own_children() -> list[int] | None:
    """Our children (re-parented orphans included), from each of our
    threads' ``children`` file; None where the kernel has none."""
    try:
        return [
            int(pid)
            for task in os.listdir("/proc/self/task")
            for pid in Path(f"/proc/self/task/{task}/children").read_text().split()
        ]
    except (OSError, ValueError):
        return None


def _state(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split(maxsplit=1)[0]


def reap_orphans() -> list[int]:
    """Reap zombies re-parented to us (not the pool's own children).

    It runs every second on the event loop: it reads the stat of our own
    children only, not of every process of the machine (milliseconds on a
    busy host, felt by every open stream), unless the kernel cannot list them.
    """
    children = _own_children()
    if children is None:
        me = os.getpid()
        children = [pid for pid, proc in process_table().items() if proc.ppid == me]
    reaped = []
    for pid in children:
        if pid not in MANAGED_PIDS and _state(pid) == "Z" and _reap(pid):
            reaped.append(pid)
    return reaped


async def kill_descendants(
    pids: list[int],
    *,
    groups: set[int] | None = None,
    timeout_s: float = 2.0,
    adopt_orphans: bool = False,
) -> list[int]:
    """SIGKILL the given former descendants and their kin; reap them.

    The set grows as it is watched: a process forked by a member, or sharing
    a member's process group or session (or one of ``groups``), joins it,
    and with
    ``adopt_orphans`` so does every process re-parented to us. A process is
    only touched while it is parented to us (the subreaper) or to a member,
    which a recycled pid would not be. Returns the pids still present after
    ``timeout_s``.
    """
    me = os.getpid()
    family = set(pids)
    groups = set(groups or ())
    ours = {os.getpgid(0), os.getsid(0)}
    remaining: list[int] = []
    with trio.move_on_after(timeout_s):
        while True:
            table = process_table()
            family = {pid for pid in family if pid in table}
            # Groups are remembered after their members are gone: a zombie
            # may still carry the group of its dead parent.
            groups |= {table[pid].pgid for pid in family} | {table[pid].sid for pid in family}
            groups -= ours
            for pid, proc in table.items():
                if pid in MANAGED_PIDS or pid == me:
                    continue
                if (
                    proc.ppid in family
                    or proc.pgid in groups
                    or proc.sid in groups
                    or (adopt_orphans and proc.ppid == me)
                ):
                    family.add(pid)
            remaining = sorted(family)
            if not remaining:
                return []
            for pid in remaining:
                proc = table[pid]
                if proc.ppid != me and proc.ppid not in family:
                    continue  # not (yet) ours: maybe still being re-parented
                if proc.state != "Z":
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                elif proc.ppid == me:
                    _reap(pid)
            await trio.sleep(0.01)
    return remaining


class OrphanReaper:
    """Reaps orphans re-parented to the service, every ``interval_s``."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.reaped = 0

    async def run(self) -> None:
        while True:
            self.reaped += len(reap_orphans())
            await trio.sleep(self.interval_s)


async def reap_all_orphans(*, timeout_s: float = 2.0) -> list[int]:
    """At shutdown: every non-pool child of ours is an orphan of a codex
    child; kill and reap them and whatever they still spawn. Returns those
    left after ``timeout_s``."""
    return await kill_descendants([], timeout_s=timeout_s, adopt_orphans=True)
