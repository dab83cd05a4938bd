"""The guardian of one supervised program: nothing it started outlives the service.

Run by :mod:`supervisor.process`, never by hand::

    python -I -S guardian.py LIFELINE_FD STATUS_FD PROGRAM [ARG...]

Standard library only (it runs without site-packages, so it starts in tens of
milliseconds). It

1. makes itself a child subreaper (Linux), so every process the program starts
   stays below it, even one that leaves the program's session and is orphaned;
2. forks the program in a session of its own (the program's pid is its process
   group), with ``PR_SET_PDEATHSIG=SIGKILL`` aimed at the guardian, and the
   standard streams the service gave the guardian; then lets go of those
   streams, so the service sees EOF when the program closes them;
3. writes ``pid <pid>`` (or ``error <errno>`` if the program cannot be
   executed) to STATUS_FD and closes it;
4. waits for whichever comes first: the program's exit, or EOF on
   LIFELINE_FD. Only the service holds the write end of the lifeline, so EOF
   means the service is gone (killed with SIGKILL too: the kernel closes its
   descriptors) or wants the program gone;
5. then SIGKILLs every process still below it (the program first) until it has
   no child left, reaping as it goes (for at most a few seconds); stopped
   processes die too;
6. and exits the way the program did (same code, or killed by the same
   signal), so the service sees the program's own exit status.

SIGTERM, SIGINT and SIGHUP do not end the guardian: its life is tied to the
program and to the lifeline, not to signals meant for the service. Orphans
adopted while the program runs are reaped as they exit, and killed if they
linger for more than a couple of seconds (nothing waits for them any more).

Elsewhere than Linux there is no subreaper, no parent-death signal and no
``/proc``: the lifeline still ends the program's process group, but a process
that left it (a new session) is out of reach.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import select
import signal
import sys
import time
from typing import NoReturn

_LINUX = sys.platform.startswith("linux")
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_EXEC_FAILED = 127
#: How long the guardian goes on killing and reaping before it exits anyway.
_END_TIMEOUT_S = 5.0
#: How often the guardian looks for processes the program left behind, and
#: how long such an orphan may linger before it is killed.
_ORPHAN_SCAN_S = 1.0
_ORPHAN_GRACE_S = 2.0


def _libc() -> ctypes.CDLL | None:
    if not _LINUX:
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _ignore(signum: int, frame: object) -> None:
    """A handler, not SIG_IGN: handled signals are reset by exec, ignored ones
    would be inherited by the program."""


def _processes() -> dict[int, tuple[bytes, int]]:
    """pid -> (state, ppid) of every process in /proc (empty elsewhere)."""
    table: dict[int, tuple[bytes, int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return table
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                raw = stat.read()
        except OSError:
            continue
        fields = raw[raw.rindex(b")") + 2 :].split()
        table[int(entry)] = (fields[0], int(fields[1]))
    return table


def _descendants(root: int) -> list[int]:
    """Live processes below ``root``."""
    children: dict[int, list[int]] = {}
    for pid, (_, ppid) in _processes().items():
        children.setdefault(ppid, []).append(pid)
    found: list[int] = []
    stack = list(children.get(root, ()))
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, ()))
    return found


def _kill(pid: int, *, group: bool = False) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        (os.killpg if group else os.kill)(pid, signal.SIGKILL)


def _spawn(program: list[str], libc: ctypes.CDLL | None) -> int:
    """Fork and exec ``program``; OSError if it cannot be executed."""
    report_r, report_w = os.pipe()  # close-on-exec: EOF once exec succeeded
    guardian = os.getpid()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked child
        try:
            os.setsid()
            if libc is not None:
                libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
                if os.getppid() != guardian:
                    os._exit(_EXEC_FAILED)  # the guardian died before prctl took effect
            os.execvp(program[0], program)
        except OSError as exc:
            os.write(report_w, str(exc.errno or 0).encode())
        finally:
            os._exit(_EXEC_FAILED)
    os.close(report_w)
    report = b""
    while chunk := os.read(report_r, 64):
        report += chunk
    os.close(report_r)
    if report:
        os.waitpid(pid, 0)
        code = int(report)
        raise OSError(code, os.strerror(code), program[0])
    return pid


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 512):
            pass


def _reap_exited(program: int) -> tuple[bool, int | None]:
    """Reap every exited child (adopted orphans included). Returns whether any
    child is left, and the program's wait status if it was among them."""
    status = None
    while True:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False, status
        if pid == 0:
            return True, status
        if pid == program:
            status = wait_status
            _kill(program, group=True)  # what is left of its group, elsewhere than Linux


