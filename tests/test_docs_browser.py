"""The API reference (GET /docs) in a real headless Chromium.

The real ``codex-bridge serve`` on fake children: the page must render
every operation of ``/openapi.json``, run "Try it out" against the service,
load and call nothing but the service, and log no error and no
Content-Security-Policy violation.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx

from http_front.docs import SWAGGER_UI_VERSION
from tests.cdp import chromium_binary, open_chromium
from tests.helpers import start_serve, stop_serve

#: Every CSP violation the page meets, kept where the test can read it.
WATCH_CSP = """window.__violations = [];
document.addEventListener('securitypolicyviolation', (e) =>
  window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`));"""

SHOWN_OPERATIONS = """Array.from(document.querySelectorAll('.opblock')).map((block) => [
  block.querySelector('.opblock-summary-method').textContent,
  block.querySelector('.opblock-summary-path').dataset.path])"""


async def test_docs_page_renders_every_operation_offline(tmp_path: Path) -> None:
    chromium_binary()  # fails at once, and says why, without Debian's chromium
    process, url = await start_serve(tmp_path, "ok", 3, CODEX_BRIDGE_API_KEYS="ci:" + "k" * 32)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            page_answer = await client.get("/docs")  # no key needed
            check_page(page_answer)
            document = (await client.get("/openapi.json")).json()
            expected = sorted(
                [method.upper(), path]
                for path, methods in document["paths"].items()
                for method in methods
            )
            assert ["GET", "/healthz"] in expected
            assert ["POST", "/v1/chat/completions"] in expected

            async with open_chromium(tmp_path / "chromium") as browser:
                page = await browser.new_page(width=1280, height=800)
                await page.send("Page.addScriptToEvaluateOnNewDocument", {"source": WATCH_CSP})
                await page.navigate(f"{url}/docs")
                await page.wait_for(
                    f"document.querySelectorAll('.opblock').length >= {len(expected)}"
                )
                shown = await page.evaluate(SHOWN_OPERATIONS)
                assert sorted(shown) == expected
                title = await page.wait_for("document.querySelector('.info .title')?.textContent")
                assert title.startswith("codex-bridge")
                # the Authorize button is there: keyed routes are marked
                assert await page.evaluate("Boolean(document.querySelector('.btn.authorize'))")

                # Try it out, on a route of the service that needs no key
                block = "#operations-health-get_healthz"
                await page.click(f"{block} .opblock-summary-control")
                await page.wait_for(f"Boolean(document.querySelector('{block} .try-out__btn'))")
                await page.click(f"{block} .try-out__btn")
                await page.wait_for(f"Boolean(document.querySelector('{block} .execute'))")
                await page.click(f"{block} .execute")
                status = await page.wait_for(
                    f"document.querySelector('{block} .live-responses-table tr.response "
                    ".response-col_status')?.textContent"
                )
                assert status.strip() == "200"

                sent = [e["request"] for e in page.events("Network.requestWillBeSent")]
                requested = [r["url"] for r in sent]
                foreign = [u for u in requested if not u.startswith((f"{url}/", "data:"))]
                assert not foreign, f"the page reached beyond the service: {foreign}"
                assert f"{url}/openapi.json" in requested
                assert f"{url}/healthz" in requested
                assets = f"{url}/docs/static/{SWAGGER_UI_VERSION}/"
                assert f"{assets}swagger-ui-bundle.js" in requested
                failed = [
                    (r["response"]["url"], r["response"]["status"])
                    for r in page.events("Network.responseReceived")
                    if r["response"]["status"] >= 400
                ]
                assert not failed, failed

                assert await page.evaluate("window.__violations") == []
                assert not page.problems(), page.problems()
    finally:
        await stop_serve(process)
    assert process.returncode == 0


def check_page(answer: httpx.Response) -> None:
    assert answer.status_code == 200
    headers: Any = answer.headers
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["x-frame-options"] == "DENY"
    csp = headers["content-security-policy"]
    for directive in (
        "default-src 'self'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ):
        assert directive in csp
    assert "unsafe" not in csp
    # no inline script: every <script> loads a file of the service
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", answer.text, re.DOTALL)
    assert scripts
    assert all(' src="/' in attributes and not body.strip() for attributes, body in scripts)
    assert "://" not in answer.text, "the page names no other site"
