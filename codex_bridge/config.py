"""Service settings: defaults < TOML file < environment < command line.

Every setting is a field of :class:`Settings`. Its environment variable is
``CODEX_BRIDGE_`` + the upper-cased name (``pool_size`` →
``CODEX_BRIDGE_POOL_SIZE``); its TOML key is the name itself, at top level;
its flag of ``codex-bridge serve`` is ``--`` + the name with dashes
(``--pool-size``; ``--subreaper``/``--no-subreaper`` for a true/false one),
taking the environment variable's syntax, help from the field's ``#:``
comment (:func:`setting_specs`). A bad value is refused with
:class:`ConfigError`, whose message names the setting and where the value
came from.

Two settings are structured. ``api_keys`` is, in TOML, a list of tables
``{name = "ci", key = "..."}`` or ``{name = "ci", sha256 = "<hex digest>"}``,
each with an optional ``max_concurrent_turns``; in the environment,
``CODEX_BRIDGE_API_KEYS`` is a comma-separated list of ``name:key`` entries
or bare keys (named ``key-<position>``). Keys are kept as SHA-256 digests
only, and no secret appears in a :class:`Settings`' repr. ``cors_origins``
is a list of origins in TOML, comma-separated in the environment.

Serving beyond loopback without an API key is refused unless
``allow_unauthenticated`` says so (:meth:`Settings.check_exposure`).

Model aliases are tables of the TOML file only, ``[aliases.NAME]`` (no
environment variable, no flag: they are not a flat setting), each a codex
model with settings of its own (:data:`ALIAS_KEYS`); they become
:class:`http_front.models.Alias` values in ``Settings.aliases``.
"""

from __future__ import annotations

import enum
import functools
import hmac
import inspect
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import cattrs

from bridge.codex import ApprovalPolicy
from http_front.access import (
    ApiKey,
    check_key_name,
    check_key_set,
    check_secret,
    hash_key,
    is_loopback_name,
    parse_cors_origins,
)
from http_front.chat.request import REASONING_EFFORTS
from http_front.models import Alias
from supervisor.command_policy import SANDBOX_MODES

ENV_PREFIX = "CODEX_BRIDGE_"

#: Settings that hold secrets. They are flags too, but a command line is
#: visible to every user of the machine (``ps``): their help says so.
SECRET_SETTINGS = frozenset({"api_keys", "admin_token"})


class ConfigError(Exception):
    """A setting has a value the service cannot start with."""


class UnprotectedBind(ConfigError):
    """A non-loopback address to serve on, and neither API keys nor
    ``allow_unauthenticated``."""


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"must be greater than 0, got {value!r}")


def _non_negative(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"must be 0 or more, got {value!r}")


def _port(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"must be a TCP port (0-65535), got {value!r}")