def _kill_stale_orphans(program: int, adopted: dict[int, float]) -> None:
    """Kill what the program left behind and we adopted, after a grace.

    Our children other than the program are orphans of its processes (we
    are their subreaper). Those that exit are reaped; those that linger —
    codex orphans some of its sandboxed file helpers, login shells leave
    daemons — serve nobody any more and would pile up for as long as the
    program runs: after ``_ORPHAN_GRACE_S`` they are killed.
    """
    now = time.monotonic()
    alive = set()
    for pid in _children(os.getpid()):
        if pid == program:
            continue
        alive.add(pid)
        first_seen = adopted.setdefault(pid, now)
        if now - first_seen >= _ORPHAN_GRACE_S:
            _kill(pid)
    for pid in list(adopted):
        if pid not in alive:
            del adopted[pid]


def _children(parent: int) -> list[int]:
    """Live (not zombie) children of ``parent``."""
    return [pid for pid, (state, ppid) in _processes().items() if ppid == parent and state != b"Z"]


def _watch(program: int, lifeline: int, wakeup: int) -> int | None:
    """Wait for the program to exit or the lifeline to break, then end
    everything below us; return the program's wait status."""
    poller = select.poll()  # not select(): the service's descriptor numbers may be large
    poller.register(lifeline, select.POLLIN)
    poller.register(wakeup, select.POLLIN)
    _, status = _reap_exited(program)
    adopted: dict[int, float] = {}
    while status is None:
        ready = {fd for fd, _ in poller.poll(_ORPHAN_SCAN_S * 1000)}
        _drain(wakeup)
        _, status = _reap_exited(program)
        if status is None and lifeline in ready and not os.read(lifeline, 1):
            break  # EOF: the service is gone, or wants the program gone
        _kill_stale_orphans(program, adopted)
    poller.unregister(lifeline)
    # Kill everything below us and reap until no child is left. Each round
    # kills what /proc shows below us, reaps, and waits for the next SIGCHLD;
    # as a subreaper we inherit the children of what dies, so nothing slips
    # away, and ECHILD means nothing is left. Bounded: a process in
    # uninterruptible sleep dies only when it wakes, and is then someone
    # else's to reap.
    deadline = time.monotonic() + _END_TIMEOUT_S
    while True:
        if status is None:
            _kill(program, group=True)  # its group id cannot be reused while it is unreaped
        for pid in _descendants(os.getpid()):
            _kill(pid)
        left, reaped = _reap_exited(program)
        status = reaped if reaped is not None else status
        remaining = deadline - time.monotonic()
        if not left or remaining <= 0:
            return status
        poller.poll(min(remaining, 0.1) * 1000)
        _drain(wakeup)


def _exit_like(status: int | None) -> NoReturn:
    if status is not None and os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # mirror, do not dump
        with contextlib.suppress(OSError, ValueError):  # SIGKILL has no handler to reset
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        os._exit(128 + signum)
    if status is not None and os.WIFEXITED(status):
        os._exit(os.WEXITSTATUS(status))
    os._exit(1)


def main(argv: list[str]) -> NoReturn:
    lifeline, status_fd = int(argv[1]), int(argv[2])
    program = argv[3:]
    for fd in (lifeline, status_fd):
        os.set_inheritable(fd, False)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _ignore)
    wakeup, wakeup_w = os.pipe()
    os.set_blocking(wakeup, False)
    os.set_blocking(wakeup_w, False)
    signal.signal(signal.SIGCHLD, _ignore)
    signal.set_wakeup_fd(wakeup_w)
    libc = _libc()
    if libc is not None:
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        pid = _spawn(program, libc)
    except OSError as exc:
        _report(status_fd, f"error {exc.errno or 0}")
        os._exit(_EXEC_FAILED)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    _report(status_fd, f"pid {pid}")
    _exit_like(_watch(pid, lifeline, wakeup))


def _report(fd: int, line: str) -> None:
    # The service may have given up on us already (EPIPE); the lifeline
    # then tells us so.
    with contextlib.suppress(OSError):
        os.write(fd, f"{line}\n".encode())
    os.close(fd)


if __name__ == "__main__":
    main(sys.argv)
