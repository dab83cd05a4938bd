"""How the front doors turn requests into turns and turns into answers."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from .chat.present import ReasoningFormat
from .images import ImageLimits
from .models import Alias


@attrs.frozen
class FrontOptions:
    #: Where reasoning goes in a chat completion.
    reasoning_format: ReasoningFormat = ReasoningFormat.FIELD
    #: OpenWebUI status events: "auto" (for OpenWebUI's requests, which carry
    #: X-OpenWebUI-Chat-Id), "always" or "never".
    status_events: str = "auto"
    #: The last lines of a command's output shown in its card.
    command_output_lines: int = 20
    #: Reasoning effort of a request that names none.
    default_reasoning_effort: str | None = None
    #: Reasoning summaries asked of codex (None: none).
    reasoning_summary: str | None = "auto"
    #: A streamed answer's keepalive frame after this long without a write.
    keepalive_interval_s: float = 15.0
    #: What images a request may carry.
    images: ImageLimits = attrs.field(factory=ImageLimits)
    #: The operator's model aliases, by name.
    aliases: Mapping[str, Alias] = attrs.field(factory=dict)
    #: The client's tools become codex dynamic tools (``client_tools = "auto"``).
    client_tools: bool = True
