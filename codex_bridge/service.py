"""The service: one root nursery running the pool and the Hypercorn server.

Order on the way up: the HTTP port bound (a port in use fails before any
child starts), children spawned and initialized, then the port listening.
On the way down (SIGINT/SIGTERM or :meth:`ServiceHandle.shutdown`): the
server stops accepting and lets requests finish for the graceful period,
then every child is stopped and reaped before :func:`run_service` returns.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, cast

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app

from http_front import hypercorn_errors, hypercorn_send
from http_front.access import AccessPolicy
from http_front.app import BridgeApp
from http_front.chat.present import ReasoningFormat
from http_front.conversation.manager import Conversations
from http_front.conversation.store import StoreError, open_store
from http_front.images import ImageLimits
from http_front.options import FrontOptions
from http_front.response import BodyLimits
from http_front.telemetry import Telemetry
from http_front.tool_park import ToolPark
from supervisor import Supervisor, TurnRefused
from supervisor.child import API_KEY_VARIABLES, ChildLaunch
from supervisor.command_policy import (
    CommandPolicy,
    check_sandbox,
    child_environment,
    link_bundled_bwrap,
)
from supervisor.multiplexer import TurnMultiplexer
from supervisor.pool import Pool, PoolPolicy
from supervisor.reaper import OrphanReaper, enable_subreaper, reap_all_orphans

from .codex_binary import APP_SERVER_ARGS, find_codex_binary
from .config import ConfigError, Settings
from .login import not_authenticated_message
from .systemd import Notifier

log = logging.getLogger(__name__)


@attrs.define
class ServiceHandle:
    """What a started service exposes to its starter (tests, the CLI)."""

    url: str
    supervisor: Supervisor
    pool: Pool
    multiplexer: TurnMultiplexer
    _shutdown: trio.Event

    def shutdown(self) -> None:
        """Begin a graceful stop; :func:`run_service` returns when done."""
        self._shutdown.set()


def command_policy(settings: Settings) -> CommandPolicy:
    """What commands run by the model may see and reach (supervisor.command_policy)."""
    workspace = Path(settings.workspace_dir).expanduser().resolve()
    denied = [
        settings.codex_home_path.resolve(),
        workspace / "conversations",
        workspace / "scratch",
        *(Path(path).expanduser().resolve() for path in settings.sandbox_deny_paths),
    ]
    if settings.config_file:
        denied.append(Path(settings.config_file).resolve())
    state_url = settings.state_url_or_default
    if state_url.startswith("sqlite:///"):
        database = Path(state_url[len("sqlite://") :]).expanduser().resolve()
        denied += [database.with_name(database.name + end) for end in _SQLITE_FILES]
    return CommandPolicy(
        sandbox_mode=settings.sandbox_mode,
        network=settings.command_network,
        denied=tuple(dict.fromkeys(denied)),
        command_home=workspace / ".codex-bridge" / "home",
    )


#: A SQLite database and the files that come and go beside it.
_SQLITE_FILES = ("", "-wal", "-shm", "-journal")


def child_launch(settings: Settings, *, environ: Mapping[str, str] | None = None) -> ChildLaunch:
    """How the pool starts children under ``settings``.

    The child's environment is an allowlist of the service's own (see
    supervisor.command_policy), with ``CODEX_HOME`` set to the configured
    home so codex uses the config.toml and login found there; the commands
    the model runs are confined by the policy's ``-c`` overrides.
    """
    binary = find_codex_binary(settings.codex_bin)
    policy = command_policy(settings)
    policy.command_home.mkdir(parents=True, exist_ok=True)
    bin_dir = link_bundled_bwrap(binary, policy.command_home.parent / "bin")
    codex_home = settings.codex_home_path
    service_env = dict(os.environ if environ is None else environ)
    environment = partial(
        child_environment,
        service_env,
        codex_home=codex_home,
        passed=settings.child_env,
        path_first=bin_dir,
    )
    unused = tuple(v for v in API_KEY_VARIABLES if service_env.get(v))
    return ChildLaunch(
        argv=(str(binary), *APP_SERVER_ARGS, *policy.codex_args()),
        env=environment(),
        environment=environment,  # again at each spawn: config.toml may change
        unused_key_variables=unused,
        not_logged_in=not_authenticated_message(str(codex_home), unused),
        cwd=settings.workspace_dir,
        command_policy=policy,
        client_name=settings.client_name,
        codex_home=str(codex_home),
        startup_timeout_s=settings.startup_timeout_s,
        stop_grace_s=settings.stop_grace_s,
        max_line_bytes=settings.max_line_bytes,
        approval_policy=settings.approval_policy,
        approval_timeout_s=settings.approval_timeout_s,
    )


def front_options(settings: Settings) -> FrontOptions:
    """How the front doors render, from the settings."""
    return FrontOptions(
        reasoning_format=ReasoningFormat(settings.reasoning_format),
        status_events=settings.status_events,
        command_output_lines=settings.command_output_lines,
        default_reasoning_effort=settings.default_reasoning_effort,
        reasoning_summary=None
        if settings.reasoning_summary == "none"
        else settings.reasoning_summary,
        keepalive_interval_s=settings.keepalive_interval_s,
        client_tools=settings.client_tools == "auto",
        images=ImageLimits(
            max_bytes=settings.image_max_bytes,
            max_count=settings.image_max_count,
            allow_urls=settings.image_urls,
        ),
        aliases={alias.name: alias for alias in settings.aliases},
    )


async def _warn_of_shadowed_models(supervisor: Supervisor, settings: Settings) -> None:
    """An alias named like a codex model wins over it: say so once, at start."""
    try:
        models = await supervisor.models()
    except TurnRefused as exc:
        log.info("aliases not checked against codex's models: %s", exc)
        return
    known = {name for m in models for name in (m.id, m.model)}
    for alias in settings.aliases:
        if alias.name in known:
            log.warning(
                "alias %r has the name of a codex model: requests for %r get the alias",
                alias.name,
                alias.name,
            )


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def run_service(
    settings: Settings,
    *,
    launch: ChildLaunch | None = None,
    handle_signals: bool = False,
    notifier: Notifier | None = None,
    task_status: trio.TaskStatus[ServiceHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until shut down; started once the pool is warm and the port open.

    Shutdown (SIGTERM/SIGINT with ``handle_signals``, or
    :meth:`ServiceHandle.shutdown`): new requests get 503, running turns
    may finish for ``shutdown_grace_s``, the rest are interrupted (their
    clients get a terminal error chunk), the HTTP server stops, and every
    child is stopped and reaped before this returns. SIGHUP starts a rolling
    restart.
    """
    if launch is None:
        launch = child_launch(settings)
    notifier = notifier or Notifier()
    reaping = settings.subreaper and enable_subreaper()
    await trio.Path(settings.workspace_dir).mkdir(parents=True, exist_ok=True)
    await trio.Path(settings.codex_home_path).mkdir(parents=True, exist_ok=True)
    pool = Pool(
        settings.pool_size,
        launch,
        policy=PoolPolicy(
            backoff_initial_s=settings.restart_backoff_initial_s,
            backoff_max_s=settings.restart_backoff_max_s,
            crash_loop_exits=settings.crash_loop_exits,
            crash_loop_window_s=settings.crash_loop_window_s,
            breaker_cooldown_s=settings.breaker_cooldown_s,
            drain_timeout_s=settings.drain_timeout_s,
            recycle_after_turns=settings.recycle_after_turns,
            recycle_rss_mib=settings.recycle_rss_mib,
            monitor_interval_s=settings.monitor_interval_s,
            liveness_interval_s=settings.liveness_interval_s,
            liveness_timeout_s=settings.liveness_timeout_s,
            auth_recheck_interval_s=settings.auth_recheck_interval_s,
        ),
    )
    multiplexer = TurnMultiplexer(
        pool,
        max_turns_per_child=settings.max_turns_per_child,
        queue_size=settings.queue_size,
        queue_timeout_s=settings.queue_timeout_s,
        rpc_timeout_s=settings.rpc_timeout_s,
        interrupt_grace_s=settings.interrupt_grace_s,
        turn_event_buffer=settings.turn_event_buffer,
        stream_buffer_bytes=settings.stream_buffer_bytes,
        turn_idle_timeout_s=settings.turn_idle_timeout_s,
        turn_timeout_s=settings.turn_timeout_s,
        turn_retry_timeout_s=settings.turn_retry_timeout_s,
        overload_retries=settings.overload_retries,
        workspace_dir=settings.workspace_dir,
        default_model=settings.default_model,
        thread_idle_release_s=settings.thread_idle_release_s,
        max_threads_per_child=settings.max_threads_per_child,
    )
    try:
        store = open_store(
            settings.state_url_or_default,
            prefix=settings.state_key_prefix,
            ttl_s=settings.state_ttl_s,
        )
    except StoreError as exc:
        raise ConfigError(f"invalid setting 'state_url': {exc}") from exc
    conversations = Conversations(
        store,
        workspace_root=settings.workspace_dir,
        header_names=[h.strip() for h in settings.conversation_headers.split(",") if h.strip()],
        busy_policy=settings.conversation_busy,
        wait_timeout_s=settings.queue_timeout_s,
        task_model=settings.task_model,
    )
    supervisor = Supervisor(pool, multiplexer)
    park = ToolPark(supervisor, timeout_s=settings.tool_result_timeout_s)
    app = BridgeApp(
        supervisor,
        conversations=conversations,
        options=front_options(settings),
        body_limits=BodyLimits(settings.max_request_body_bytes, settings.request_body_timeout_s),
        max_header_bytes=settings.http_max_header_bytes,
        admin_token=settings.admin_token,
        access=AccessPolicy.build(
            api_keys=settings.api_keys,
            cors_origins=settings.cors_origins,
            allow_headers=settings.conversation_headers.split(","),
        ),
        telemetry=Telemetry(
            supervisor,
            log_content=settings.log_content,
            metrics=settings.metrics,
        ),
        metrics_public=settings.metrics_public,
        park=park,
    )
    hypercorn_errors.install()  # JSON bodies for Hypercorn's own 400/408/431 answers
    hypercorn_send.install()  # a chunk the socket takes at once costs no scheduler trip
    config = HypercornConfig()
    config.bind = [_bind(settings.host, settings.port)]
    config.h11_max_incomplete_size = settings.http_max_header_bytes
    # Also how long a new connection has for its request line and headers.
    config.keep_alive_timeout = settings.http_keep_alive_timeout_s
    # By the time the server is told to stop, every turn has ended; this only
    # bounds the last writes of their responses.
    config.graceful_timeout = 5.0
    # One access line per request comes from the app (http_front.telemetry),
    # with its request id; Hypercorn's own would add a second for some.
    config.accesslog = None
    config.errorlog = logging.getLogger("codex_bridge.http")
    shutdown_requested = trio.Event()
    stop_server = trio.Event()
    handle = ServiceHandle("", supervisor, pool, multiplexer, shutdown_requested)
    # Bound before any child starts, so that a port in use fails at once;
    # connections are refused until the pool is up and the sockets listen.
    bound = _bound(settings.host, settings.port)
    async with store, bound as sockets, trio.open_nursery() as nursery:
        # The state database exists now (its files are among those hidden).
        await _check_commands_are_confined(settings, launch)
        if handle_signals:
            nursery.start_soon(_handle_signals, handle, notifier)
        if reaping:
            nursery.start_soon(OrphanReaper().run)
        await nursery.start(supervisor.run)
        await nursery.start(park.run)
        await nursery.start(conversations.run)
        health = supervisor.health()
        if supervisor.auth_problem is None:
            log.info("pool up: %d of %d children ready", health.children_ready, health.children)
        else:
            log.warning(
                "pool up: %d of %d children running, none can reach a model: "
                "not ready until codex is logged in",
                health.children_ready,
                health.children,
            )
        listen(sockets, config.backlog, settings.client_stall_timeout_s)
        async with trio.open_nursery() as server:
            binds: list[str] = await server.start(
                partial(
                    worker_serve,
                    # BridgeApp speaks plain ASGI dicts; hypercorn's TypedDict
                    # signature is structurally the same thing.
                    wrap_app(cast("Any", app), config.wsgi_max_body_size, "asgi"),
                    config,
                    sockets=sockets,
                    shutdown_trigger=stop_server.wait,
                )
            )
            handle.url = binds[0]
            log.info("serving on %s", handle.url)
            if handle_signals:  # the process is the service's own
                _settle_garbage_collector()
            notifier.ready(supervisor.status_line())
            nursery.start_soon(_report_to_systemd, supervisor, notifier)
            if settings.aliases and supervisor.auth_problem is None:
                nursery.start_soon(_warn_of_shadowed_models, supervisor, settings)
            task_status.started(handle)
            await shutdown_requested.wait()
            notifier.stopping("stopping: finishing running turns")
            await supervisor.shutdown(
                grace_s=settings.shutdown_grace_s, interrupt_grace_s=settings.interrupt_grace_s
            )
            stop_server.set()
        # Hypercorn has returned. Cancelling the pool stops and reaps every child.
        log.info("HTTP server stopped; stopping the pool")
        nursery.cancel_scope.cancel()
    if reaping:
        left = await reap_all_orphans()
        if left:
            log.warning("processes %s outlived the pool", left)