def _non_empty(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value.strip():
        raise ValueError("must not be empty")


def _redacted(value: object) -> str:
    return "None" if value is None else "'<redacted>'"


def _api_keys(value: Any) -> tuple[ApiKey, ...]:
    keys = tuple(value)
    for key in keys:
        if not isinstance(key, ApiKey):
            raise TypeError(f"expected ApiKey entries, got {type(key).__name__}")
    check_key_set(keys)
    return keys


def _aliases(value: Iterable[Alias]) -> tuple[Alias, ...]:
    return tuple(value)


def _cors_origins(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        raise TypeError("expected a list of origins, got a string")
    return parse_cors_origins(value)


def _default_codex_home() -> str:
    return os.environ.get("CODEX_HOME") or str(Path.home() / ".codex")


def _default_workspace() -> str:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(state) / "codex-bridge" / "workspace")


@attrs.frozen(kw_only=True)
class Settings:
    """Everything the service can be told. Units are in the names."""

    # HTTP front
    #: Address to bind.
    host: str = attrs.field(default="127.0.0.1", validator=_non_empty)
    #: Port to bind.
    port: int = attrs.field(default=8088, validator=_port)
    #: An SSE comment is sent on a stream silent this long.
    keepalive_interval_s: float = attrs.field(default=5.0, validator=_positive)
    #: reasoning_content (a separate field), think (<think> in content) or hidden
    reasoning_format: str = attrs.field(
        default="reasoning_content",
        validator=attrs.validators.in_(["reasoning_content", "think", "hidden"]),
    )
    #: OpenWebUI status lines: auto (when X-OpenWebUI-Chat-Id is sent), always, never
    status_events: str = attrs.field(
        default="auto", validator=attrs.validators.in_(["auto", "always", "never"])
    )
    #: Lines of a command's output shown in its card (the last ones)
    command_output_lines: int = attrs.field(default=20, validator=_non_negative)
    #: Reasoning effort when a request names none (None: the model's default)
    default_reasoning_effort: str | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(
            attrs.validators.in_(["none", "minimal", "low", "medium", "high", "xhigh"])
        ),
    )
    #: Reasoning summaries asked of the model, so there is reasoning to show
    reasoning_summary: str = attrs.field(
        default="auto", validator=attrs.validators.in_(["auto", "concise", "detailed", "none"])
    )
    #: Largest request body accepted (413 beyond it). Images sent inline count
    #: (base64: 4 bytes for every 3 of the image).
    max_request_body_bytes: int = attrs.field(default=8 * 1024 * 1024, validator=_positive)
    #: Largest image a request may carry, decoded (413 beyond it).
    image_max_bytes: int = attrs.field(default=20 * 1024 * 1024, validator=_positive)
    #: Most images in one request, all messages together (400 beyond it).
    image_max_count: int = attrs.field(default=16, validator=_non_negative)
    #: Accept http(s) image URLs (the model provider fetches them; the bridge
    #: never does). Off: images must come inline, as data: URLs.
    image_urls: bool = False
    #: A request body must arrive within this long (408 otherwise).
    request_body_timeout_s: float = attrs.field(default=60.0, validator=_positive)
    #: Request line and header fields, at most this many bytes (431 otherwise).
    http_max_header_bytes: int = attrs.field(default=16 * 1024, validator=_positive)
    #: A connection's request line and headers must arrive within this long
    #: (408), and an idle keep-alive connection is closed after it.
    http_keep_alive_timeout_s: float = attrs.field(default=5.0, validator=_positive)
    # (the forms they are written in: see the module docstring)
    #: Keys every model route requires (Authorization: Bearer <key>) when any is
    #: set; held as SHA-256 digests only.
    api_keys: tuple[ApiKey, ...] = attrs.field(default=(), converter=_api_keys)
    #: Serve a non-loopback host without api_keys (anyone who reaches the port
    #: may run turns).
    allow_unauthenticated: bool = False
    #: Web origins (https://chat.example.com) whose pages may call the service;
    #: "*" (alone, and only with api_keys): any page, model routes only.
    cors_origins: tuple[str, ...] = attrs.field(default=(), converter=_cors_origins)

    # codex children
    #: Warm codex children.
    pool_size: int = attrs.field(default=2, validator=_positive)
    #: Native codex binary (default: the one in node_modules/@openai/codex-<platform>).
    codex_bin: str | None = None
    #: CODEX_HOME of the children (default: $CODEX_HOME, else ~/.codex).
    codex_home: str = attrs.field(factory=_default_codex_home, validator=_non_empty)
    #: Working directory of codex threads (default:
    #: $XDG_STATE_HOME/codex-bridge/workspace, or ~/.local/state/codex-bridge/workspace).
    workspace_dir: str = attrs.field(factory=_default_workspace, validator=_non_empty)
    #: Client name the children are given in their initialize request.
    client_name: str = attrs.field(default="codex_bridge", validator=_non_empty)
    #: A spawned child must answer initialize within this long.
    startup_timeout_s: float = attrs.field(default=30.0, validator=_positive)
    #: A child must answer a request (start, resume a thread ...) within this
    #: long, or it is taken for hung.
    rpc_timeout_s: float = attrs.field(default=30.0, validator=_positive)
    #: A stopping child gets this long after EOF on its stdin, and again after
    #: SIGTERM, before SIGKILL.
    stop_grace_s: float = attrs.field(default=3.0, validator=_non_negative)
    #: A slot whose child keeps failing restarts it after a delay that doubles
    #: from restart_backoff_initial_s up to restart_backoff_max_s.
    restart_backoff_initial_s: float = attrs.field(default=0.5, validator=_positive)
    #: The longest delay before a failing slot restarts its child.
    restart_backoff_max_s: float = attrs.field(default=30.0, validator=_positive)
    #: This many unplanned exits of one slot's children within the window
    #: open its breaker: no restart for breaker_cooldown_s.
    crash_loop_exits: int = attrs.field(default=5, validator=_positive)
    #: The window in which crash_loop_exits unplanned exits open a slot's breaker.
    crash_loop_window_s: float = attrs.field(default=60.0, validator=_positive)
    #: How long an open breaker keeps its slot from restarting a child.
    breaker_cooldown_s: float = attrs.field(default=60.0, validator=_positive)
    #: How long a draining child's turns may run before they are interrupted.
    drain_timeout_s: float = attrs.field(default=300.0, validator=_positive)
    #: Replace a child after this many turns (0: never).
    recycle_after_turns: int = attrs.field(default=0, validator=_non_negative)
    #: Replace a child when its RSS exceeds this many MiB (0: never), checked
    #: every monitor_interval_s. Released threads give their memory back, but a
    #: child still creeps (~3 KiB a turn) and keeps what bursts took.
    recycle_rss_mib: float = attrs.field(default=512.0, validator=_non_negative)
    #: A conversation's thread left idle this long is unloaded from its child
    #: (its next turn resumes it, on any child).
    thread_idle_release_s: float = attrs.field(default=600.0, validator=_positive)
    #: Beyond this many threads loaded on one child, the least recently used
    #: are unloaded too.
    max_threads_per_child: int = attrs.field(default=128, validator=_positive)
    #: How often the children's RSS is checked (recycle_rss_mib).
    monitor_interval_s: float = attrs.field(default=10.0, validator=_positive)
    #: Every liveness_interval_s each child must answer a cheap request within
    #: liveness_timeout_s, or it is killed and replaced (a hung child).
    liveness_interval_s: float = attrs.field(default=5.0, validator=_positive)
    #: How long a child has to answer its liveness request.
    liveness_timeout_s: float = attrs.field(default=10.0, validator=_positive)
    #: A child that codex says cannot reach its model (not logged in) is asked
    #: again this often, so a login made while the service runs is noticed.
    auth_recheck_interval_s: float = attrs.field(default=5.0, validator=_positive)
    #: Longest line a child may write; a longer one is discarded.
    max_line_bytes: int = attrs.field(default=16 * 1024 * 1024, validator=_positive)
    #: Adopt and reap orphans of codex's own subprocesses (Linux).
    subreaper: bool = True

    #: Variables of the service's environment codex children also get (names,
    #: shell-style patterns allowed), beyond the basics and the model
    #: providers' keys; commands the model runs never see secret-looking ones.
    child_env: tuple[str, ...] = attrs.field(default=(), converter=tuple)

    # commands the model runs
    #: workspace-write (a thread writes its own directory only), read-only,
    #: or danger-full-access (no sandbox at all)
    sandbox_mode: str = attrs.field(
        default="workspace-write", validator=attrs.validators.in_(SANDBOX_MODES)
    )
    #: Network access for commands (codex itself always reaches its model).
    command_network: bool = False
    #: More paths commands must not read (CODEX_HOME, the state database, the
    #: config file and other conversations' workspaces are always hidden).
    sandbox_deny_paths: tuple[str, ...] = attrs.field(default=(), converter=tuple)

    # turns
    #: Answer to codex's approval requests: decline (the turn goes on without
    #: the action), accept, cancel (decline and end the turn), or
    #: accept-read-only (accept commands that only read, decline the rest).
    approval_policy: ApprovalPolicy = attrs.field(
        default=ApprovalPolicy.DECLINE, converter=ApprovalPolicy
    )
    #: An approval request of codex not answered within this long gets an error.
    approval_timeout_s: float = attrs.field(default=30.0, validator=_positive)
    #: Model when a request names none (default: codex's).
    default_model: str | None = None
    #: Concurrent turns per child.
    max_turns_per_child: int = attrs.field(default=16, validator=_positive)
    #: Callers that may wait for a free child (beyond them: 429).
    queue_size: int = attrs.field(default=64, validator=_non_negative)
    #: How long a caller may wait for a free child (then 429).
    queue_timeout_s: float = attrs.field(default=30.0, validator=_non_negative)
    #: A turn codex leaves silent this long is stopped.
    turn_idle_timeout_s: float = attrs.field(default=600.0, validator=_positive)
    #: A turn running this long is stopped.
    turn_timeout_s: float = attrs.field(default=3600.0, validator=_positive)
    #: A turn whose model codex only keeps retrying for this long fails.
    turn_retry_timeout_s: float = attrs.field(default=120.0, validator=_positive)
    #: An interrupted turn is given this long to end before it is abandoned.
    interrupt_grace_s: float = attrs.field(default=5.0, validator=_positive)
    #: On SIGTERM/SIGINT, running turns may finish for this long; then they
    #: are interrupted and their clients get a terminal error.
    shutdown_grace_s: float = attrs.field(default=30.0, validator=_non_negative)
    #: codex's overload answers (-32001) retried this many times, with backoff.
    overload_retries: int = attrs.field(default=3, validator=_non_negative)
    #: Events of a turn that may wait for its client (beyond: the client is too slow).
    turn_event_buffer: int = attrs.field(default=8192, validator=_positive)
    #: What may wait, per stream, for a client that reads slower than codex
    #: writes; beyond it the turn is stopped (the client is too slow).
    stream_buffer_bytes: int = attrs.field(default=4 * 1024 * 1024, validator=_positive)
    #: A client that takes nothing from its stream for this long (the
    #: connection's send window stays shut) is cut off, and its turn stopped.
    client_stall_timeout_s: float = attrs.field(default=60.0, validator=_positive)

    #: Where conversation → thread mappings live: sqlite:///PATH or redis://HOST:PORT/DB
    #: (default: a SQLite file under the state directory)
    state_url: str | None = None
    #: Prefix of the keys the mappings are stored under.
    state_key_prefix: str = "codex-bridge:"
    #: Mappings are forgotten this long after a conversation's last turn
    state_ttl_s: float = attrs.field(default=30 * 86400.0, validator=_positive)
    #: Headers that name a conversation, first match wins (body: metadata.conversation_id, user)
    conversation_headers: str = "X-OpenWebUI-Chat-Id,X-Conversation-Id"
    #: A second request for a conversation with a turn running: wait, or reject (409)
    conversation_busy: str = attrs.field(
        default="wait", validator=attrs.validators.in_(["wait", "reject"])
    )
    #: Model for title/tags/follow-up requests (default: the request's)
    task_model: str | None = None
    #: The client's tools become codex dynamic tools ("auto"), or are ignored ("never")
    client_tools: str = attrs.field(
        default="auto", validator=attrs.validators.in_(["auto", "never"])
    )
    #: A turn waiting on the client's function results is ended after this long without them
    tool_result_timeout_s: float = attrs.field(default=300.0, validator=_positive)

    #: Bearer token for /admin/; without one, /admin/ serves loopback clients only.
    admin_token: str | None = attrs.field(default=None, repr=_redacted)

    #: Log level: debug, info, warning or error.
    log_level: str = attrs.field(
        default="info", validator=attrs.validators.in_(["debug", "info", "warning", "error"])
    )
    #: Log lines as text, or as one JSON object per line.
    log_format: str = attrs.field(default="text", validator=attrs.validators.in_(["text", "json"]))
    #: Put the prompt and the answer into each turn's log line (off: never).
    log_content: bool = False
    #: Collect Prometheus metrics and serve them on /metrics.
    metrics: bool = True
    #: Serve /metrics to anyone who may reach the port (off: the admin API's rule).
    metrics_public: bool = False

    def __attrs_post_init__(self) -> None:
        self.check_exposure()
        self.check_aliases()

    def check_aliases(self) -> None:
        """Refuse aliases that clash, or whose sandbox the service cannot give."""
        names = [alias.name for alias in self.aliases]
        for name in names:
            if names.count(name) > 1:
                raise ConfigError(f"invalid alias {name!r}: defined more than once")
        for alias in self.aliases:
            if alias.read_only and self.sandbox_mode == "danger-full-access":
                raise ConfigError(
                    f"invalid alias {alias.name!r}: key 'sandbox': 'read-only' cannot be "
                    "enforced with sandbox_mode 'danger-full-access' (commands run unsandboxed)"
                )

    def check_exposure(self) -> None:
        """Refuse settings that would let strangers drive the service."""
        if self.cors_origins == ("*",) and not self.api_keys:
            raise ConfigError(
                "invalid setting 'cors_origins': '*' lets every web page call the "
                "service; it needs api_keys"
            )
        if not self.api_keys and not self.allow_unauthenticated and not is_loopback_name(self.host):
            raise UnprotectedBind(
                f"refusing to serve on {self.host!r} (not a loopback address) without "
                "authentication: configure 'api_keys' (or CODEX_BRIDGE_API_KEYS), or set "
                "'allow_unauthenticated = true' to let anyone who reaches the port run turns"
            )
        if self.admin_token is not None and any(
            hmac.compare_digest(hash_key(self.admin_token), key.digest) for key in self.api_keys
        ):
            raise ConfigError(
                "invalid setting 'admin_token': it is also an API key; the admin token "
                "must be a secret of its own"
            )

    #: The TOML file the settings came from (set by load_settings, not a
    #: setting): commands must not read it.
    config_file: str | None = attrs.field(default=None, kw_only=True)
    #: The operator's model aliases (the file's ``[aliases.NAME]`` tables).
    aliases: tuple[Alias, ...] = attrs.field(default=(), converter=_aliases, kw_only=True)

    @property
    def codex_home_path(self) -> Path:
        return Path(self.codex_home).expanduser()

    @property
    def state_url_or_default(self) -> str:
        if self.state_url:
            return self.state_url
        state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return f"sqlite:///{Path(state) / 'codex-bridge' / 'conversations.sqlite3'}"


