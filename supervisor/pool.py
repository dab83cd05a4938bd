"""A fixed number of codex children: started, watched, restarted, recycled.

Each slot runs one child at a time. A child that exits on its own is
restarted after an exponential backoff with jitter; a slot whose children
keep dying (``crash_loop_exits`` within ``crash_loop_window_s``) opens its
breaker and waits ``breaker_cooldown_s`` before trying again. Only a child
that *crashes* counts towards the breaker and the growing backoff: one that
fails its start-up, or exits on its own (an error code, a fatal signal such as
SIGSEGV) soon after it became ready. A child that ran and was then killed —
``kill -9`` by someone, the OOM killer, the pool itself after a failed
liveness check — is replaced at once: fresh children start fine, and a storm
of kills must not leave the pool waiting out a breaker.

Every ``liveness_interval_s`` each running child must answer a cheap request
within ``liveness_timeout_s``; one that does not (stopped, deadlocked) is
killed and replaced, and every turn and request waiting on it fails over.

A child that codex says cannot reach its model — not logged in — stays in
the pool (its requests get a clear 503, and the service is not *ready*), and
is asked again every ``auth_recheck_interval_s``. codex re-reads config.toml
on that question (a provider configured meanwhile), but reads a login stored
in ``CODEX_HOME`` only at start, and its model catalog too: a child that can
now reach a model, or whose home got a new login, is replaced by one that
loads it all. The log says so once per change, not once per child.

Planned stops (an operator's restart, recycling after N turns or above an RSS
limit) go through *draining*: the child takes no new turns, its running turns
finish (bounded by ``drain_timeout_s``), then it is replaced at once. They are
routine and log at INFO only; a crash, a kill or a hang logs WARNING or ERROR.

Every child that ends is counted by why, in :attr:`Pool.restart_counts`
(one :class:`ExitKind` each: the ``reason`` of the restarts metric).
"""

from __future__ import annotations

import collections
import enum
import logging
import math
import random
import signal
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio

from bridge.peer import PeerClosed, RpcCallError

from .child import Child, ChildLaunch, ChildStartError, ChildState, rss_mib
from .outcome import FailureKind

log = logging.getLogger(__name__)

#: How a child that was killed from outside ends; other exits are crashes.
_KILL_SIGNALS = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


class UnknownChild(Exception):
    pass


class ExitKind(enum.StrEnum):
    """Why a child ended, as a category an operator can count and alert on."""

    #: Planned: drained, then replaced.
    OPERATOR = "operator"
    ROLLING = "rolling"
    RECYCLED_TURNS = "recycled_turns"
    RECYCLED_RSS = "recycled_rss"
    #: codex's login or config changed, and it reads them only at start.
    CREDENTIALS = "credentials"
    #: Killed by the pool: it stopped answering (or left a turn running).
    HUNG = "hung"
    #: Unplanned, on its own: counted by the crash-loop breaker.
    CRASHED = "crashed"
    #: Unplanned: a signal from outside (``kill -9``, the OOM killer).
    KILLED = "killed"
    EXITED = "exited"


@attrs.define(eq=False)
class Slot:
    index: int
    child: Child | None = None
    generation: int = 0
    restarts: int = 0
    last_exit_reason: str | None = None
    #: Times of unplanned exits, for the crash-loop breaker.
    exits: collections.deque[float] = attrs.Factory(collections.deque)
    breaker_open_until: float | None = None
    #: Set while the slot's child is being replaced; readied when it is.
    replaced: trio.Event | None = None


@attrs.frozen(kw_only=True)
class PoolPolicy:
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    crash_loop_exits: int = 5
    crash_loop_window_s: float = 60.0
    breaker_cooldown_s: float = 60.0
    drain_timeout_s: float = 300.0
    recycle_after_turns: int = 0
    recycle_rss_mib: float = 0.0
    monitor_interval_s: float = 10.0
    liveness_interval_s: float = 5.0
    liveness_timeout_s: float = 10.0
    auth_recheck_interval_s: float = 5.0


