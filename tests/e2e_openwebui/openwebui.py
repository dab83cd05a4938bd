"""A real OpenWebUI 0.12.4 in front of codex-bridge, driven as its web UI drives it.

- :func:`openwebui_server` starts ``open-webui serve`` from ``.venv-openwebui``
  (``make openwebui`` installs it) offline, its OpenAI connection at a
  loopback port chosen here, and signs the admin up.
- :func:`recording_proxy` serves that port for one test: it forwards every
  request to the bridge and keeps each exchange (request, response bytes), so
  a test sees exactly what OpenWebUI sent upstream and what it got back.
- :class:`WebUI` is what one browser tab of OpenWebUI does: a socket.io
  session (engine.io 4 over a websocket, as the web UI opens it), then
  ``POST /api/chat/completions`` with that session's id, so that OpenWebUI
  takes the web UI's path: its built-in tools go upstream, the reply arrives
  as socket events and is stored in the chat.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any, cast

import attrs
import httpx
import orjson
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.typing import Framework
from trio_websocket import WebSocketConnection, open_websocket_url

from fixtures.scripted_model import _read_body
from http_front.asgi import Receive, Scope, Send, serve_lifespan
from supervisor.reaper import MANAGED_PIDS
from tests.helpers import REPO_ROOT, SESSION_PROCESSES, free_port, sse_events

OPENWEBUI_BIN = REPO_ROOT / ".venv-openwebui" / "bin" / "open-webui"
#: How long ``open-webui serve`` may take to answer /health (15-25 s here:
#: most of it its database migrations).
STARTUP_TIMEOUT_S = 90.0
#: The service's API key, which OpenWebUI's connection is given.
API_KEY = "e2e-openwebui-key"
ADMIN = {"name": "Admin", "email": "admin@example.com", "password": "e2e-openwebui-password"}
#: Request and response headers the proxy does not pass on (each hop has its own).
HOP_HEADERS = frozenset({b"host", b"connection", b"keep-alive", b"transfer-encoding", b"te"})


@attrs.frozen
class OpenWebUIServer:
    url: str  # http://127.0.0.1:PORT
    token: str  # the admin's
    upstream_port: int  # its OpenAI connection: http://127.0.0.1:<upstream_port>/v1
    log_path: Path


def openwebui_binary() -> Path:
    """The venv's ``open-webui``; its absence fails the test and says how to get it."""
    if not OPENWEBUI_BIN.exists():
        pytest.fail(
            f"{OPENWEBUI_BIN} is missing: `make openwebui` installs OpenWebUI 0.12.4 "
            "(`make e2e-openwebui` installs it and runs these tests)",
            pytrace=False,
        )
    return OPENWEBUI_BIN


@contextmanager
def openwebui_server(workdir: Path, api_key: str) -> Iterator[OpenWebUIServer]:
    """``open-webui serve`` with all its state under ``workdir``, offline, its
    OpenAI connection (key ``api_key``) at a free port it is told of; stopped,
    its whole process group, on the way out."""
    binary = openwebui_binary()
    port, upstream_port = free_port(), free_port()
    data = workdir / "data"
    data.mkdir(parents=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": str(workdir),  # nothing lands in the real home
        "DATA_DIR": str(data),
        "WEBUI_SECRET_KEY": "e2e-openwebui-secret",
        "WEBUI_AUTH": "True",
        "OFFLINE_MODE": "true",
        "HF_HUB_OFFLINE": "1",
        "ENABLE_VERSION_UPDATE_CHECK": "false",
        "ENABLE_PERSISTENT_CONFIG": "false",
        "ENABLE_OLLAMA_API": "false",
        "ENABLE_OPENAI_API": "true",
        "OPENAI_API_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1",
        "OPENAI_API_KEY": api_key,
        "ENABLE_FORWARD_USER_INFO_HEADERS": "true",
        "RAG_EMBEDDING_MODEL": "",
        "SCARF_NO_ANALYTICS": "true",
        "DO_NOT_TRACK": "true",
        "ANONYMIZED_TELEMETRY": "false",
    }
    log_path = workdir / "openwebui.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(binary), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped as one
        )
    # Kept for the run, and reaped here: neither the services the tests run
    # in-process (which kill every other child of theirs when they stop) nor
    # the leftover checks may take it for an orphan.
    SESSION_PROCESSES.add(process.pid)
    MANAGED_PIDS.add(process.pid)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(process, url, log_path)
        signup = httpx.post(f"{url}/api/v1/auths/signup", json=ADMIN, timeout=30)
        assert signup.status_code == 200, signup.text
        token = signup.json()["token"]
        _mark_release_notes_seen(url, token)
        yield OpenWebUIServer(url, token, upstream_port, log_path)
    finally:
        _stop_group(process)
        SESSION_PROCESSES.discard(process.pid)
        MANAGED_PIDS.discard(process.pid)