_CONVERTER = cattrs.Converter()
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _hints() -> dict[str, Any]:
    return typing.get_type_hints(Settings)


_KEY_FIELDS = ("name", "key", "sha256", "max_concurrent_turns")


def _api_key_entry(index: int, entry: Any) -> ApiKey:
    """One ``api_keys`` table (1-based ``index``, for messages)."""
    where = f"entry {index}"
    if isinstance(entry, ApiKey):
        return entry
    if not isinstance(entry, Mapping):
        raise ValueError(
            f'{where}: expected a table such as {{name = "ci", key = "..."}}, '
            f"got {type(entry).__name__}"
        )
    unknown = sorted(str(k) for k in entry if k not in _KEY_FIELDS)
    if unknown:
        raise ValueError(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))} "
            f"(fields: {', '.join(_KEY_FIELDS)})"
        )
    name = entry.get("name")
    if not isinstance(name, str):
        raise ValueError(f"{where}: 'name' (a string) is required")
    where = f"entry {index} ({name[:64]!r})"
    limit = entry.get("max_concurrent_turns")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"{where}: max_concurrent_turns must be an integer of 1 or more")
    secret, digest = entry.get("key"), entry.get("sha256")
    if (secret is None) == (digest is None):
        raise ValueError(f"{where}: give exactly one of 'key' and 'sha256'")
    try:
        check_key_name(name)
        if secret is not None:
            if not isinstance(secret, str):
                raise ValueError("'key' must be a string")
            return ApiKey.from_secret(name, secret, max_concurrent_turns=limit)
        if not isinstance(digest, str):
            raise ValueError("'sha256' must be a string")
        return ApiKey.from_sha256(name, digest, max_concurrent_turns=limit)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _structure_api_keys(value: Any) -> tuple[ApiKey, ...]:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
        raise ValueError(
            'expected a list of tables such as [{name = "ci", key = "..."}], '
            f"got {type(value).__name__}"
        )
    keys = tuple(_api_key_entry(i, entry) for i, entry in enumerate(value, 1))
    check_key_set(keys)
    return keys