class Pool:
    """``size`` slots of codex children; see the module docs.

    ``run`` (start it with ``nursery.start``) reports started once every
    slot's first child has either completed its handshake or failed to.
    Cancelling ``run`` stops every child and reaps it before returning.
    Observers wait on :meth:`wait_changed` for any change of state or load.
    """

    def __init__(
        self,
        size: int,
        launch: ChildLaunch,
        *,
        policy: PoolPolicy | None = None,
        backoff_initial_s: float | None = None,
        backoff_max_s: float | None = None,
        name: Callable[[int, int], str] = lambda slot, gen: f"codex-{slot}.{gen}",
    ) -> None:
        policy = policy or PoolPolicy()
        if backoff_initial_s is not None:
            policy = attrs.evolve(policy, backoff_initial_s=backoff_initial_s)
        if backoff_max_s is not None:
            policy = attrs.evolve(policy, backoff_max_s=backoff_max_s)
        self.size = size
        self.launch = launch
        self.policy = policy
        self._name = name
        self.slots_state = [Slot(i) for i in range(size)]
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.rolling_restart_running = False
        self.paused = False  # the whole pool drained by an operator
        #: The authentication state last logged (None: fine, or not known yet).
        self._auth_logged: str | None = None
        self._restart_counts = dict.fromkeys(map(str, ExitKind), 0)

    # -- observers -------------------------------------------------------------

    @property
    def slots(self) -> list[Child | None]:
        return [slot.child for slot in self.slots_state]

    @property
    def restarts(self) -> list[int]:
        return [slot.restarts for slot in self.slots_state]

    @property
    def restart_counts(self) -> Mapping[str, int]:
        """Children that ended (and were replaced), by :class:`ExitKind`; a copy.

        Every kind is there from the start, at 0, so a counter built on it
        exists before its first increment.
        """
        return dict(self._restart_counts)

    @property
    def last_exit_reason(self) -> list[str | None]:
        return [slot.last_exit_reason for slot in self.slots_state]

    @property
    def children(self) -> list[Child]:
        return [child for child in self.slots if child is not None]

    @property
    def usable_children(self) -> list[Child]:
        if self.paused:
            return []
        return [child for child in self.slots if child is not None and child.usable]

    @property
    def live(self) -> bool:
        return bool(self.usable_children)

    @property
    def healthy(self) -> bool:
        """False only when every slot is held by an open crash-loop breaker."""
        now = trio.current_time()
        return not all(
            slot.breaker_open_until is not None and slot.breaker_open_until > now
            for slot in self.slots_state
        )

    @property
    def auth_problem(self) -> str | None:
        """Why no usable child can reach a model (codex not logged in), if so."""
        usable = self.usable_children
        if not usable or any(child.auth_problem is None for child in usable):
            return None
        return usable[0].auth_problem

    @property
    def ready(self) -> bool:
        """A usable child that can reach its model: turns can run now."""
        return any(child.auth_problem is None for child in self.usable_children)

    def not_ready_reason(self) -> str:
        """Why :attr:`ready` is False (meaningless while it is True)."""
        return self.auth_problem or self.unavailable_reason()

    def find(self, name: str) -> Child:
        """The current child called ``name``, or of slot number ``name``."""
        for slot in self.slots_state:
            child = slot.child
            if child is not None and (child.name == name or str(slot.index) == name):
                return child
        raise UnknownChild(f"no child named {name!r}")

    def slot_of(self, child: Child) -> Slot:
        for slot in self.slots_state:
            if slot.child is child:
                return slot
        raise UnknownChild(f"{child.name} is no longer in the pool")

    def unavailable_reason(self) -> str:
        if self.paused:
            return "the pool is drained by an operator"
        now = trio.current_time()
        reasons = []
        for slot in self.slots_state:
            child = slot.child
            if slot.breaker_open_until is not None and slot.breaker_open_until > now:
                reasons.append(
                    f"slot {slot.index}: crash loop ({len(slot.exits)} exits), breaker open "
                    f"for {slot.breaker_open_until - now:.0f}s more; last: {slot.last_exit_reason}"
                )
            elif child is not None and child.state is ChildState.DRAINING:
                reasons.append(f"{child.name}: draining")
            elif child is not None and child.state is ChildState.STOPPING:
                reasons.append(f"{child.name}: stopping ({child.stop_reason})")
            elif child is not None and child.state is ChildState.STARTING:
                last = f" (the last one {slot.last_exit_reason})" if slot.last_exit_reason else ""
                reasons.append(f"{child.name}: starting{last}")
            elif slot.last_exit_reason:
                reasons.append(f"slot {slot.index}: {slot.last_exit_reason}")
        if not reasons:
            return "the codex app-server pool is starting"
        return "no codex app-server is usable: " + "; ".join(reasons)

    def status(self) -> dict[str, Any]:
        now = trio.current_time()
        children = []
        for slot in self.slots_state:
            child = slot.child
            breaker = (
                "open"
                if slot.breaker_open_until is not None and slot.breaker_open_until > now
                else "closed"
            )
            entry: dict[str, Any] = {
                "slot": slot.index,
                "restarts": slot.restarts,
                "last_exit_reason": slot.last_exit_reason,
                "breaker": breaker,
            }
            if breaker == "open":
                entry["breaker_retry_in_s"] = round((slot.breaker_open_until or now) - now, 1)
            if child is not None:
                entry.update(child.describe(now))
            children.append(entry)
        return {
            "size": self.size,
            "ready": len(self.usable_children),
            "auth_problem": self.auth_problem,
            "paused": self.paused,
            "rolling_restart": self.rolling_restart_running,
            "children": children,
        }

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        """Return at the next change of any child's state or load."""
        await self._changed.wait()

    def notify_load_changed(self) -> None:
        self._notify()

    # -- operator and policy actions ---------------------------------------------

    def drain(self, child: Child) -> None:
        """Stop giving ``child`` new turns; it keeps running until undrained."""
        if child.state is ChildState.READY:
            child.state = ChildState.DRAINING
            self._notify()

    def undrain(self, child: Child) -> None:
        if child.state is ChildState.DRAINING and not child.stopping:
            child.state = ChildState.READY
            self._notify()

    def restart(self, child: Child, reason: str, *, kind: str | None = None) -> trio.Event:
        """Drain ``child`` and replace it; returns an event set once replaced.

        ``kind`` (an :class:`ExitKind`) is what the restart counts as; without
        one it is an operator's.
        """
        # An unknown kind fails here, not in a metric.
        exit_kind = ExitKind.OPERATOR if kind is None else ExitKind(kind)
        slot = self.slot_of(child)
        if slot.replaced is not None and child.stopping:
            return slot.replaced
        slot.replaced = trio.Event()
        if self._nursery is None:
            raise RuntimeError("the pool is not running")
        self._nursery.start_soon(self._drain_and_stop, child, reason, exit_kind)
        return slot.replaced

    def kill(self, child: Child, reason: str) -> None:
        """Kill a misbehaving (hung) child now; it is replaced at once."""
        if child.state in (ChildState.STOPPING, ChildState.STOPPED):
            return
        log.error("%s: %s; killing it", child.name, reason)
        child.kill(reason, kind=ExitKind.HUNG)
        self._notify()

    async def rolling_restart(self) -> bool:
        """Replace every child, one at a time; False if one was already running."""
        if self.rolling_restart_running:
            return False
        self.rolling_restart_running = True
        self._notify()
        try:
            for slot in self.slots_state:
                child = slot.child
                if child is None or child.state is ChildState.STOPPED:
                    continue
                await self.restart(child, "rolling restart", kind=ExitKind.ROLLING).wait()
        finally:
            self.rolling_restart_running = False
            self._notify()
        return True

    def start_rolling_restart(self) -> bool:
        """Begin a rolling restart in the background; False if one is running."""
        if self.rolling_restart_running or self._nursery is None:
            return False
        self._nursery.start_soon(self.rolling_restart)
        return True

    def turn_finished(self, child: Child) -> None:
        """Called by the multiplexer after each turn: recycle by turn count."""
        limit = self.policy.recycle_after_turns
        if limit and child.turns_served >= limit and child.state is ChildState.READY:
            self.restart(
                child,
                f"recycled after {child.turns_served} turns",
                kind=ExitKind.RECYCLED_TURNS,
            )

    async def _drain_and_stop(self, child: Child, reason: str, kind: ExitKind) -> None:
        if child.state in (ChildState.READY, ChildState.STARTING):
            child.state = ChildState.DRAINING
        child.stopping = True
        self._notify()
        log.info("%s: draining (%s)", child.name, reason)
        with trio.move_on_after(self.policy.drain_timeout_s):
            while child.load:
                await self.wait_changed()
        for turn in list(child.turns):
            turn.fail(
                FailureKind.CHILD_EXITED,
                f"codex app-server {child.name} was restarted ({reason}) before the turn ended",
            )
        child.request_stop(reason, planned=True, kind=kind)

    # -- running ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Pool] = trio.TASK_STATUS_IGNORED) -> None:
        first_round = [trio.Event() for _ in range(self.size)]
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for slot in self.slots_state:
                nursery.start_soon(self._run_slot, slot, first_round[slot.index])
            if self.policy.recycle_rss_mib:
                nursery.start_soon(self._watch_memory)
            nursery.start_soon(self._watch_liveness)
            nursery.start_soon(self._watch_auth)
            for event in first_round:
                await event.wait()
            task_status.started(self)

    async def _run_slot(self, slot: Slot, first_attempt: trio.Event) -> None:
        crashes = 0  # in a row, for the backoff
        while True:
            await self._wait_breaker(slot)
            child = Child(self._name(slot.index, slot.generation), self.launch)
            slot.generation += 1
            slot.child = child
            self._notify()
            try:
                async with trio.open_nursery() as nursery:
                    try:
                        await nursery.start(child.run)
                    except ChildStartError as exc:
                        log.error("%s: failed to start: %s", child.name, exc)
                        child.exit_reason = child.exit_reason or str(exc)
                    else:
                        self._auth_checked(child)
                        first_attempt.set()
                        if slot.replaced is not None and not slot.replaced.is_set():
                            slot.replaced.set()
                        self._notify()
            finally:
                first_attempt.set()
                slot.last_exit_reason = child.exit_reason
                child.state = ChildState.STOPPED
                self._notify()
            slot.restarts += 1
            if child.planned_stop:
                kind = child.stop_kind or ExitKind.EXITED
                crashes, delay = 0, 0.0
                log.info("%s: %s; replacing it", child.name, child.exit_reason)
            elif self._crashed(child):
                kind = ExitKind.CRASHED
                crashes += 1
                delay = self._backoff(crashes)
                self._count_exit(slot)
                log.warning("%s: %s; restarting in %.2fs", child.name, child.exit_reason, delay)
            else:
                # It ran and was killed: nothing says a new one will not start fine.
                kind = self._killed_kind(child)
                crashes, delay = 0, 0.0
                log.warning("%s: %s; replacing it", child.name, child.exit_reason)
            self._restart_counts[kind] = self._restart_counts.get(kind, 0) + 1
            await trio.sleep(delay)

    def _crashed(self, child: Child) -> bool:
        """Did ``child`` crash (count it), rather than run and then get killed?

        A crash: it never became ready, or it exited on its own — an exit
        code, or a fatal signal of its own making (SIGSEGV, SIGABRT, …) —
        within ``crash_loop_window_s`` of becoming ready. Killed: SIGKILL,
        SIGTERM, SIGINT or SIGHUP from outside, or killed by the pool.
        """
        if child.ready_at is None:
            return True
        if child.stopping or child.exit_signal in _KILL_SIGNALS:
            return False
        return trio.current_time() - child.ready_at < self.policy.crash_loop_window_s

    @staticmethod
    def _killed_kind(child: Child) -> str:
        """The kind of an unplanned end that was no crash (see :meth:`_crashed`)."""
        if child.stop_reason is not None:  # only a kill stops a child unplanned
            return child.stop_kind or ExitKind.HUNG
        if child.exit_signal in _KILL_SIGNALS:
            return ExitKind.KILLED
        return ExitKind.EXITED  # e.g. it exited by itself while being drained

    def _count_exit(self, slot: Slot) -> None:
        now = trio.current_time()
        slot.exits.append(now)
        while slot.exits and slot.exits[0] < now - self.policy.crash_loop_window_s:
            slot.exits.popleft()
        if len(slot.exits) >= self.policy.crash_loop_exits:
            slot.breaker_open_until = now + self.policy.breaker_cooldown_s
            log.error(
                "slot %d: %d exits within %gs; breaker open for %gs",
                slot.index,
                len(slot.exits),
                self.policy.crash_loop_window_s,
                self.policy.breaker_cooldown_s,
            )
            self._notify()

    async def _wait_breaker(self, slot: Slot) -> None:
        if slot.breaker_open_until is None:
            return
        await trio.sleep_until(slot.breaker_open_until)
        # Half-open: one more try; a single further exit reopens it.
        slot.breaker_open_until = None
        slot.exits.clear()
        for _ in range(self.policy.crash_loop_exits - 1):
            slot.exits.append(trio.current_time())
        self._notify()

    async def _watch_liveness(self) -> None:
        """Kill children that stop answering (see the module docs).

        Every ``liveness_interval_s`` each child gets a cheap request; and
        every second, any request a child has left unanswered for
        ``liveness_timeout_s`` — a probe's or a turn's — condemns it, so a
        request stuck on a hung child waits no longer than that.
        """
        probing: set[Child] = set()
        timeout = self.policy.liveness_timeout_s
        tick = min(1.0, self.policy.liveness_interval_s)
        next_probe = trio.current_time() + self.policy.liveness_interval_s
        async with trio.open_nursery() as nursery:
            while True:
                await trio.sleep(tick)
                probe = trio.current_time() >= next_probe
                if probe:
                    next_probe = trio.current_time() + self.policy.liveness_interval_s
                for child in self.children:
                    if child.state not in (ChildState.READY, ChildState.DRAINING):
                        continue
                    if child.unanswered_for() >= timeout:
                        self.kill(child, f"no answer to a request within {timeout:g}s")
                    elif probe and child not in probing:
                        probing.add(child)
                        nursery.start_soon(self._probe, child, probing)

    async def _probe(self, child: Child, probing: set[Child]) -> None:
        timeout = self.policy.liveness_timeout_s
        try:
            if not await child.ping(timeout):
                self.kill(child, f"no answer to a liveness check within {timeout:g}s")
        finally:
            probing.discard(child)

    async def _watch_auth(self) -> None:
        """Ask children that cannot reach a model again (see the module docs)."""
        checking: set[Child] = set()
        async with trio.open_nursery() as nursery:
            while True:
                await trio.sleep(self.policy.auth_recheck_interval_s)
                for child in self.children:
                    if (
                        child.auth_problem is not None
                        and child.state is ChildState.READY
                        and child not in checking
                    ):
                        checking.add(child)
                        nursery.start_soon(self._recheck_auth, child, checking)

    async def _recheck_auth(self, child: Child, checking: set[Child]) -> None:
        try:
            with trio.fail_after(self.policy.liveness_timeout_s):
                problem = await child.check_auth()
        except (trio.TooSlowError, PeerClosed, RpcCallError):
            return  # a hung or dying child is the liveness check's business
        finally:
            checking.discard(child)
        if child.state is ChildState.READY:
            if problem is None:
                # codex re-reads config.toml for account/read and new threads,
                # but keeps the model catalog it loaded at start. (Counted as
                # credentials: it is how a provider's key reaches codex.)
                why = "codex's config changed; replacing the child to load it whole"
            elif child.credentials_changed():
                # codex reads its stored login once, at start.
                why = "a login was stored in CODEX_HOME; replacing the child to load it"
            else:
                why = ""
            if why:
                log.info("%s: %s", child.name, why)
                self.drain(child)  # now, so that no request sees it half-changed
                self.restart(child, why, kind=ExitKind.CREDENTIALS)
        self._auth_checked(child)

    def _auth_checked(self, child: Child) -> None:
        """Log a change of codex's authentication, once (not once per child)."""
        problem = child.auth_problem
        if problem == self._auth_logged:
            return
        if problem is not None:
            log.error("%s", problem)
        else:
            # As loud as the error it ends, so whoever saw that sees this.
            log.warning("%s: codex can reach its model now; the service is ready", child.name)
        self._auth_logged = problem

    async def _watch_memory(self) -> None:
        limit = self.policy.recycle_rss_mib
        while True:
            await trio.sleep(self.policy.monitor_interval_s)
            for child in self.children:
                rss = rss_mib(child.pid)
                if child.state is ChildState.READY and rss is not None and rss > limit:
                    self.restart(
                        child,
                        f"recycled at {rss:.0f} MiB RSS (limit {limit:g})",
                        kind=ExitKind.RECYCLED_RSS,
                    )

    def _backoff(self, failures: int) -> float:
        base = min(
            self.policy.backoff_max_s,
            self.policy.backoff_initial_s * math.pow(2, max(0, failures - 1)),
        )
        return base * random.uniform(0.5, 1.0)  # jitter keeps slots from restarting in step
