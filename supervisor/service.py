"""The service: one root nursery running the pool and the Hypercorn server.

Order on the way up: children spawned and initialized, then the HTTP port
opened. On the way down (SIGINT/SIGTERM or :meth:`ServiceHandle.shutdown`):
the server stops accepting and lets requests finish for the graceful period,
then every child is stopped and reaped before :func:`run_service` returns.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Mapping
from functools import partial
from typing import Any, cast

import attrs
import hypercorn.trio
import trio
from hypercorn.config import Config as HypercornConfig

from http_front.app import BridgeApp

from .child import ChildLaunch
from .codex_binary import find_codex_binary
from .config import Settings
from .multiplexer import TurnMultiplexer
from .pool import Pool
from .reaper import OrphanReaper, enable_subreaper, reap_all_orphans

log = logging.getLogger(__name__)


@attrs.define
class ServiceHandle:
    """What a started service exposes to its starter (tests, the CLI)."""

    url: str
    pool: Pool
    multiplexer: TurnMultiplexer
    _shutdown: trio.Event

    def shutdown(self) -> None:
        """Begin a graceful stop; :func:`run_service` returns when done."""
        self._shutdown.set()


def child_launch(settings: Settings, *, environ: Mapping[str, str] | None = None) -> ChildLaunch:
    """How the pool starts children under ``settings``.

    The child's environment is the service's own, with ``CODEX_HOME`` set to
    the configured home so codex uses the config.toml and login found there.
    """
    binary = find_codex_binary(settings.codex_bin)
    env = dict(os.environ if environ is None else environ)
    codex_home = str(settings.codex_home_path)
    env["CODEX_HOME"] = codex_home
    return ChildLaunch(
        argv=(str(binary), "app-server"),
        env=env,
        cwd=settings.workspace_dir,
        client_name=settings.client_name,
        codex_home=codex_home,
        startup_timeout_s=settings.startup_timeout_s,
        stop_grace_s=settings.stop_grace_s,
        max_line_bytes=settings.max_line_bytes,
        approval_policy=settings.approval_policy,
        approval_timeout_s=settings.approval_timeout_s,
    )


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def run_service(
    settings: Settings,
    *,
    launch: ChildLaunch | None = None,
    handle_signals: bool = False,
    task_status: trio.TaskStatus[ServiceHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until shut down; started once the pool is warm and the port open."""
    if launch is None:
        launch = child_launch(settings)
    reaping = settings.subreaper and enable_subreaper()
    await trio.Path(settings.workspace_dir).mkdir(parents=True, exist_ok=True)
    await trio.Path(settings.codex_home_path).mkdir(parents=True, exist_ok=True)
    pool = Pool(
        settings.pool_size,
        launch,
        backoff_initial_s=settings.restart_backoff_initial_s,
        backoff_max_s=settings.restart_backoff_max_s,
    )
    multiplexer = TurnMultiplexer(
        pool,
        max_turns_per_child=settings.max_turns_per_child,
        queue_size=settings.queue_size,
        queue_timeout_s=settings.queue_timeout_s,
        rpc_timeout_s=settings.rpc_timeout_s,
        interrupt_grace_s=settings.interrupt_grace_s,
        turn_event_buffer=settings.turn_event_buffer,
        turn_idle_timeout_s=settings.turn_idle_timeout_s,
        turn_timeout_s=settings.turn_timeout_s,
        turn_retry_timeout_s=settings.turn_retry_timeout_s,
        workspace_dir=settings.workspace_dir,
        default_model=settings.default_model,
    )
    app = BridgeApp(
        multiplexer,
        keepalive_interval_s=settings.keepalive_interval_s,
        max_request_body_bytes=settings.max_request_body_bytes,
    )
    config = HypercornConfig()
    config.bind = [_bind(settings.host, settings.port)]
    config.graceful_timeout = settings.interrupt_grace_s
    config.accesslog = logging.getLogger("codex_bridge.access")
    config.errorlog = logging.getLogger("codex_bridge.http")
    shutdown = trio.Event()

    async with trio.open_nursery() as nursery:
        if handle_signals:
            nursery.start_soon(_stop_on_signal, shutdown)
        if reaping:
            nursery.start_soon(OrphanReaper().run)
        await nursery.start(pool.run)
        log.info("pool up: %d of %d children ready", len(pool.usable_children), pool.size)
        async with trio.open_nursery() as server:
            binds: list[str] = await server.start(
                # BridgeApp speaks plain ASGI dicts; hypercorn's TypedDict
                # signature is structurally the same thing.
                partial(
                    hypercorn.trio.serve, cast("Any", app), config, shutdown_trigger=shutdown.wait
                )
            )
            log.info("serving on %s", binds[0])
            task_status.started(ServiceHandle(binds[0], pool, multiplexer, shutdown))
        # Hypercorn has returned: no request is left (in-flight ones had the
        # graceful period). Cancelling the pool stops and reaps every child.
        log.info("HTTP server stopped; stopping the pool")
        nursery.cancel_scope.cancel()
    if reaping:
        left = await reap_all_orphans()
        if left:
            log.warning("processes %s outlived the pool", left)


async def _stop_on_signal(shutdown: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s", signal.Signals(signum).name)
            shutdown.set()
            return
