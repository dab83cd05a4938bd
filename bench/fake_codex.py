#!/usr/bin/env python3
"""A load generator that speaks the codex app-server protocol (stdlib only).

Started by the service as its "codex binary" (``fake_codex app-server``) in
benchmarks, so that the bridge, not the model, is what is measured. What a
turn does depends on the turn's text:

* ``flood N``: N agent-message deltas as fast as the pipe takes them.
* ``tick N MS``: N deltas, one every MS milliseconds, each carrying its
  emission time (``time.time()``) so the client can compute the added latency.
* ``instant``: one delta and the turn's end at once, right after the
  answer to ``turn/start`` (the first byte's path, and many short turns).
* ``hold``: one delta, then nothing until interrupted (open streams for
  memory measurements).
"""

import json
import sys
import threading
import time
import uuid
from typing import Any

lock = threading.Lock()
out = sys.stdout.buffer
#: Running turns by thread, forgotten when they end (a long run stays flat).
turns: dict[str, tuple[str, threading.Event]] = {}


def write(data: bytes) -> None:
    with lock:
        out.write(data)
        out.flush()


def line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


def delta(thread_id: str, turn_id: str, text: str) -> bytes:
    return line(
        {
            "method": "item/agentMessage/delta",
            "params": {
                "threadId": thread_id,
                "turnId": turn_id,
                "itemId": "msg_bench",
                "delta": text,
            },
        }
    )


def completed(thread_id: str, turn_id: str, status: str = "completed") -> bytes:
    return line(
        {
            "method": "turn/completed",
            "params": {
                "threadId": thread_id,
                "turn": {"id": turn_id, "status": status, "error": None},
            },
        }
    )


def usage(thread_id: str, turn_id: str, output: int) -> bytes:
    counts = {"totalTokens": 100 + output, "inputTokens": 100, "outputTokens": output}
    return line(
        {
            "method": "thread/tokenUsage/updated",
            "params": {
                "threadId": thread_id,
                "turnId": turn_id,
                "tokenUsage": {"total": counts, "last": counts},
            },
        }
    )


def run_turn(thread_id: str, turn_id: str, text: str, stop: threading.Event) -> None:
    try:
        emit(thread_id, turn_id, text, stop)
    finally:
        turns.pop(thread_id, None)


def emit(thread_id: str, turn_id: str, text: str, stop: threading.Event) -> None:
    words = text.split()
    kind = words[0] if words else "flood"
    if kind == "flood":
        count = int(words[1]) if len(words) > 1 else 1000
        one = delta(thread_id, turn_id, "tok ")
        batch = one * 256
        sent = 0
        while sent + 256 <= count:
            write(batch)
            sent += 256
        if count - sent:
            write(one * (count - sent))
        write(usage(thread_id, turn_id, count) + completed(thread_id, turn_id))
    elif kind == "tick":
        count, interval = int(words[1]), float(words[2]) / 1000
        for _ in range(count):
            if stop.wait(interval):
                return
            write(delta(thread_id, turn_id, f"{time.time():.6f} "))
        write(usage(thread_id, turn_id, count) + completed(thread_id, turn_id))
    elif kind == "instant":
        write(
            delta(thread_id, turn_id, "instant ")
            + usage(thread_id, turn_id, 1)
            + completed(thread_id, turn_id)
        )
    else:  # hold
        write(delta(thread_id, turn_id, "held "))
        stop.wait()


def main() -> None:
    for raw in sys.stdin:
        msg = json.loads(raw)
        method, request_id = msg.get("method"), msg.get("id")
        params = msg.get("params") or {}
        if method == "initialize":
            write(line({"id": request_id, "result": {"userAgent": "bench/0"}}))
        elif method == "account/read":
            write(
                line({"id": request_id, "result": {"account": None, "requiresOpenaiAuth": False}})
            )
        elif method == "model/list":
            write(line({"id": request_id, "result": {"data": [{"id": "bench", "model": "bench"}]}}))
        elif method == "thread/start":
            write(
                line(
                    {
                        "id": request_id,
                        "result": {"thread": {"id": uuid.uuid4().hex}, "model": "bench"},
                    }
                )
            )
        elif method == "turn/start":
            thread_id, turn_id = params["threadId"], uuid.uuid4().hex
            stop = threading.Event()
            write(line({"id": request_id, "result": {"turn": {"id": turn_id}}}))
            text = params["input"][0]["text"]
            if text == "instant":  # no thread of its own: answered in line
                emit(thread_id, turn_id, text, stop)
                continue
            turns[thread_id] = (turn_id, stop)
            threading.Thread(
                target=run_turn, args=(thread_id, turn_id, text, stop), daemon=True
            ).start()
        elif method == "turn/interrupt":
            running = turns.pop(params["threadId"], None)
            answer = line({"id": request_id, "result": {}})
            if running is None:  # it has just ended
                write(answer)
                continue
            turn_id, stop = running
            stop.set()
            write(answer + completed(params["threadId"], turn_id, "interrupted"))
        elif request_id is not None:
            write(line({"id": request_id, "result": {}}))


if __name__ == "__main__":
    main()