def _structure_origins(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"expected a list of origins, got {type(value).__name__}")
    return parse_cors_origins(value)


def _structure_names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(item, str) and item.strip() for item in value
    ):
        raise ValueError(f"expected a list of non-empty strings, got {value!r}")
    return tuple(item.strip() for item in value)


#: Settings whose values are not scalars: how to check and build them.
_STRUCTURED: dict[str, Callable[[Any], Any]] = {
    "api_keys": _structure_api_keys,
    "cors_origins": _structure_origins,
    "child_env": _structure_names,
    "sandbox_deny_paths": _structure_names,
}


def _parse_env_api_keys(raw: str) -> list[ApiKey]:
    """``name:key`` entries or bare keys, comma-separated; a bare key is
    named ``key-<position>``. No secret is echoed in an error."""
    if not raw.strip():
        raise ValueError("is set but empty (unset it to configure no key)")
    keys = []
    for index, entry in enumerate(raw.split(","), 1):
        entry = entry.strip()
        if not entry:
            raise ValueError(f"entry {index} is empty")
        name, colon, secret = entry.partition(":")
        if not colon:
            name, secret = f"key-{index}", entry
        try:
            check_key_name(name)
        except ValueError:
            # not echoed: a misplaced ':' may have made part of a key the "name"
            raise ValueError(
                f"entry {index}: the name before ':' must be 1-64 letters, digits or . _ @ -"
            ) from None
        try:
            check_secret(secret)
        except ValueError as exc:
            raise ValueError(f"entry {index}: {exc}") from None
        keys.append(ApiKey.from_secret(name, secret))
    return keys


