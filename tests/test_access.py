"""API keys and browser protections (http_front/access.py, settings in codex_bridge/config.py).

Pure parts first (key table, origin policy, CORS headers, settings parsing),
then the running service on fake children, then the real ``openai`` SDK.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import httpx
import openai
import pytest
import trio

from codex_bridge.cli import main
from codex_bridge.config import ConfigError, Settings, UnprotectedBind, load_settings
from codex_bridge.logs import RequestContext
from http_front.access import (
    ApiKey,
    KeyTable,
    OriginPolicy,
    Verdict,
    is_loopback_name,
    parse_cors_origins,
    presented_key,
)
from http_front.asgi import Message, with_response_headers
from http_front.errors import ApiError
from tests.helpers import (
    LineLog,
    RunningService,
    chat_body,
    content_of,
    fake,
    make_settings,
    running_service,
    sse_events,
)

TIMEOUT_S = 30
KEY = "sk-test-0123456789abcdef"
OTHER_KEY = "sk-other-fedcba9876543210"
ADMIN_TOKEN = "admin-0123456789"
MODEL = "fake-model"
PAGE = "https://chat.example.com"


def sha256_hex(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """An error in OpenAI's exact shape."""
    assert response.status_code == status, response.content[:300]
    assert response.headers["content-type"] == "application/json"
    payload = response.json()
    assert set(payload) == {"error"}
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert error["param"] is None
    assert error["message"]
    return dict(error)


# -- the key table ------------------------------------------------------------------------


def test_a_key_is_known_by_its_digest_only() -> None:
    key = ApiKey.from_secret("ci", KEY, max_concurrent_turns=2)
    assert key.digest == hashlib.sha256(KEY.encode()).digest()
    assert ApiKey.from_sha256("ci", sha256_hex(KEY).upper(), max_concurrent_turns=2) == key
    assert KEY not in repr(key)
    assert key.digest.hex() not in repr(key)
    assert "ci" in repr(key)


def test_identify_compares_every_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    table = KeyTable(ApiKey.from_secret(f"k{i}", f"secret-{i}") for i in range(5))
    compared: list[bytes] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    found = table.identify(b"secret-0")
    assert found is not None
    assert found.name == "k0"
    assert len(compared) == 5  # no early exit on the first key's match
    compared.clear()
    assert table.identify(b"secret-9") is None
    assert len(compared) == 5


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], None),
        ([(b"authorization", b"Bearer abc")], b"abc"),
        ([(b"Authorization", b"bearer   abc  ")], b"abc"),
        ([(b"x-api-key", b"abc")], None),
    ],
)
def test_presented_key(headers: list[tuple[bytes, bytes]], expected: bytes | None) -> None:
    assert presented_key(headers) == expected


@pytest.mark.parametrize(
    "headers",
    [
        [(b"authorization", b"Basic YWJjOmRlZg==")],
        [(b"authorization", b"Bearer")],
        [(b"authorization", b"Bearer a"), (b"authorization", b"Bearer b")],
    ],
)
def test_malformed_authorization_is_a_401(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(ApiError) as info:
        presented_key(headers)
    assert info.value.status == 401
    assert info.value.code == "invalid_api_key"
    assert (b"www-authenticate", b'Bearer realm="codex-bridge"') in info.value.headers


def test_authenticate_without_keys_lets_everyone_in() -> None:
    assert KeyTable().authenticate([]) is None
    assert KeyTable().authenticate([(b"authorization", b"Bearer whatever")]) is None


def test_authenticate_with_keys() -> None:
    table = KeyTable([ApiKey.from_secret("ci", KEY)])
    key = table.authenticate([(b"authorization", f"Bearer {KEY}".encode())])
    assert key is not None
    assert key.name == "ci"
    for headers in ([], [(b"authorization", b"Bearer nope")]):
        with pytest.raises(ApiError) as info:
            table.authenticate(headers)
        assert info.value.status == 401
        assert info.value.type == "invalid_request_error"
        assert KEY not in info.value.message


def test_claims_count_turns_per_key_and_give_them_back() -> None:
    limited = ApiKey.from_secret("ci", KEY, max_concurrent_turns=2)
    free = ApiKey.from_secret("free", OTHER_KEY)
    table = KeyTable([limited, free])
    with table.claim(limited), table.claim(limited):
        assert table.running("ci") == 2
        with pytest.raises(ApiError) as info:
            table.claim(limited)
        assert info.value.status == 429
        assert info.value.code == "rate_limit_exceeded"
        assert info.value.type == "rate_limit_error"
        assert info.value.retry_after_s is not None
        assert info.value.retry_after_s >= 1
        assert table.running("ci") == 2  # a refused claim counts nothing
        with table.claim(free), table.claim(free), table.claim(free), table.claim(None):
            pass  # no limit of its own
    assert table.running("ci") == 0
    with pytest.raises(RuntimeError), table.claim(limited):  # released on any exit
        raise RuntimeError
    assert table.running("ci") == 0


async def test_a_claim_is_given_back_as_the_last_bytes_go_out() -> None:
    key = ApiKey.from_secret("ci", KEY, max_concurrent_turns=1)
    table = KeyTable([key])
    seen: list[int] = []

    async def send(message: Message) -> None:
        seen.append(table.running("ci"))

    with table.claim(key) as claim:
        sending = claim.sending(send)
        await sending({"type": "http.response.start", "status": 200, "headers": []})
        await sending({"type": "http.response.body", "body": b"a", "more_body": True})
        await sending({"type": "http.response.body", "body": b"b"})
        assert table.running("ci") == 0
        with table.claim(key):  # the next request of a client that waited for the answer
            pass
    assert seen == [1, 1, 0]
    assert table.running("ci") == 0


# -- origins --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("LOCALHOST.", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("localhost.example.com", False),
        ("example.com", False),
    ],
)
def test_loopback_names(host: str, loopback: bool) -> None:
    assert is_loopback_name(host) is loopback


