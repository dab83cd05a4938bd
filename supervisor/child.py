"""One supervised ``codex app-server`` process.

:meth:`Child.run` spawns the process in its own process group, speaks the
handshake, reports itself started only once ``initialize`` has been answered,
and on the way out — cancellation, a stop request, the process dying — always
reaps it: close stdin, wait, SIGTERM the group, wait, SIGKILL the group, wait.
Every turn still running on the child is failed with the exit reason, so no
client waits on a dead process.

codex's stderr (its ``tracing`` log) reaches ours at the level codex gave each
line — WARN at WARNING, ERROR and panics at ERROR, the rest at DEBUG —
stripped of colour codes, and rate limited: codex repeating itself (a retry
loop) must not bury everything else (:class:`StderrLog`).
"""

from __future__ import annotations

import collections
import contextlib
import enum
import logging
import math
import os
import re
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import attrs
import trio

from bridge.codex import ApprovalPolicy, CodexClient
from bridge.framing import LineFramer
from bridge.peer import JsonRpcPeer, PeerClosed, RpcCallError, Tap
from bridge.protocol import ClientInfo, ModelInfo

from .command_policy import CommandPolicy
from .outcome import FailureKind
from .process import SupervisedProcess, start_supervised
from .reaper import MANAGED_PIDS, descendants, kill_descendants
from .turn import Turn

log = logging.getLogger(__name__)

_VERSION = "0.1.0"
#: Variables people expect codex to take an OpenAI key from; app-server does not.
API_KEY_VARIABLES = ("OPENAI_API_KEY", "CODEX_API_KEY")


