"""``GET /docs``: the interactive API reference, and ``GET /openapi.json``.

The page is Swagger UI 5, served from the files the ``swagger-ui-py``
package ships (``swagger_ui/static``), read with :mod:`importlib.resources`:
nothing comes from a CDN, so it works offline. The page (``docs_page.html``)
and its start-up script (``docs_init.js``) are this package's own; the page
has no inline script, and its Content-Security-Policy lets it load and talk
to this origin only. Swagger UI's files are served under a path naming
their version, so a browser may keep them for good.

Neither the page nor the document needs an API key: they hold no secret, only
what every client of the API may know. "Try it out" on a keyed route needs
the user's key, given to the page's Authorize button (a bearer token).
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.resources
from pathlib import Path

from .errors import ApiError
from .openapi import OpenApi
from .response import Exchange
from .schema import Operation

SWAGGER_UI_VERSION = importlib.metadata.version("swagger-ui-py")
PAGE_PATH = "/docs"
INIT_PATH = "/docs/init.js"
#: Swagger UI's files, under their version: ``/docs/static/<version>/<file>``.
STATIC_PREFIX = "/docs/static/"
_ASSETS_URL = f"{STATIC_PREFIX}{SWAGGER_UI_VERSION}"

#: The files of swagger_ui/static the page uses, and their types.
ASSETS: dict[str, bytes] = {
    "swagger-ui-bundle.js": b"text/javascript; charset=utf-8",
    "swagger-ui.css": b"text/css; charset=utf-8",
    "favicon-32x32.png": b"image/png",
}

_HERE = Path(__file__).parent
PAGE = (_HERE / "docs_page.html").read_bytes().replace(b"{assets}", _ASSETS_URL.encode())
INIT_SCRIPT = (_HERE / "docs_init.js").read_bytes()

#: Swagger UI sets style attributes as it renders (React style props go
#: through the CSSOM, which CSP does not govern), so 'self' styles suffice.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'none'"
)
_COMMON = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
PAGE_HEADERS = [
    (b"cache-control", b"no-cache"),
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    *_COMMON,
]
#: The start-up script and the document change with the service: revalidated.
FRESH_HEADERS = [(b"cache-control", b"no-cache"), *_COMMON]
#: Swagger UI's files are named by version: kept for a year.
ASSET_HEADERS = [(b"cache-control", b"public, max-age=31536000, immutable"), *_COMMON]


@functools.cache
def asset(name: str) -> bytes:
    """A file of swagger_ui/static, read once."""
    return importlib.resources.files("swagger_ui").joinpath("static", name).read_bytes()


class DocsRoutes:
    def __init__(self, openapi: OpenApi) -> None:
        self.openapi = openapi

    async def document(self, exchange: Exchange) -> None:
        await exchange.answer_bytes(200, self.openapi.encoded, b"application/json", FRESH_HEADERS)

    async def page(self, exchange: Exchange) -> None:
        await exchange.answer_bytes(200, PAGE, b"text/html; charset=utf-8", PAGE_HEADERS)

    async def init_script(self, exchange: Exchange) -> None:
        await exchange.answer_bytes(
            200, INIT_SCRIPT, b"text/javascript; charset=utf-8", FRESH_HEADERS
        )

    async def static(self, exchange: Exchange) -> None:
        """``/docs/static/<version>/<file>``: only the files the page uses, of
        the version installed."""
        version, _, name = exchange.path[len(STATIC_PREFIX) :].partition("/")
        content_type = ASSETS.get(name)
        if version != SWAGGER_UI_VERSION or content_type is None:
            raise ApiError(404, f"no such file: {exchange.path}", code="unknown_url")
        await exchange.answer_bytes(200, asset(name), content_type, ASSET_HEADERS)


OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "GET",
        "/openapi.json",
        "This document",
        "docs",
        description="The OpenAPI 3.1 description of every route. Needs no API key.",
        responses={"application/json": {"type": "object"}},
        open=True,
    ),
    Operation(
        "GET",
        PAGE_PATH,
        "The interactive API reference",
        "docs",
        description="Swagger UI over /openapi.json, served by the service itself (no CDN). "
        "Needs no API key; its Try it out needs one for keyed routes (Authorize).",
        responses={"text/html": {"type": "string"}},
        open=True,
    ),
    Operation(
        "GET",
        INIT_PATH,
        "The reference page's start-up script",
        "docs",
        responses={"text/javascript": {"type": "string"}},
        open=True,
    ),
    Operation(
        "GET",
        STATIC_PREFIX + "{version}/{file}",
        "Swagger UI's files",
        "docs",
        description="Those of the installed swagger-ui-py package the page uses, cached "
        "for a year (the path names their version).",
        responses={"application/octet-stream": {"type": "string"}},
        parameters={
            "version": "swagger-ui-py's version (the page names it).",
            "file": "One of " + ", ".join(ASSETS) + ".",
        },
        open=True,
    ),
)
