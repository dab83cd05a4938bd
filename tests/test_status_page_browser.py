"""The operator status page (GET /admin/) in a real headless Chromium.

The real ``codex-bridge serve`` on two fake children, a streaming turn
running: the page must show both children (with the pids the admin API
reports) and the running request, and its Restart button must replace a
child. The page may talk to nothing but the service, and must log no error.

With ``CODEX_BRIDGE_SCREENSHOT=<path>`` the page, a turn running, is saved
there (the README's docs/status-page.png).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.cdp import Page, chromium_binary, open_chromium
from tests.helpers import chat_body, start_serve, stop_serve

PAGE_PIDS = """Object.fromEntries(
  Array.from(document.querySelectorAll('#children tbody tr[data-child]'))
    .filter((row) => row.dataset.child)
    .map((row) => [row.dataset.slot, row.querySelector('td.pid').textContent]))"""


async def status_pids(client: httpx.AsyncClient) -> dict[str, str]:
    status = (await client.get("/admin/status")).json()
    return {str(c["slot"]): str(c["pid"]) for c in status["children"] if c.get("pid") is not None}


async def page_pids_match_status(page: Page, client: httpx.AsyncClient) -> dict[str, str]:
    """The page's pid per slot, once it shows what /admin/status says."""
    while True:
        shown, actual = await page.evaluate(PAGE_PIDS), await status_pids(client)
        if shown == actual and len(actual) == 2:
            return actual
        await trio.sleep(0.1)


async def test_status_page_shows_the_pool_and_restarts_a_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chromium_binary()  # fails at once, and says why, without Debian's chromium
    # Not a setting: the service would refuse an unknown CODEX_BRIDGE_ variable.
    shot = os.environ.get("CODEX_BRIDGE_SCREENSHOT")
    monkeypatch.delenv("CODEX_BRIDGE_SCREENSHOT", raising=False)
    # 200 deltas 0.2 s apart: the turn streams for 40 s, longer than the test needs
    process, url = await start_serve(tmp_path, "ok", 200, FAKE_DELAY_S="0.2")
    try:
        async with (
            httpx.AsyncClient(base_url=url, timeout=30) as client,
            trio.open_nursery() as nursery,
        ):
            page_answer = await client.get("/admin/")
            check_page_headers(page_answer)
            assert (await client.get("/admin")).content == page_answer.content

            streaming: dict[str, Any] = {}
            first_chunk = trio.Event()

            async def long_turn() -> None:
                body = chat_body("hi", model="fake-model")
                async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    streaming["request_id"] = response.headers["x-request-id"]
                    async for _ in response.aiter_raw():
                        first_chunk.set()

            nursery.start_soon(long_turn)
            await first_chunk.wait()
            # and one request that failed, for the recent errors
            refused = await client.post(
                "/v1/chat/completions", json=chat_body("hi", model="no-such-model")
            )
            assert refused.status_code == 404
            refused_id = refused.headers["x-request-id"]

            async with open_chromium(tmp_path / "chromium") as browser:
                page = await browser.new_page(width=1280, height=800)
                await page.navigate(f"{url}/admin/")

                pids = await page_pids_match_status(page, client)
                row = f'#requests tr[data-request-id="{streaming["request_id"]}"]'
                phase = await page.wait_for(
                    f"document.querySelector('{row}')?.querySelector('td.phase').textContent"
                )
                assert phase in {"running", "streaming"}
                error_status = await page.wait_for(
                    f"document.querySelector('#errors tr[data-request-id=\"{refused_id}\"]')"
                    "?.querySelector('td.status').textContent"
                )
                assert error_status == "404"
                status = (await client.get("/admin/status")).json()
                busy = [c for c in status["children"] if c["load"]]
                idle = [c for c in status["children"] if not c["load"]]
                assert len(busy) == 1, status["children"]
                assert len(idle) == 1, status["children"]
                child_cell = f"{row} td.child"
                assert (
                    await page.wait_for(f"document.querySelector('{child_cell}').textContent")
                    == busy[0]["name"]
                )

                # Restart the idle child (the busy one would first finish its turn).
                slot = str(idle[0]["slot"])
                await page.click(f'tr[data-slot="{slot}"] button[data-action="restart"]')
                result = await page.wait_for("document.getElementById('action-result').textContent")
                assert "requested" in result, result
                while True:
                    after = await page_pids_match_status(page, client)
                    if after[slot] != pids[slot]:
                        break
                    await trio.sleep(0.1)
                other = str(busy[0]["slot"])
                assert after[other] == pids[other]
                # the turn is still running on the other child
                assert await page.evaluate(f"Boolean(document.querySelector('{row}'))")
                if shot:
                    await trio.sleep(1.5)  # a few polls: ages and uptimes move on
                    await page.screenshot(Path(shot))

                sent = [e["request"] for e in page.events("Network.requestWillBeSent")]
                requested = [r["url"] for r in sent]
                foreign = [u for u in requested if not u.startswith((f"{url}/", "data:"))]
                assert not foreign, f"the page reached beyond the service: {foreign}"
                assert f"{url}/admin/status" in requested
                restart = f"{url}/admin/children/{idle[0]['name']}/restart"
                assert [r["method"] for r in sent if r["url"] == restart] == ["POST"]
                assert not page.problems(), page.problems()
            nursery.cancel_scope.cancel()
    finally:
        await stop_serve(process)
    assert process.returncode == 0


def check_page_headers(answer: httpx.Response) -> None:
    assert answer.status_code == 200
    headers = answer.headers
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["cache-control"] == "no-store"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    csp = headers["content-security-policy"]
    for directive in ("default-src 'none'", "connect-src 'self'", "frame-ancestors 'none'"):
        assert directive in csp
    assert "://" not in answer.text, "the page names no URL"
