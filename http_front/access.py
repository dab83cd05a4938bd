"""Who may drive the service: API keys, and which web pages may call it.

Everything here is decided from the request line and headers, before a body
is read, at the routing entry of :class:`http_front.app.BridgeApp`; every
route added later is covered without saying so.

**API keys.** When any key is configured, every request except those to
``/healthz``, ``/readyz`` and ``/admin/`` must carry ``Authorization: Bearer
<key>``; a missing or wrong key gets 401 ``invalid_api_key`` with
``WWW-Authenticate: Bearer``. Keys are held only as SHA-256 digests: a
presented key is hashed and compared with :func:`hmac.compare_digest` against
every configured digest, all of them, whatever matched. The admin token is
not an API key, and no API key opens ``/admin/`` (its own token guards it).
A key's name goes into the request's record (:mod:`http_front.telemetry`),
for the log lines about the request and the tokens counted by key.
A key may have ``max_concurrent_turns``: every POST to a model route under
that key counts (each runs at most one turn) from the moment it is admitted
until the last message of its response is sent or its handler returns,
however it ends (client gone, error); beyond the limit the request gets 429
``rate_limit_exceeded`` with ``Retry-After``.

**Web pages.** A browser adds ``Origin`` to every cross-origin request and to
same-origin ones other than GET and HEAD. A request whose ``Origin`` is not
allowed is refused with 403 ``origin_not_allowed`` on every route,
``/admin/`` included, before anything else happens. Allowed are:

* an origin listed in ``cors_origins`` (exact ``scheme://host[:port]``).
  Its requests get ``Access-Control-Allow-Origin`` (the origin itself) and
  ``Vary: Origin`` on every answer, errors and streams included, and its
  preflights are answered. ``*`` allows every origin on the model routes
  only — never on ``/admin/`` — and is accepted only with API keys;
  credentials (cookies) are never allowed, nothing here uses them.
* the service's own origin, for pages it serves itself: the Origin names
  exactly the host and port the request was addressed to (its ``Host``)
  **and** that host is a loopback address literal (``127.0.0.0/8``,
  ``[::1]``) or ``localhost``. Origin = Host alone is not enough: under DNS
  rebinding a page at ``http://evil.example:8088`` whose name has come to
  resolve to 127.0.0.1 sends ``Origin`` and ``Host`` both
  ``evil.example:8088``. A loopback literal or ``localhost`` cannot be
  rebound; a service reached under any other name lists that origin in
  ``cors_origins``.
* never ``Origin: null`` (sandboxed frames, ``file:`` pages) nor anything
  that is not an http(s) origin.

A request without ``Origin`` (curl, SDKs, servers) is not from a page of
another origin and passes this check. A rebound page could still *read* the
answers to same-origin GETs (browsers send no Origin on them), so where no
secret stands in its way — ``/admin/`` without an admin token, the model
routes of a service without API keys, for clients on this machine — a
request must also be addressed to a loopback name (:func:`loopback_host`). An ``OPTIONS`` request
that is not a preflight (no ``Origin`` or no
``Access-Control-Request-Method``) gets what any unsupported method gets.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import logging
import re
from collections.abc import Iterable, Sequence
from types import TracebackType
from urllib.parse import urlsplit

import attrs

from .asgi import Message, Scope, Send
from .errors import ApiError

log = logging.getLogger(__name__)

WILDCARD = "*"
#: Seconds a 429 for a key's concurrency limit asks the client to wait.
KEY_BUSY_RETRY_AFTER_S = 1.0
#: Headers a page may always send; a preflight also gets what it asks for.
BASE_ALLOW_HEADERS = (
    "authorization",
    "content-type",
    "x-openwebui-chat-id",
    "x-conversation-id",
    "x-request-id",
)
ALLOW_METHODS = b"GET, POST, OPTIONS"
EXPOSE_HEADERS = b"retry-after, x-request-id, server-timing, www-authenticate"
PREFLIGHT_MAX_AGE_S = 600

_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_HEADER_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}")
_MAX_REQUESTED_HEADERS = 50


# -- API keys -------------------------------------------------------------------------------


def hash_key(secret: str | bytes) -> bytes:
    """The SHA-256 digest by which a key is known."""
    return hashlib.sha256(secret.encode() if isinstance(secret, str) else secret).digest()


def check_key_name(name: str) -> str:
    if not _KEY_NAME.fullmatch(name):
        raise ValueError(
            f"key name {name[:80]!r} must be 1-64 letters, digits or . _ @ - "
            "(starting with a letter or digit)"
        )
    return name


def check_secret(secret: str) -> str:
    """A key must be sendable as a bearer token: printable ASCII, no spaces."""
    if not secret:
        raise ValueError("the key is empty")
    if not all("!" <= c <= "~" for c in secret):
        raise ValueError("the key must be printable ASCII without spaces")
    return secret


def _name_validator(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    check_key_name(value)


def _digest_validator(instance: object, attribute: attrs.Attribute[bytes], value: bytes) -> None:
    if len(value) != hashlib.sha256().digest_size:
        raise ValueError("a key's digest is 32 bytes of SHA-256")


def _limit_validator(
    instance: object, attribute: attrs.Attribute[int | None], value: int | None
) -> None:
    if value is not None and (isinstance(value, bool) or value < 1):
        raise ValueError(f"max_concurrent_turns must be 1 or more, got {value!r}")


@attrs.frozen
class ApiKey:
    """One API key, known by its name and the SHA-256 digest of its secret."""

    name: str = attrs.field(validator=_name_validator)
    digest: bytes = attrs.field(repr=False, validator=_digest_validator)
    #: Turns this key may have running at once (None: no limit of its own).
    max_concurrent_turns: int | None = attrs.field(default=None, validator=_limit_validator)

    @classmethod
    def from_secret(
        cls, name: str, secret: str, *, max_concurrent_turns: int | None = None
    ) -> ApiKey:
        return cls(name, hash_key(check_secret(secret)), max_concurrent_turns)

    @classmethod
    def from_sha256(
        cls, name: str, hex_digest: str, *, max_concurrent_turns: int | None = None
    ) -> ApiKey:
        text = hex_digest.strip()
        if not re.fullmatch(r"[0-9A-Fa-f]{64}", text):
            raise ValueError(
                "sha256 must be the 64 hex digits of the key's SHA-256 digest "
                '(printf %s "$KEY" | sha256sum)'
            )
        return cls(name, bytes.fromhex(text), max_concurrent_turns)


def check_key_set(keys: Sequence[ApiKey]) -> None:
    """Names are unique, and no secret is configured twice."""
    names: set[str] = set()
    digests: dict[bytes, str] = {}
    for key in keys:
        if key.name in names:
            raise ValueError(f"two keys are named {key.name!r}")
        names.add(key.name)
        if key.digest in digests:
            raise ValueError(f"keys {digests[key.digest]!r} and {key.name!r} are the same key")
        digests[key.digest] = key.name


def _unauthorized(message: str) -> ApiError:
    return ApiError(
        401,
        message,
        code="invalid_api_key",
        headers=[(b"www-authenticate", b'Bearer realm="codex-bridge"')],
    )


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The bearer token of ``Authorization``; None when there is none.

    Raises 401 for an Authorization that is not one ``Bearer <token>``.
    """
    values = [bytes(v) for n, v in headers if n.lower() == b"authorization"]
    if not values:
        return None
    scheme, _, token = values[0].strip().partition(b" ")
    token = token.strip()
    if len(values) > 1 or scheme.lower() != b"bearer" or not token:
        raise _unauthorized(
            "Invalid Authorization header: send exactly one 'Authorization: Bearer <API key>'."
        )
    return token