def rss_mib(pid: int | None) -> float | None:
    """Resident memory of ``pid`` in MiB (Linux), None if unknown."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class ChildState(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    #: Being stopped (asked to, killed, or found hung): takes no turn, ever again.
    STOPPING = "stopping"
    STOPPED = "stopped"


class ChildStartError(Exception):
    """The child did not complete its handshake."""


@attrs.frozen
class ChildLaunch:
    """How to start a child and talk to it."""

    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: str | None = None
    client_name: str = "codex_bridge"
    codex_home: str = ""
    startup_timeout_s: float = 30.0
    stop_grace_s: float = 3.0
    max_line_bytes: int = 16 * 1024 * 1024
    approval_policy: ApprovalPolicy = ApprovalPolicy.DECLINE
    approval_timeout_s: float = 30.0
    #: Sees every line both ways (the transcript recorder uses it).
    tap: Tap | None = None
    #: How the commands codex runs are confined (checked before the pool starts).
    command_policy: CommandPolicy | None = None
    #: The environment for each new process, when it may change over time
    #: (codex's config.toml may name a new provider key); else ``env``.
    environment: Callable[[], Mapping[str, str]] | None = None
    #: API-key variables of the service's environment that codex does not
    #: read (said so when codex has no login).
    unused_key_variables: tuple[str, ...] = ()
    #: What to tell an operator (and a client) when codex has no login.
    not_logged_in: str = "codex is not logged in, so it cannot reach a model."

    def spawn_env(self) -> Mapping[str, str]:
        return self.environment() if self.environment is not None else self.env


def credentials_stamp(codex_home: str) -> tuple[int, int, int] | None:
    """Identity of the login codex stores in ``codex_home`` (None: none stored).

    codex app-server reads ``auth.json`` once, at start: a login made while
    it runs only reaches a new process.
    """
    if not codex_home:
        return None
    try:
        stat = (Path(codex_home).expanduser() / "auth.json").stat()
    except OSError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


class Child:
    """A codex app-server process and its JSON-RPC client.

    Owned by the pool: start it with ``await nursery.start(child.run)``,
    which returns once the child is initialized (or raises
    :class:`ChildStartError`). ``run`` returns when the process exits or
    :meth:`request_stop` is called; the process is reaped before it returns,
    also when cancelled.
    """

    def __init__(self, name: str, launch: ChildLaunch) -> None:
        self.name = name
        self.launch = launch
        self.state = ChildState.STARTING
        self.turns: set[Turn] = set()
        #: Turns placed on this child and not yet released (the multiplexer's count).
        self.load = 0
        #: Non-ephemeral threads this child owns (codex lets one process write a thread).
        self.threads: set[str] = set()
        self.turns_served = 0
        self.pid: int | None = None
        self.exit_reason: str | None = None
        #: The process's return code once reaped (negative: killed by that signal).
        self.exit_code: int | None = None
        self.auth_problem: str | None = None
        #: codex's model catalog, as this child listed it at start-up, and when.
        self.models: tuple[ModelInfo, ...] | None = None
        self.models_at: float | None = None
        self.ready_at: float | None = None
        #: Being drained to be replaced: it will not come back to READY.
        self.stopping = False
        self.planned_stop = False
        self._stop_reason: str | None = None
        self._stop_kind: str | None = None
        self._stop = trio.Event()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self._client: CodexClient | None = None
        self._credentials_at_start: tuple[int, int, int] | None = None

    @property
    def client(self) -> CodexClient:
        if self._client is None:
            raise PeerClosed(f"{self.name} is not running")
        return self._client

    @property
    def exit_signal(self) -> signal.Signals | None:
        """The signal that ended the process, if one did."""
        code = self.exit_code
        if code is None or code >= 0:
            return None
        try:
            return signal.Signals(-code)
        except ValueError:
            return None

    @property
    def stop_reason(self) -> str | None:
        """Why the child was asked to stop (or killed), if it was."""
        return self._stop_reason

    @property
    def stop_kind(self) -> str | None:
        """The category the stopper gave with :attr:`stop_reason` (the pool's
        restart counts), if it gave one."""
        return self._stop_kind

    @property
    def usable(self) -> bool:
        return self.state is ChildState.READY

    def request_stop(
        self,
        reason: str = "stopped by the supervisor",
        *,
        planned: bool = True,
        kind: str | None = None,
    ) -> None:
        """Ask ``run`` to stop the process (gracefully) and return.

        From this moment on the child takes no new turn: it is ``STOPPING``
        until reaped, however long the process takes to go. The first request
        decides the reason, whether it was planned, and its ``kind``.
        """
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop_kind = kind
            self.planned_stop = planned
            self.stopping = True
        if self.state is not ChildState.STOPPED:
            self.state = ChildState.STOPPING
        self._stop.set()

    def kill(self, reason: str, *, kind: str | None = None) -> None:
        """Stop a child that cannot be trusted to stop by itself (hung, stopped).

        Everything waiting on it fails at once (:class:`PeerClosed`), the
        process group gets SIGKILL now instead of after the graceful steps,
        and ``run`` reaps it as usual.
        """
        self.request_stop(reason, planned=False, kind=kind)
        if self._client is not None:
            self._client.peer.close(reason)
        if self.pid is not None and self.state is not ChildState.STOPPED:
            _killpg(self.pid, signal.SIGKILL)

    def describe(self, now: float) -> dict[str, object]:
        """Operator-facing facts about this child."""
        state = self.state.value
        if self.state is ChildState.READY:
            state = "busy" if self.load else "idle"
        rss = rss_mib(self.pid) if self.state is not ChildState.STOPPED else None
        return {
            "name": self.name,
            "pid": self.pid,
            "state": state,
            "load": self.load,
            "turns_served": self.turns_served,
            "threads_owned": len(self.threads),
            "rss_mib": round(rss, 1) if rss is not None else None,
            "uptime_s": round(now - self.ready_at, 1) if self.ready_at is not None else None,
            "auth_problem": self.auth_problem,
        }

    async def check_auth(self) -> str | None:
        """Ask codex whether it can reach its model; cache and return the problem.

        ``account/read`` re-reads config.toml (a provider with its own key
        says ``requiresOpenaiAuth: false``), but not ``auth.json``: see
        :meth:`credentials_changed`. ``OPENAI_API_KEY``/``CODEX_API_KEY`` in
        the child's environment do not count: codex app-server (0.169) sends
        no key from them.
        """
        result = await self.client.account_read(timeout_s=self.launch.startup_timeout_s)
        if result.requires_openai_auth and result.account is None:
            self.auth_problem = self.launch.not_logged_in
        else:
            self.auth_problem = None
        return self.auth_problem

    def credentials_changed(self) -> bool:
        """Has a login been stored in CODEX_HOME since this process started?"""
        return credentials_stamp(self.launch.codex_home) != self._credentials_at_start

    async def run(self, *, task_status: trio.TaskStatus[Child] = trio.TASK_STATUS_IGNORED) -> None:
        launch = self.launch
        # Before the spawn: a login stored meanwhile then counts as a change.
        self._credentials_at_start = credentials_stamp(launch.codex_home)
        try:
            # Under a guardian: the process and all it starts die with the
            # service, even if the service is killed with SIGKILL.
            process = await start_supervised(launch.argv, env=launch.spawn_env(), cwd=launch.cwd)
        except OSError as exc:
            self.state = ChildState.STOPPED
            self.exit_reason = f"cannot start {launch.argv[0]}: {exc}"
            raise ChildStartError(self.exit_reason) from exc
        self.pid = process.pid
        peer = JsonRpcPeer(
            process.stdin,
            process.stdout,
            name=self.name,
            max_line_bytes=launch.max_line_bytes,
            server_request_timeout_s=launch.approval_timeout_s,
            tap=launch.tap,
        )
        self._client = CodexClient(peer, approval_policy=launch.approval_policy)
        # Raised after the process is reaped, and outside the nursery so the
        # pool's ``nursery.start`` sees it as is, not inside an ExceptionGroup.
        start_error: ChildStartError | None = None
        went_away = False  # the child closed its output before we ended it

        async def watch_output() -> None:
            nonlocal went_away
            await peer.wait_closed()
            went_away = True

        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(peer.run)
                nursery.start_soon(self._drain_stderr, process.stderr)
                try:
                    await self._handshake()
                except ChildStartError as exc:
                    start_error = exc
                else:
                    if not self.stopping:  # a stop asked for during the handshake stands
                        self.state = ChildState.READY
                    self.ready_at = trio.current_time()
                    log.info("%s: ready (pid %d)", self.name, process.pid)
                    task_status.started(self)
                    async with trio.open_nursery() as watch:
                        watch.start_soon(self._cancel_on, self._stop.wait, watch.cancel_scope)
                        watch.start_soon(self._cancel_on, watch_output, watch.cancel_scope)
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                # Unless it went away by itself, we end it (cancellation, a
                # failed handshake or a stop request).
                ended_by_us = not went_away and start_error is None
                # Planned: a stop asked for as such, or the owner cancelling
                # us (the service shutting down), not a kill or a failure.
                planned = self.planned_stop if self._stop.is_set() else ended_by_us
                code = await self._reap(process, planned=planned)
                MANAGED_PIDS.discard(process.pid)
                self.exit_code = code
                self.exit_reason = self._describe_exit(code, ended_by_us)
                peer.close(self.exit_reason)
                self.state = ChildState.STOPPED
                for turn in list(self.turns):
                    turn.fail(FailureKind.CHILD_EXITED, f"codex app-server {self.exit_reason}")
                log.info("%s: stopped, %s", self.name, self.exit_reason)
        if start_error is not None:
            raise start_error

    @staticmethod
    async def _cancel_on(wait: Callable[[], Awaitable[object]], scope: trio.CancelScope) -> None:
        await wait()
        scope.cancel()

    async def _handshake(self) -> None:
        launch = self.launch
        try:
            with trio.fail_after(launch.startup_timeout_s):
                await self.client.initialize(
                    ClientInfo(launch.client_name, _VERSION, "codex-bridge")
                )
                await self.check_auth()
                await self._list_models()
        except trio.TooSlowError as exc:
            raise ChildStartError(
                f"{self.name}: no answer to initialize within {launch.startup_timeout_s:g}s"
            ) from exc
        except (PeerClosed, RpcCallError) as exc:
            tail = self.stderr_tail()
            raise ChildStartError(
                f"{self.name}: handshake failed: {exc}" + (f"; stderr: {tail}" if tail else "")
            ) from exc

    async def _list_models(self) -> None:
        """Learn codex's catalog now, so serving it never waits on one child."""
        try:
            self.models = tuple(await self.client.model_list())
        except RpcCallError as exc:
            log.warning("%s: cannot list models: %s", self.name, exc.message)
        else:
            self.models_at = trio.current_time()

    def unanswered_for(self) -> float:
        """How long this child has left a request unanswered (0: none waits)."""
        if self._client is None or self.state is ChildState.STOPPED:
            return 0.0
        return self._client.peer.oldest_pending_age()

    async def ping(self, timeout_s: float) -> bool:
        """A cheap request with a deadline: False if the child did not answer in time.

        An error reply counts as an answer (the process is alive and reading);
        a closed connection is the exit watcher's business, not a hang.
        """
        try:
            await self.client.ping(timeout_s=timeout_s)
        except trio.TooSlowError:
            return False
        except (RpcCallError, PeerClosed):
            pass
        return True

    async def _drain_stderr(self, stream: trio.abc.ReceiveStream) -> None:
        framer = LineFramer(64 * 1024)
        stderr = StderrLog(log, self.name)
        try:
            while True:
                data: bytes | bytearray = b""
                # Wakes up when a summary of suppressed lines is owed, so it
                # is logged when its window ends even if codex fell silent.
                with trio.move_on_at(stderr.due) as timer:
                    try:
                        data = await stream.receive_some(65536)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
                if timer.cancelled_caught:
                    stderr.flush()
                    continue
                if not data:
                    return
                for line in framer.feed(data):
                    if isinstance(line, bytes):
                        text = strip_ansi(line.decode("utf-8", "replace"))
                        self._stderr_tail.append(text)
                        stderr.line(text)
        finally:
            stderr.flush(final=True)

    def stderr_tail(self, lines: int = 3) -> str:
        return " | ".join(list(self._stderr_tail)[-lines:])

    def _describe_exit(self, code: int | None, ended_by_us: bool) -> str:
        if self._stop.is_set():
            return self._stop_reason or "stopped by the supervisor"
        if ended_by_us and code == 0:
            return "stopped by the supervisor"
        if code is None:
            return "exit status unknown"
        if code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        tail = self.stderr_tail()
        return how + (f" (stderr: {tail})" if tail and code != 0 else "")

    async def _reap(self, process: SupervisedProcess, *, planned: bool) -> int | None:
        """Stop the process group; always waits for the process to be reaped.

        SIGTERM is one of the graceful steps: codex may take longer than the
        grace to finish on EOF (a turn cut short by a drain), and a planned
        stop that needs it is routine (INFO). Refusing SIGTERM is not.
        """
        grace = self.launch.stop_grace_s
        # Seen now, while its guardian is alive: some run in sessions of their
        # own, out of reach of the group kill below.
        family = descendants(process.guardian_pid)
        if process.returncode is None:
            with contextlib.suppress(trio.BrokenResourceError):
                await process.stdin.aclose()  # codex exits on EOF of stdin
            with trio.move_on_after(grace):
                await process.wait()
        if process.returncode is None:
            log.log(
                logging.INFO if planned else logging.WARNING,
                "%s: did not exit on EOF; sending SIGTERM to its group",
                self.name,
            )
            _killpg(process.pid, signal.SIGTERM)
            with trio.move_on_after(grace):
                await process.wait()
        if process.returncode is None:
            log.warning("%s: did not exit on SIGTERM; sending SIGKILL to its group", self.name)
            process.kill()  # its group; its guardian ends the rest
            await process.wait()  # SIGKILL cannot be refused: wait for the reaping
        # Commands codex started live in the same group; none may outlive it.
        _killpg(process.pid, signal.SIGKILL)
        left = await kill_descendants(family, groups={process.pid}, timeout_s=grace + 1.0)
        if left:
            log.warning("%s: processes %s of its group outlived it", self.name, left)
        return process.returncode


