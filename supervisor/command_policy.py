"""What codex, and the commands its model runs, can see and reach.

The model runs shell commands. Whatever those commands can read can end up
in the model's context (sent to the model provider as tool output) and on the
HTTP client's screen (the command's card), so the bridge decides, not the
operator's codex ``config.toml``:

**The child's environment** is an allowlist (:func:`child_environment`): the
basics codex needs, the ``env_key`` (and ``env_http_headers``) variables of
the model providers its ``config.toml`` declares, proxy settings, and what the
operator names in ``child_env``. Nothing else — no ``CODEX_BRIDGE_*``, no key
or token of the bridge.

**The commands' environment** is cut down further by codex's own shell
environment policy, passed as ``-c`` overrides (which win over config.toml):
only :data:`COMMAND_ENV` survives (``include_only`` is applied last, after any
``set`` a config.toml adds), anything whose name looks secret is excluded,
``HOME`` is an empty directory so no profile or rc file of the service user is
read, and codex takes no snapshot of the service user's login shell. A
thread's own directory contributes no AGENTS.md (only the model's commands
write there); CODEX_HOME's AGENTS.md and skills still apply.

**The commands' filesystem and network** go through a codex permission
profile (codex 0.169 runs commands under its bundled bubblewrap): the whole
filesystem read-only, the thread's own working directory writable, and
``none`` — an unreadable empty directory or file mounted over it — for
CODEX_HOME (credentials, config, other threads' transcripts), the bridge's
state database and config file, every conversation's and request's workspace
(a thread's own cwd inside them is re-opened, being more specific), and the
operator's ``sandbox_deny_paths``; network off unless ``command_network``.
The profile has a new random name at every start: a config.toml could
otherwise widen a profile it can name (tables merge). The bridge never sends
``sandbox``/``sandboxPolicy``/``permissions`` with a thread or turn, which
would replace the profile.

Two traps, both handled: codex must use its *bundled* bubblewrap (an older
system ``bwrap``, such as Debian 12's 0.8.0, makes every thread fail once
CODEX_HOME is hidden), so a directory holding a ``bwrap`` link to it goes
first on the child's PATH; and :func:`check_sandbox` proves, before the pool
starts, that a command runs under the profile and cannot read CODEX_HOME.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import secrets
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

log = logging.getLogger(__name__)

#: Variables codex itself needs from the service's environment.
CHILD_ENV_BASICS = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TZ",
    "TMPDIR",
    "TERM",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "RUST_LOG",
    "RUST_BACKTRACE",
    # codex reaches the model through them; commands never see them
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
)

#: The only variables a command keeps from codex's environment (codex adds
#: its own CODEX_* markers, pager and terminal settings on top).
COMMAND_ENV = (
    "PATH",
    "HOME",
    "LANG",
    "LC_*",
    "TERM",
    "SHELL",
    "TMPDIR",
    "TMP",
    "TEMP",
    "USER",
    "LOGNAME",
    "TZ",
)

#: Names that look secret: never passed to a command, whatever else says so.
SECRET_NAMES = (
    "*KEY*",
    "*TOKEN*",
    "*SECRET*",
    "*PASSWORD*",
    "*PASSWD*",
    "*CREDENTIAL*",
    "*AUTH*",
)

SANDBOX_MODES = ("workspace-write", "read-only", "danger-full-access")


class SandboxUnavailable(Exception):
    """Commands would not run confined as configured; the service must not start."""


def _matches(name: str, patterns: Iterable[str]) -> bool:
    upper = name.upper()
    return any(fnmatch.fnmatchcase(upper, pattern.upper()) for pattern in patterns)


def provider_env_keys(codex_home: Path) -> set[str]:
    """The variables codex's config.toml names for its model providers' keys
    and headers (``env_key``, ``env_http_headers``), which codex needs."""
    try:
        config = tomllib.loads((codex_home / "config.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return set()
    names: set[str] = set()
    providers = config.get("model_providers")
    for provider in providers.values() if isinstance(providers, dict) else ():
        if not isinstance(provider, dict):
            continue
        key = provider.get("env_key")
        if isinstance(key, str) and key:
            names.add(key)
        headers = provider.get("env_http_headers")
        if isinstance(headers, dict):
            names.update(v for v in headers.values() if isinstance(v, str) and v)
    return names


def child_environment(
    service_env: Mapping[str, str],
    *,
    codex_home: Path,
    passed: Sequence[str] = (),
    path_first: Path | None = None,
) -> dict[str, str]:
    """The environment of a codex child: see the module docs.

    ``passed`` are names (shell-style patterns allowed) the operator lets
    through; ``path_first`` goes first on PATH (the bundled bwrap's link).
    """
    wanted = [*CHILD_ENV_BASICS, *sorted(provider_env_keys(codex_home)), *passed]
    env = {
        name: value
        for name, value in service_env.items()
        if _matches(name, wanted) and not name.startswith("CODEX_BRIDGE_")
    }
    env["CODEX_HOME"] = str(codex_home)
    if path_first is not None:
        env["PATH"] = os.pathsep.join(
            [str(path_first), *([env["PATH"]] if env.get("PATH") else [os.defpath])]
        )
    return env


def _toml(value: object) -> str:
    """A TOML value for a ``-c key=value`` override (JSON scalars and arrays are TOML)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


@attrs.frozen(kw_only=True)
class CommandPolicy:
    """How commands are confined; :meth:`codex_args` says it to codex."""

    sandbox_mode: str = "workspace-write"
    network: bool = False
    #: Paths commands must not read (files or directories), absolute.
    denied: tuple[Path, ...] = ()
    #: An empty directory: HOME of every command.
    command_home: Path
    profile: str = attrs.field(factory=lambda: f"codex-bridge-{secrets.token_hex(8)}")

    @property
    def confined(self) -> bool:
        return self.sandbox_mode != "danger-full-access"

    @property
    def read_only_profile(self) -> str:
        """The same profile with the thread's own directory read-only too."""
        return f"{self.profile}-read-only"

    def codex_args(self) -> list[str]:
        """``-c`` overrides for ``codex app-server`` (and ``codex sandbox``)."""
        pairs: list[tuple[str, object]] = [
            # No snapshot of the service user's login shell per thread: what
            # a profile exports would reach commands, and what it starts
            # (daemons, a pyenv rehash waiting on its lock) outlives it.
            ("features.shell_snapshot", False),
            # No project docs (AGENTS.md) from a thread's directory, and no
            # search for a project root above it: under the profile each such
            # lookup is a sandboxed helper process (~40 ms each, a dozen per
            # new thread), and an AGENTS.md in a conversation's directory could
            # only have been written by the model's own commands.
            ("project_root_markers", []),
            ("project_doc_max_bytes", 0),
            ("project_doc_fallback_filenames", []),
            ("shell_environment_policy.inherit", "core"),
            ("shell_environment_policy.ignore_default_excludes", False),
            ("shell_environment_policy.exclude", list(SECRET_NAMES)),
            ("shell_environment_policy.include_only", list(COMMAND_ENV)),
            ("shell_environment_policy.experimental_use_profile", False),
            ("shell_environment_policy.set.HOME", str(self.command_home)),
        ]
        if self.confined:
            own = "write" if self.sandbox_mode == "workspace-write" else "read"
            filesystem: dict[str, object] = {":root": "read", ":project_roots": {".": own}}
            filesystem.update({str(path): "none" for path in self.denied})
            filesystem[str(self.command_home)] = "read"
            read_only = {**filesystem, ":project_roots": {".": "read"}}
            pairs += [
                ("default_permissions", self.profile),
                (f"permissions.{self.profile}.filesystem", filesystem),
                (f"permissions.{self.profile}.network.enabled", self.network),
                (f"permissions.{self.read_only_profile}.filesystem", read_only),
                (f"permissions.{self.read_only_profile}.network.enabled", self.network),
            ]
        else:
            pairs.append(("sandbox_mode", "danger-full-access"))
        args: list[str] = []
        for key, value in pairs:
            args += ["-c", f"{key}={_toml(value)}"]
        return args


def bundled_bwrap(codex_binary: Path) -> Path | None:
    """The bubblewrap shipped next to the native binary in codex's npm package."""
    candidate = codex_binary.resolve().parent.parent / "codex-resources" / "bwrap"
    return candidate if candidate.is_file() else None


def link_bundled_bwrap(codex_binary: Path, directory: Path) -> Path | None:
    """A directory holding ``bwrap`` → the bundled one, to go first on PATH;
    None when codex has no bundled bubblewrap (another packaging)."""
    bwrap = bundled_bwrap(codex_binary)
    if bwrap is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    link = directory / "bwrap"
    if not (link.is_symlink() and link.resolve() == bwrap):
        link.unlink(missing_ok=True)
        link.symlink_to(bwrap)
    return directory


async def check_sandbox(
    codex_binary: Path, policy: CommandPolicy, env: Mapping[str, str], cwd: Path
) -> None:
    """Prove the policy holds before any model runs a command.

    ``codex sandbox`` runs a command the way a thread's commands run: it
    must be able to run at all, and must not be able to read a file placed
    in CODEX_HOME for the purpose. Raises :class:`SandboxUnavailable`.
    """
    if not policy.confined:
        return
    codex_home = Path(env["CODEX_HOME"])
    canary = trio.Path(codex_home / ".codex-bridge-sandbox-check")
    await canary.write_text("this file must not be readable by commands\n")
    base = [str(codex_binary), "sandbox", *policy.codex_args(), "-C", str(cwd)]
    base += ["-P", policy.profile, "--"]
    try:
        runs = await _run([*base, "true"], env, cwd)
        if runs.returncode != 0:
            raise SandboxUnavailable(
                "a command cannot run in codex's sandbox here: "
                + _output(runs)
                + " (see README: Security)"
            )
        reads = await _run([*base, "cat", str(canary)], env, cwd)
        if reads.returncode == 0:
            raise SandboxUnavailable(
                f"codex's sandbox does not hide CODEX_HOME ({codex_home}) from commands"
            )
    finally:
        await canary.unlink(missing_ok=True)


async def _run(argv: list[str], env: Mapping[str, str], cwd: Path) -> Any:
    with trio.fail_after(30):
        return await trio.run_process(
            argv, env=dict(env), cwd=str(cwd), capture_stdout=True, capture_stderr=True, check=False
        )


def _output(result: Any) -> str:
    text = (result.stderr or result.stdout or b"").decode(errors="replace").strip()
    return text.splitlines()[-1][:300] if text else f"exit status {result.returncode}"
