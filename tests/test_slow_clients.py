"""Slow and oversized clients: each bounded, each told why, none holds the service."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import orjson
import pytest
import trio
from hypercorn.trio.tcp_server import TCPServer

from http_front.hypercorn_errors import HypercornChanged, install
from tests.helpers import (
    RunningService,
    fake,
    make_settings,
    running_service,
)

TIMEOUT_S = 30
BODY = orjson.dumps({"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]})


async def connect(svc: RunningService) -> trio.SocketStream:
    url = urlsplit(svc.url)
    assert url.hostname is not None
    assert url.port is not None
    return await trio.open_tcp_stream(url.hostname, url.port)


async def read_all(stream: trio.SocketStream) -> bytes:
    received = b""
    try:
        while chunk := await stream.receive_some(65536):
            received += chunk
    except trio.BrokenResourceError:
        pass
    return received


def answer(raw: bytes) -> tuple[int, dict[str, str], dict[str, str]]:
    """(status, headers, error object) of a raw HTTP answer with a JSON error."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    assert headers["content-type"] == "application/json"
    error: dict[str, str] = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return int(status_line.split()[1]), headers, error


async def trickle(svc: RunningService, parts: list[bytes], every_s: float) -> bytes:
    """Send ``parts`` one by one, ``every_s`` apart, while the server lets us;
    then what it answered."""
    stream = await connect(svc)
    async with stream:
        try:
            for part in parts:
                await stream.send_all(part)
                await trio.sleep(every_s)
        except trio.BrokenResourceError:
            pass
        return await read_all(stream)


async def test_a_slowloris_crowd_is_cut_off_with_408_and_holds_nothing(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, http_keep_alive_timeout_s=1.0)
    header_drip = [b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"]
    header_drip += [b"X-Drip-%d: x\r\n" % i for i in range(100)]
    answers: list[bytes] = []
    with trio.fail_after(TIMEOUT_S):
        async with running_service(settings, fake("ok")) as svc:
            start = trio.current_time()
            async with trio.open_nursery() as nursery:

                async def loris() -> None:
                    answers.append(await trickle(svc, header_drip, every_s=0.2))

                for _ in range(50):
                    nursery.start_soon(loris)
                await trio.sleep(0.3)
                # the service still answers everyone else, at once
                normal_start = trio.current_time()
                normal = await svc.client.post(
                    "/v1/chat/completions",
                    content=BODY,
                    headers={"content-type": "application/json"},
                )
                normal_took = trio.current_time() - normal_start
            took = trio.current_time() - start
    assert normal.status_code == 200
    assert normal_took < 1
    assert len(answers) == 50
    assert took < 4  # each cut after the 1 s allowed, not after 100 drips (20 s)
    for raw in answers:
        status, headers, error = answer(raw)
        assert status == 408
        assert headers["connection"] == "close"
        assert "did not arrive in time" in error["message"]


async def test_an_idle_connection_is_closed_without_a_word(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, http_keep_alive_timeout_s=0.5)
    with trio.fail_after(TIMEOUT_S):
        async with running_service(settings, fake("ok")) as svc:
            stream = await connect(svc)
            async with stream:
                start = trio.current_time()
                received = await read_all(stream)
                took = trio.current_time() - start
    assert received == b""
    assert took < 2


async def test_a_trickled_body_gets_408(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, request_body_timeout_s=1.0)
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
        + str(len(BODY)).encode()
        + b"\r\n\r\n"
    )
    drip = [head] + [BODY[i : i + 1] for i in range(len(BODY))]
    with trio.fail_after(TIMEOUT_S):
        async with running_service(settings, fake("ok")) as svc:
            start = trio.current_time()
            raw = await trickle(svc, drip, every_s=0.2)
            took = trio.current_time() - start
    status, headers, error = answer(raw)
    assert status == 408
    assert error["code"] == "request_timeout"
    assert headers["connection"] == "close"
    assert took < 3


async def test_the_header_limit_is_a_setting(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, http_max_header_bytes=4096)
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n"
    with trio.fail_after(TIMEOUT_S):
        async with running_service(settings, fake("ok")) as svc:
            stream = await connect(svc)
            async with stream:
                await stream.send_all(request)
                raw = await read_all(stream)
            small = await svc.client.get("/healthz", headers={"X-Small": "a" * 1000})
    status, _, error = answer(raw)
    assert status == 431
    assert "at most 4096 bytes" in error["message"]
    assert small.status_code == 200


def test_the_408_needs_hypercorns_idle_close(monkeypatch: pytest.MonkeyPatch) -> None:
    install()
    monkeypatch.setattr(TCPServer, "_initiate_server_close", lambda self: None)
    with pytest.raises(HypercornChanged, match="408"):
        install()
