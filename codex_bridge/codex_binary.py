"""Find the native codex binary inside the pinned npm package.

The npm launcher (``node_modules/.bin/codex``) spawns the native binary as a
child of node on Node 20, which costs ~45 MiB and ~90 ms per process; the pool
runs the native binary directly.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

# (sys.platform, machine) -> (npm platform package, target triple)
_PLATFORMS: dict[tuple[str, str], tuple[str, str]] = {
    ("linux", "x86_64"): ("codex-linux-x64", "x86_64-unknown-linux-musl"),
    ("linux", "aarch64"): ("codex-linux-arm64", "aarch64-unknown-linux-musl"),
    ("darwin", "x86_64"): ("codex-darwin-x64", "x86_64-apple-darwin"),
    ("darwin", "arm64"): ("codex-darwin-arm64", "aarch64-apple-darwin"),
}

#: The repository root (where ``make`` installs node_modules).
PROJECT_ROOT = Path(__file__).resolve().parent.parent


#: How the pool runs the binary. ``thread_unload_delay_secs = 0``: a thread
#: nobody is subscribed to is unloaded at once (codex's default is 60 s), so
#: ``thread/unsubscribe`` frees its memory and lets another child resume it.
APP_SERVER_ARGS = ("app-server", "-c", "thread_unload_delay_secs=0")


class CodexBinaryNotFound(Exception):
    pass


def native_binary_in(node_modules: Path) -> Path | None:
    key = (sys.platform, platform.machine())
    if key not in _PLATFORMS:
        return None
    package, triple = _PLATFORMS[key]
    candidate = node_modules / "@openai" / package / "vendor" / triple / "bin" / "codex"
    return candidate if candidate.is_file() else None


def find_codex_binary(configured: str | None) -> Path:
    """The binary to run: the configured one, else the pinned npm package's.

    Raises :class:`CodexBinaryNotFound` with what to do about it.
    """
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file() or not os.access(path, os.X_OK):
            raise CodexBinaryNotFound(
                f"invalid setting 'codex_bin': {path} is not an executable file"
            )
        return path
    searched = [PROJECT_ROOT / "node_modules", Path.cwd() / "node_modules"]
    for node_modules in searched:
        found = native_binary_in(node_modules)
        if found is not None:
            return found
    raise CodexBinaryNotFound(
        "the codex binary was not found in "
        + " or ".join(str(p) for p in dict.fromkeys(searched))
        + "; run `make install` (npm ci installs @openai/codex) or set "
        "CODEX_BRIDGE_CODEX_BIN to the native codex binary"
    )
