"""A hand-written stand-in for `codex app-server`, for fault injection.

    python fake_app_server.py MODE [DELTAS]

MODE: ok | exit-during-init | hang-init | crash-mid-turn | garbage | hang-turn | deaf
      | overloaded | overloaded-once | crash-once | exit-when-ready | usage-on-interrupt
      | input-too-large
Speaks just enough of the protocol for the pool and the multiplexer. Like
codex, it reads requests while turns run (each turn streams from a thread of
its own), so ``turn/interrupt`` stops a turn mid-stream.
FAKE_DELAY_S (environment) spaces the deltas out; FAKE_STATE (a path) is the
marker file by which "-once" modes remember, across processes, that they
already misbehaved.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid

MODE = sys.argv[1]
DELTAS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
DELAY_S = float(os.environ.get("FAKE_DELAY_S", "0"))
_write_lock = threading.Lock()

USAGE = {
    "total": {"totalTokens": 12, "inputTokens": 10, "outputTokens": 2},
    "last": {"totalTokens": 12, "inputTokens": 10, "outputTokens": 2},
}


def first_time() -> bool:
    """True once across all processes sharing FAKE_STATE."""
    try:
        with open(os.environ["FAKE_STATE"], "x"):
            return True
    except FileExistsError:
        return False


def send(obj: dict[str, object]) -> None:
    write(json.dumps(obj) + "\n")


def write(text: str) -> None:
    with _write_lock:
        sys.stdout.write(text)
        sys.stdout.flush()


def notify(method: str, **params: object) -> None:
    send({"method": method, "params": params})


class FakeTurn:
    def __init__(self, thread_id: str) -> None:
        self.thread_id = thread_id
        self.id = uuid.uuid4().hex
        self.stop = threading.Event()

    def complete(self, status: str) -> None:
        notify(
            "turn/completed",
            threadId=self.thread_id,
            turn={"id": self.id, "status": status, "error": None},
        )

    def run(self) -> None:
        notify(
            "turn/started", threadId=self.thread_id, turn={"id": self.id, "status": "inProgress"}
        )
        item = "msg_" + uuid.uuid4().hex
        for i in range(DELTAS):
            if (DELAY_S and self.stop.wait(DELAY_S)) or self.stop.is_set():
                self.complete("interrupted")
                return
            if MODE == "garbage":
                write("this is not json\n[1,2]\n")
            notify(
                "item/agentMessage/delta",
                threadId=self.thread_id,
                turnId=self.id,
                itemId=item,
                delta=f"d{i} ",
            )
            if MODE == "crash-mid-turn" and i == 1:
                sys.stderr.write("fatal: simulated crash\n")
                sys.stderr.flush()
                os._exit(17)
        if MODE in ("hang-turn", "deaf", "usage-on-interrupt"):
            self.stop.wait()  # never completes by itself
            self.complete("interrupted")
            return
        notify(
            "thread/tokenUsage/updated", threadId=self.thread_id, turnId=self.id, tokenUsage=USAGE
        )
        self.complete("completed")


def main() -> None:
    turns: dict[str, FakeTurn] = {}
    loaded: set[str] = set()  # threads this process holds
    for line in sys.stdin:
        msg = json.loads(line)
        method, request_id = msg.get("method"), msg.get("id")
        if method == "initialize":
            if MODE == "exit-during-init":
                sys.stderr.write("cannot start: simulated failure\n")
                sys.exit(3)
            if MODE == "hang-init":
                time.sleep(3600)
            send({"id": request_id, "result": {"userAgent": "fake/0"}})
        elif method == "account/read":
            send({"id": request_id, "result": {"account": None, "requiresOpenaiAuth": False}})
        elif method == "model/list":
            send(
                {
                    "id": request_id,
                    "result": {"data": [{"id": "fake-model", "model": "fake-model"}]},
                }
            )
            if MODE == "exit-when-ready":  # the handshake's last answer, then a crash
                sys.stderr.write("fatal: crashed right after start-up\n")
                sys.exit(1)
        elif method == "thread/loaded/list":
            send({"id": request_id, "result": {"data": sorted(loaded)}})
        elif method == "thread/unsubscribe":
            thread_id = msg["params"]["threadId"]
            if thread_id not in loaded:
                send({"id": request_id, "result": {"status": "notLoaded"}})
                continue
            loaded.discard(thread_id)  # unloaded at once, as with thread_unload_delay_secs=0
            send({"id": request_id, "result": {"status": "unsubscribed"}})
            notify("thread/closed", threadId=thread_id)
        elif method == "thread/start":
            if MODE == "overloaded" or (MODE == "overloaded-once" and first_time()):
                error = {"code": -32001, "message": "server overloaded"}
                send({"id": request_id, "error": error})
                continue
            thread = {"id": uuid.uuid4().hex}
            loaded.add(thread["id"])
            send({"id": request_id, "result": {"thread": thread, "model": "fake-model"}})
        elif method == "thread/resume":
            thread = {"id": msg["params"]["threadId"]}
            loaded.add(thread["id"])
            send({"id": request_id, "result": {"thread": thread, "model": "fake-model"}})
        elif method == "thread/inject_items":
            send({"id": request_id, "result": {}})
        elif method == "turn/start":
            if MODE == "input-too-large":
                error = {
                    "code": -32602,
                    "message": "Input exceeds the maximum length of 1048576 characters.",
                    "data": {"input_error_code": "input_too_large", "max_chars": 1048576},
                }
                send({"id": request_id, "error": error})
                continue
            turn = FakeTurn(msg["params"]["threadId"])
            turns[turn.thread_id] = turn
            send({"id": request_id, "result": {"turn": {"id": turn.id, "status": "inProgress"}}})
            if MODE == "crash-once" and first_time():
                sys.stderr.write("fatal: crashed before any output\n")
                sys.exit(9)
            threading.Thread(target=turn.run, daemon=True).start()
        elif method == "turn/interrupt":
            if MODE == "deaf":
                continue  # never answers: a hung child
            running = turns.get(msg["params"]["threadId"])
            send({"id": request_id, "result": {}})
            if running is None:
                continue
            if MODE == "usage-on-interrupt":  # codex counts the cut model call
                notify(
                    "thread/tokenUsage/updated",
                    threadId=running.thread_id,
                    turnId=running.id,
                    tokenUsage={
                        "total": {"totalTokens": 20, "inputTokens": 10, "outputTokens": 10},
                        "last": {"totalTokens": 20, "inputTokens": 10, "outputTokens": 10},
                    },
                )
            running.stop.set()  # the turn's thread reports it interrupted
        elif request_id is not None:
            send({"id": request_id, "error": {"code": -32600, "message": f"unknown {method}"}})


if __name__ == "__main__":
    main()