def _wait_healthy(process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"open-webui exited with {process.returncode}:\n{log_path.read_text()[-3000:]}"
            )
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise RuntimeError(
        f"open-webui not healthy after {STARTUP_TIMEOUT_S:.0f} s:\n{log_path.read_text()[-3000:]}"
    )


def _mark_release_notes_seen(url: str, token: str) -> None:
    """What the admin's "Okay, Let's Go!" does: the web UI then opens on the
    chat, not on the release notes of this version."""
    version = httpx.get(f"{url}/api/config", timeout=10).json()["version"]
    saved = httpx.post(
        f"{url}/api/v1/users/user/settings/update",
        json={"ui": {"version": version}},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert saved.status_code == 200, saved.text


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the group, SIGKILL it after 20 s, reap the leader."""
    for sig, wait_s in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
        with suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    with suppress(ProcessLookupError):  # what it left in its group (workers, helpers)
        os.killpg(process.pid, signal.SIGKILL)


# --- the recording proxy ------------------------------------------------------------------


@attrs.define
class Exchange:
    """One request OpenWebUI sent upstream, and what came back."""

    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    status: int | None = None
    response: bytearray = attrs.Factory(bytearray)

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None

    def events(self) -> list[Any]:
        """The response's SSE data payloads (``[DONE]`` as the string)."""
        return sse_events(bytes(self.response))

    @property
    def is_chat(self) -> bool:
        return self.method == "POST" and self.path == "/v1/chat/completions"

    @property
    def is_task(self) -> bool:
        """A background task (title, tags, follow-ups): one ``### Task:`` user message."""
        body = self.json() if self.is_chat else None
        messages = (body or {}).get("messages") or []
        content = messages[-1].get("content") if messages else None
        return isinstance(content, str) and content.startswith("### Task:")


class RecordingProxy:
    """Forwards every request to ``upstream`` and keeps it as an :class:`Exchange`.

    A client that goes away cuts the upstream request too, as it would have
    cut a direct connection.
    """

    def __init__(self, upstream: str, client: httpx.AsyncClient) -> None:
        self._upstream = upstream
        self._client = client
        self.exchanges: list[Exchange] = []

    def chats(self) -> list[Exchange]:
        """The user turns' chat completions (background tasks left out), in order."""
        return [e for e in self.exchanges if e.is_chat and not e.is_task]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        body = await _read_body(receive)
        if body is None:
            return
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP_HEADERS]
        exchange = Exchange(
            scope["method"],
            scope["path"],
            {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers},
            body,
        )
        self.exchanges.append(exchange)
        target = self._upstream + scope["path"]
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_disconnect, receive, nursery.cancel_scope)
            await self._forward(exchange, target, headers, send)
            nursery.cancel_scope.cancel()

    async def _forward(
        self, exchange: Exchange, target: str, headers: list[tuple[bytes, bytes]], send: Send
    ) -> None:
        request = self._client.build_request(
            exchange.method, target, headers=headers, content=exchange.body
        )
        response = await self._client.send(request, stream=True)
        try:
            exchange.status = response.status_code
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [
                        (k, v) for k, v in response.headers.raw if k.lower() not in HOP_HEADERS
                    ],
                }
            )
            async for chunk in response.aiter_raw():
                exchange.response += chunk
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()


async def _cancel_on_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


@asynccontextmanager
async def recording_proxy(port: int, upstream: str) -> AsyncIterator[RecordingProxy]:
    """A :class:`RecordingProxy` to ``upstream`` served on ``127.0.0.1:port``."""
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.loglevel = "WARNING"
    config.accesslog = None
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(30, read=None)) as client,
        trio.open_nursery() as nursery,
    ):
        proxy = RecordingProxy(upstream, client)
        await nursery.start(partial(serve, cast("Framework", proxy), config))
        try:
            yield proxy
        finally:
            nursery.cancel_scope.cancel()


# --- the web UI's part --------------------------------------------------------------------


@attrs.frozen
class Sent:
    """A message sent in a chat: the ids the web UI made up and the chat's."""

    chat_id: str
    user_message_id: str
    assistant_message_id: str