def _parse_env_list(raw: str) -> list[str]:
    items = [item.strip() for item in raw.split(",")]
    return [] if items == [""] else items


_ENV_PARSERS: dict[str, Callable[[str], Any]] = {
    "api_keys": _parse_env_api_keys,
    "cors_origins": _parse_env_list,
    "child_env": _parse_env_list,
    "sandbox_deny_paths": _parse_env_list,
}

#: Fields of Settings that are not settings (set by load_settings itself).
_NOT_SETTINGS = frozenset({"config_file"})
#: Settings given as tables of the TOML file only: no flag, no variable.
FILE_ONLY_SETTINGS = frozenset({"aliases"})

#: The keys of an ``[aliases.NAME]`` table.
ALIAS_KEYS = ("model", "effort", "summary", "instructions", "sandbox", "approval_policy")
_ALIAS_CHOICES: dict[str, tuple[str, ...]] = {
    "effort": tuple(sorted(REASONING_EFFORTS)),
    "summary": ("auto", "concise", "detailed", "none"),
    "sandbox": ("read-only", "workspace-write"),
    "approval_policy": ("untrusted", "on-request", "never"),
}
#: An alias's name is a model id in URLs (``/v1/models/NAME``): no slash, no space.
_ALIAS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


def _alias(name: str, table: Any, sandbox_mode: str) -> Alias:
    """One ``[aliases.NAME]`` table, checked against the service's sandbox."""
    where = f"invalid alias {name!r}"
    if not _ALIAS_NAME.fullmatch(name):
        raise ConfigError(
            f"{where}: a name is 1-64 letters, digits or . _ : - (starting with a letter or digit)"
        )
    if not isinstance(table, Mapping):
        raise ConfigError(
            f'{where}: expected a table such as [aliases.{name}] with model = "...", '
            f"got {type(table).__name__}"
        )
    values: dict[str, str] = {}
    for key, value in table.items():
        if key not in ALIAS_KEYS:
            raise ConfigError(f"{where}: unknown key {key!r} (keys: {', '.join(ALIAS_KEYS)})")
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}: key {key!r} must be a non-empty string, got {value!r}")
        choices = _ALIAS_CHOICES.get(key)
        if choices is not None and value not in choices:
            raise ConfigError(
                f"{where}: key {key!r} must be one of {', '.join(choices)}, got {value!r}"
            )
        values[key] = value
    sandbox = values.get("sandbox")
    if sandbox == "workspace-write" and sandbox_mode == "read-only":
        raise ConfigError(
            f"{where}: key 'sandbox': 'workspace-write' is wider than the service's "
            "sandbox_mode 'read-only'"
        )
    return Alias(
        name=name,
        model=values.get("model"),
        effort=values.get("effort"),
        summary=values.get("summary"),
        instructions=values.get("instructions"),
        read_only=sandbox == "read-only",
        approval_policy=values.get("approval_policy"),
    )


