"""A hand-written stand-in for `codex app-server`, for fault injection.

    python fake_app_server.py MODE [DELTAS]

MODE: ok | exit-during-init | hang-init | crash-mid-turn | garbage | hang-turn | deaf
      | overloaded | overloaded-once | crash-once
Speaks just enough of the protocol for the pool and the multiplexer.
FAKE_DELAY_S (environment) spaces the deltas out; FAKE_STATE (a path) is the
marker file by which "-once" modes remember, across processes, that they
already misbehaved.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid

MODE = sys.argv[1]
DELTAS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
DELAY_S = float(os.environ.get("FAKE_DELAY_S", "0"))


def first_time() -> bool:
    """True once across all processes sharing FAKE_STATE."""
    try:
        with open(os.environ["FAKE_STATE"], "x"):
            return True
    except FileExistsError:
        return False


def send(obj: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def notify(method: str, **params: object) -> None:
    send({"method": method, "params": params})


def run_turn(thread_id: str, turn_id: str) -> None:
    notify("turn/started", threadId=thread_id, turn={"id": turn_id, "status": "inProgress"})
    item = "msg_" + uuid.uuid4().hex
    for i in range(DELTAS):
        if DELAY_S:
            time.sleep(DELAY_S)
        if MODE == "garbage":
            sys.stdout.write("this is not json\n[1,2]\n")
        notify(
            "item/agentMessage/delta",
            threadId=thread_id,
            turnId=turn_id,
            itemId=item,
            delta=f"d{i} ",
        )
        if MODE == "crash-mid-turn" and i == 1:
            sys.stderr.write("fatal: simulated crash\n")
            sys.exit(17)
    if MODE in ("hang-turn", "deaf"):
        return  # never completes
    notify(
        "thread/tokenUsage/updated",
        threadId=thread_id,
        turnId=turn_id,
        tokenUsage={
            "total": {"totalTokens": 12, "inputTokens": 10, "outputTokens": 2},
            "last": {"totalTokens": 12, "inputTokens": 10, "outputTokens": 2},
        },
    )
    notify(
        "turn/completed",
        threadId=thread_id,
        turn={"id": turn_id, "status": "completed", "error": None},
    )


def main() -> None:
    turns: dict[str, str] = {}
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
        elif method == "thread/start":
            if MODE == "overloaded" or (MODE == "overloaded-once" and first_time()):
                error = {"code": -32001, "message": "server overloaded"}
                send({"id": request_id, "error": error})
                continue
            thread = {"id": uuid.uuid4().hex}
            send({"id": request_id, "result": {"thread": thread, "model": "fake-model"}})
        elif method == "thread/resume":
            thread = {"id": msg["params"]["threadId"]}
            send({"id": request_id, "result": {"thread": thread, "model": "fake-model"}})
        elif method == "thread/inject_items":
            send({"id": request_id, "result": {}})
        elif method == "turn/start":
            thread_id = msg["params"]["threadId"]
            turn_id = uuid.uuid4().hex
            turns[thread_id] = turn_id
            send({"id": request_id, "result": {"turn": {"id": turn_id, "status": "inProgress"}}})
            if MODE == "crash-once" and first_time():
                sys.stderr.write("fatal: crashed before any output\n")
                sys.exit(9)
            run_turn(thread_id, turn_id)
        elif method == "turn/interrupt":
            if MODE == "deaf":
                continue  # never answers: a hung child
            thread_id = msg["params"]["threadId"]
            send({"id": request_id, "result": {}})
            notify(
                "turn/completed",
                threadId=thread_id,
                turn={"id": turns.get(thread_id), "status": "interrupted", "error": None},
            )
        elif request_id is not None:
            send({"id": request_id, "error": {"code": -32600, "message": f"unknown {method}"}})


if __name__ == "__main__":
    main()
