"""The bench's reference: a minimal HTTP/1.1 server of pre-encoded SSE frames.

``python -m bench.reference PORT`` serves any POST with a chat-completions
stream made of ready-made frames, byte for byte the shape the service's chat
door writes (same id length, same fields), one HTTP chunk per frame, as
Hypercorn sends them. What it streams depends on the last message's text,
as with ``bench/fake_codex.py``:

* ``flood N``: N "tok " deltas, written as fast as the client takes them.
* ``tick N MS``: N deltas, one every MS milliseconds, each carrying its
  write time (``time.time()``), paced exactly as the stand-in child paces.
* ``instant``: one delta and the end, at once.

No parsing, routing or encoding per delta: what is left is the cost of the
socket and of the client, the floor any server in Python could reach on
this machine. It runs in a process of its own, as the service does; it
prints ``ready`` on stdout once it listens. Asyncio, stdlib only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time

ID = "chatcmpl-" + "0" * 32
PREFIX = (
    'data: {"id":"' + ID + '","object":"chat.completion.chunk","created":1700000000,'
    '"model":"bench","choices":[{"index":0,"delta":'
)
HEAD = ": keepalive\n\n" + PREFIX + '{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
END = PREFIX + '{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
RESPONSE_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
LAST_CHUNK = b"0\r\n\r\n"
#: Frames written per call while flooding (the transport still takes them
#: only as fast as the client reads).
BATCH = 64


def chunk(data: str) -> bytes:
    raw = data.encode()
    return b"%x\r\n%s\r\n" % (len(raw), raw)


def delta_frame(text: str) -> str:
    return PREFIX + '{"content":"' + text + '"},"finish_reason":null}]}\n\n'


HEAD_CHUNK = chunk(HEAD)
END_CHUNK = chunk(END) + LAST_CHUNK
TOK_CHUNK = chunk(delta_frame("tok "))
TOK_BATCH = TOK_CHUNK * BATCH


def _text_of(body: bytes) -> str:
    data = json.loads(body)
    message = data["messages"][-1]["content"]
    return str(message)


async def _stream(writer: asyncio.StreamWriter, text: str) -> None:
    words = text.split()
    kind = words[0] if words else "instant"
    writer.write(RESPONSE_HEAD + HEAD_CHUNK)
    if kind == "flood":
        count = int(words[1])
        sent = 0
        while sent + BATCH <= count:
            writer.write(TOK_BATCH)
            await writer.drain()
            sent += BATCH
        writer.write(TOK_CHUNK * (count - sent))
    elif kind == "tick":
        count, interval = int(words[1]), float(words[2]) / 1000
        await writer.drain()
        for _ in range(count):
            await asyncio.sleep(interval)
            writer.write(chunk(delta_frame(f"{time.time():.6f} ")))
    else:
        writer.write(chunk(delta_frame("instant ")))
    writer.write(END_CHUNK)
    await writer.drain()


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:  # keep-alive: one request after another
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            length = 0
            for header in head.split(b"\r\n")[1:]:
                name, _, value = header.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await _stream(writer, _text_of(await reader.readexactly(length)))
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(_serve, "127.0.0.1", port, backlog=1024)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(int(sys.argv[1])))