def _structure_aliases(value: Any, source: str, sandbox_mode: str) -> tuple[Alias, ...]:
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"invalid setting 'aliases' (from {source}): expected tables [aliases.NAME], "
            f"got {type(value).__name__}"
        )
    return tuple(_alias(str(name), table, sandbox_mode) for name, table in value.items())


def _parse_env_value(raw: str, hint: Any) -> Any:
    """Turn an environment string into a value of the field's type."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) and type(None) in args:
        if raw.strip() == "":
            return None
        (hint,) = [a for a in args if a is not type(None)]
    if hint is bool:
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(f"expected true/false, got {raw!r}")
    if hint is int:
        return int(raw.strip())
    if hint is float:
        return float(raw.strip())
    return raw


def _parse_text(key: str, raw: str, hint: Any) -> Any:
    """A setting's value from its text form (an environment variable's)."""
    parse = _ENV_PARSERS.get(key)
    return parse(raw) if parse else _parse_env_value(raw, hint)


def _is_optional(hint: Any) -> bool:
    return isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)


def flag_name(name: str) -> str:
    """The ``serve`` flag of setting ``name``: ``pool_size`` → ``--pool-size``."""
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    """The environment variable of setting ``name``."""
    return ENV_PREFIX + name.upper()


@attrs.frozen(kw_only=True)
class SettingSpec:
    """What a command line needs to know of one setting."""

    name: str
    #: "bool", "int", "float" or "str" (also for lists and enums: their text)
    kind: str
    #: May be None: an empty value means None, as in the environment.
    optional: bool
    #: A list, written comma-separated as in the environment.
    is_list: bool
    #: The only values allowed, if the setting has such a list.
    choices: tuple[str, ...] | None
    #: The default as text, when it is a fixed value (not None, empty or computed).
    default: str | None
    #: The field's ``#:`` comment.
    doc: str
    secret: bool

    @property
    def flag(self) -> str:
        return flag_name(self.name)

    @property
    def env(self) -> str:
        return env_name(self.name)


_FIELD_LINE = re.compile(r"\s+(\w+)\s*:")


@functools.cache
def setting_docs() -> dict[str, str]:
    """Each setting's ``#:`` comment in the source of :class:`Settings`, one line.

    Empty when the source cannot be read (then flags get no description).
    """
    try:
        lines, _ = inspect.getsourcelines(Settings)
    except (OSError, TypeError):
        return {}
    names = {field.name for field in attrs.fields(Settings)}
    docs: dict[str, str] = {}
    pending: list[str] = []
    for line in lines:
        text = line.strip()
        if text.startswith("#:"):
            pending.append(text[2:].strip())
            continue
        match = _FIELD_LINE.match(line)
        if pending and match and match.group(1) in names:
            docs.setdefault(match.group(1), " ".join(pending))
        pending = []
    return docs


def _choices(field: attrs.Attribute[Any], hint: Any) -> tuple[str, ...] | None:
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return tuple(str(member.value) for member in hint)
    validator = field.validator
    validator = getattr(validator, "validator", validator)  # attrs.validators.optional
    options = getattr(validator, "options", None)  # attrs.validators.in_
    if isinstance(options, (tuple, list)) and all(isinstance(o, str) for o in options):
        return tuple(options)
    return None


def _default_text(default: object) -> str | None:
    if default is None or default == () or hasattr(default, "factory"):  # attrs.Factory
        return None
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, enum.Enum):
        return str(default.value)
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


@functools.cache
def setting_specs() -> tuple[SettingSpec, ...]:
    """Every setting, in the order of :class:`Settings`, described for flags."""
    hints = _hints()
    docs = setting_docs()
    specs = []
    for field in attrs.fields(Settings):
        if field.name in _NOT_SETTINGS or field.name in FILE_ONLY_SETTINGS:
            continue
        hint = hints[field.name]
        optional = _is_optional(hint)
        if optional:
            (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
        specs.append(
            SettingSpec(
                name=field.name,
                kind=hint.__name__ if hint in (bool, int, float) else "str",
                optional=optional,
                is_list=field.name in _ENV_PARSERS,
                choices=_choices(field, hint),
                default=_default_text(field.default),
                doc=docs.get(field.name, ""),
                secret=field.name in SECRET_SETTINGS,
            )
        )
    return tuple(specs)


_EXPECTED: dict[Any, tuple[tuple[type, ...], str]] = {
    bool: ((bool,), "true or false"),
    int: ((int,), "an integer"),
    float: ((int, float), "a number"),
    str: ((str,), "a string"),
}


def _structure_field(name: str, value: Any, hint: Any, source: str) -> Any:
    """Check ``value``'s type strictly (no "yes" for a bool), then structure it."""
    if name in _STRUCTURED:
        try:
            return _STRUCTURED[name](value)
        except ValueError as exc:
            raise ConfigError(f"invalid setting {name!r} (from {source}): {exc}") from None
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) and type(None) in args:
        if value is None:
            return None
        (hint,) = [a for a in args if a is not type(None)]
    if hint in _EXPECTED:
        allowed, expected = _EXPECTED[hint]
        if not isinstance(value, allowed) or (hint is not bool and isinstance(value, bool)):
            raise ConfigError(
                f"invalid setting {name!r} (from {source}): expected {expected}, got {value!r}"
            )
    try:
        return _CONVERTER.structure(value, hint)
    except (cattrs.BaseValidationError, ValueError, TypeError) as exc:
        raise ConfigError(f"invalid setting {name!r} (from {source}): {exc}") from exc


