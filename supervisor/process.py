"""Start a supervised program so that nothing of it outlives the service.

The service stops its children itself (EOF on stdin, SIGTERM, SIGKILL, see
:mod:`supervisor.child`) and, as a child subreaper, collects what they leave
behind (:mod:`supervisor.reaper`). Neither helps when the service itself is
killed with SIGKILL: a dead subreaper adopts nothing, so a codex child that
is hung or stopped, and whatever escaped it, would be re-parented to PID 1
and live on.

What codex leaves when it dies (codex 0.169, seen with SIGKILL on codex):
its sandboxed commands die with it (``codex-linux-sandbox`` gets
``PR_SET_PDEATHSIG=SIGTERM``, bubblewrap runs with ``--die-with-parent`` and
the command is inside bubblewrap's pid namespace), but the login shell codex
starts to snapshot the user's environment (``setsid``, then
``bash -lc …``, no parent-death signal) survives it, and so does anything
already orphaned, such as a daemon started by a login profile. So a
parent-death signal on codex alone is not enough.

Hence one *guardian* per program (:mod:`supervisor.guardian`, a small
standard-library Python process), which sits between the service and the
program:

* the guardian is a child subreaper, so every process the program starts
  stays below it, orphans included;
* it holds the read end of a *lifeline* pipe whose write end only the service
  holds. When the service dies, by any signal, the kernel closes that end;
  the guardian sees EOF and SIGKILLs everything below it, stopped processes
  included, until it has no child left. Unlike a parent-death signal this
  does not depend on which thread of the service spawned it: ``trio``
  runs ``subprocess.Popen`` in a worker thread, which exits when idle, and a
  parent-death signal is sent when the *thread* that forked exits;
* the program gets ``PR_SET_PDEATHSIG=SIGKILL`` aimed at the single-threaded
  guardian (re-checked with ``getppid`` against a guardian that died before
  it took effect), so the program dies even if the guardian is killed;
* the guardian also ends everything below it when the program exits, and
  exits like the program, so the service sees the program's own exit status.

The program keeps the interface of a ``trio.Process``: :attr:`pid` is the
program's (also its process group), its standard streams are the guardian's
pipes, :meth:`wait` and :attr:`returncode` report the program's exit through
the guardian's. The guardian is the service's direct child: it is registered
in :data:`~supervisor.reaper.MANAGED_PIDS` until it is reaped.

Set aside: a parent-death signal on codex spawned from one long-lived
thread (codex's snapshot shells and adopted orphans would still survive);
cgroups (``cgroup.kill`` needs a delegated cgroup, rarely there; under
systemd, ``KillMode`` already covers the unit); a pid namespace per child
(needs privileges or a user namespace, and changes what codex sees). The
price of a guardian is one small process per child (about 11 MB resident, some tens
of milliseconds at start).

Elsewhere than Linux there is no subreaper, parent-death signal or
``/proc``: the lifeline still ends the program's process group when the
service dies, but not processes that left it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import trio

from .reaper import MANAGED_PIDS

GUARDIAN = Path(__file__).with_name("guardian.py")
#: How long an unwanted guardian may take to end its program before it is killed.
_ABANDON_GRACE_S = 5.0


class SupervisedProcess:
    """A program running under its guardian; see the module doc.

    Owned by whoever started it, who must see it end (:meth:`wait`, or
    :attr:`returncode` not None): the guardian is reaped, and the lifeline
    released, only then.
    """

    def __init__(self, guardian: trio.Process, pid: int, lifeline: int) -> None:
        assert guardian.stdin is not None
        assert guardian.stdout is not None
        assert guardian.stderr is not None
        self._guardian = guardian
        self._lifeline: int | None = lifeline
        #: The program's pid, also its process group and session.
        self.pid = pid
        self.stdin: trio.abc.SendStream = guardian.stdin
        self.stdout: trio.abc.ReceiveStream = guardian.stdout
        self.stderr: trio.abc.ReceiveStream = guardian.stderr

    @property
    def guardian_pid(self) -> int:
        return self._guardian.pid

    @property
    def returncode(self) -> int | None:
        """The program's exit status (negative: killed by that signal), once
        its guardian is reaped; None before."""
        code = self._guardian.returncode  # reaps an exited guardian
        if code is not None:
            self._release()
        return code

    async def wait(self) -> int:
        """Wait until the program and everything it started are gone and the
        guardian is reaped; return the program's exit status. Cancellable."""
        code = await self._guardian.wait()
        self._release()
        return code

    def kill(self) -> None:
        """SIGKILL the program's process group and break the lifeline: the
        guardian then SIGKILLs whatever else is below it, reaps it and exits
        (within a few seconds, see :mod:`supervisor.guardian`)."""
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            self._break_lifeline()
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._guardian.pid, signal.SIGCONT)  # were it stopped

    def _break_lifeline(self) -> None:
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None

    def _release(self) -> None:
        self._break_lifeline()
        MANAGED_PIDS.discard(self._guardian.pid)