#: ANSI escape sequences: CSI (colours, cursor moves), OSC ended by BEL or
#: ST (titles, hyperlinks), and the short ones (``ESC (B``, ``ESC 7``, ...).
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[ -/]*[0-~])")
#: The level of a ``tracing`` line, after an optional timestamp (RFC 3339 or
#: an uptime: a first word that starts with a digit); ``[`` for env_logger.
_LEVEL = re.compile(r"^\[?\s*(?:\d\S*\s+)?(TRACE|DEBUG|INFO|WARN(?:ING)?|ERROR)\b")
#: A Rust panic: ``thread 'main' panicked at src/x.rs:1:2:`` (older: ``panicked at 'msg'``).
_PANIC = re.compile(r"^thread '[^']*' panicked|\bpanicked at\b")
_LEVELS = {"WARN": logging.WARNING, "WARNING": logging.WARNING, "ERROR": logging.ERROR}
_NUMBER = re.compile(r"\d+")
#: Bounds on what :class:`StderrLog` keeps per message (lines may be 64 KiB).
_KEY_CHARS = 300
_EXAMPLE_CHARS = 2000


def strip_ansi(text: str) -> str:
    """``text`` without ANSI escape sequences (codex colours its log on a TTY,
    and sometimes when it is not one)."""
    return _ANSI.sub("", text) if "\x1b" in text else text


