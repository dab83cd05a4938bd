"""What operators see of real turns: metrics, turn lines, timing headers.

The real codex children against the scripted model: the account's rate
limits that codex reads from the model's response headers reach
``/metrics``; a turn's log line carries the usage codex reported; the
``Server-Timing`` header splits the time before the first byte.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from codex_bridge.logs import RequestContext
from fixtures.scripted_model import ScriptedModelServer
from tests.helpers import chat_body, content_of, real_service, sse_events

pytestmark = pytest.mark.real_codex

TIMEOUT_S = 60


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_codex_rate_limits_reach_the_metrics(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            before = samples((await svc.client.get("/metrics")).text)
            response = await svc.client.post(
                "/v1/chat/completions",
                json=chat_body("[scenario:rate_limits primary=42 secondary=7] hi"),
            )
            assert response.status_code == 200
            after = samples((await svc.client.get("/metrics")).text)
    name = "codex_bridge_codex_rate_limit_used_ratio"
    assert not [key for key in before if key[0] == name]  # nothing known before codex said
    assert after[(name, (("window", "primary"),))] == pytest.approx(0.42)
    assert after[(name, (("window", "secondary"),))] == pytest.approx(0.07)


async def test_a_real_turn_is_one_line_with_its_usage_and_timings(
    tmp_path: Path,
    codex_bin: Path,
    scripted_model: ScriptedModelServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(RequestContext())
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            response = await svc.client.post(
                "/v1/chat/completions",
                json=chat_body(
                    "[scenario:words n=12] count", stream_options={"include_usage": True}
                ),
                headers={"x-request-id": "ops-check-1"},
            )
            # The request is counted once its handler is done, just after
            # its last bytes went out.
            turns = ("codex_bridge_turn_duration_seconds_count", (("outcome", "completed"),))
            metrics = samples((await svc.client.get("/metrics")).text)
            while turns not in metrics:
                await trio.sleep(0.01)
                metrics = samples((await svc.client.get("/metrics")).text)
    events = sse_events(response.content)
    assert content_of(events).split() == [f"w{i}" for i in range(1, 13)]
    usage = next(e["usage"] for e in events if isinstance(e, dict) and e.get("usage"))
    assert response.headers["x-request-id"] == "ops-check-1"
    timing = dict(
        part.strip().split(";dur=") for part in response.headers["server-timing"].split(",")
    )
    assert set(timing) == {"bridge", "codex", "queue"}
    # The stream starts once codex has set the turn up: thread/start and
    # turn/start took it a while; the bridge's own part is small.
    assert float(timing["codex"]) > 0
    assert float(timing["bridge"]) < float(timing["codex"]) + 50

    (turn_line,) = [r for r in caplog.records if r.name == "codex_bridge.turn"]
    fields = turn_line.fields  # type: ignore[attr-defined]
    assert turn_line.context["request_id"] == "ops-check-1"  # type: ignore[attr-defined]
    assert turn_line.context["thread_id"]  # type: ignore[attr-defined]
    assert turn_line.context["turn_id"]  # type: ignore[attr-defined]
    assert fields["outcome"] == "completed"
    assert fields["model"] == "scripted-model"
    assert fields["input_tokens"] == usage["prompt_tokens"]
    assert fields["output_tokens"] == usage["completion_tokens"] == 12
    assert fields["ttft_ms"] is not None
    assert 0 < fields["ttft_ms"] <= fields["duration_ms"]
    assert "prompt" not in fields  # log_content is off
    assert "count" not in turn_line.getMessage()

    assert metrics[("codex_bridge_tokens_total", (("kind", "output"),))] == 12
    assert metrics[("codex_bridge_tokens_total", (("kind", "input"),))] == usage["prompt_tokens"]
    assert metrics[turns] == 1
    ttft = ("codex_bridge_time_to_first_token_seconds_count", (("route", "/v1/chat/completions"),))
    assert metrics[ttft] == 1