async def start_supervised(
    argv: Sequence[str], *, env: Mapping[str, str], cwd: str | None = None
) -> SupervisedProcess:
    """Start ``argv`` under a guardian, with piped stdin, stdout and stderr.

    Returns once the program is executing. Raises OSError if it cannot be
    started (e.g. no such file), after the guardian is reaped. If cancelled
    meanwhile, the guardian ends the program and is reaped before this
    returns (bounded).
    """
    _check_executable(argv[0], env, cwd)
    lifeline_r, lifeline_w = os.pipe()  # close-on-exec: only the guardian gets a copy
    status_r, status_w = os.pipe()
    try:
        guardian = await trio.lowlevel.open_process(
            [sys.executable, "-I", "-S", str(GUARDIAN), str(lifeline_r), str(status_w), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,  # signals to the service's group are not the guardian's
            pass_fds=(lifeline_r, status_w),
        )
    except BaseException:
        os.close(lifeline_w)
        os.close(status_r)
        raise
    finally:
        os.close(lifeline_r)
        os.close(status_w)
    MANAGED_PIDS.add(guardian.pid)
    try:
        report = await _read_all(trio.lowlevel.FdStream(status_r))
        match report.split():
            case [b"pid", pid] if pid.isdigit():
                return SupervisedProcess(guardian, int(pid), lifeline_w)
            case [b"error", code] if code.isdigit():
                error = int(code)
                raise OSError(error, os.strerror(error), argv[0])
            case _:
                raise OSError(f"the guardian of {argv[0]} failed: {report!r}")
    except BaseException:
        await _abandon(guardian, lifeline_w)
        raise


def _check_executable(program: str, env: Mapping[str, str], cwd: str | None) -> None:
    """Fail at once, without a guardian, for a program that is plainly
    missing (the guardian still reports any other exec failure)."""
    if os.sep in program:
        path: str | None = os.path.join(cwd or "", program)
    else:
        path = shutil.which(program, path=env.get("PATH", os.defpath))
    if path is None or not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)


async def _read_all(stream: trio.lowlevel.FdStream) -> bytes:
    async with stream:
        data = b""
        while chunk := await stream.receive_some(256):
            data += chunk
        return data


async def _abandon(guardian: trio.Process, lifeline: int) -> None:
    """Break the lifeline (the guardian ends its program), then reap it."""
    os.close(lifeline)
    with trio.CancelScope(shield=True):
        with trio.move_on_after(_ABANDON_GRACE_S):
            await guardian.wait()
        if guardian.returncode is None:
            guardian.kill()
            await guardian.wait()
        MANAGED_PIDS.discard(guardian.pid)
        for stream in (guardian.stdin, guardian.stdout, guardian.stderr):
            if stream is not None:
                await stream.aclose()