def stderr_level(text: str) -> int:
    """The logging level for a stderr line of codex (escape sequences stripped).

    WARN is WARNING; ERROR and a panic are ERROR; INFO, DEBUG, TRACE and
    anything unrecognised stay DEBUG: codex's chatter is not ours to raise.
    """
    match = _LEVEL.match(text)
    if match is not None and match[1] in _LEVELS:
        return _LEVELS[match[1]]
    if _PANIC.search(text):
        return logging.ERROR
    return logging.DEBUG


def stderr_key(text: str) -> str:
    """What makes stderr lines "the same message": their text with every number
    (the timestamp, a retry count, a delay) made alike, cut to a bounded length."""
    return _NUMBER.sub("#", text)[:_KEY_CHARS]


@attrs.define
class _Repeats:
    """One message's current window in :class:`StderrLog`."""

    since: float
    logged: int = 0
    suppressed: int = 0
    #: The highest level suppressed, and the last line suppressed (for the summary).
    level: int = logging.DEBUG
    example: str = ""


class StderrLog:
    """Log a child's stderr lines at their level without letting repeats flood the log.

    Each distinct message (:func:`stderr_key`) gets ``per_message`` lines per
    ``window_s`` from its first one; the rest are counted and reported in one
    line, "<message> (N similar lines suppressed)", once that window has
    ended (:attr:`due` says when, :meth:`flush` reports). Warnings and errors
    also share a cap of ``warn_cap`` lines per window, whatever their text (a
    child can vary its messages). At most ``max_messages`` messages are
    tracked; the one seen least recently is forgotten (its count reported
    first), so memory stays bounded whatever the child writes.

    Not :class:`bridge.log_limit.LogLimiter`: that has one window for every
    line and reports at WARNING "more lines like the above", which names no
    message once several repeat at once, nor leaves DEBUG lines at DEBUG.
    ``clock`` is ``trio.current_time``, so tests run it on virtual time.
    """

    def __init__(
        self,
        logger: logging.Logger,
        name: str,
        *,
        per_message: int = 5,
        warn_cap: int = 50,
        window_s: float = 60.0,
        max_messages: int = 256,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._logger = logger
        self._name = name
        self.per_message = per_message
        self.warn_cap = warn_cap
        self.window_s = window_s
        self.max_messages = max_messages
        self._clock = clock
        self._messages: collections.OrderedDict[str, _Repeats] = collections.OrderedDict()
        self._cap_since = -math.inf
        self._cap_used = 0
        self._cap_suppressed = 0
        self._cap_level = logging.WARNING
        self._due = math.inf

    @property
    def due(self) -> float:
        """When the next summary is owed (``inf``: none is)."""
        return self._due

    def line(self, text: str) -> None:
        """Log (or count) one stderr line, escape sequences already stripped."""
        level = stderr_level(text)
        if not self._logger.isEnabledFor(level):
            return  # nothing to flood: not even tracked
        now = self._clock()
        if now >= self._due:
            self.flush()
        key = stderr_key(text)
        seen = self._messages.get(key)
        if seen is None or now - seen.since >= self.window_s:
            # (an ended window with lines suppressed was reported by flush)
            seen = self._messages[key] = _Repeats(now)
            if len(self._messages) > self.max_messages:
                _, old = self._messages.popitem(last=False)
                self._summarise(old)
        self._messages.move_to_end(key)
        if seen.logged < self.per_message:
            seen.logged += 1
            self._emit(level, "%s stderr: %s", (self._name, text))
        else:
            seen.suppressed += 1
            seen.level = max(seen.level, level)
            seen.example = text[:_EXAMPLE_CHARS]
            self._due = min(self._due, seen.since + self.window_s)

    def flush(self, *, final: bool = False) -> None:
        """Report what was suppressed in windows that have ended (``final``: in all)."""
        now = self._clock()
        if self._cap_suppressed and now - self._cap_since >= self.window_s:
            self._report_capped()
        for key, seen in list(self._messages.items()):
            if seen.suppressed and (final or now - seen.since >= self.window_s):
                del self._messages[key]
                self._summarise(seen)
        if final and self._cap_suppressed:
            self._report_capped()
        due = [seen.since + self.window_s for seen in self._messages.values() if seen.suppressed]
        if self._cap_suppressed:
            due.append(self._cap_since + self.window_s)
        self._due = min(due, default=math.inf)

    def _summarise(self, seen: _Repeats) -> None:
        if seen.suppressed:
            self._emit(
                seen.level,
                "%s stderr: %s (%d similar lines suppressed)",
                (self._name, seen.example, seen.suppressed),
                count=seen.suppressed,
            )

    def _emit(self, level: int, message: str, args: tuple[object, ...], count: int = 1) -> None:
        """Log, within the cap on warnings and errors (``count``: lines it stands for)."""
        if level >= logging.WARNING:
            now = self._clock()
            if now - self._cap_since >= self.window_s:
                if self._cap_suppressed:
                    self._report_capped()
                self._cap_since, self._cap_used = now, 0
            if self._cap_used >= self.warn_cap:
                self._cap_suppressed += count
                self._cap_level = max(self._cap_level, level)
                self._due = min(self._due, self._cap_since + self.window_s)
                return
            self._cap_used += 1
        self._logger.log(level, message, *args)

    def _report_capped(self) -> None:
        self._logger.log(
            self._cap_level,
            "%s stderr: ... (%d more warning and error lines suppressed: over %d in %gs)",
            self._name,
            self._cap_suppressed,
            self.warn_cap,
            self.window_s,
        )
        self._cap_suppressed = 0
        self._cap_level = logging.WARNING


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
