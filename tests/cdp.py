"""A headless Chromium driven over the Chrome DevTools Protocol, for page tests.

Debian's ``chromium`` (``.ci/run`` installs it) is started in a process group
of its own with a throw-away profile; :func:`open_chromium` yields a
:class:`Browser` and, on the way out, stops it and kills and reaps every
process it started. Only what the tests need of CDP is here: commands with
ids and their replies, events kept in order, flattened sessions to a page
(:class:`Page`), script evaluation and screenshots.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from supervisor.reaper import descendants, kill_descendants, process_table

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--metrics-recording-only",
    "--password-store=basic",
    "--remote-debugging-port=0",
    "--remote-debugging-address=127.0.0.1",
)
_LISTENING = re.compile(r"DevTools listening on (ws://\S+)")


class CdpError(Exception):
    """A command answered with an error, or the browser went away."""


class Browser:
    """One DevTools connection to the browser; commands and events."""

    def __init__(self, socket: WebSocketConnection) -> None:
        self._socket = socket
        self._next_id = 0
        self._replies: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        #: Every event received, in order (``method``, ``params``, ``sessionId``).
        self.events: list[dict[str, Any]] = []
        self._closed: str | None = None

    async def read(self) -> None:
        """Route replies to their commands and keep events; run it in a task."""
        try:
            while True:
                message = orjson.loads(await self._socket.get_message())
                if "id" in message:
                    channel = self._replies.pop(message["id"], None)
                    if channel is not None:
                        channel.send_nowait(message)
                else:
                    self.events.append(message)
        except ConnectionClosed as exc:
            self._closed = f"the DevTools connection closed: {exc.reason}"
            for channel in self._replies.values():
                channel.close()
            self._replies.clear()

    async def send(
        self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None
    ) -> dict[str, Any]:
        """Send a command and return its result (:class:`CdpError` on an error)."""
        if self._closed is not None:
            raise CdpError(self._closed)
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._replies[self._next_id] = send
        await self._socket.send_message(orjson.dumps(message).decode())
        try:
            reply = await receive.receive()
        except trio.EndOfChannel:
            raise CdpError(f"{method}: {self._closed}") from None
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def new_page(self, *, width: int = 1280, height: int = 800) -> Page:
        """A new tab at about:blank, attached, with its events flowing."""
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self, attached["sessionId"])
        for domain in ("Page", "Runtime", "Network", "Log"):
            await page.send(f"{domain}.enable")
        await page.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        return page


class Page:
    """One tab, through its flattened session."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.browser.send(method, params, session=self.session)

    def events(self, method: str) -> list[dict[str, Any]]:
        """The params of this page's events ``method`` so far."""
        return [
            event["params"]
            for event in self.browser.events
            if event.get("sessionId") == self.session and event["method"] == method
        ]

    def problems(self) -> list[Any]:
        """What the page complained about: uncaught exceptions, console calls
        other than log, and logged errors and warnings (CSP violations among them)."""
        return [
            *self.events("Runtime.exceptionThrown"),
            *(e for e in self.events("Runtime.consoleAPICalled") if e["type"] != "log"),
            *(
                e["entry"]
                for e in self.events("Log.entryAdded")
                if e["entry"]["level"] in {"error", "warning"}
            ),
        ]

    async def navigate(self, url: str) -> None:
        result = await self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise CdpError(f"navigating to {url}: {result['errorText']}")

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of ``expression`` in the page (promises awaited)."""
        result = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise CdpError(f"{expression[:80]!r}: {details.get('exception', details)}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, *, interval_s: float = 0.1) -> Any:
        """Evaluate ``expression`` until it is truthy and return it (bound it
        with the caller's deadline)."""
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            await trio.sleep(interval_s)

    async def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element ``selector``."""
        box = await self.evaluate(
            f"(() => {{ const e = document.querySelector({orjson.dumps(selector).decode()});"
            " if (!e) return null; e.scrollIntoView({block: 'center'});"
            " const r = e.getBoundingClientRect();"
            " return {x: r.left + r.width / 2, y: r.top + r.height / 2}; })()"
        )
        if box is None:
            raise CdpError(f"nothing matches {selector!r}")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            event: dict[str, Any] = {"type": kind, "x": box["x"], "y": box["y"]}
            if kind != "mouseMoved":
                event.update(button="left", clickCount=1)
            await self.send("Input.dispatchMouseEvent", event)

    async def screenshot(self, path: Path) -> None:
        shot = await self.send("Page.captureScreenshot", {"format": "png"})
        target = trio.Path(path)
        await target.parent.mkdir(parents=True, exist_ok=True)
        await target.write_bytes(base64.b64decode(shot["data"]))


def chromium_binary() -> Path:
    """Debian's chromium; its absence fails the test (it must run)."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium package "
            "(apt-get install chromium; .ci/run does) - the status page is tested in it",
            pytrace=False,
        )
    return CHROMIUM


@asynccontextmanager
async def open_chromium(workdir: Path) -> AsyncIterator[Browser]:
    """A headless Chromium with a profile under ``workdir``; every process it
    started is gone when this exits."""
    binary = chromium_binary()
    profile = workdir / "profile"
    profile.mkdir(parents=True)
    log_path = workdir / "chromium.log"
    env = {
        **os.environ,
        "HOME": str(workdir),  # nothing lands in the real home
        "DBUS_SESSION_BUS_ADDRESS": "disabled:",
    }
    ours_before = _our_children()
    with log_path.open("wb") as log:
        process = await trio.lowlevel.open_process(
            [str(binary), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,  # its own process group, killed as one
        )
    family: set[int] = {process.pid}

    def note_family() -> None:
        # Its helpers, and the crash handlers it starts detached (they are
        # re-parented to the test process, a subreaper, at once).
        family.update(descendants(process.pid), _our_children() - ours_before)

    try:
        url = await _devtools_url(process, log_path)
        note_family()
        async with open_websocket_url(url, max_message_size=64 * 1024 * 1024) as socket:
            browser = Browser(socket)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(browser.read)
                try:
                    yield browser
                finally:
                    note_family()
                    with trio.move_on_after(2), _quietly():
                        await browser.send("Browser.close")
                    nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            note_family()
            await _stop(process, family)


async def _devtools_url(process: trio.Process, log_path: Path) -> str:
    with trio.fail_after(30):
        while True:
            log = await trio.Path(log_path).read_text(errors="replace")
            found = _LISTENING.search(log)
            if found:
                return found.group(1)
            if process.poll() is not None:
                raise CdpError(
                    f"chromium exited with {process.returncode} before listening:\n" + log[-3000:]
                )
            await trio.sleep(0.05)


async def _stop(process: trio.Process, family: set[int]) -> None:
    """SIGTERM the browser's group, SIGKILL what is left, reap everything."""
    with _quietly():
        os.killpg(process.pid, signal.SIGTERM)
    with trio.move_on_after(5):
        await process.wait()
    if process.returncode is None:
        with _quietly():
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
    # Its helpers and crash handlers, re-parented to the test process (a
    # subreaper): killed if still running, reaped.
    left = await kill_descendants(sorted(family - {process.pid}), groups={process.pid})
    assert not left, f"chromium processes outlived it: {left}"


def _our_children() -> set[int]:
    me = os.getpid()
    return {pid for pid, proc in process_table().items() if proc.ppid == me}


def _quietly() -> contextlib.suppress:
    """Whatever a browser that is already gone answers."""
    return contextlib.suppress(CdpError, ProcessLookupError)
