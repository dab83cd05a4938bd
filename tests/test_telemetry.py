"""What operators see of each request: request ids, timing headers, one
access line, one line per turn, the status API, never the content.

The whole service on fake children, in-process; log records are read from
pytest's capture with the service's own context filter on it.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio

from codex_bridge.logs import JsonFormatter, RequestContext, TextFormatter
from http_front.access import ApiKey
from http_front.telemetry import RequestRecord, Telemetry, request_id_of
from tests.helpers import (
    chat_body,
    content_of,
    eventually,
    fake,
    make_settings,
    running_service,
    sse_events,
    start_serve,
)

MODEL = "fake-model"
TIMEOUT_S = 30


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(RequestContext())
    return caplog


def lines_of(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger]


def fields(record: logging.LogRecord) -> dict[str, Any]:
    found: dict[str, Any] = record.fields  # type: ignore[attr-defined]
    return found


def context(record: logging.LogRecord) -> dict[str, str]:
    found: dict[str, str] = record.context  # type: ignore[attr-defined]
    return found


def access_lines(caplog: pytest.LogCaptureFixture, request_id: str) -> list[logging.LogRecord]:
    return [
        r
        for r in lines_of(caplog, "codex_bridge.access")
        if context(r).get("request_id") == request_id
    ]


# -- request ids and timing headers ----------------------------------------------------------


def test_a_sane_client_request_id_is_kept_and_anything_else_replaced() -> None:
    def scope(value: bytes) -> dict[str, Any]:
        return {"headers": [(b"X-Request-Id", value)]}

    assert request_id_of(scope(b"req-42.a:b/c=d")) == "req-42.a:b/c=d"
    for bad in (b"has space", b'quote"d', b"-leading-dash", b"x" * 129, b"\xff\xfe", b""):
        generated = request_id_of(scope(bad))
        assert re.fullmatch(r"[0-9a-f]{32}", generated), bad
    assert request_id_of({"headers": []}) != request_id_of({"headers": []})


async def test_every_answer_carries_its_request_id_and_timings(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, api_keys=(ApiKey.from_secret("ci", "sk-ci"),))
    key = {"authorization": "Bearer sk-ci"}
    with trio.fail_after(TIMEOUT_S):
        async with running_service(settings, fake("ok")) as svc:
            client = svc.client
            answers = {
                "stream": await client.post(
                    "/v1/chat/completions",
                    json=chat_body("hi", model=MODEL),
                    headers={**key, "x-request-id": "stream-1"},
                ),
                "whole": await client.post(
                    "/v1/chat/completions",
                    json=chat_body("hi", model=MODEL, stream=False),
                    headers={**key, "x-request-id": "whole-1"},
                ),
                "401": await client.get("/v1/models", headers={"x-request-id": "no-key-1"}),
                "404": await client.get("/nowhere", headers={**key, "x-request-id": "bad id"}),
                "415": await client.post(
                    "/v1/chat/completions",
                    content=b"{}",
                    headers={**key, "content-type": "text/plain", "x-request-id": "form-1"},
                ),
                "health": await client.get("/healthz"),
                "admin": await client.get("/admin/pool"),
            }
    assert answers["stream"].headers["x-request-id"] == "stream-1"
    assert answers["whole"].headers["x-request-id"] == "whole-1"
    assert answers["401"].status_code == 401
    assert answers["401"].headers["x-request-id"] == "no-key-1"
    assert answers["404"].status_code == 404
    assert re.fullmatch(r"[0-9a-f]{32}", answers["404"].headers["x-request-id"])
    assert answers["415"].headers["x-request-id"] == "form-1"
    generated = {answers[k].headers["x-request-id"] for k in ("404", "health", "admin")}
    assert len(generated) == 3
    for name, answer in answers.items():
        timing = answer.headers["server-timing"]
        parts = dict(part.strip().split(";dur=") for part in timing.split(","))
        assert set(parts) == {"bridge", "codex", "queue"}, name
        assert all(float(value) >= 0 for value in parts.values()), name
    # codex (the fake) set the turns up; a refused request had no codex time
    assert "codex;dur=0.0" not in answers["stream"].headers["server-timing"]
    assert "codex;dur=0.0" in answers["401"].headers["server-timing"]


# -- one access line, one turn line ------------------------------------------------------------


async def test_one_access_line_per_request_even_when_the_client_leaves(
    tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    """Regression: a client gone mid-stream was logged twice (first with
    status "-", then again), and no line said which request it was."""
    launch = fake("ok", deltas=400, delay_s=0.02)
    with trio.fail_after(TIMEOUT_S):
        async with running_service(make_settings(tmp_path), launch) as svc:
            client = svc.client
            for n in range(3):
                await client.get("/v1/models", headers={"x-request-id": f"models-{n}"})
            async with client.stream(
                "POST",
                "/v1/chat/completions",
                json=chat_body("go", model=MODEL),
                headers={"x-request-id": "leaver-1"},
            ) as response:
                async for _ in response.aiter_bytes():
                    break  # the first bytes, then away
            await eventually(lambda: bool(access_lines(logs, "leaver-1")))
            await client.get("/healthz", headers={"x-request-id": "after-1"})
            status = (await client.get("/admin/status")).json()
    for request_id in ("models-0", "models-1", "models-2", "leaver-1", "after-1"):
        (line,) = access_lines(logs, request_id)
        assert fields(line)["status"] == 200
    (turn_line,) = [r for r in lines_of(logs, "codex_bridge.turn")]
    assert context(turn_line)["request_id"] == "leaver-1"
    assert fields(turn_line)["outcome"] == "interrupted"
    assert turn_line.levelno == logging.INFO  # the client left: no warning,
    assert status["recent_errors"] == []  # and no error for the status page
    # Every access line of the run is one of ours: nothing else writes them.
    assert all("request_id" in context(r) for r in lines_of(logs, "codex_bridge.access"))


async def test_a_failed_turn_and_a_refusal_say_why(
    tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path, max_turns_per_child=1, queue_size=0)
    with trio.fail_after(TIMEOUT_S):
        async with running_service(settings, fake("crash-mid-turn", deltas=5)) as svc:
            failed = await svc.client.post(
                "/v1/chat/completions",
                json=chat_body("hi", model=MODEL, stream=False),
                headers={"x-request-id": "fails-1"},
            )
            # counted once its handler is done, just after its last bytes went out
            status = (await svc.client.get("/admin/status")).json()
            while not status["recent_errors"]:
                await trio.sleep(0.01)
                status = (await svc.client.get("/admin/status")).json()
    assert failed.status_code == 502
    (turn_line,) = lines_of(logs, "codex_bridge.turn")
    assert turn_line.levelno == logging.WARNING
    assert fields(turn_line)["outcome"] == "failed"
    assert fields(turn_line)["failure"] == "child_exited"
    assert "child_exited" in turn_line.getMessage()
    assert context(turn_line)["child"].startswith("codex-0")
    (access,) = access_lines(logs, "fails-1")
    assert access.levelno == logging.WARNING  # a 5xx
    assert "502" in access.getMessage()
    assert fields(access)["error_code"] == failed.json()["error"]["code"]
    (error,) = status["recent_errors"]
    assert error["request_id"] == "fails-1"
    assert error["status"] == 502


async def test_a_refused_request_is_counted_and_listed(
    tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path, max_turns_per_child=1, queue_size=0)
    launch = fake("ok", deltas=300, delay_s=0.02)
    with trio.fail_after(TIMEOUT_S):
        async with running_service(settings, launch) as svc:
            client = svc.client
            async with client.stream(
                "POST",
                "/v1/chat/completions",
                json=chat_body("long", model=MODEL),
                headers={"x-request-id": "long-1"},
            ) as running:
                chunks = running.aiter_bytes()  # kept: a closed iterator closes the stream
                await chunks.__anext__()
                refused = await client.post(
                    "/v1/chat/completions",
                    json=chat_body("me too", model=MODEL),
                    headers={"x-request-id": "refused-1"},
                )
                status = (await client.get("/admin/status")).json()
                while len(status["requests"]) > 1:  # the refused one, finishing
                    await trio.sleep(0.01)
                    status = (await client.get("/admin/status")).json()
                metrics = (await client.get("/metrics")).text
    assert refused.status_code == 429
    (access,) = access_lines(logs, "refused-1")
    assert "rate_limit_exceeded" in access.getMessage()
    assert 'codex_bridge_refusals_total{kind="overloaded"} 1.0' in metrics
    (active,) = status["requests"]  # the status page's own request is not listed
    assert active["id"] == "long-1"
    assert active["phase"] == "streaming"
    assert active["child"] == status["children"][0]["name"]
    assert active["thread_id"]
    assert status["recent_errors"][0]["request_id"] == "refused-1"
    assert status["readiness"] == {"ready": True, "reason": None}
    assert "codex_bridge_turns_active 1.0" in metrics


# -- content stays out of the log --------------------------------------------------------------


@pytest.mark.parametrize("log_content", [False, True])
async def test_prompts_and_answers_are_logged_only_when_asked(
    tmp_path: Path, logs: pytest.LogCaptureFixture, log_content: bool
) -> None:
    logs.set_level(logging.DEBUG)
    settings = make_settings(tmp_path, log_content=log_content)
    with trio.fail_after(TIMEOUT_S):
        async with running_service(settings, fake("ok", deltas=3)) as svc:
            response = await svc.client.post(
                "/v1/chat/completions", json=chat_body("secret-prompt-7731", model=MODEL)
            )
    answer = content_of(sse_events(response.content))
    assert answer == "d0 d1 d2 "
    (turn_line,) = lines_of(logs, "codex_bridge.turn")
    everything = "\n".join(r.getMessage() + str(getattr(r, "fields", "")) for r in logs.records)
    if log_content:
        assert fields(turn_line)["prompt"] == "secret-prompt-7731"
        assert fields(turn_line)["answer"] == answer
    else:
        assert "secret-prompt-7731" not in everything
        assert "d0 d1" not in everything
        assert "prompt" not in fields(turn_line)


# -- formats ----------------------------------------------------------------------------------


def _record(**extra: Any) -> logging.LogRecord:
    record = logging.LogRecord(
        "codex_bridge.turn", logging.WARNING, __file__, 1, "turn %s", ("x",), None
    )
    record.__dict__.update(extra)
    return record


def test_json_lines_carry_context_and_fields() -> None:
    record = _record(
        context={"request_id": "r-1", "key": "ci"},
        fields={"event": "turn", "outcome": "failed", "ttft_ms": None, "message": "not this"},
    )
    line = orjson.loads(JsonFormatter().format(record))
    assert line["message"] == "turn x"  # a field never overwrites the line's own keys
    assert line["level"] == "warning"
    assert line["logger"] == "codex_bridge.turn"
    assert (line["request_id"], line["key"], line["outcome"]) == ("r-1", "ci", "failed")
    assert line["ttft_ms"] is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    try:
        raise ValueError("boom")
    except ValueError:
        failing = _record(exc_info=sys.exc_info())
    assert "ValueError: boom" in orjson.loads(JsonFormatter().format(failing))["exception"]


def test_text_lines_end_with_the_context() -> None:
    text = TextFormatter().format(_record(context={"request_id": "r-1", "child": "codex-0.0"}))
    assert text.endswith("codex_bridge.turn: turn x [request_id=r-1 child=codex-0.0]")
    assert TextFormatter().format(_record()).endswith("turn x")


async def test_the_context_filter_reads_the_request_being_served() -> None:
    telemetry = Telemetry()
    record, token = telemetry.begin({"method": "GET", "path": "/v1/models", "headers": []})
    try:
        record.key = "ci"
        log_record = _record()
        RequestContext().filter(log_record)
        assert context(log_record) == {"request_id": record.id, "key": "ci"}
    finally:
        telemetry.end(record, token)
    outside = _record()
    RequestContext().filter(outside)
    assert context(outside) == {}
    assert isinstance(record, RequestRecord)


async def test_serve_logs_json_lines_only(tmp_path: Path) -> None:
    """``codex-bridge serve`` with ``log_format = "json"``: every line it
    writes is one JSON object, and a turn has its line."""
    log_path = tmp_path / "serve.log"
    with trio.fail_after(TIMEOUT_S), log_path.open("wb") as log_file:
        process, url = await start_serve(
            tmp_path,
            "ok",
            3,
            stderr=log_file,
            CODEX_BRIDGE_LOG_FORMAT="json",
            CODEX_BRIDGE_LOG_LEVEL="info",
        )
        try:
            async with httpx.AsyncClient(base_url=url) as client:
                streamed = await client.post(
                    "/v1/chat/completions",
                    json=chat_body("hi", model=MODEL),
                    headers={"x-request-id": "json-1"},
                )
        finally:
            process.terminate()
            await process.wait()
    lines = [orjson.loads(line) for line in log_path.read_bytes().splitlines()]
    assert lines
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    (turn,) = [line for line in lines if line["logger"] == "codex_bridge.turn"]
    assert turn["request_id"] == "json-1"
    assert turn["outcome"] == "completed"
    assert turn["output_tokens"] > 0
    (access,) = [
        line
        for line in lines
        if line.get("request_id") == "json-1" and line["logger"] == "codex_bridge.access"
    ]
    assert access["status"] == 200
    # Every byte of the stream's body is counted, frames written as chunks
    # directly included.
    assert streamed.text.count("data: ") > 3
    assert access["bytes"] == len(streamed.content)


async def test_time_queued_before_a_refusal_is_the_queues_not_the_bridges(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, max_turns_per_child=1, queue_size=1, queue_timeout_s=0.3)
    launch = fake("ok", deltas=300, delay_s=0.02)
    with trio.fail_after(TIMEOUT_S):
        async with (
            running_service(settings, launch) as svc,
            svc.client.stream(
                "POST", "/v1/chat/completions", json=chat_body("long", model=MODEL)
            ) as running,
        ):
            chunks = running.aiter_bytes()  # kept: a closed iterator closes the stream
            await chunks.__anext__()
            refused = await svc.client.post(
                "/v1/chat/completions", json=chat_body("waits", model=MODEL)
            )
    assert refused.status_code == 429
    timing = dict(
        part.strip().split(";dur=") for part in refused.headers["server-timing"].split(",")
    )
    assert float(timing["queue"]) >= 290
    assert float(timing["bridge"]) < 100