def test_cors_origins_are_normalized() -> None:
    assert parse_cors_origins(
        ["HTTPS://Chat.Example.com:443/", "http://localhost:3000", "http://[::1]:80"]
    ) == ("https://chat.example.com", "http://localhost:3000", "http://[::1]")
    assert parse_cors_origins(["*"]) == ("*",)


@pytest.mark.parametrize(
    ("origins", "message"),
    [
        (["null"], "'null'"),
        (["chat.example.com"], "not an http(s) origin"),
        (["ftp://chat.example.com"], "not an http(s) origin"),
        (["https://chat.example.com/app"], "no path"),
        (["https://user@chat.example.com"], "no path or user"),
        (["https://chat.example.com:99999"], "bad port"),
        (["*", PAGE], "list it alone"),
    ],
)
def test_bad_cors_origins(origins: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_cors_origins(origins)


@pytest.mark.parametrize(
    ("origin", "host", "admin", "verdict"),
    [
        (None, b"127.0.0.1:8088", False, Verdict.NO_ORIGIN),
        (PAGE.encode(), b"127.0.0.1:8088", False, Verdict.LISTED),
        (PAGE.encode(), b"127.0.0.1:8088", True, Verdict.LISTED),
        (b"https://evil.example", b"127.0.0.1:8088", False, Verdict.REFUSED),
        (b"null", b"127.0.0.1:8088", False, Verdict.REFUSED),
        (b"", b"127.0.0.1:8088", False, Verdict.REFUSED),
        # the service's own pages, addressed by a loopback name
        (b"http://127.0.0.1:8088", b"127.0.0.1:8088", True, Verdict.OWN),
        (b"http://localhost:8088", b"localhost:8088", True, Verdict.OWN),
        (b"http://[::1]:8088", b"[::1]:8088", True, Verdict.OWN),
        (b"http://localhost", b"localhost", False, Verdict.OWN),
        # another local page, or another port: not the service's own
        (b"http://localhost:3000", b"127.0.0.1:8088", False, Verdict.REFUSED),
        (b"http://localhost:3000", b"localhost:8088", False, Verdict.REFUSED),
        (b"http://127.0.0.1:8088", None, False, Verdict.REFUSED),
        # DNS rebinding: Origin and Host agree, but on a name that can be rebound
        (b"http://evil.example:8088", b"evil.example:8088", False, Verdict.REFUSED),
        (b"http://evil.example:8088", b"evil.example:8088", True, Verdict.REFUSED),
    ],
)
def test_origin_verdicts(
    origin: bytes | None, host: bytes | None, admin: bool, verdict: Verdict
) -> None:
    policy = OriginPolicy.from_config([PAGE])
    assert policy.verdict(origin, host, admin=admin) is verdict


def test_wildcard_covers_model_routes_only() -> None:
    policy = OriginPolicy.from_config(["*"])
    evil = b"https://evil.example"
    assert policy.verdict(evil, b"127.0.0.1:8088", admin=False) is Verdict.LISTED
    assert policy.verdict(evil, b"127.0.0.1:8088", admin=True) is Verdict.REFUSED
    assert policy.verdict(b"null", b"127.0.0.1:8088", admin=False) is Verdict.REFUSED


def _scope(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"method": "POST", "path": "/v1/chat/completions", "headers": list(headers)}


def test_admit_gives_cors_headers_to_listed_origins_only() -> None:
    policy = OriginPolicy.from_config([PAGE])
    host = (b"host", b"127.0.0.1:8088")
    assert policy.admit(_scope(host), admin=False) == []
    own = (b"origin", b"http://127.0.0.1:8088")
    assert policy.admit(_scope(host, own), admin=True) == []
    headers = dict(policy.admit(_scope(host, (b"origin", PAGE.encode())), admin=False))
    assert headers[b"access-control-allow-origin"] == PAGE.encode()
    assert headers[b"vary"] == b"Origin"
    assert b"retry-after" in headers[b"access-control-expose-headers"]
    assert b"x-request-id" in headers[b"access-control-expose-headers"]
    for refused in (
        _scope(host, (b"origin", b"https://evil.example")),
        _scope(host, (b"origin", PAGE.encode()), (b"origin", b"https://evil.example")),
    ):
        with pytest.raises(ApiError) as info:
            policy.admit(refused, admin=False)
        assert info.value.status == 403
        assert info.value.code == "origin_not_allowed"


def test_preflight_headers() -> None:
    policy = OriginPolicy.from_config([PAGE], allow_headers=["X-My-Chat", "bad header"])
    asked = (
        b"access-control-request-headers",
        b"Authorization, Content-Type, X-OpenWebUI-Chat-Id, x-custom, bad\x01name, " + b"y" * 300,
    )
    headers = dict(
        policy.preflight_headers(
            PAGE.encode(), [asked, (b"access-control-request-private-network", b"true")]
        )
    )
    allowed = headers[b"access-control-allow-headers"].split(b", ")
    for name in (b"authorization", b"content-type", b"x-openwebui-chat-id", b"x-conversation-id"):
        assert name in allowed
    assert b"x-my-chat" in allowed  # a configured conversation header
    assert b"x-custom" in allowed  # asked for, and a reasonable name
    assert not [n for n in allowed if b"bad" in n or n.startswith(b"yyy")]
    assert headers[b"access-control-allow-origin"] == PAGE.encode()
    assert b"Origin" in headers[b"vary"]
    assert headers[b"access-control-allow-methods"] == b"GET, POST, OPTIONS"
    assert int(headers[b"access-control-max-age"]) > 0
    assert headers[b"access-control-allow-private-network"] == b"true"


async def test_response_headers_are_added_to_the_start_only() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    own = [(b"content-type", b"text/plain")]
    wrapped = with_response_headers(send, [(b"vary", b"Origin")])
    await wrapped({"type": "http.response.start", "status": 200, "headers": own})
    await wrapped({"type": "http.response.body", "body": b"x"})
    assert sent[0]["headers"] == [(b"content-type", b"text/plain"), (b"vary", b"Origin")]
    assert own == [(b"content-type", b"text/plain")]  # shared lists stay untouched
    assert sent[1] == {"type": "http.response.body", "body": b"x"}
    assert with_response_headers(send, []) is send


# -- settings -------------------------------------------------------------------------------


def test_keys_from_toml_plain_and_hashed(tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(
        f"""
host = "0.0.0.0"
cors_origins = ["https://Chat.Example.com/"]

[[api_keys]]
name = "ci"
key = "{KEY}"
max_concurrent_turns = 2

[[api_keys]]
name = "laptop"
sha256 = "{sha256_hex(OTHER_KEY)}"
"""
    )
    settings = load_settings(config_file=config, environ={})
    assert [(k.name, k.max_concurrent_turns) for k in settings.api_keys] == [
        ("ci", 2),
        ("laptop", None),
    ]
    assert settings.api_keys[0].digest == hashlib.sha256(KEY.encode()).digest()
    assert settings.api_keys[1].digest == hashlib.sha256(OTHER_KEY.encode()).digest()
    assert settings.cors_origins == (PAGE,)
    assert KEY not in repr(settings)
    assert KEY not in str(settings)


def test_keys_from_the_environment() -> None:
    settings = load_settings(
        environ={
            "CODEX_BRIDGE_API_KEYS": f" ci:{KEY} , {OTHER_KEY}",
            "CODEX_BRIDGE_CORS_ORIGINS": f"{PAGE}, http://localhost:3000",
        }
    )
    assert [k.name for k in settings.api_keys] == ["ci", "key-2"]
    assert settings.api_keys[0].digest == hashlib.sha256(KEY.encode()).digest()
    assert settings.api_keys[1].digest == hashlib.sha256(OTHER_KEY.encode()).digest()
    assert settings.cors_origins == (PAGE, "http://localhost:3000")


def test_environment_keys_replace_those_of_the_file(tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(f'api_keys = [{{name = "file", key = "{KEY}"}}]\n')
    settings = load_settings(
        config_file=config, environ={"CODEX_BRIDGE_API_KEYS": f"env:{OTHER_KEY}"}
    )
    assert [k.name for k in settings.api_keys] == ["env"]


def test_no_secret_in_the_repr_of_settings() -> None:
    settings = Settings(api_keys=(ApiKey.from_secret("ci", KEY),), admin_token=ADMIN_TOKEN)
    for text in (repr(settings), str(settings)):
        assert KEY not in text
        assert ADMIN_TOKEN not in text
        assert sha256_hex(KEY) not in text
        assert "'ci'" in text


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            f'api_keys = [{{name = "a", key = "{KEY}"}}, {{name = "a", key = "{OTHER_KEY}"}}]',
            "two keys are named 'a'",
        ),
        (
            f'api_keys = [{{name = "a", key = "{KEY}"}}, {{name = "b", key = "{KEY}"}}]',
            "keys 'a' and 'b' are the same key",
        ),
        ('api_keys = [{name = "a", key = ""}]', "entry 1 ('a'): the key is empty"),
        ('api_keys = [{name = "a", key = "has space"}]', "printable ASCII without spaces"),
        ('api_keys = [{name = "a", sha256 = "abc"}]', "64 hex digits"),
        (f'api_keys = [{{name = "a", sha256 = "{"g" * 64}"}}]', "64 hex digits"),
        (f'api_keys = [{{name = "a", keys = "{KEY}"}}]', "unknown field(s) 'keys'"),
        (
            f'api_keys = [{{name = "a", key = "{KEY}", sha256 = "{sha256_hex(KEY)}"}}]',
            "exactly one of 'key' and 'sha256'",
        ),
        ('api_keys = [{name = "a"}]', "exactly one of 'key' and 'sha256'"),
        (f'api_keys = [{{key = "{KEY}"}}]', "entry 1: 'name' (a string) is required"),
        (f'api_keys = [{{name = "a b", key = "{KEY}"}}]', "key name 'a b' must be"),
        (
            f'api_keys = [{{name = "a", key = "{KEY}", max_concurrent_turns = 0}}]',
            "max_concurrent_turns must be an integer of 1 or more",
        ),
        (f'api_keys = "{KEY}"', "expected a list of tables"),
        (f'api_keys = [{{name = "a", key = "{KEY}"}}, "{KEY}"]', "entry 2: expected a table"),
        ('cors_origins = "https://a.example"', "expected a list of origins"),
        ('cors_origins = ["https://a.example/app"]', "no path"),
    ],
)
def test_bad_structured_settings_in_toml(tmp_path: Path, toml: str, message: str) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(toml + "\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config_file=config, environ={})
    text = str(info.value)
    setting = "cors_origins" if toml.startswith("cors") else "api_keys"
    assert f"invalid setting '{setting}' (from config file {config})" in text
    assert message in text
    assert KEY not in text
    assert OTHER_KEY not in text


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "is set but empty"),
        (f"ci:{KEY},", "entry 2 is empty"),
        (f"ci:{KEY},,{OTHER_KEY}", "entry 2 is empty"),
        ("ci:", "entry 1: the key is empty"),
        (f"c i:{KEY}", "entry 1: the name before ':' must be"),
        (f"{KEY}/x:y", "entry 1: the name before ':' must be"),
        (f"ci:{KEY},ci:{OTHER_KEY}", "two keys are named 'ci'"),
        (f"{KEY},key-1:{OTHER_KEY}", "two keys are named 'key-1'"),
    ],
)
def test_bad_keys_in_the_environment(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"CODEX_BRIDGE_API_KEYS": value})
    text = str(info.value)
    assert "invalid setting 'api_keys' (from CODEX_BRIDGE_API_KEYS)" in text
    assert message in text
    assert KEY not in text
    assert OTHER_KEY not in text
    assert info.value.__cause__ is None  # no secret travels in a chained exception


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "bridge.example.com"])
def test_non_loopback_bind_needs_keys_or_an_explicit_opt_out(host: str) -> None:
    with pytest.raises(UnprotectedBind) as info:
        load_settings(environ={"CODEX_BRIDGE_HOST": host})
    text = str(info.value)
    assert "'api_keys'" in text
    assert "allow_unauthenticated" in text
    assert "(host from CODEX_BRIDGE_HOST)" in text
    opted_out = load_settings(
        environ={"CODEX_BRIDGE_HOST": host, "CODEX_BRIDGE_ALLOW_UNAUTHENTICATED": "true"}
    )
    assert opted_out.host == host
    keyed = load_settings(environ={"CODEX_BRIDGE_HOST": host, "CODEX_BRIDGE_API_KEYS": KEY})
    assert keyed.host == host
    with pytest.raises(UnprotectedBind):
        Settings(host=host)  # built in code, not only through load_settings


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_binds_need_no_key(host: str) -> None:
    assert load_settings(environ={"CODEX_BRIDGE_HOST": host}).host == host