class KeyTable:
    """The configured keys, and how many turns each has running."""

    def __init__(self, keys: Iterable[ApiKey] = ()) -> None:
        self.keys = tuple(keys)
        check_key_set(self.keys)
        self._running: dict[str, int] = {}

    @property
    def required(self) -> bool:
        return bool(self.keys)

    def identify(self, secret: bytes) -> ApiKey | None:
        """The key whose digest is that of ``secret``; every digest is compared."""
        digest = hash_key(secret)
        found: ApiKey | None = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.digest) and found is None:
                found = key
        return found

    def authenticate(self, headers: Iterable[tuple[bytes, bytes]]) -> ApiKey | None:
        """The request's key; None when no key is configured; 401 otherwise."""
        if not self.keys:
            return None
        secret = presented_key(headers)
        if secret is None:
            raise _unauthorized(
                "You didn't provide an API key. Send it in the Authorization header "
                "using Bearer auth (Authorization: Bearer YOUR_KEY)."
            )
        key = self.identify(secret)
        if key is None:
            raise _unauthorized("Incorrect API key provided.")
        return key

    def running(self, name: str) -> int:
        return self._running.get(name, 0)

    def claim(self, key: ApiKey | None) -> TurnClaim:
        """Count one more turn for ``key`` until the claim is left; 429 beyond its limit."""
        limit = None if key is None else key.max_concurrent_turns
        if key is None or limit is None:
            return TurnClaim(self, None)
        running = self._running.get(key.name, 0)
        if running >= limit:
            raise ApiError(
                429,
                f"API key {key.name!r} already has {running} turn(s) running, its limit "
                "(max_concurrent_turns); retry when one has finished.",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                retry_after_s=KEY_BUSY_RETRY_AFTER_S,
            )
        self._running[key.name] = running + 1
        return TurnClaim(self, key.name)

    def _release(self, name: str) -> None:
        left = self._running[name] - 1
        if left:
            self._running[name] = left
        else:
            del self._running[name]