def load_settings(
    *,
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build :class:`Settings` from a TOML file, the environment and overrides.

    ``overrides`` (from the command line) win over the environment, which wins
    over the file; an override of None is no override. An override of a list
    setting may be a string in the environment's syntax, and one of a
    setting that may be None an empty string for None (as flags give them).
    Unknown TOML keys and ``CODEX_BRIDGE_*`` variables that name no setting
    are refused, so a typo never goes unnoticed.
    """
    environ = os.environ if environ is None else environ
    hints = _hints()
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    tables: dict[str, Any] = {}

    if config_file is None and environ.get(ENV_PREFIX + "CONFIG"):
        config_file = environ[ENV_PREFIX + "CONFIG"]
    if config_file is not None:
        path = Path(config_file)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        values["config_file"] = str(path.resolve())
        sources["config_file"] = "--config"
        for key, value in data.items():
            if key not in hints or key in _NOT_SETTINGS:
                raise ConfigError(f"unknown setting {key!r} in config file {path}")
            if key in FILE_ONLY_SETTINGS:
                tables[key] = value
            else:
                values[key] = _structure_field(key, value, hints[key], f"config file {path}")
            sources[key] = f"config file {path}"

    for var, raw in environ.items():
        if not var.startswith(ENV_PREFIX) or var == ENV_PREFIX + "CONFIG":
            continue
        if var == ENV_PREFIX + "URL":  # used by the admin CLI, not a setting
            continue
        key = var[len(ENV_PREFIX) :].lower()
        if key not in hints or key in _NOT_SETTINGS:
            raise ConfigError(f"unknown setting in environment variable {var}")
        if key in FILE_ONLY_SETTINGS:
            raise ConfigError(
                f"{key!r} can only be set in the config file ([{key}.NAME] tables), "
                f"not by environment variable {var}"
            )
        try:
            parsed = _parse_text(key, raw, hints[key])
        except ValueError as exc:
            # from None: the traceback must not carry the secrets of api_keys
            raise ConfigError(f"invalid setting {key!r} (from {var}): {exc}") from None
        values[key] = _structure_field(key, parsed, hints[key], var)
        sources[key] = var

    for key, value in (overrides or {}).items():
        if value is None:
            continue
        flag = flag_name(key)
        if isinstance(value, str) and (key in _ENV_PARSERS or _is_optional(hints[key])):
            try:
                value = _parse_text(key, value, hints[key])
            except ValueError as exc:
                # from None: the traceback must not carry the secrets of api_keys
                raise ConfigError(f"invalid setting {key!r} (from {flag}): {exc}") from None
        values[key] = _structure_field(key, value, hints[key], flag)
        sources[key] = flag

    if "aliases" in tables:
        # after every other setting: an alias may not be wider than the sandbox
        sandbox_mode = str(values.get("sandbox_mode", attrs.fields(Settings).sandbox_mode.default))
        values["aliases"] = _structure_aliases(tables["aliases"], sources["aliases"], sandbox_mode)

    try:
        return Settings(**values)
    except UnprotectedBind as exc:
        raise UnprotectedBind(f"{exc} (host from {sources['host']})") from None
    except (ValueError, TypeError) as exc:
        # attrs validators raise with the attribute available only in the
        # message; find which setting failed by validating one at a time.
        for key, value in values.items():
            try:
                Settings(**{key: value})
            except (ValueError, TypeError) as single:
                raise ConfigError(
                    f"invalid setting {key!r} (from {sources[key]}): {single}"
                ) from exc
            except ConfigError:
                continue  # valid alone; the cross-setting checks come later
        raise ConfigError(f"invalid settings: {exc}") from exc