class ListenError(Exception):
    """The service cannot listen where it was told to; the message says
    which address and why, in one line."""


def _reason(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


def bound_sockets(host: str, port: int) -> Sockets:
    """A TCP socket bound to ``host``:``port``, not yet listening.

    As Hypercorn would make it (``TCP_NODELAY``, ``SO_REUSEADDR``,
    non-blocking), but a failure closes the socket and raises
    :class:`ListenError` saying which address and why.
    """
    bind = _bind(host, port)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {bind}: {_reason(exc)}") from exc
    return Sockets(secure_sockets=[], insecure_sockets=[sock], quic_sockets=[])


def listen(sockets: Sockets, backlog: int, stall_timeout_s: float) -> None:
    """Start listening, set so that a stalled client is cut off.

    Hypercorn writes responses shielded from cancellation and without a
    deadline: a client that stops reading would hold its connection, and the
    task streaming to it, for ever. ``TCP_USER_TIMEOUT`` (Linux) has the
    kernel abort a connection whose sent data stays unacknowledged — the
    client's receive window kept shut — for ``stall_timeout_s``; accepted
    connections inherit it from the listening socket. The stuck write then
    fails, Hypercorn reports the client gone, and its turn is interrupted.
    Connections with nothing in flight (idle, or a stream between deltas)
    are not affected. Raises :class:`ListenError` if a socket cannot listen
    (another socket bound with ``SO_REUSEADDR`` listens there first).
    """
    for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
        if hasattr(socket, "TCP_USER_TIMEOUT") and sock.family in (
            socket.AF_INET,
            socket.AF_INET6,
        ):
            sock.setsockopt(
                socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(stall_timeout_s * 1000)
            )
        try:
            sock.listen(backlog)
        except OSError as exc:
            host, port = sock.getsockname()[:2]
            raise ListenError(f"cannot listen on {_bind(host, port)}: {_reason(exc)}") from exc


@asynccontextmanager
async def _bound(host: str, port: int) -> AsyncIterator[Sockets]:
    sockets = bound_sockets(host, port)
    try:
        yield sockets
    finally:
        for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
            sock.close()


async def _check_commands_are_confined(settings: Settings, launch: ChildLaunch) -> None:
    """Before any model can run a command, prove the confinement holds
    (supervisor.command_policy.check_sandbox); SandboxUnavailable if not."""
    policy = launch.command_policy
    if policy is None:
        return
    if not policy.confined:
        log.warning(
            "sandbox_mode = danger-full-access: commands the model runs can read and write "
            "everything the service's user can, and reach the network"
        )
        return
    check_dir = trio.Path(settings.workspace_dir) / "scratch" / "sandbox-check"
    await check_dir.mkdir(parents=True, exist_ok=True)
    try:
        await check_sandbox(Path(launch.argv[0]), policy, launch.env, Path(check_dir))
    finally:
        await check_dir.rmdir()


async def _report_to_systemd(supervisor: Supervisor, notifier: Notifier) -> None:
    """STATUS= on every change (at most once a second), WATCHDOG=1 while healthy.

    Healthy: the loop runs this task on time, and the pool is not stuck with
    every slot's breaker open. systemd restarts a service whose pings stop.
    """
    if not notifier.enabled:
        return
    interval = notifier.watchdog_interval_s or 5.0
    last_status = ""
    next_ping = trio.current_time()
    while True:
        with trio.move_on_at(next_ping):
            await supervisor.wait_changed()
            await trio.sleep(1.0)  # coalesce bursts of changes
        line = supervisor.status_line()
        if line != last_status:
            notifier.status(line)
            last_status = line
        if trio.current_time() >= next_ping:
            if notifier.watchdog_interval_s is not None and supervisor.healthy:
                notifier.watchdog()
            next_ping = trio.current_time() + interval


#: Allocations between young-generation collections (CPython's default: 700).
#: Streaming allocates and frees a few small objects per delta; with dozens
#: of streams the default collects hundreds of times a second.
GC_YOUNG_THRESHOLD = 50_000


def _settle_garbage_collector() -> None:
    """Once start-up is done: what it allocated (modules, the app, the pool)
    is moved out of the collector's sight, and young collections are rarer.
    Each full collection would otherwise walk every start-up object again,
    a pause felt by every open stream."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


async def _handle_signals(handle: ServiceHandle, notifier: Notifier) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                started = handle.supervisor.start_rolling_restart()
                log.info("received SIGHUP: %s", "rolling restart" if started else "already running")
                continue
            log.info("received %s: shutting down", name)
            handle.shutdown()