class WebUI:
    """One tab of OpenWebUI's web UI: a socket.io session and the admin's token."""

    def __init__(self, server: OpenWebUIServer, client: httpx.AsyncClient) -> None:
        self.server = server
        self.client = client
        #: The socket.io session id: the ``session_id`` of chat requests.
        self.session_id = ""
        #: Every ``events`` payload received ({chat_id, message_id, data: {type, data}}).
        self.events: list[dict[str, Any]] = []
        self._arrived = trio.Event()

    async def model_item(self, model: str) -> dict[str, Any]:
        """The model's entry in ``GET /api/models``, which the web UI sends along."""
        listed = await self.client.get("/api/models")
        assert listed.status_code == 200, listed.text
        for item in listed.json()["data"]:
            if item["id"] == model:
                return cast("dict[str, Any]", item)
        raise AssertionError(f"OpenWebUI lists no {model!r}: {listed.text[:2000]}")

    async def send(
        self, model: str, text: str, *, chat_id: str | None = None, parent_id: str | None = None
    ) -> Sent:
        """Send ``text`` as the web UI does, and wait until OpenWebUI is done with
        the chat (its ``chat:active`` false): the answer is stored by then."""
        user_id, assistant_id = str(uuid.uuid4()), str(uuid.uuid4())
        first = chat_id is None
        body: dict[str, Any] = {
            "stream": True,
            "model": model,
            "params": {},
            "tool_ids": [],
            "features": {},
            "variables": {},
            "model_item": await self.model_item(model),
            "session_id": self.session_id,
            **({} if first else {"chat_id": chat_id}),
            "id": assistant_id,
            "parent_id": parent_id,
            "user_message": {
                "id": user_id,
                "parentId": parent_id,
                "childrenIds": [],
                "role": "user",
                "content": text,
                "timestamp": int(time.time()),
                "models": [model],
            },
            "background_tasks": {
                **({"title_generation": True, "tags_generation": True} if first else {}),
                "follow_up_generation": True,
            },
        }
        seen = len(self.events)
        answer = await self.client.post("/api/chat/completions", json=body)
        assert answer.status_code == 200, answer.text
        started = answer.json()
        assert started.get("chat_id"), started
        sent = Sent(started["chat_id"], user_id, assistant_id)
        await self._wait_inactive(sent.chat_id, seen)
        return sent

    async def _wait_inactive(self, chat_id: str, seen: int) -> None:
        while True:
            for event in self.events[seen:]:
                data = event.get("data") or {}
                if (
                    event.get("chat_id") == chat_id
                    and data.get("type") == "chat:active"
                    and (data.get("data") or {}).get("active") is False
                ):
                    return
            seen = len(self.events)
            arrived = self._arrived
            await arrived.wait()

    def completions(self, chat_id: str) -> list[dict[str, Any]]:
        """The ``chat:completion`` event data of a chat, in order."""
        return [
            e["data"]["data"]
            for e in self.events
            if e.get("chat_id") == chat_id
            and (e.get("data") or {}).get("type") == "chat:completion"
        ]

    async def chat(self, chat_id: str) -> dict[str, Any]:
        """The stored chat (``GET /api/v1/chats/<id>``)."""
        stored = await self.client.get(f"/api/v1/chats/{chat_id}")
        assert stored.status_code == 200, stored.text
        return cast("dict[str, Any]", stored.json())

    async def message(self, sent: Sent) -> dict[str, Any]:
        """The stored assistant message answering ``sent``."""
        chat = await self.chat(sent.chat_id)
        return cast(
            "dict[str, Any]", chat["chat"]["history"]["messages"][sent.assistant_message_id]
        )

    # socket.io (protocol 5) over engine.io 4, websocket transport only

    async def _join(self, socket: WebSocketConnection) -> None:
        opened = await socket.get_message()
        assert isinstance(opened, str), opened
        assert opened.startswith("0"), opened  # engine.io OPEN
        auth = {"token": self.server.token}
        await socket.send_message("40" + orjson.dumps(auth).decode())  # socket.io CONNECT
        connected = await socket.get_message()
        assert isinstance(connected, str), connected
        assert connected.startswith("40"), connected  # CONNECT accepted
        self.session_id = orjson.loads(connected[2:])["sid"]
        await socket.send_message("42" + orjson.dumps(["user-join", {"auth": auth}]).decode())

    async def _read(self, socket: WebSocketConnection) -> None:
        while True:
            packet = await socket.get_message()
            assert isinstance(packet, str), packet
            if packet == "2":  # engine.io PING
                await socket.send_message("3")
            elif packet.startswith("42"):  # socket.io EVENT, maybe with an ack id
                name, *args = orjson.loads(packet[2:].lstrip("0123456789"))
                if name == "events" and args and isinstance(args[0], dict):
                    self.events.append(args[0])
                    self._arrived.set()
                    self._arrived = trio.Event()


@asynccontextmanager
async def open_webui(server: OpenWebUIServer) -> AsyncIterator[WebUI]:
    """A :class:`WebUI` with its socket.io session joined; closed on the way out."""
    socket_url = server.url.replace("http://", "ws://") + "/ws/socket.io/?EIO=4&transport=websocket"
    headers = {"Authorization": f"Bearer {server.token}"}
    async with (
        httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as client,
        open_websocket_url(socket_url) as socket,
        trio.open_nursery() as nursery,
    ):
        webui = WebUI(server, client)
        await webui._join(socket)
        nursery.start_soon(webui._read, socket)
        try:
            yield webui
        finally:
            nursery.cancel_scope.cancel()