class TurnClaim:
    """A counted turn of one key, given back when the ``with`` block is left,
    or earlier, as the last bytes of the response go out (:meth:`sending`)."""

    def __init__(self, table: KeyTable, name: str | None) -> None:
        self._table = table
        self._name = name

    def release(self) -> None:
        if self._name is not None:
            self._table._release(self._name)
            self._name = None

    def sending(self, send: Send) -> Send:
        """``send`` that gives the turn back just before the response's last
        message: a client that waits for one answer before it sends the next
        request must never find its own finished request still counted
        (the handler may still be doing its bookkeeping)."""
        if self._name is None:
            return send

        async def releasing(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.release()
            await send(message)

        return releasing

    def __enter__(self) -> TurnClaim:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


# -- origins --------------------------------------------------------------------------------

_DEFAULT_PORTS = {"http": 80, "https": 443}


def is_loopback_name(host: str) -> bool:
    """``localhost`` or a loopback address literal (brackets allowed for IPv6)."""
    name = host.strip().lower().rstrip(".")
    if name == "localhost":
        return True
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


@attrs.frozen
class Origin:
    """A web origin as browsers serialize it: ``scheme://host[:port]``."""

    scheme: str
    host: str  # lower case; IPv6 without brackets
    port: int  # the scheme's default when none is written

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if self.port == _DEFAULT_PORTS[self.scheme] else f":{self.port}"
        return f"{self.scheme}://{host}{port}"


def parse_origin(text: str) -> Origin:
    """Parse an origin; ValueError (saying why) if ``text`` is not one."""
    if not text.isascii() or any(c.isspace() for c in text):
        raise ValueError(f"{text[:100]!r} is not an origin (ASCII, no spaces; IDN in punycode)")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.netloc:
        raise ValueError(f"{text[:100]!r} is not an http(s) origin like https://chat.example.com")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(
            f"{text[:100]!r} is not an origin: scheme://host[:port] only, no path or user"
        )
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{text[:100]!r} has a bad port") from exc
    host = (parts.hostname or "").lower()
    if not host:
        raise ValueError(f"{text[:100]!r} has no host")
    return Origin(scheme, host, _DEFAULT_PORTS[scheme] if port is None else port)


def parse_cors_origins(values: Iterable[str]) -> tuple[str, ...]:
    """The ``cors_origins`` setting, normalized (``*`` alone, or exact origins)."""
    origins: list[str] = []
    for value in values:
        if not isinstance(value, str):
            raise ValueError(f"expected origins as strings, got {value!r}")
        text = value.strip()
        if text == WILDCARD:
            origins.append(WILDCARD)
            continue
        if text.lower() == "null":
            raise ValueError("'null' is not an origin that can be allowed")
        origin = str(parse_origin(text))
        if origin not in origins:
            origins.append(origin)
    if WILDCARD in origins and len(origins) > 1:
        raise ValueError("'*' allows every origin: list it alone")
    return tuple(origins)


def _host_header(raw: bytes, scheme: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit("//" + raw.decode("ascii").strip())
        port = parts.port
    except (UnicodeDecodeError, ValueError):
        return None
    if not parts.hostname:
        return None
    return parts.hostname.lower(), _DEFAULT_PORTS[scheme] if port is None else port


def loopback_host(host: bytes | None) -> bool:
    """Whether a request's ``Host`` names a loopback literal or ``localhost``
    (no Host at all counts: there is no name to rebind)."""
    if host is None:
        return True
    parsed = _host_header(host, "http")
    return parsed is not None and is_loopback_name(parsed[0])


def client_is_loopback(scope: Scope) -> bool:
    client = scope.get("client")
    if not client:
        return False
    try:
        return ipaddress.ip_address(client[0]).is_loopback
    except ValueError:
        return False


def require_loopback_host(scope: Scope, what: str, *, code: str = "host_not_allowed") -> None:
    """403 unless the request is addressed to a loopback name (see
    :func:`loopback_host`): what a DNS-rebound page cannot do."""
    hosts = _values(scope.get("headers", []), b"host")
    if len(hosts) > 1 or not loopback_host(hosts[0] if hosts else None):
        raise ApiError(
            403,
            f"{what} answers only requests addressed to 127.0.0.1, [::1] or localhost",
            type="permission_error",
            code=code,
        )


class Verdict(enum.Enum):
    NO_ORIGIN = "no origin"  # not from a page of another origin
    OWN = "own origin"  # a page of the service itself
    LISTED = "listed"  # a cross-origin page allowed by cors_origins
    REFUSED = "refused"


def _values(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [bytes(v) for n, v in headers if n.lower() == name]


@attrs.frozen
class OriginPolicy:
    """Which web origins may call the service (see the module's docstring)."""

    listed: frozenset[str] = frozenset()
    wildcard: bool = False
    allow_headers: tuple[str, ...] = BASE_ALLOW_HEADERS

    @classmethod
    def from_config(
        cls, cors_origins: Iterable[str] = (), *, allow_headers: Iterable[str] = ()
    ) -> OriginPolicy:
        origins = parse_cors_origins(cors_origins)
        headers = list(BASE_ALLOW_HEADERS)
        for name in allow_headers:
            lowered = name.strip().lower()
            if lowered and lowered not in headers and _HEADER_NAME.fullmatch(lowered.encode()):
                headers.append(lowered)
        return cls(
            frozenset(o for o in origins if o != WILDCARD),
            WILDCARD in origins,
            tuple(headers),
        )

    def verdict(self, origin: bytes | None, host: bytes | None, *, admin: bool = False) -> Verdict:
        """What to make of a request's ``Origin`` (and ``Host``)."""
        if origin is None:
            return Verdict.NO_ORIGIN
        try:
            parsed = parse_origin(origin.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return Verdict.REFUSED  # "null" among them
        if str(parsed) in self.listed:
            return Verdict.LISTED
        if is_loopback_name(parsed.host) and host is not None:
            addressed = _host_header(host, parsed.scheme)
            if addressed is not None and addressed == (parsed.host, parsed.port):
                return Verdict.OWN
        if self.wildcard and not admin:
            return Verdict.LISTED
        return Verdict.REFUSED

    def admit(self, scope: Scope, *, admin: bool) -> list[tuple[bytes, bytes]]:
        """CORS headers for the request's answers (none for a request without
        Origin or from the service's own page); 403 for an origin not allowed."""
        headers = scope.get("headers", [])
        origins = _values(headers, b"origin")
        hosts = _values(headers, b"host")
        origin = origins[0] if origins else None
        verdict = (
            Verdict.REFUSED
            if len(origins) > 1 or len(hosts) > 1
            else self.verdict(origin, hosts[0] if hosts else None, admin=admin)
        )
        if verdict is Verdict.REFUSED:
            shown = (origin or b"").decode("latin-1")[:200]
            log.info(
                "refused %s %s from a page at %r (Origin not allowed)",
                scope.get("method"),
                scope.get("path"),
                shown,
            )
            raise ApiError(
                403,
                f"Requests from the web page at {shown!r} are not allowed: its origin is "
                "not in cors_origins.",
                type="permission_error",
                code="origin_not_allowed",
            )
        if verdict is Verdict.LISTED and origin is not None:
            return cors_headers(origin)
        return []

    def preflight_headers(
        self, origin: bytes, request_headers: Iterable[tuple[bytes, bytes]]
    ) -> list[tuple[bytes, bytes]]:
        """The answer to an allowed origin's preflight (204)."""
        asked: list[bytes] = []
        for value in _values(request_headers, b"access-control-request-headers"):
            asked.extend(part.strip().lower() for part in value.split(b","))
        names = [h.encode() for h in self.allow_headers]
        for name in asked[:_MAX_REQUESTED_HEADERS]:
            if _HEADER_NAME.fullmatch(name) and name not in names:
                names.append(name)
        headers = [
            (b"access-control-allow-origin", origin),
            (b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
            (b"access-control-allow-methods", ALLOW_METHODS),
            (b"access-control-allow-headers", b", ".join(names)),
            (b"access-control-max-age", str(PREFLIGHT_MAX_AGE_S).encode()),
        ]
        private = _values(request_headers, b"access-control-request-private-network")
        if private and private[0].strip().lower() == b"true":
            # Chrome's Private Network Access: a public page calling a local service.
            headers.append((b"access-control-allow-private-network", b"true"))
        return headers


def cors_headers(origin: bytes) -> list[tuple[bytes, bytes]]:
    """Headers on every answer to an allowed cross-origin request."""
    return [
        (b"access-control-allow-origin", origin),
        (b"vary", b"Origin"),
        (b"access-control-expose-headers", EXPOSE_HEADERS),
    ]


def is_preflight(scope: Scope) -> bool:
    headers = scope.get("headers", [])
    return (
        scope.get("method") == "OPTIONS"
        and bool(_values(headers, b"origin"))
        and bool(_values(headers, b"access-control-request-method"))
    )


@attrs.frozen
class AccessPolicy:
    """The service's API keys and origin policy, as the HTTP front applies them."""

    keys: KeyTable = attrs.field(factory=KeyTable)
    origins: OriginPolicy = attrs.field(factory=OriginPolicy)

    @classmethod
    def build(
        cls,
        *,
        api_keys: Iterable[ApiKey] = (),
        cors_origins: Iterable[str] = (),
        allow_headers: Iterable[str] = (),
    ) -> AccessPolicy:
        return cls(
            KeyTable(api_keys),
            OriginPolicy.from_config(cors_origins, allow_headers=allow_headers),
        )
