"""The markup the bridge writes into ``content``, and its removal from history.

Every block is a ``<details type="tool_calls" done="true" …>`` element:
OpenWebUI draws it as a tool card (name, arguments, result); any other
Markdown client shows its ``<summary>`` and the fenced block inside. Blocks
are written once, when the item they describe is complete, because a stream
cannot take back what it sent (a card opened as ``done="false"`` would spin
forever). Live progress goes to status events instead.

:func:`strip_bridge_markup` recognises all of it (and ``<think>`` blocks) in
assistant messages that clients send back, so the model never reads it.
"""

from __future__ import annotations

import html
import re
import shlex
from collections.abc import Iterable, Sequence

import orjson

# The shells codex wraps commands in: "/bin/bash -lc '<command>'".
_SHELLS = frozenset({"bash", "sh", "zsh", "dash"})

_BLOCK_RE = re.compile(
    r"<details\s+type=\"(?:tool_calls|reasoning|code_interpreter)\"[^>]*>.*?</details>\s*",
    re.DOTALL,
)
_THINK_RE = re.compile(r"<(think|thinking|reasoning)>.*?</\1>\s*", re.DOTALL)


def unwrap_command(command: str) -> str:
    """``/bin/bash -lc 'ls -la'`` → ``ls -la``; anything else unchanged."""
    try:
        argv = shlex.split(command)
    except ValueError:
        return command
    if len(argv) == 3 and argv[0].rsplit("/", 1)[-1] in _SHELLS and argv[1] in ("-c", "-lc"):
        return argv[2]
    return command


def trim_lines(text: str, limit: int) -> str:
    """The last ``limit`` lines of ``text``, saying how many were left out."""
    lines = text.rstrip("\n").split("\n") if text else []
    if limit <= 0 or len(lines) <= limit:
        return "\n".join(lines)
    hidden = len(lines) - limit
    return f"… ({hidden} earlier line{'s' if hidden != 1 else ''} not shown)\n" + "\n".join(
        lines[-limit:]
    )


def _attr(value: object) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return html.escape(text, quote=True)


def _fence(body: str, info: str = "") -> str:
    """A fenced block that no backtick run inside ``body`` can close early."""
    longest = max((len(run) for run in re.findall(r"`+", body)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{info}\n{body}\n{ticks}"


def tool_block(
    *, name: str, arguments: object, result: object, summary: str, body: str = ""
) -> str:
    """One completed tool call as an OpenWebUI card with a Markdown body."""
    inner = f"\n\n{body}\n" if body else "\n"
    return (
        f'<details type="tool_calls" done="true" name="{_attr(name)}" '
        f'arguments="{_attr(arguments)}" result="{_attr(result)}">\n'
        f"<summary>{html.escape(summary, quote=False)}</summary>{inner}</details>\n\n"
    )


def command_block(
    *,
    command: str,
    status: str,
    exit_code: int | None,
    duration_ms: int | None,
    output: str,
    output_lines: int,
    declined_by: str | None = None,
) -> str:
    shown = unwrap_command(command)
    took = f", {duration_ms} ms" if duration_ms is not None else ""
    if status == "declined":
        why = f" by the approval policy ({declined_by})" if declined_by else ""
        summary = f"Declined{why}: `{shown}`"
    elif status == "failed" or (exit_code not in (None, 0)):
        summary = f"Failed (exit {exit_code}{took}): `{shown}`"
    elif status == "completed":
        summary = f"Ran `{shown}` (exit {exit_code}{took})"
    else:
        summary = f"Stopped: `{shown}`"
    trimmed = trim_lines(output, output_lines)
    console = f"$ {shown}" + (f"\n{trimmed}" if trimmed else "")
    result = {"status": status, "exit_code": exit_code, "output": trimmed}
    return tool_block(
        name="shell",
        arguments={"command": shown},
        result=result,
        summary=summary,
        body=_fence(console, "console"),
    )


def _diff_of(kind: str, diff: str) -> str:
    if kind == "add":  # codex gives the new file's content
        return "\n".join("+" + line for line in diff.rstrip("\n").split("\n"))
    if kind == "delete":
        return "\n".join("-" + line for line in diff.rstrip("\n").split("\n"))
    return diff.rstrip("\n")


def file_change_block(
    changes: Sequence[tuple[str, str, str]], status: str, declined_by: str | None = None
) -> str:
    """``changes``: (path, kind add/delete/update, diff) for each file."""
    verbs = {"add": "added", "delete": "deleted", "update": "edited"}
    paths = ", ".join(path for path, _, _ in changes) or "(no files)"
    count = f"{len(changes)} file{'s' if len(changes) != 1 else ''}"
    if status == "declined":
        why = f" by the approval policy ({declined_by})" if declined_by else ""
        summary = f"File changes declined{why}: {paths}"
    elif status == "failed":
        summary = f"File changes failed: {paths}"
    else:
        summary = f"Changed {count}: {paths}"
    parts = [
        f"**{path}** ({verbs.get(kind, kind)})\n\n" + _fence(_diff_of(kind, diff), "diff")
        for path, kind, diff in changes
    ]
    return tool_block(
        name="apply_patch",
        arguments={"files": [path for path, _, _ in changes]},
        result={"status": status},
        summary=summary,
        body="\n\n".join(parts),
    )


def plan_block(steps: Iterable[tuple[str, str]], explanation: str | None) -> str:
    marks = {"completed": "[x]", "inProgress": "[~]", "pending": "[ ]"}
    lines = [f"- {marks.get(status, '[ ]')} {step}" for step, status in steps]
    body = "\n".join(lines)
    if explanation:
        body = f"{explanation}\n\n{body}"
    done = sum(1 for _, status in steps if status == "completed")
    return tool_block(
        name="update_plan",
        arguments={"steps": len(lines)},
        result={"completed": done},
        summary=f"Plan: {done}/{len(lines)} done",
        body=body,
    )


def strip_bridge_markup(text: str) -> str:
    """``text`` without the blocks and ``<think>`` sections this bridge writes."""
    stripped = _BLOCK_RE.sub("", text)
    stripped = _THINK_RE.sub("", stripped)
    return re.sub(r"\n{3,}", "\n\n", stripped).strip()
