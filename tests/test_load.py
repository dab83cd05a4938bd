"""Bounded load on loopback: 200 concurrent streams on 2 fake children, cap 4.

Every request either completes with its whole text or is refused with 429
and Retry-After; none hangs (fail_after); a rolling restart in the middle of
it fails none. The figures are printed (pytest -s shows them).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import trio

from tests.helpers import (
    chat_body,
    content_of,
    fake,
    make_settings,
    running_service,
    sse_events,
)

REQUESTS = 200
TEXT = "".join(f"d{i} " for i in range(5))


async def _load(tmp_path: Path, *, rolling_restart: bool) -> Counter[str]:
    settings = make_settings(
        tmp_path, pool_size=2, max_turns_per_child=4, queue_size=64, queue_timeout_s=20
    )
    outcomes: Counter[str] = Counter()
    with trio.fail_after(120):
        async with running_service(settings, fake("ok", delay_s=0.02, deltas=5)) as svc:
            pool = svc.handle.pool
            before = {c.pid for c in pool.children}
            limits = httpx.Limits(max_connections=REQUESTS + 10)
            async with httpx.AsyncClient(base_url=svc.url, timeout=60, limits=limits) as client:

                async def one() -> None:
                    response = await client.post(
                        "/v1/chat/completions", json=chat_body("x", model="fake-model")
                    )
                    if response.status_code == 429:
                        assert int(response.headers["retry-after"]) >= 1
                        assert response.json()["error"]["code"] == "rate_limit_exceeded"
                        outcomes["429"] += 1
                        return
                    events = sse_events(response.content)
                    failed = any(isinstance(e, dict) and "error" in e for e in events)
                    if response.status_code == 200 and content_of(events) == TEXT:
                        outcomes["completed" if not failed else "failed"] += 1
                    else:
                        outcomes[f"failed {response.status_code}"] += 1

                start = time.perf_counter()
                async with trio.open_nursery() as nursery:
                    for _ in range(REQUESTS):
                        nursery.start_soon(one)
                    if rolling_restart:
                        await trio.sleep(0.2)
                        assert pool.start_rolling_restart()
                while pool.rolling_restart_running:
                    await pool.wait_changed()
                wall = time.perf_counter() - start
            if rolling_restart:
                assert not before & {c.pid for c in pool.children}
    print(
        f"\nload ({'with' if rolling_restart else 'without'} rolling restart): "
        f"{REQUESTS} requests, {outcomes['completed']} completed, {outcomes['429']} 429s, "
        f"{REQUESTS - outcomes['completed'] - outcomes['429']} failed, wall {wall:.2f}s"
    )
    return outcomes


@pytest.mark.parametrize("rolling_restart", [False, True], ids=["steady", "rolling-restart"])
async def test_concurrent_streams_complete_or_get_429(
    tmp_path: Path, rolling_restart: bool
) -> None:
    outcomes = await _load(tmp_path, rolling_restart=rolling_restart)
    assert set(outcomes) <= {"completed", "429"}, outcomes
    assert outcomes["completed"] + outcomes["429"] == REQUESTS
    # 8 run at once and 64 may wait: at least those complete
    assert outcomes["completed"] >= 72
