"""``/openapi.json`` and the files of ``/docs``: a valid OpenAPI 3.1 document
of every route the app serves, the access each needs as the app enforces it."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
from openapi_spec_validator import validate

from http_front import docs
from http_front.access import ApiKey
from http_front.app import BridgeApp
from http_front.openapi import openapi_document
from http_front.schema import BodySchema, Operation
from http_front.telemetry import route_label
from supervisor import Supervisor
from supervisor.multiplexer import TurnMultiplexer
from supervisor.pool import Pool
from tests.helpers import fake, make_settings, running_service

TIMEOUT_S = 30
KEY = "sk-" + "d" * 40


def make_app(**kwargs: Any) -> BridgeApp:
    pool = Pool(1, fake("ok"))
    return BridgeApp(Supervisor(pool, TurnMultiplexer(pool)), **kwargs)


def methods_of(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, entry)
        for path, methods in document["paths"].items()
        for method, entry in methods.items()
    ]


def test_the_document_is_valid_openapi_3_1() -> None:
    app = make_app()
    document = orjson.loads(app.openapi.encoded)
    validate(document)
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"] == "codex-bridge"
    assert document["info"]["version"] == importlib.metadata.version("codex-bridge")
    assert document["servers"] == [{"url": "/"}]
    tags = [tag["name"] for tag in document["tags"]]
    assert {"models", "health", "admin", "docs"} <= set(tags)
    used = {entry["tags"][0] for _, _, entry in methods_of(document)}
    assert used == set(tags)


def test_every_route_served_has_an_operation() -> None:
    """A route added to the app's tables without its module's Operation fails here."""
    app = make_app()
    described = {(op.method, op.path) for op in app.operations}
    missing = [route for route in app.route_table() if route not in described]
    assert not missing, f"routes without an Operation in their module's OPERATIONS: {missing}"
    # and every Operation outside /admin/ is a route of the app
    routed = set(app.route_table())
    stray = [r for r in described if r not in routed and not r[1].startswith("/admin/")]
    assert not stray, stray


def test_every_admin_operation_is_an_admin_route() -> None:
    app = make_app()
    admin = [op for op in app.operations if op.path.startswith("/admin/")]
    assert len(admin) == 9
    for op in admin:
        parts = op.path.replace("{name}", "codex-0").strip("/").split("/")[1:]
        if not parts:
            continue  # the page, served before routing
        app.admin._route(op.method, parts)  # raises ApiError 404/405 if not routed


def test_security_follows_the_access_rules() -> None:
    document = make_app().openapi.document
    schemes = document["components"]["securitySchemes"]
    assert schemes["apiKey"] == {**schemes["apiKey"], "type": "http", "scheme": "bearer"}
    security = {(method, path): entry["security"] for method, path, entry in methods_of(document)}
    assert security["GET", "/v1/models"] == [{"apiKey": []}]
    assert security["GET", "/v1/models/{model}"] == [{"apiKey": []}]
    for route in [("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/openapi.json")]:
        assert security[route] == [], route
    assert security["GET", "/docs"] == security["GET", "/admin/"] == []
    assert security["GET", "/admin/pool"] == [{"adminToken": []}]
    assert security["POST", "/admin/children/{name}/restart"] == [{"adminToken": []}]
    assert security["GET", "/metrics"] == [{"adminToken": []}]
    public = make_app(metrics_public=True).openapi.document
    assert public["paths"]["/metrics"]["get"]["security"] == []


async def test_the_access_the_document_states_is_the_access_enforced(tmp_path: Path) -> None:
    """With an API key configured: every route the document leaves open
    answers without it, and every keyed one refuses (401) without it."""
    settings = make_settings(tmp_path, api_keys=(ApiKey.from_secret("ci", KEY),))
    with trio.fail_after(TIMEOUT_S):
        async with running_service(settings, fake("ok")) as svc:
            document = (await svc.client.get("/openapi.json")).json()
            values = {"model": "fake-model", "version": docs.SWAGGER_UI_VERSION}
            values["file"] = "swagger-ui.css"
            results = {}
            for method, path, entry in methods_of(document):
                if entry["security"] == [{"adminToken": []}]:
                    continue  # the admin token's rule: tests/test_access.py
                url = re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), "x"), path)
                answer = await svc.client.request(method, url)
                results[method, path] = (entry["security"], answer.status_code)
    for route, (security, status) in results.items():
        if security:
            assert status == 401, route
        else:
            assert status == 200, route
    assert ("GET", "/v1/models") in results
    assert ("GET", "/docs") in results


def test_a_request_body_is_the_schema_requests_are_checked_with() -> None:
    body = BodySchema(
        "EchoRequest",
        {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    )
    operations = [
        Operation("POST", "/v1/echo", "Echo", "chat", body=body),
        Operation(
            "POST",
            "/api/echo",
            "Echo, Ollama's way",
            "ollama",
            body=body,
            responses={"application/x-ndjson": {"description": "One JSON object a line."}},
        ),
    ]
    document = openapi_document(operations, version="1", security=lambda op: "apiKey")
    validate(document)
    assert document["components"]["schemas"]["EchoRequest"] is body.schema  # not a copy
    post = document["paths"]["/v1/echo"]["post"]
    ref = {"$ref": "#/components/schemas/EchoRequest"}
    assert post["requestBody"]["content"]["application/json"]["schema"] == ref
    errors = {"$ref": "#/components/schemas/Error"}
    assert post["responses"]["4XX"]["content"]["application/json"]["schema"] == errors
    ollama = document["paths"]["/api/echo"]["post"]["responses"]
    assert ollama["5XX"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/OllamaError"
    }
    assert "application/x-ndjson" in ollama["200"]["content"]
    # a body the app's routes check requests with is published the same way
    app = make_app()
    published = app.openapi.document["components"]["schemas"]
    bodies = [op.body for op in app.operations if op.body is not None]
    assert bodies  # the doors' bodies: chat completions at least
    for checked in bodies:
        assert published[checked.name] is checked.schema


def test_two_bodies_of_one_name_or_two_operations_of_one_route_are_refused() -> None:
    one = BodySchema("Body", {"type": "object"})
    other = BodySchema("Body", {"type": "array"})
    with pytest.raises(ValueError, match="two request bodies are named 'Body'"):
        openapi_document(
            [
                Operation("POST", "/a", "A", "t", body=one),
                Operation("POST", "/b", "B", "t", body=other),
            ],
            version="1",
            security=lambda op: None,
        )
    with pytest.raises(ValueError, match="two operations for GET /a"):
        openapi_document(
            [Operation("GET", "/a", "A", "t"), Operation("GET", "/a", "A again", "t")],
            version="1",
            security=lambda op: None,
        )


async def test_openapi_and_docs_files_over_http(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, api_keys=(ApiKey.from_secret("ci", KEY),))
    assets = f"/docs/static/{docs.SWAGGER_UI_VERSION}"
    with trio.fail_after(TIMEOUT_S):
        async with running_service(settings, fake("ok")) as svc:
            client = svc.client
            first, second = await client.get("/openapi.json"), await client.get("/openapi.json")
            page = await client.get("/docs")
            init = await client.get("/docs/init.js")
            bundle = await client.get(f"{assets}/swagger-ui-bundle.js")
            css = await client.get(f"{assets}/swagger-ui.css")
            other_version = await client.get("/docs/static/0.0.1/swagger-ui.css")
            not_served = await client.get(f"{assets}/swagger-editor.js")
            post = await client.post("/openapi.json")
    assert first.status_code == 200
    assert first.headers["content-type"] == "application/json"
    assert first.content == second.content
    validate(first.json())
    assert page.headers["cache-control"] == "no-cache"
    assert f'src="{assets}/swagger-ui-bundle.js"' in page.text
    assert init.headers["content-type"] == "text/javascript; charset=utf-8"
    assert b'url: "/openapi.json"' in init.content
    assert b"validatorUrl: null" in init.content
    for asset in (bundle, css):
        assert asset.status_code == 200
        assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert asset.headers["x-content-type-options"] == "nosniff"
    assert bundle.content == docs.asset("swagger-ui-bundle.js")
    assert css.headers["content-type"] == "text/css; charset=utf-8"
    for refused in (other_version, not_served):
        assert refused.status_code == 404
        assert refused.json()["error"]["code"] == "unknown_url"
    assert post.status_code == 405


def test_every_route_served_has_its_own_metrics_label() -> None:
    """Requests of a new door are not counted as "other" in the metrics."""
    app = make_app()
    unlabelled = [
        (method, path)
        for method, path in app.route_table()
        if route_label(path.replace("{", "x").replace("}", "")) == "other"
    ]
    assert not unlabelled, unlabelled
    assert route_label("/v1/responses/resp_1") == "/v1/responses/{id}"
    assert route_label("/api/nothing") == "other"  # a closed set: clients cannot add series