def test_other_settings_are_still_named_with_a_non_loopback_host() -> None:
    with pytest.raises(ConfigError, match=r"invalid setting 'pool_size' \(from --pool-size\)"):
        load_settings(
            environ={"CODEX_BRIDGE_HOST": "0.0.0.0", "CODEX_BRIDGE_API_KEYS": KEY},
            overrides={"pool_size": 0},
        )


def test_cli_refuses_a_public_bind_without_keys(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CODEX_BRIDGE_API_KEYS", raising=False)
    monkeypatch.delenv("CODEX_BRIDGE_ALLOW_UNAUTHENTICATED", raising=False)
    with pytest.raises(SystemExit) as info:
        main(["serve", "--host", "0.0.0.0", "--codex-bin", sys.executable])
    assert info.value.code not in (0, None)
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("codex-bridge: error: refusing to serve on '0.0.0.0'")
    assert "'api_keys'" in err
    assert "(host from --host)" in err


def test_wildcard_origins_need_keys() -> None:
    with pytest.raises(ConfigError, match=r"'cors_origins'.*needs api_keys"):
        load_settings(environ={"CODEX_BRIDGE_CORS_ORIGINS": "*"})
    settings = load_settings(
        environ={"CODEX_BRIDGE_CORS_ORIGINS": "*", "CODEX_BRIDGE_API_KEYS": KEY}
    )
    assert settings.cors_origins == ("*",)


def test_admin_token_must_not_be_an_api_key() -> None:
    with pytest.raises(ConfigError, match="'admin_token': it is also an API key"):
        load_settings(
            environ={"CODEX_BRIDGE_API_KEYS": f"ci:{KEY}", "CODEX_BRIDGE_ADMIN_TOKEN": KEY}
        )


# -- the running service ----------------------------------------------------------------------


@asynccontextmanager
async def keyed_service(
    tmp_path: Path, mode: str = "ok", *, tap: LineLog | None = None, **settings: Any
) -> AsyncIterator[RunningService]:
    values: dict[str, Any] = {
        "api_keys": (
            ApiKey.from_secret("ci", KEY),
            ApiKey.from_secret("laptop", OTHER_KEY, max_concurrent_turns=1),
        ),
        **settings,
    }
    launch = fake(mode, 3, tap=tap)
    async with running_service(make_settings(tmp_path, **values), launch) as svc:
        yield svc


async def test_model_routes_need_a_valid_key(tmp_path: Path) -> None:
    tap = LineLog()
    with trio.fail_after(TIMEOUT_S):
        async with keyed_service(tmp_path, tap=tap) as svc:
            client = svc.client
            lists_before = len(tap.sent("model/list"))
            refused = []
            for headers in ({}, bearer("sk-wrong"), bearer(ADMIN_TOKEN), {"x-api-key": KEY}):
                for stream in (True, False):
                    refused.append(
                        await client.post(
                            "/v1/chat/completions",
                            json=chat_body("hi", model=MODEL, stream=stream),
                            headers=headers,
                        )
                    )
                refused.append(await client.get("/v1/models", headers=headers))
                refused.append(await client.get(f"/v1/models/{MODEL}", headers=headers))
                refused.append(await client.get("/v1/nowhere", headers=headers))
            lists_after = len(tap.sent("model/list"))
            models = await client.get("/v1/models", headers=bearer(KEY))
            one = await client.get(f"/v1/models/{MODEL}", headers=bearer(OTHER_KEY))
            streamed = await client.post(
                "/v1/chat/completions", json=chat_body("hi", model=MODEL), headers=bearer(KEY)
            )
            whole = await client.post(
                "/v1/chat/completions",
                json=chat_body("hi", model=MODEL, stream=False),
                headers=bearer(KEY),
            )
            health = await client.get("/healthz")
            ready = await client.get("/readyz")
    for response in refused:
        error = assert_error(response, 401, "invalid_api_key")
        assert error["type"] == "invalid_request_error"
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert KEY not in response.text
    # nothing of a refused request reached codex
    assert lists_after == lists_before
    assert len(tap.sent("turn/start")) == 2  # the two accepted completions only
    assert models.status_code == 200
    assert [m["id"] for m in models.json()["data"]] == [MODEL]
    assert one.status_code == 200
    assert content_of(sse_events(streamed.content)) == "d0 d1 d2 "
    assert whole.json()["choices"][0]["message"]["content"] == "d0 d1 d2 "
    assert health.status_code == 200
    assert ready.status_code == 200


async def test_a_refusal_before_the_body_closes_the_connection(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with keyed_service(tmp_path) as svc:
            refused = await svc.client.post(
                "/v1/chat/completions", json=chat_body("hi", model=MODEL)
            )
            bodiless = await svc.client.get("/v1/models")
    assert_error(refused, 401, "invalid_api_key")
    assert refused.headers["connection"] == "close"
    assert_error(bodiless, 401, "invalid_api_key")
    assert "close" not in bodiless.headers.get("connection", "")


async def test_keys_from_a_toml_file_open_the_service(tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(
        f'api_keys = [{{name = "hashed", sha256 = "{sha256_hex(KEY)}"}},'
        f' {{name = "plain", key = "{OTHER_KEY}"}}]\n'
    )
    loaded = load_settings(config_file=config, environ={})
    settings = make_settings(tmp_path, api_keys=loaded.api_keys)
    with trio.fail_after(TIMEOUT_S):
        async with running_service(settings, fake("ok")) as svc:
            hashed = await svc.client.get("/v1/models", headers=bearer(KEY))
            plain = await svc.client.get("/v1/models", headers=bearer(OTHER_KEY))
            digest = await svc.client.get("/v1/models", headers=bearer(sha256_hex(KEY)))
    assert hashed.status_code == 200
    assert plain.status_code == 200
    assert_error(digest, 401, "invalid_api_key")  # the digest is not the key


async def test_admin_token_and_api_keys_are_separate(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with keyed_service(tmp_path, admin_token=ADMIN_TOKEN) as svc:
            client = svc.client
            admin_by_key = await client.get("/admin/pool", headers=bearer(KEY))
            drain_by_key = await client.post("/admin/pool/drain", headers=bearer(KEY))
            paused = svc.handle.pool.paused
            admin_by_token = await client.get("/admin/pool", headers=bearer(ADMIN_TOKEN))
            models_by_token = await client.get("/v1/models", headers=bearer(ADMIN_TOKEN))
            models_by_key = await client.get("/v1/models", headers=bearer(KEY))
    assert_error(admin_by_key, 401, "invalid_admin_token")
    assert_error(drain_by_key, 401, "invalid_admin_token")
    assert paused is False
    assert admin_by_token.status_code == 200
    assert_error(models_by_token, 401, "invalid_api_key")
    assert models_by_key.status_code == 200


async def test_a_keys_concurrency_limit(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with keyed_service(tmp_path, "hang-turn") as svc:
            client = svc.client
            limited = bearer(OTHER_KEY)  # "laptop", max_concurrent_turns = 1
            async with client.stream(
                "POST", "/v1/chat/completions", json=chat_body("1st", model=MODEL), headers=limited
            ) as first:
                chunks = first.aiter_bytes()  # kept: dropping it would close the stream
                await chunks.__anext__()  # the first turn runs (and never ends)
                refused = [
                    await client.post(
                        "/v1/chat/completions",
                        json=chat_body("2nd", model=MODEL, stream=stream),
                        headers=limited,
                    )
                    for stream in (True, False)
                ]
                models = await client.get("/v1/models", headers=limited)  # runs no turn
                async with client.stream(
                    "POST",
                    "/v1/chat/completions",
                    json=chat_body("other key", model=MODEL),
                    headers=bearer(KEY),
                ) as unlimited:
                    other = await unlimited.aiter_bytes().__anext__()
            # the first client went away mid-stream: its turn is given back
            while True:
                async with client.stream(
                    "POST",
                    "/v1/chat/completions",
                    json=chat_body("3rd", model=MODEL),
                    headers=limited,
                ) as third:
                    if third.status_code != 429:
                        status = third.status_code
                        break
                await trio.sleep(0.02)
    for response in refused:
        error = assert_error(response, 429, "rate_limit_exceeded")
        assert error["type"] == "rate_limit_error"
        assert int(response.headers["retry-after"]) >= 1
        assert "laptop" in error["message"]
    assert models.status_code == 200
    assert other.startswith(b":")  # the other key's stream started
    assert status == 200


async def test_a_keys_turn_is_given_back_however_the_request_ends(tmp_path: Path) -> None:
    limited = bearer(OTHER_KEY)
    with trio.fail_after(TIMEOUT_S):
        async with keyed_service(tmp_path) as svc:
            statuses = []
            for body in (
                chat_body("hi", model=MODEL, stream=False),
                chat_body("hi", model=MODEL),
                {"model": MODEL, "messages": "not a list"},  # a 400
                chat_body("hi", model="no-such-model"),  # a 404
                chat_body("hi", model=MODEL),
            ):
                response = await svc.client.post("/v1/chat/completions", json=body, headers=limited)
                statuses.append(response.status_code)
    assert statuses == [200, 200, 400, 404, 200]


async def test_the_key_name_goes_into_log_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(RequestContext())
    settings = make_settings(tmp_path, pool_size=2, api_keys=(ApiKey.from_secret("ci", KEY),))
    launch = fake("crash-once", state=str(tmp_path / "crashed"), deltas=2)
    with trio.fail_after(TIMEOUT_S):
        async with running_service(settings, launch) as svc:
            response = await svc.client.post(
                "/v1/chat/completions", json=chat_body("hi", model=MODEL), headers=bearer(KEY)
            )
            await svc.client.get("/v1/models", headers=bearer("sk-wrong"))
    assert content_of(sse_events(response.content)) == "d0 d1 "
    lines = [(r.getMessage(), getattr(r, "context", {})) for r in caplog.records]
    retried = [context for message, context in lines if "retrying" in message]
    assert retried, lines
    assert retried[0]["key"] == "ci"
    refused = [
        context for message, context in lines if '"GET /v1/models" 401' in message
    ]  # the access line says why, and names no key: none was valid
    assert refused, lines
    assert "key" not in refused[0]
    assert any("invalid_api_key" in message for message, _ in lines)
    assert not any("sk-wrong" in str(line) or KEY in str(line) for line in lines)


# -- browsers -------------------------------------------------------------------------------


def _port(svc: RunningService) -> int:
    port = urlsplit(svc.url).port
    assert port is not None
    return port


async def test_pages_of_other_origins_are_refused_everywhere(tmp_path: Path) -> None:
    evil = {"origin": "https://evil.example"}
    with trio.fail_after(TIMEOUT_S):
        async with running_service(make_settings(tmp_path), fake("ok")) as svc:
            client = svc.client
            drain = await client.post("/admin/pool/drain", headers=evil)
            paused = svc.handle.pool.paused
            status = await client.get("/admin/pool", headers=evil)
            form = await client.post(
                "/v1/chat/completions",
                content=b'{"model": "fake-model", "messages": []}',
                headers={**evil, "content-type": "text/plain"},
            )
            chat = await client.post(
                "/v1/chat/completions", json=chat_body("hi", model=MODEL), headers=evil
            )
            models = await client.get("/v1/models", headers=evil)
            health = await client.get("/healthz", headers={"origin": "null"})
            preflight = await client.options(
                "/v1/chat/completions",
                headers={**evil, "access-control-request-method": "POST"},
            )
            plain = await client.get("/v1/models")
    for response in (drain, status, form, chat, models, health, preflight):
        error = assert_error(response, 403, "origin_not_allowed")
        assert error["type"] == "permission_error"
        assert "access-control-allow-origin" not in response.headers
    assert form.headers["connection"] == "close"  # its body stayed unread
    assert paused is False  # the page could not drain the pool
    assert plain.status_code == 200  # no Origin: not a page


async def test_dns_rebinding_is_refused_and_own_pages_are_served(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with running_service(make_settings(tmp_path), fake("ok")) as svc:
            port = _port(svc)
            client = svc.client
            rebound = {"origin": f"http://evil.example:{port}", "host": f"evil.example:{port}"}
            drain = await client.post("/admin/pool/drain", headers=rebound)
            chat = await client.post(
                "/v1/chat/completions", json=chat_body("hi", model=MODEL), headers=rebound
            )
            # a same-origin GET carries no Origin: the Host check guards /admin/
            status = await client.get("/admin/pool", headers={"host": f"evil.example:{port}"})
            paused_by_rebinding = svc.handle.pool.paused
            # the service's own page, addressed by a loopback literal
            own = {"origin": f"http://127.0.0.1:{port}"}
            own_drain = await client.post("/admin/pool/drain", headers=own)
            paused_by_own_page = svc.handle.pool.paused
            await client.post("/admin/pool/undrain", headers=own)
            # another local page (another port) is not the service's own
            neighbour = await client.post(
                "/admin/pool/drain", headers={"origin": "http://localhost:3000"}
            )
            paused_by_neighbour = svc.handle.pool.paused
    assert_error(drain, 403, "origin_not_allowed")
    assert_error(chat, 403, "origin_not_allowed")
    assert_error(status, 403, "admin_forbidden")
    assert paused_by_rebinding is False
    assert own_drain.status_code == 200
    assert "access-control-allow-origin" not in own_drain.headers  # same origin: none needed
    assert paused_by_own_page is True
    assert_error(neighbour, 403, "origin_not_allowed")
    assert paused_by_neighbour is False


async def test_listed_origins_get_cors_headers_on_every_answer(tmp_path: Path) -> None:
    page = {"origin": PAGE}

    def assert_cors(response: httpx.Response) -> None:
        assert response.headers["access-control-allow-origin"] == PAGE
        assert "Origin" in response.headers["vary"]
        assert "retry-after" in response.headers["access-control-expose-headers"]

    with trio.fail_after(TIMEOUT_S):
        async with keyed_service(tmp_path, cors_origins=(PAGE,)) as svc:
            client = svc.client
            auth = {**page, **bearer(KEY)}
            models = await client.get("/v1/models", headers=auth)
            async with client.stream(
                "POST", "/v1/chat/completions", json=chat_body("hi", model=MODEL), headers=auth
            ) as stream:
                stream_headers = stream.headers
                body = b"".join([chunk async for chunk in stream.aiter_bytes()])
            whole = await client.post(
                "/v1/chat/completions",
                json=chat_body("hi", model=MODEL, stream=False),
                headers=auth,
            )
            bad = await client.post(
                "/v1/chat/completions", json={"model": MODEL, "messages": 1}, headers=auth
            )
            missing = await client.get("/v1/models", headers=page)
            admin = await client.get("/admin/pool", headers=page)
            preflight = await client.options(
                "/v1/chat/completions",
                headers={
                    **page,
                    "access-control-request-method": "POST",
                    "access-control-request-headers": "authorization,content-type,"
                    "x-openwebui-chat-id,x-something-else",
                },
            )
            admin_preflight = await client.options(
                "/admin/pool/drain", headers={**page, "access-control-request-method": "POST"}
            )
            no_origin = await client.options("/v1/chat/completions", headers=bearer(KEY))
    assert models.status_code == 200
    assert_cors(models)
    assert stream_headers["content-type"].startswith("text/event-stream")
    assert stream_headers["access-control-allow-origin"] == PAGE
    assert stream_headers["vary"] == "Origin"
    assert content_of(sse_events(body)) == "d0 d1 d2 "
    assert whole.status_code == 200
    assert_cors(whole)
    assert bad.status_code == 400
    assert set(bad.json()["error"]) == {"message", "type", "param", "code"}
    assert_cors(bad)
    assert_error(missing, 401, "invalid_api_key")
    assert_cors(missing)
    assert "www-authenticate" in missing.headers["access-control-expose-headers"]
    assert admin.status_code == 200  # a listed page, from a loopback client
    assert_cors(admin)
    assert preflight.status_code == 204
    assert preflight.content == b""
    assert preflight.headers["access-control-allow-origin"] == PAGE
    assert "Origin" in preflight.headers["vary"]
    assert "POST" in preflight.headers["access-control-allow-methods"]
    allowed = preflight.headers["access-control-allow-headers"].split(", ")
    for name in ("authorization", "content-type", "x-openwebui-chat-id", "x-something-else"):
        assert name in allowed
    assert int(preflight.headers["access-control-max-age"]) > 0
    assert admin_preflight.status_code == 204
    # OPTIONS without Origin is no preflight: what any unsupported method gets
    assert no_origin.status_code == 405
    assert "access-control-allow-origin" not in no_origin.headers


async def test_wildcard_origin_serves_model_routes_not_admin(tmp_path: Path) -> None:
    page = {"origin": "https://anyone.example"}
    with trio.fail_after(TIMEOUT_S):
        async with keyed_service(tmp_path, cors_origins=("*",)) as svc:
            models = await svc.client.get("/v1/models", headers={**page, **bearer(KEY)})
            drain = await svc.client.post("/admin/pool/drain", headers=page)
            paused = svc.handle.pool.paused
    assert models.status_code == 200
    assert models.headers["access-control-allow-origin"] == "https://anyone.example"
    assert_error(drain, 403, "origin_not_allowed")
    assert paused is False


# -- the openai SDK ---------------------------------------------------------------------------


async def test_the_openai_sdk_with_keys(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with keyed_service(tmp_path) as svc:

            def run() -> tuple[list[str], str, str, openai.AuthenticationError]:
                base = svc.url + "/v1"
                good = openai.OpenAI(base_url=base, api_key=KEY, max_retries=0)
                ids = [m.id for m in good.models.list()]
                completion = good.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "hi"}]
                )
                stream = good.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
                )
                streamed = "".join(
                    chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices
                )
                bad = openai.OpenAI(base_url=base, api_key="sk-wrong", max_retries=0)
                try:
                    bad.chat.completions.create(
                        model=MODEL, messages=[{"role": "user", "content": "hi"}]
                    )
                except openai.AuthenticationError as exc:
                    return ids, completion.choices[0].message.content or "", streamed, exc
                raise AssertionError("a wrong key was accepted")

            ids, text, streamed, error = await trio.to_thread.run_sync(run)
    assert ids == [MODEL]
    assert text == "d0 d1 d2 "
    assert streamed == "d0 d1 d2 "
    assert error.status_code == 401
    assert error.code == "invalid_api_key"


def test_settings_evolve_keeps_the_checks() -> None:
    settings = Settings(host="0.0.0.0", allow_unauthenticated=True)
    with pytest.raises(UnprotectedBind):
        attrs.evolve(settings, allow_unauthenticated=False)
