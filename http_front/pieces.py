"""What a turn shows, in no API's terms.

:mod:`http_front.render` turns codex's events into these pieces; each front
door's encoder turns them into its own wire format, streaming and whole.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import attrs

from bridge.protocol import TokenCounts


@attrs.frozen(slots=True)
class Text:
    """Answer text. ``new_paragraph``: it starts a new message or part, set
    apart from what came before."""

    text: str
    new_paragraph: bool = False


@attrs.frozen(slots=True)
class Reasoning:
    """The model's reasoning (a summary or raw). ``new_part``: a new part
    of it begins."""

    text: str
    new_part: bool = False


@attrs.frozen(slots=True)
class Status:
    """What the agent is doing now; ``done`` on the last one of a turn."""

    description: str
    done: bool = False


@attrs.frozen
class CommandCard:
    """A command the agent ran, with its output."""

    command: str
    status: str
    exit_code: int | None
    duration_ms: int | None
    output: str
    #: The approval policy that declined it, if one did.
    declined_by: str | None = None


@attrs.frozen
class FileChangeCard:
    """Files the agent changed: (path, kind, diff) each."""

    changes: tuple[tuple[str, str, str], ...]
    status: str
    declined_by: str | None = None


@attrs.frozen
class ToolCard:
    """A tool the agent called (MCP, dynamic, web search, images, a plan)."""

    name: str
    arguments: Any
    result: Any
    summary: str
    #: Shown in full inside the card, when the result alone says too little.
    body: str = ""


@attrs.frozen
class PlanCard:
    """The agent's plan: (step, status) each."""

    steps: tuple[tuple[str, str], ...]
    explanation: str | None = None


@attrs.frozen(slots=True)
class ClientCall:
    """The model calls one of the client's functions: the answer ends with
    the call(s), and the turn waits for the client's result."""

    call_id: str
    name: str
    #: The arguments as JSON text.
    arguments: str


Card: TypeAlias = CommandCard | FileChangeCard | ToolCard | PlanCard
Piece: TypeAlias = Text | Reasoning | Status | Card | ClientCall


@attrs.frozen
class Usage:
    """Tokens a turn used."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int
    reasoning_tokens: int

    @classmethod
    def of(cls, counts: TokenCounts) -> Usage:
        return cls(
            prompt_tokens=counts.input_tokens,
            completion_tokens=counts.output_tokens,
            total_tokens=counts.total_tokens,
            cached_tokens=counts.cached_input_tokens,
            reasoning_tokens=counts.reasoning_output_tokens,
        )
